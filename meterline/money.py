"""Exact money: assets, parsing, formatting, rounding and allocation.

Amounts are integers in an asset's minor unit (lamports for SOL, cents for USD).
Nothing here ever touches a float: wire amounts are decimal strings or JSON
numbers that the API parsed as `Decimal` (``json.loads(..., parse_float=Decimal)``).
More precision than the asset carries is refused (`AmountPrecision`), never
rounded away; rounding happens only in `round_minor`, by a named rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import (
    ROUND_CEILING,
    ROUND_DOWN,
    ROUND_FLOOR,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    Context,
    Decimal,
    InvalidOperation,
)
from enum import StrEnum
from fractions import Fraction

from meterline.errors import AmountNotPositive, AmountOverflow, AmountPrecision, InvalidAmount

# Amounts are stored as signed 64-bit integers; every sum is checked against this.
MAX_AMOUNT = 2**63 - 1
MAX_SCALE = 18

# Enough digits for any 64-bit amount at any scale, so no operation here rounds by accident.
_CTX = Context(prec=60, traps=[InvalidOperation])
# The only text a wire amount may be: ASCII digits, one optional point, an optional exponent.
# `Decimal()` alone also takes "1_000", non-ASCII digits ("٣") and "NaN"/"Infinity".
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True, slots=True)
class Asset:
    code: str
    scale: int
    kind: str = "token"

    def parse(self, value: str | int | Decimal, *, allow_zero: bool = False) -> int:
        return parse_amount(value, self.scale, allow_zero=allow_zero)

    def format(self, minor: int) -> str:
        return format_amount(minor, self.scale)


# The demo/standard set seeded into every new tenant.
STANDARD_ASSETS: tuple[Asset, ...] = (
    Asset("SOL", 9, "crypto"),
    Asset("USDC", 6, "crypto"),
    Asset("USD", 2, "fiat"),
    Asset("DGPU", 6, "token"),
    Asset("AITBC", 6, "token"),
    Asset("BTC", 8, "crypto"),
)


class Rounding(StrEnum):
    """Named rounding rules. A price book names one; the default is half-up."""

    HALF_UP = "half_up"
    HALF_EVEN = "half_even"
    UP = "up"  # towards +infinity (ceiling): bill a started unit
    DOWN = "down"  # towards zero (truncate)
    FLOOR = "floor"


_ROUNDING = {
    Rounding.HALF_UP: ROUND_HALF_UP,
    Rounding.HALF_EVEN: ROUND_HALF_EVEN,
    Rounding.UP: ROUND_CEILING,
    Rounding.DOWN: ROUND_DOWN,
    Rounding.FLOOR: ROUND_FLOOR,
}


def to_decimal(value: str | int | Decimal) -> Decimal:
    """A finite Decimal from a wire value, or `InvalidAmount`.

    Floats are refused outright: one reaching here means a JSON parser was not
    told to use Decimal, which is a bug to surface, not to paper over.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidAmount(f"amount must be a decimal string or exact number, not {type(value).__name__}")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 64 or text != value or not _DECIMAL_TEXT.fullmatch(text):
            raise InvalidAmount(f"{value!r} is not a decimal amount")
        try:
            d = Decimal(text)
        except InvalidOperation:
            raise InvalidAmount(f"{value!r} is not a decimal amount") from None
    else:
        raise InvalidAmount(f"amount must be a decimal string, not {type(value).__name__}")
    if not d.is_finite():
        raise InvalidAmount(f"{value!r} is not a finite amount")
    return d


def parse_amount(value: str | int | Decimal, scale: int, *, allow_zero: bool = False) -> int:
    """Major-unit decimal → minor-unit integer, exactly, or a domain error.

    Rejects: non-numbers, NaN/Infinity, more fractional digits than `scale`
    (after dropping trailing zeros, so "1.50" is fine for USD), negatives,
    zero unless `allow_zero`, and anything beyond 64 bits.
    """
    d = to_decimal(value)
    if d.is_zero():
        minor = Decimal(0)  # "0E+100" is zero, not an overflow
    else:
        # Exponent with trailing zeros dropped, computed without a context: `normalize()`
        # rounds to the context precision, which silently rounded "1.000…0001" (60+ digits).
        _, digits, exponent = d.as_tuple()
        assert isinstance(exponent, int)  # finite, checked by to_decimal
        significant = len(digits)
        while significant > 1 and digits[significant - 1] == 0:
            significant -= 1
        if -(exponent + len(digits) - significant) > scale:
            raise AmountPrecision(f"{value} has more than {scale} decimal places")
        if d.adjusted() > 40:
            raise AmountOverflow(f"{value} is too large")
        minor = d.scaleb(scale, _CTX)  # ≤ 41 + scale significant digits: exact at prec 60
    if minor != minor.to_integral_value():
        raise AmountPrecision(f"{value} has more than {scale} decimal places")
    result = int(minor)
    if result < 0:
        raise AmountNotPositive(f"{value} is negative")
    if result == 0 and not allow_zero:
        raise AmountNotPositive("amount must be greater than zero")
    if result > MAX_AMOUNT:
        raise AmountOverflow(f"{value} does not fit in 64 bits of minor units")
    return result


def format_amount(minor: int, scale: int) -> str:
    """Minor units → canonical major-unit string with exactly `scale` decimals."""
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**scale)
    if scale == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{scale}d}"


def to_major(minor: int, scale: int) -> Decimal:
    """Minor units → exact Decimal in major units (for JSON-number profiles)."""
    return Decimal(minor).scaleb(-scale, _CTX)


def round_minor(value: Decimal, rounding: Rounding = Rounding.HALF_UP) -> int:
    """Round an exact minor-unit Decimal (e.g. a computed cost) to an integer by a named rule."""
    return int(value.quantize(Decimal(1), rounding=_ROUNDING[rounding], context=_CTX))


def allocate(total: int, weights: Sequence[int | Decimal]) -> list[int]:
    """Split `total` minor units by `weights` with the largest-remainder method.

    The parts always sum to `total`. Each part first gets the floor of its exact
    share; the leftover units go one each to the largest fractional remainders,
    ties broken by position (earlier weight first) — so the result is
    deterministic and documented. Weights must be non-negative, not all zero.
    """
    if isinstance(total, bool) or not isinstance(total, int):
        raise ValueError("total must be an integer number of minor units")
    if total < 0:
        raise ValueError("total must be non-negative")
    if any(isinstance(w, bool) or not isinstance(w, int | Decimal) for w in weights):
        raise ValueError("weights must be integers or Decimals")
    if any(isinstance(w, Decimal) and not w.is_finite() for w in weights):
        raise ValueError("weights must be finite")
    # Exact rational arithmetic: a Decimal context (and `sum()`'s default 28 digits)
    # rounded shares, so the floors could exceed the total for large totals or precise weights.
    ws = [Fraction(w) for w in weights]
    if not ws or any(w < 0 for w in ws):
        raise ValueError("weights must be non-negative")
    wsum = sum(ws, Fraction(0))
    if wsum == 0:
        raise ValueError("weights must not all be zero")
    parts: list[int] = []
    remainders: list[tuple[Fraction, int]] = []
    for i, w in enumerate(ws):
        exact = total * w / wsum
        floor = exact.numerator // exact.denominator
        parts.append(floor)
        remainders.append((exact - floor, i))
    leftover = total - sum(parts)
    # Largest remainder first; on equal remainders the earlier index wins.
    for _, i in sorted(remainders, key=lambda r: (-r[0], r[1]))[:leftover]:
        parts[i] += 1
    return parts
