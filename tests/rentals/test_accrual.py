"""The accrual formula: exact to the minor unit, and SQL agrees with Python to the unit."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
)

from meterline.rentals import accrual


def test_si64_rate_accrues_to_the_lamport():
    # M2: 0.001 SOL/h = 1,000,000 lamports/h. 15.12 s → 4,200 lamports exactly (the seed's 0.0000042).
    num, den = accrual.rate_fraction(accrual.lock_rate(Decimal("0.001"), 9), 9)
    assert (num, den) == (2500, 9)
    assert accrual.accrued_minor(num, den, 15, 0, 10**9) == 4167  # 15 s → 4166.67 → half-up
    assert accrual.accrued_minor(num, den, 3600, 0, 10**9) == 1_000_000
    assert accrual.accrued_minor(num, den, 360, 0, 10**9) == 100_000  # the simulation script's 0.1 h


def test_cost_never_exceeds_what_is_held():
    num, den = accrual.rate_fraction(Decimal("0.001"), 9)
    assert accrual.accrued_minor(num, den, 10 * 3600, 0, 1_000_000) == 1_000_000


def test_half_up_at_exactly_half_a_unit():
    # 1 minor per 2 seconds: 1 s = 0.5 → 1 ; 3 s = 1.5 → 2.
    assert accrual.accrued_minor(1, 2, 1, 0, 100) == 1
    assert accrual.accrued_minor(1, 2, 3, 0, 100) == 2
    # 0.4999995 minor units is 499_999.5 millionths, floored to 499_999 → rounds down.
    assert accrual.accrued_minor(0, 1, 0, 499_999, 100) == 0
    assert accrual.accrued_minor(0, 1, 0, 500_000, 100) == 1


def test_power_integral_is_exact():
    # 450 W for one hour at 0.001 DGPU/Wh (scale 6) = 0.45 DGPU = 450,000 micro-DGPU.
    energy2 = 2 * 450_000 * 3_600_000  # trapezoid of a constant: (p + p) × Δt
    assert accrual.power_cost_e6(Decimal("0.001"), 6, energy2) == 450_000 * accrual.E6


def test_locked_rate_is_quantized_half_up():
    assert accrual.lock_rate(Decimal("0.2500000000001"), 6) == Decimal("0.250000000")
    assert accrual.lock_rate(Decimal("0.0000000005"), 6) == Decimal("0.000000001")


def test_absurd_rate_is_refused():
    num, _ = accrual.rate_fraction(Decimal("1000000"), 9)
    with pytest.raises(accrual.RateTooLarge):
        accrual.check_rate_fits(num, 365 * 24 * 3600)


def _table() -> Table:
    md = MetaData()
    return Table(
        "r", md, Column("id", Integer, primary_key=True), Column("rate_num", BigInteger),
        Column("rate_den", BigInteger), Column("started_at", BigInteger), Column("expires_at", BigInteger),
        Column("power_cost_e6", BigInteger), Column("held_minor", BigInteger), Column("rounding", String(10)),
    )


rates = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("50"), places=6)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(rates, st.integers(0, 3 * 86400), st.integers(0, 10**12), st.integers(1, 10**13),
                  st.sampled_from(["half_up", "half_even", "up", "down", "floor"]),
                  st.booleans()),
        min_size=1, max_size=20,
    )
)
def test_sql_total_equals_sum_of_python_figures(rows):
    engine = create_engine("sqlite://")
    t = _table()
    t.metadata.create_all(engine)
    now = 10**18
    expected = 0
    with engine.begin() as conn:
        for i, (rate, age_s, power_e6, held, rounding, has_expiry) in enumerate(rows):
            num, den = accrual.rate_fraction(accrual.lock_rate(rate, 6), 6)
            started = now - age_s * accrual.NS - 123_456_789
            expires = started + (age_s // 2) * accrual.NS if has_expiry else None
            conn.execute(insert(t).values(id=i, rate_num=num, rate_den=den, started_at=started,
                                          expires_at=expires, power_cost_e6=power_e6, held_minor=held,
                                          rounding=rounding))
            secs = accrual.elapsed_seconds(started, now, expires)
            expected += accrual.accrued_minor(num, den, secs, power_e6, held, rounding)
        per_row = conn.execute(select(accrual.accrued_minor_sql(t.c, now, "sqlite"))).scalars().all()
    assert sum(per_row) == expected


@pytest.mark.parametrize(
    ("rounding", "rem", "whole", "expected"),
    [("half_up", 500_000, 2, 3), ("half_up", 499_999, 2, 2), ("half_even", 500_000, 2, 2),
     ("half_even", 500_000, 3, 4), ("half_even", 500_001, 2, 3), ("up", 1, 2, 3), ("up", 0, 2, 2),
     ("down", 999_999, 2, 2), ("floor", 999_999, 2, 2)],
)
def test_each_rounding_rule(rounding, rem, whole, expected):
    # rate 0, so the whole cost is the power part: whole minor units plus `rem` millionths.
    assert accrual.accrued_minor(0, 1, 0, whole * accrual.E6 + rem, 10**6, rounding) == expected
