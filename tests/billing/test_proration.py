"""Proration by the second and monthly periods: pure functions, property-tested.

The rule under test (billing/proration.py): a full period's charge F splits into an
elapsed and a remaining part with largest-remainder allocation, so the two always sum
to F, each is within one minor unit of its exact share, and a tie goes to the elapsed part.
"""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from meterline.billing.periods import add_months, period_bounds_ns
from meterline.billing.proration import prorate, remaining_part, split_period

NS = 1_000_000_000
MONTH_S = 30 * 86_400


def ts(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())  # type: ignore[misc]


periods = st.integers(min_value=1, max_value=31 * 86_400)
prices = st.integers(min_value=0, max_value=10**9)
quantities = st.integers(min_value=0, max_value=10_000)


@given(full=st.integers(min_value=0, max_value=10**15), length=periods, data=st.data())
@example(full=1, length=2, data=None)
def test_the_two_parts_of_a_period_sum_exactly(full: int, length: int, data: st.DataObject | None) -> None:
    at = length // 2 if data is None else data.draw(st.integers(min_value=0, max_value=length))
    rest = remaining_part(full, 0, length, at)
    used = split_period(full, 0, length, [at])[0]
    assert used + rest == full
    exact = Fraction(full * (length - at), length)
    assert abs(rest - exact) <= Fraction(1, 2)  # the nearest unit
    if exact.denominator == 2:  # a tie: the cent goes to the elapsed part, the first one
        assert rest == exact - Fraction(1, 2)


@given(length=periods, full=st.integers(min_value=0, max_value=10**12), data=st.data())
def test_the_remaining_part_shrinks_as_the_period_passes(length: int, full: int, data: st.DataObject) -> None:
    a = data.draw(st.integers(min_value=0, max_value=length))
    b = data.draw(st.integers(min_value=a, max_value=length))
    assert remaining_part(full, 0, length, a) >= remaining_part(full, 0, length, b)
    assert remaining_part(full, 0, length, 0) == full
    assert remaining_part(full, 0, length, length) == 0


@given(full=st.integers(min_value=0, max_value=10**15), length=periods,
       cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=20))
def test_split_pieces_sum_exactly_and_stay_within_a_unit(full: int, length: int, cuts: list[float]) -> None:
    seconds = sorted(int(c * length) for c in cuts)
    pieces = split_period(full, 0, length, seconds)
    assert sum(pieces) == full
    bounds = [0, *seconds, length]
    for piece, a, b in zip(pieces, bounds, bounds[1:], strict=False):
        assert abs(piece - Fraction(full * (b - a), length)) < 1


@given(price=prices, length=periods, start_qty=quantities,
       changes=st.lists(st.tuples(st.floats(min_value=0, max_value=1), quantities), max_size=12))
def test_a_period_of_changes_bills_each_quantity_for_its_seconds(
    price: int, length: int, start_qty: int, changes: list[tuple[float, int]]
) -> None:
    """What an invoice sums to: the period's charge at the starting quantity, then for each change
    a credit of the old quantity and a charge of the new one for the rest of the period."""
    timeline = sorted((int(f * length), q) for f, q in changes)
    total, qty = start_qty * price, start_qty
    for at, new in timeline:
        p = prorate(price, qty, new, 0, length, at)
        assert 0 <= p.credit_minor <= qty * price and 0 <= p.charge_minor <= new * price
        total += p.net_minor
        qty = new
    prev_at, prev_q = 0, start_qty
    exact = Fraction(0)
    for at, new in [*timeline, (length, qty)]:
        exact += Fraction(prev_q * price * (at - prev_at), length)
        prev_at, prev_q = at, new
    # Each piece is its exact share rounded to the nearest unit (±½), so a change — one credit,
    # one charge — adds at most one unit of rounding, and no change means exactly F.
    assert abs(total - exact) <= len(timeline)


@given(price=prices, qty=quantities, other=quantities, length=periods, data=st.data())
def test_a_change_undone_at_the_same_second_nets_to_zero(price: int, qty: int, other: int, length: int,
                                                         data: st.DataObject) -> None:
    at = data.draw(st.integers(min_value=0, max_value=length))
    there, back = prorate(price, qty, other, 0, length, at), prorate(price, other, qty, 0, length, at)
    assert there.net_minor + back.net_minor == 0


def test_the_worked_example_in_docs_billing() -> None:
    start, end = ts(2025, 11, 1), ts(2025, 12, 1)
    at = ts(2025, 11, 20, 8)
    assert (at - start, end - at) == (1_670_400, 921_600)
    cameras = prorate(6000, 100, 120, start, end, at)
    assert (cameras.credit_minor, cameras.charge_minor) == (213_333, 256_000)  # −$2,133.33, +$2,560.00
    assert prorate(40_000, 0, 1, start, end, at).charge_minor == 14_222  # +$142.22


def test_changes_outside_the_period_are_refused() -> None:
    with pytest.raises(ValueError, match="inside the period"):
        prorate(100, 1, 2, 0, 10, 11)
    with pytest.raises(ValueError, match="longer than zero"):
        remaining_part(100, 10, 10, 10)
    with pytest.raises(ValueError, match="never negative"):
        prorate(-1, 1, 2, 0, 10, 5)
    with pytest.raises(ValueError, match="sorted"):
        split_period(100, 0, 10, [6, 5])


# -- periods ------------------------------------------------------------------------------------
def test_monthly_periods_keep_the_anchor_day() -> None:
    anchor = ts(2024, 1, 31, 9, 30)
    bounds = [datetime.fromtimestamp(add_months(anchor, k), tz=UTC) for k in range(5)]
    assert [(d.month, d.day, d.hour, d.minute) for d in bounds] == [
        (1, 31, 9, 30), (2, 29, 9, 30), (3, 31, 9, 30), (4, 30, 9, 30), (5, 31, 9, 30)]
    assert datetime.fromtimestamp(add_months(anchor, 13), tz=UTC).date().isoformat() == "2025-02-28"
    assert datetime.fromtimestamp(add_months(anchor, 11), tz=UTC).date().isoformat() == "2024-12-31"


@given(anchor=st.integers(min_value=0, max_value=4_000_000_000), index=st.integers(min_value=0, max_value=600))
def test_periods_are_contiguous_and_a_month_long(anchor: int, index: int) -> None:
    start, end = period_bounds_ns(anchor * NS, index)
    assert (start, end)[1] == period_bounds_ns(anchor * NS, index + 1)[0]
    assert 28 * 86_400 * NS <= end - start <= 31 * 86_400 * NS
    assert start % NS == 0 and end % NS == 0
