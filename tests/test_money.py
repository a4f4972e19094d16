"""Exact money: parsing, formatting, rounding and allocation, checked by properties.

Every expectation here is computed independently of `meterline.money` — with
`fractions.Fraction` or plain integer arithmetic — so a test can only pass if the
code is exact.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from meterline.errors import AmountNotPositive, AmountOverflow, AmountPrecision, InvalidAmount
from meterline.money import (
    MAX_AMOUNT,
    MAX_SCALE,
    STANDARD_ASSETS,
    Asset,
    Rounding,
    allocate,
    format_amount,
    parse_amount,
    round_minor,
    to_decimal,
    to_major,
)

scales = st.integers(min_value=0, max_value=MAX_SCALE)
positive_minor = st.integers(min_value=1, max_value=MAX_AMOUNT)
# Small, large and boundary amounts all get drawn often.
amounts = st.one_of(
    st.integers(min_value=1, max_value=10_000),
    positive_minor,
    st.sampled_from([1, 9, 10, 99, 100, 10**18, MAX_AMOUNT - 1, MAX_AMOUNT]),
)

USD = Asset("USD", 2, "fiat")


def _text(minor: int, scale: int) -> str:
    """Independent formatter: minor units → major-unit string via integer arithmetic."""
    digits = str(minor).rjust(scale + 1, "0")
    return digits if scale == 0 else f"{digits[:-scale]}.{digits[-scale:]}"


# -- parse / format round trips ----------------------------------------------------------


@given(minor=amounts, scale=scales)
@example(minor=MAX_AMOUNT, scale=0)
@example(minor=MAX_AMOUNT, scale=18)
@example(minor=1, scale=18)
def test_format_then_parse_round_trips(minor, scale):
    text = format_amount(minor, scale)
    assert text == _text(minor, scale)
    assert Fraction(text) == Fraction(minor, 10**scale)
    assert parse_amount(text, scale) == minor
    # The same value as a Decimal (a JSON number parsed with parse_float=Decimal).
    assert parse_amount(Decimal(text), scale) == minor


@given(minor=amounts, scale=scales, extra_zeros=st.integers(min_value=0, max_value=6))
def test_trailing_zeros_are_accepted_and_do_not_change_the_value(minor, scale, extra_zeros):
    text = format_amount(minor, scale)
    padded = text + ("" if scale else ".") + "0" * extra_zeros if extra_zeros else text
    assert parse_amount(padded, scale) == minor


@given(whole=st.integers(min_value=0, max_value=10**9), scale=scales)
def test_integers_and_whole_strings_are_major_units(whole, scale):
    assume(whole * 10**scale <= MAX_AMOUNT)
    if whole == 0:
        assert parse_amount(whole, scale, allow_zero=True) == 0
        return
    assert parse_amount(whole, scale) == whole * 10**scale
    assert parse_amount(str(whole), scale) == whole * 10**scale


@given(minor=st.integers(min_value=-MAX_AMOUNT, max_value=MAX_AMOUNT), scale=scales)
def test_format_is_canonical_with_exactly_scale_decimals(minor, scale):
    text = format_amount(minor, scale)
    sign = "-" if minor < 0 else ""
    assert text == sign + _text(abs(minor), scale)
    if scale:
        assert len(text.split(".")[1]) == scale
    else:
        assert "." not in text


def test_examples_from_the_design():
    assert parse_amount("1.50", 2) == 150
    assert parse_amount("1.5", 2) == 150
    assert USD.parse("1.50") == 150 and USD.format(150) == "1.50"
    sol = next(a for a in STANDARD_ASSETS if a.code == "SOL")
    assert sol.parse("0.0000042") == 4200
    assert sol.format(4200) == "0.000004200"
    assert parse_amount("0.000000001", 9) == 1
    assert format_amount(0, 2) == "0.00"
    assert format_amount(5, 0) == "5"
    assert format_amount(-5, 2) == "-0.05"
    # Exponent notation is a valid JSON number; it is read exactly.
    assert parse_amount("1e3", 2) == 100_000
    assert parse_amount("15E-1", 2) == 150
    assert parse_amount("+1", 2) == 100
    assert parse_amount(".5", 2) == 50


# -- precision: rejected, never rounded ------------------------------------------------


@given(minor=amounts, scale=st.integers(min_value=0, max_value=MAX_SCALE - 1),
       tail=st.integers(min_value=1, max_value=9))
def test_one_digit_too_many_is_rejected_not_rounded(minor, scale, tail):
    text = format_amount(minor, scale) + ("" if scale else ".") + str(tail)
    with pytest.raises(AmountPrecision):
        parse_amount(text, scale)
    with pytest.raises(AmountPrecision):
        parse_amount(Decimal(text), scale)


@given(scale=scales, significant=st.integers(min_value=55, max_value=80))
def test_precision_beyond_the_decimal_context_is_still_rejected(scale, significant):
    # "1.000…0001" with more digits than any Decimal context holds: normalising it
    # would round to 1 and accept it. It must be refused.
    value = Decimal("1." + "0" * (significant - 2) + "1")
    with pytest.raises(AmountPrecision):
        parse_amount(value, scale)


def test_long_precise_string_is_rejected_not_rounded():
    text = "1." + "0" * 61 + "1"  # 64 characters, 63 significant digits
    assert len(text) == 64
    with pytest.raises(AmountPrecision):
        parse_amount(text, 2)
    with pytest.raises(AmountPrecision):
        parse_amount("0.001", 2)
    with pytest.raises(AmountPrecision):
        parse_amount("1.5", 0)
    with pytest.raises(AmountPrecision):
        parse_amount("1e-19", 18)


# -- rejection classes -------------------------------------------------------------------


@given(minor=amounts, scale=scales)
def test_negatives_are_rejected_as_not_positive(minor, scale):
    text = "-" + format_amount(minor, scale)
    with pytest.raises(AmountNotPositive):
        parse_amount(text, scale)
    with pytest.raises(AmountNotPositive):
        parse_amount(Decimal(text), scale)
    with pytest.raises(AmountNotPositive):
        parse_amount(-minor, scale)


@pytest.mark.parametrize("zero", ["0", "0.00", "-0", "0E+100", "0e-50", 0, Decimal("0"), Decimal("-0.0")])
def test_zero_is_rejected_unless_allowed(zero):
    with pytest.raises(AmountNotPositive):
        parse_amount(zero, 2)
    assert parse_amount(zero, 2, allow_zero=True) == 0


@pytest.mark.parametrize(
    "bad",
    ["NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf", Decimal("NaN"), Decimal("sNaN"),
     Decimal("Infinity"), Decimal("-Infinity")],
)
def test_nan_and_infinity_are_invalid(bad):
    with pytest.raises(InvalidAmount):
        parse_amount(bad, 2)


@pytest.mark.parametrize("bad", [1.5, 0.1, 1.0, float("nan"), float("inf"), True, False])
def test_floats_and_bools_are_refused(bad):
    with pytest.raises(InvalidAmount):
        to_decimal(bad)
    with pytest.raises(InvalidAmount):
        parse_amount(bad, 2)


@pytest.mark.parametrize(
    "bad",
    ["", " ", " 1", "1 ", "1.2.3", "abc", "1,50", "1_000", "0x10", "١", "٣.5", "１", "1e", "e3",
     ".", "-", "+-1", "1..0", "--1", "1 000", "12a", "\t1", "1\n", "Ⅻ", "1" * 65,
     None, [], {}, b"1", object()],
)
def test_garbage_is_invalid(bad):
    with pytest.raises(InvalidAmount):
        parse_amount(bad, 2)


@given(text=st.text(max_size=20))
def test_arbitrary_text_parses_exactly_or_raises_a_domain_error(text):
    try:
        minor = parse_amount(text, 6, allow_zero=True)
    except (InvalidAmount, AmountPrecision, AmountNotPositive, AmountOverflow):
        return
    assert Fraction(text) * 10**6 == minor


# -- 64-bit overflow ----------------------------------------------------------------------


@given(scale=scales, excess=st.integers(min_value=1, max_value=10**30))
def test_beyond_64_bits_is_rejected(scale, excess):
    minor = MAX_AMOUNT + excess
    text = _text(minor, scale)
    with pytest.raises(AmountOverflow):
        parse_amount(text, scale)
    with pytest.raises(AmountOverflow):
        parse_amount(Decimal(text), scale)


@pytest.mark.parametrize("huge", ["1e41", "1e100", Decimal("9E+999999"), 10**100, "9" * 60])
def test_huge_values_overflow(huge):
    with pytest.raises(AmountOverflow):
        parse_amount(huge, 2)


def test_overflow_boundary_per_scale():
    for scale in range(MAX_SCALE + 1):
        assert parse_amount(_text(MAX_AMOUNT, scale), scale) == MAX_AMOUNT
        with pytest.raises(AmountOverflow):
            parse_amount(_text(MAX_AMOUNT + 1, scale), scale)


# -- to_major -----------------------------------------------------------------------------


@given(minor=st.integers(min_value=-MAX_AMOUNT, max_value=MAX_AMOUNT), scale=scales)
def test_to_major_is_exact(minor, scale):
    major = to_major(minor, scale)
    assert isinstance(major, Decimal)
    assert Fraction(major) == Fraction(minor, 10**scale)
    if minor > 0:
        assert parse_amount(major, scale) == minor
        assert parse_amount(str(major), scale) == minor


# -- round_minor --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rule", "expected"),
    [
        # .5 ties
        ("2.5", Rounding.HALF_UP, 3),
        ("3.5", Rounding.HALF_UP, 4),
        ("-2.5", Rounding.HALF_UP, -3),  # half away from zero
        ("2.5", Rounding.HALF_EVEN, 2),
        ("3.5", Rounding.HALF_EVEN, 4),
        ("-2.5", Rounding.HALF_EVEN, -2),
        ("-3.5", Rounding.HALF_EVEN, -4),
        ("2.5", Rounding.UP, 3),
        ("-2.5", Rounding.UP, -2),  # towards +infinity
        ("2.5", Rounding.DOWN, 2),
        ("-2.5", Rounding.DOWN, -2),  # towards zero
        ("2.5", Rounding.FLOOR, 2),
        ("-2.5", Rounding.FLOOR, -3),
        # just off the tie
        ("2.4999999999999999999999999999999", Rounding.HALF_UP, 2),
        ("2.5000000000000000000000000000001", Rounding.HALF_EVEN, 3),
        ("-2.5000000000000000000000000000001", Rounding.HALF_UP, -3),
        # a started unit is billed by UP, dropped by DOWN and FLOOR
        ("0.000000000000000001", Rounding.UP, 1),
        ("0.000000000000000001", Rounding.DOWN, 0),
        ("0.000000000000000001", Rounding.FLOOR, 0),
        ("0.000000000000000001", Rounding.HALF_UP, 0),
        ("-0.000000000000000001", Rounding.UP, 0),
        ("-0.000000000000000001", Rounding.FLOOR, -1),
        ("0.9999", Rounding.DOWN, 0),
        ("-0.9999", Rounding.DOWN, 0),
        # integers are unchanged by every rule
        ("7", Rounding.HALF_UP, 7),
        ("-7", Rounding.UP, -7),
        ("7.000", Rounding.FLOOR, 7),
        # large exact values do not lose digits
        ("9223372036854775806.5", Rounding.HALF_UP, MAX_AMOUNT),
        ("9223372036854775806.5", Rounding.HALF_EVEN, MAX_AMOUNT - 1),
        ("123456789012345678901234567890.5", Rounding.HALF_UP, 123456789012345678901234567891),
    ],
)
def test_round_minor_explicit_cases(value, rule, expected):
    assert round_minor(Decimal(value), rule) == expected


def test_round_minor_defaults_to_half_up():
    assert round_minor(Decimal("0.5")) == 1
    assert round_minor(Decimal("1.5")) == 2


def _reference_round(q: Fraction, rule: Rounding) -> int:
    floor = q.numerator // q.denominator
    frac = q - floor
    if frac == 0:
        return floor
    ceil = floor + 1
    match rule:
        case Rounding.UP:
            return ceil
        case Rounding.FLOOR:
            return floor
        case Rounding.DOWN:
            return floor if q > 0 else ceil
        case Rounding.HALF_UP:
            if frac != Fraction(1, 2):
                return ceil if frac > Fraction(1, 2) else floor
            return ceil if q > 0 else floor
        case Rounding.HALF_EVEN:
            if frac != Fraction(1, 2):
                return ceil if frac > Fraction(1, 2) else floor
            return floor if floor % 2 == 0 else ceil
    raise AssertionError(rule)


@given(
    units=st.integers(min_value=-(10**24), max_value=10**24),
    places=st.integers(min_value=0, max_value=18),
    rule=st.sampled_from(list(Rounding)),
)
def test_round_minor_matches_a_reference_and_is_within_one(units, places, rule):
    value = Decimal(units).scaleb(-places)
    exact = Fraction(units, 10**places)
    rounded = round_minor(value, rule)
    assert rounded == _reference_round(exact, rule)
    assert abs(rounded - exact) < 1


# -- allocate -----------------------------------------------------------------------------


def _reference_allocate(total: int, weights: list[Fraction]) -> list[int]:
    wsum = sum(weights, Fraction(0))
    shares = [total * w / wsum for w in weights]
    parts = [s.numerator // s.denominator for s in shares]
    order = sorted(range(len(weights)), key=lambda i: (-(shares[i] - parts[i]), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


weights_int = st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=12).filter(any)
weights_dec = st.lists(
    st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False, allow_infinity=False),
    min_size=1, max_size=12,
).filter(any)


@given(total=st.one_of(st.integers(min_value=0, max_value=1000), st.integers(min_value=0, max_value=MAX_AMOUNT)),
       weights=st.one_of(weights_int, weights_dec))
def test_allocate_sums_to_total_and_is_within_one_of_the_exact_share(total, weights):
    parts = allocate(total, weights)
    assert len(parts) == len(weights)
    assert sum(parts) == total
    assert all(p >= 0 for p in parts)
    ws = [Fraction(w) for w in weights]
    wsum = sum(ws, Fraction(0))
    for part, w in zip(parts, ws, strict=True):
        exact = total * w / wsum
        assert exact - 1 < part < exact + 1
        assert part in (exact.numerator // exact.denominator, -(-exact.numerator // exact.denominator))
        if w == 0:
            assert part == 0
    assert parts == _reference_allocate(total, ws)


@given(total=st.integers(min_value=0, max_value=10**40), weights=weights_dec)
def test_allocate_stays_exact_for_totals_beyond_64_bits(total, weights):
    parts = allocate(total, weights)
    assert sum(parts) == total
    assert parts == _reference_allocate(total, [Fraction(w) for w in weights])


def test_allocate_is_exact_with_precise_weights():
    # Σ weights needs 31 digits; a 28-digit sum made the shares overshoot the total.
    total = 10**40 + 1
    weights = [Decimal(1), Decimal("1e-30"), Decimal(1)]
    parts = allocate(total, weights)
    assert sum(parts) == total
    assert parts == _reference_allocate(total, [Fraction(w) for w in weights])


@given(n=st.integers(min_value=1, max_value=20), total=st.integers(min_value=0, max_value=1000))
def test_allocate_equal_weights_gives_leftover_to_earlier_indexes(n, total):
    parts = allocate(total, [1] * n)
    base, leftover = divmod(total, n)
    assert parts == [base + 1] * leftover + [base] * (n - leftover)


def test_allocate_tie_break_examples():
    assert allocate(100, [1, 1, 1]) == [34, 33, 33]
    assert allocate(2, [1, 1, 1]) == [1, 1, 0]
    assert allocate(1, [1, 1]) == [1, 0]
    # Larger remainder wins over position: 10 * 1/6 = 1.67, 10 * 2/6 = 3.33, 10 * 3/6 = 5
    assert allocate(10, [1, 2, 3]) == [2, 3, 5]
    # Equal remainders at non-adjacent positions: the earlier one wins.
    assert allocate(3, [1, 2, 1, 2]) == [1, 1, 0, 1]
    assert allocate(0, [1, 2]) == [0, 0]
    assert allocate(7, [0, 1, 0]) == [0, 7, 0]
    assert allocate(5, [Decimal("0.5"), Decimal("0.5")]) == [3, 2]
    # A fee / provider / refund split keeps every unit.
    assert allocate(1001, [Decimal("0.10"), Decimal("0.85"), Decimal("0.05")]) == [100, 851, 50]


@given(total=st.integers(min_value=0, max_value=10**6), weights=weights_int)
def test_allocate_is_deterministic(total, weights):
    assert allocate(total, weights) == allocate(total, list(weights))


@pytest.mark.parametrize(
    ("total", "weights"),
    [
        (10, []),
        (10, [0]),
        (10, [0, 0, 0]),
        (10, [1, -1]),
        (10, [Decimal("-0.5"), 2]),
        (-1, [1]),
        (10, [Decimal("NaN")]),
        (10, [Decimal("Infinity"), 1]),
        (10, [0.5, 0.5]),
        (10, [True, 1]),
        (1.5, [1]),
        ("10", [1]),
    ],
)
def test_allocate_rejects_bad_input(total, weights):
    with pytest.raises(ValueError):
        allocate(total, weights)
