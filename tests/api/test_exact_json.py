"""Decimals leave the API as exact JSON numbers; floats are refused."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.api.exact_json import dumps


def test_seed_figures_round_trip_exactly():
    body = dumps({"cost_so_far": Decimal("0.000004200"), "prepaid_sol": Decimal("0.001"), "used_sol": Decimal(0),
                  "duration_hours": Decimal("1.0"), "items": [Decimal("-2.50"), "x", None, True, 3]})
    assert body == ('{"cost_so_far":0.0000042,"prepaid_sol":0.001,"used_sol":0,"duration_hours":1,'
                    '"items":[-2.5,"x",null,true,3]}')
    parsed = json.loads(body, parse_float=Decimal)
    assert parsed["cost_so_far"] == Decimal("0.0000042")


@given(st.decimals(allow_nan=False, allow_infinity=False, places=9, min_value=-10**12, max_value=10**12))
def test_any_amount_round_trips(d):
    assert json.loads(dumps({"v": d}), parse_float=Decimal, parse_int=Decimal)["v"] == d


def test_float_is_refused():
    with pytest.raises(TypeError):
        dumps({"v": 0.1})
