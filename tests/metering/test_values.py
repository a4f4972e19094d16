"""Exact quantities: refused when they carry more than micro-unit precision, never rounded."""

from __future__ import annotations

from decimal import Decimal

import pytest

from meterline.api.body import loads
from meterline.metering.values import BadValue, quantity_micro


@pytest.mark.parametrize(("raw", "micro"), [
    (1, 1_000_000), ("0.000001", 1), (Decimal("2.5"), 2_500_000), (Decimal("0E-999999999"), 0),
    (Decimal("1E+9"), 10**15),
])
def test_quantities_in_micro_units(raw, micro):
    assert quantity_micro(raw) == micro


@pytest.mark.parametrize("raw", [
    "0.0000001", Decimal("1E-7"),
    # Far below a micro-unit, Decimal's scaleb underflows to 0: it must not pass as zero.
    Decimal("1E-999999999"), loads(b"1e-999999999"), "1e-999999",
])
def test_more_than_six_places_is_refused_however_small(raw):
    with pytest.raises(BadValue):
        quantity_micro(raw)
