"""The pricing engine: exact figures, the curve, minimums, granularity, rounding and splits."""

from __future__ import annotations

import json
from decimal import Decimal as D
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.errors import InvalidAmount, MeterlineError
from meterline.money import Rounding, round_minor
from meterline.pricing.engine import (
    GpuModelNotPriced,
    InvalidDuration,
    InvalidEnergy,
    InvalidPower,
    InvalidPriceBook,
    InvalidQuote,
    InvalidRate,
    InvalidUtilisation,
    InvalidVram,
    PriceBook,
    Quote,
    TierNotPriced,
    TierRate,
    billable_seconds,
    cost_minor,
    demand_multiplier,
    parse_book,
    power_cost_exact,
    quote_gpu,
    quote_tier,
    round_fraction,
    split_fee,
    time_cost_exact,
)

CURVE = ((D("0"), D("1.0")), (D("0.5"), D("1.0")), (D("0.8"), D("1.25")), (D("1.0"), D("1.5")))


def make_book(**overrides: Any) -> PriceBook:
    fields: dict[str, Any] = {
        "version": 1,
        "asset": "DGPU",
        "base_rates": {"nvidia_rtx_4090": D("0.50"), "nvidia_a100": D("2.00"), "nvidia_h100": D("4.00")},
        "tier_rates": {"M2": TierRate("SOL", D("0.001"))},
        "power_multiplier": D("0.001"),
        "platform_fee_percent": D("5.0"),
        "minimum_session_minutes": 1,
        "granularity": "second",
        "demand_curve": CURVE,
    }
    fields.update(overrides)
    return PriceBook(**fields)


def gpu(book: PriceBook | None = None, **kw: Any) -> Quote:
    args: dict[str, Any] = {"gpu_model": "nvidia_rtx_4090", "vram_gb_total": 24, "vram_gb_requested": 24,
                            "watts": 450, "utilisation": D("0")}
    args.update(kw)
    return quote_gpu(book or make_book(), **args)


# -- quotes -----------------------------------------------------------------------------


def test_half_a_4090_at_half_utilisation_is_a_quarter_per_hour():
    q = gpu(vram_gb_requested=12, utilisation=D("0.5"))
    assert q.hourly_rate == D("0.25")
    assert q.power_rate_per_wh == D("0.001")
    assert q.estimated_power_w == 450
    assert q.estimated_hourly_total == D("0.70")  # 0.25 + 450 W × 0.001
    assert (q.asset, q.price_book_version, q.gpu_model, q.tier, q.vram_gb) == ("DGPU", 1, "nvidia_rtx_4090", None, 12)
    assert [i.name for i in q.line_items] == ["gpu_time", "demand", "power"]


@pytest.mark.parametrize(("u", "expected"), [
    ("0", "1.0"), ("0.3", "1.0"), ("0.5", "1.0"), ("0.65", "1.125"), ("0.8", "1.25"),
    ("0.9", "1.375"), ("1", "1.5"),
])
def test_demand_curve_interpolates_between_points(u, expected):
    assert demand_multiplier(CURVE, D(u)) == D(expected)


def test_demand_curve_is_flat_outside_its_ends_and_empty_means_one():
    curve = ((D("0.2"), D("0.9")), (D("0.6"), D("1.3")))
    assert demand_multiplier(curve, D("0")) == D("0.9")
    assert demand_multiplier(curve, D("0.1")) == D("0.9")
    assert demand_multiplier(curve, D("0.4")) == D("1.1")
    assert demand_multiplier(curve, D("1")) == D("1.3")
    assert demand_multiplier((), D("0.7")) == 1


def test_a_non_terminating_interpolation_is_rounded_to_18_places():
    curve = ((D("0"), D("1")), (D("0.3"), D("2")))
    assert demand_multiplier(curve, D("0.1")) == D("1.333333333333333333")


def test_demand_multiplies_the_time_rate():
    q = gpu(gpu_model="nvidia_h100", vram_gb_total=80, vram_gb_requested=40, watts=700, utilisation=D("0.9"))
    assert q.hourly_rate == D("2.75")  # 4.00 × 1/2 × 1.375
    assert q.estimated_hourly_total == D("3.45")
    demand = next(i for i in q.line_items if i.name == "demand")
    assert demand.amount_per_hour == D("0.75")


def test_a_non_terminating_vram_fraction_rounds_once_and_items_still_sum():
    q = gpu(vram_gb_requested=8, utilisation=D("0.7"))  # 0.5 × 8/24 × 7/6 = 7/36
    assert q.hourly_rate == D("0.194444444444444444")
    assert sum((i.amount_per_hour for i in q.line_items), D(0)) == q.estimated_hourly_total


def test_provider_minimum_wins_when_higher():
    q = gpu(vram_gb_requested=12, utilisation=D("0.5"), provider_min_hourly=D("0.40"))
    assert q.hourly_rate == D("0.40")
    assert q.estimated_hourly_total == D("0.85")
    floor = next(i for i in q.line_items if i.name == "provider_minimum")
    assert floor.amount_per_hour == D("0.15")
    assert sum((i.amount_per_hour for i in q.line_items), D(0)) == q.estimated_hourly_total


def test_provider_minimum_below_the_dynamic_rate_changes_nothing():
    q = gpu(vram_gb_requested=12, utilisation=D("0.5"), provider_min_hourly=D("0.10"))
    assert q.hourly_rate == D("0.25")
    assert "provider_minimum" not in [i.name for i in q.line_items]


def test_tier_quote_is_the_flat_rate_in_the_tiers_asset():
    q = quote_tier(make_book(), "M2")
    assert (q.asset, q.hourly_rate, q.estimated_hourly_total, q.power_rate_per_wh) == ("SOL", D("0.001"), D("0.001"), 0)
    assert q.tier == "M2" and q.gpu_model is None


def test_quote_round_trips_through_json_losslessly():
    for q in (gpu(vram_gb_requested=8, utilisation=D("0.7"), provider_min_hourly=D("0.3")), quote_tier(make_book(), "M2")):
        text = json.dumps(q.to_dict())
        back = Quote.from_dict(json.loads(text))
        assert back == q
        assert back.to_dict() == q.to_dict()
        assert all(not isinstance(v, float) for v in json.loads(text).values())


def test_a_stored_quote_with_a_json_number_is_refused():
    data = gpu().to_dict()
    data["hourly_rate"] = 0.5
    with pytest.raises(InvalidQuote):
        Quote.from_dict(data)
    with pytest.raises(InvalidQuote):
        Quote.from_dict({"asset": "DGPU"})


# -- billable time and cost --------------------------------------------------------------


def test_minimum_minutes_bill_ten_seconds_as_sixty():
    q = gpu()
    assert billable_seconds(q, 10) == 60
    assert billable_seconds(q, 0) == 60
    assert billable_seconds(q, 61) == 61
    # Whole elapsed seconds, as the running cost and the settlement count them (it said 62).
    assert billable_seconds(q, D("61.2")) == 61
    assert billable_seconds(q, D("61.999")) == 61


def test_per_minute_granularity_rounds_up():
    q = gpu(make_book(granularity="minute", minimum_session_minutes=0))
    assert billable_seconds(q, 61) == 120
    assert billable_seconds(q, 120) == 120
    assert billable_seconds(q, 0) == 0
    assert billable_seconds(q, 1) == 60


def test_si64_accrual_is_exact_to_the_lamport():
    q = quote_tier(make_book(), "M2")  # 0.001 SOL/h = 1_000_000 lamports/h
    assert time_cost_exact(q, 9, D("15.12")) == D("4200")  # 0.0042 h → 0.0000042 SOL
    assert cost_minor(q, 9, seconds=D("15.12"), billable=False) == 4200
    assert cost_minor(q, 9, seconds=3600, billable=False) == 1_000_000
    # Billed as a finished session, the one-minute minimum applies: 60 s = 16666.67 → 16667.
    assert cost_minor(q, 9, seconds=D("15.12")) == 16667


def test_power_450w_for_an_hour_is_045_dgpu():
    q = gpu()
    assert power_cost_exact(q, 6, D(450)) == D("450000")
    assert cost_minor(q, 6, seconds=0, energy_wh=D(450), billable=False) == 450_000


def test_time_and_power_are_summed_exactly_then_rounded_once():
    # 3 s of 0.25 DGPU/h = 208.333… µDGPU; 0.0004 Wh × 0.001 = 0.4 µDGPU. Rounded apart they
    # make 208 + 0 = 208; their exact sum, 208.733…, is 209.
    q = gpu(vram_gb_requested=12, utilisation=D("0.5"))
    assert time_cost_exact(q, 6, 36) == D("2500")
    assert cost_minor(q, 6, seconds=3, energy_wh=D("0.0004"), billable=False) == 209  # 208.333 + 0.4
    assert round_minor(time_cost_exact(q, 6, 3)) + round_minor(power_cost_exact(q, 6, D("0.0004"))) == 208


def test_half_up_and_half_even_differ_on_a_constructed_tie():
    # 0.000005 USDC/h = 5 µUSDC/h: half an hour is exactly 2.5 µUSDC, 1.5 hours 7.5 µUSDC.
    book_up = make_book(tier_rates={"T": TierRate("USDC", D("0.000005"))}, minimum_session_minutes=0)
    book_even = make_book(tier_rates={"T": TierRate("USDC", D("0.000005"))}, minimum_session_minutes=0,
                          rounding=Rounding.HALF_EVEN)
    up, even = quote_tier(book_up, "T"), quote_tier(book_even, "T")
    assert time_cost_exact(up, 6, 1800) == D("2.5")
    assert cost_minor(up, 6, seconds=1800) == 3
    assert cost_minor(even, 6, seconds=1800) == 2
    assert time_cost_exact(up, 6, 5400) == D("7.5")
    assert cost_minor(even, 6, seconds=5400) == 8  # ties go to the even neighbour


def test_the_quote_carries_the_rounding_rule():
    q = gpu(make_book(rounding=Rounding.HALF_EVEN))
    assert Quote.from_dict(q.to_dict()).rounding is Rounding.HALF_EVEN


@given(st.fractions(min_value=-10**6, max_value=10**6, max_denominator=10**4), st.sampled_from(list(Rounding)))
def test_round_fraction_agrees_with_money_round_minor(value: Fraction, rule: Rounding):
    # Every fraction with a power-of-ten-friendly denominator is a terminating decimal; compare on those.
    scaled = Fraction(round_fraction(value * 1000, Rounding.DOWN), 1000)
    as_decimal = D(scaled.numerator) / D(scaled.denominator)
    assert round_fraction(scaled, rule) == round_minor(as_decimal, rule)


# -- fee split ---------------------------------------------------------------------------


def test_split_fee_examples_and_the_leftover_unit_goes_to_the_provider_on_a_tie():
    q = gpu()  # 5%
    assert split_fee(q, 100) == (95, 5)
    assert split_fee(q, 10) == (10, 0)  # 9.5 / 0.5: a tie, the provider gets it
    assert split_fee(q, 30) == (29, 1)  # 28.5 / 1.5: a tie again, provider again
    assert split_fee(q, 19) == (18, 1)  # 18.05 / 0.95: the larger remainder wins
    assert split_fee(q, 0) == (0, 0)


@given(st.integers(min_value=0, max_value=2**63 - 1),
       st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False))
def test_split_fee_always_sums_to_the_amount(amount: int, fee: D):
    q = gpu(make_book(platform_fee_percent=fee))
    provider, platform = split_fee(q, amount)
    assert provider + platform == amount
    assert provider >= 0 and platform >= 0
    # Never more than one unit away from the exact fee.
    assert abs(Fraction(platform) - Fraction(amount) * Fraction(fee) / 100) < 1


# -- bad input, each with its code ----------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "error", "code"), [
    ({"vram_gb_requested": 0}, InvalidVram, "invalid_vram"),
    ({"vram_gb_requested": -4}, InvalidVram, "invalid_vram"),
    ({"vram_gb_requested": 25}, InvalidVram, "invalid_vram"),
    ({"vram_gb_total": 0, "vram_gb_requested": 0}, InvalidVram, "invalid_vram"),
    ({"vram_gb_requested": True}, InvalidVram, "invalid_vram"),
    ({"gpu_model": "amd_mi300"}, GpuModelNotPriced, "gpu_model_not_priced"),
    ({"watts": -1}, InvalidPower, "invalid_power"),
    ({"utilisation": D("1.01")}, InvalidUtilisation, "invalid_utilisation"),
    ({"utilisation": D("-0.1")}, InvalidUtilisation, "invalid_utilisation"),
    ({"utilisation": 0.5}, InvalidUtilisation, "invalid_utilisation"),
    ({"provider_min_hourly": D("-1")}, InvalidRate, "invalid_rate"),
    ({"provider_min_hourly": D("0.1234567890123456789")}, InvalidRate, "invalid_rate"),
])
def test_bad_quote_inputs(kwargs, error, code):
    with pytest.raises(error) as exc:
        gpu(**kwargs)
    assert exc.value.code == code and exc.value.status == 422


def test_bad_cost_inputs():
    q = gpu()
    with pytest.raises(TierNotPriced) as t:
        quote_tier(make_book(), "M9")
    assert t.value.code == "tier_not_priced"
    with pytest.raises(InvalidDuration) as d:
        billable_seconds(q, -1)
    assert d.value.code == "invalid_duration"
    with pytest.raises(InvalidDuration):
        cost_minor(q, 6, seconds=1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidEnergy) as e:
        cost_minor(q, 6, seconds=1, energy_wh=D("-1"))
    assert e.value.code == "invalid_energy"
    with pytest.raises(InvalidAmount):
        split_fee(q, -1)
    with pytest.raises(ValueError):
        cost_minor(q, 19, seconds=1)


# -- price-book parsing ---------------------------------------------------------------------


def test_price_book_round_trips_through_its_dict():
    book = make_book()
    assert PriceBook.from_dict(json.loads(json.dumps(book.to_dict()))) == book


def test_price_book_validation_reports_every_bad_field():
    with pytest.raises(InvalidPriceBook) as exc:
        parse_book({
            "version": 0,
            "asset": "dgpu",
            "base_rates": {"nvidia_a100": "-1", "nvidia_h100": "0.0000000000000000001", "x": 2.5},
            "tier_rates": {"M2": {"asset": "SOL", "hourly": "abc"}},
            "platform_fee_percent": "100.5",
            "minimum_session_minutes": -1,
            "granularity": "hour",
            "rounding": "banker",
            "demand_curve": [["0.5", "1"], ["0.4", "1.2"], ["1.5", "2"], ["1"]],
            "colour": "blue",
        })
    fields = {e["field"]: e["code"] for e in exc.value.extra["errors"]}
    assert exc.value.code == "invalid_price_book" and exc.value.status == 422
    assert fields == {
        "colour": "unknown_field",
        "version": "invalid_version",
        "asset": "invalid_asset",
        "base_rates.nvidia_a100": "invalid_rate",
        "base_rates.nvidia_h100": "invalid_rate",
        "base_rates.x": "invalid_rate",
        "tier_rates.M2.hourly": "invalid_rate",
        "platform_fee_percent": "invalid_fee",
        "minimum_session_minutes": "invalid_minimum",
        "granularity": "invalid_granularity",
        "rounding": "invalid_rounding",
        "demand_curve.1.0": "invalid_curve",
        "demand_curve.2.0": "invalid_curve",
        "demand_curve.3": "invalid_curve",
    }


def test_engine_errors_are_meterline_errors():
    assert issubclass(InvalidPriceBook, MeterlineError)
