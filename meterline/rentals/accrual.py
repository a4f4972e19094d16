"""The one definition of what a rental has cost so far.

The exact accrual is  rate × seconds + power_rate × energy_Wh  (minor units),
taken to a millionth of a minor unit (floor) and then rounded to the minor unit
once by the price book's rule, and never more than what is held in escrow:

    q, r     = divmod(rate_num × seconds, rate_den)        # rate: exact fraction, minor units / s
    frac_e6  = floor(r × 10^6 / rate_den) + power_e6 mod 10^6
    whole    = q + power_e6 div 10^6 + frac_e6 div 10^6
    rem      = frac_e6 mod 10^6                             # millionths left over
    cost     = min(held, whole + round_up(rule, whole, rem))

`power_e6` is the metered power cost in millionths of a minor unit, recomputed
(floored) from the exact energy integral at each sample — never summed from
rounded increments, so it cannot drift. Python (`accrued_minor`) and SQL
(`accrued_minor_sql`, which totals thousands of rentals without a Python loop)
evaluate exactly this integer formula, so a total always equals the sum of the
figures shown. The split into q and r keeps every intermediate inside 64 bits
for any rate that passes `check_rate_fits`.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, case, cast, func, literal

E6 = 1_000_000
NS = 1_000_000_000
# Energy in Wh = energy2_mw_ms / (2 × 1000 mW/W × 3_600_000 ms/h)
ENERGY2_PER_WH = 7_200_000_000
# Locked hourly rates carry at most this many decimals beyond the asset's scale.
RATE_EXTRA_DECIMALS = 3
_SAFE = 2**62


class RateTooLarge(ValueError):
    pass


def lock_rate(hourly_rate: Decimal, scale: int) -> Decimal:
    """The hourly rate a rental is charged: the quote's, to scale+3 decimals (half-up)."""
    return hourly_rate.quantize(Decimal(1).scaleb(-(scale + RATE_EXTRA_DECIMALS)), rounding=ROUND_HALF_UP)


def rate_fraction(locked_hourly: Decimal, scale: int) -> tuple[int, int]:
    """Locked hourly rate (major units) → (num, den): minor units per second, reduced."""
    f = Fraction(locked_hourly) * (10**scale) / 3600
    return f.numerator, f.denominator


def check_rate_fits(rate_num: int, max_seconds: int) -> None:
    """Refuse a rate whose accrual could leave 64-bit integer SQL arithmetic."""
    if rate_num * max(1, max_seconds) > _SAFE:
        raise RateTooLarge("rate × duration is too large to meter exactly")


def power_cost_e6(power_rate_per_wh: Decimal, scale: int, energy2_mw_ms: int) -> int:
    """Metered power cost in millionths of a minor unit, floored, from the exact integral."""
    exact = power_rate_per_wh * (10**scale) * Decimal(energy2_mw_ms) * E6 / ENERGY2_PER_WH
    return int(exact.to_integral_value(rounding=ROUND_FLOOR))


HALF = E6 // 2
UNCAPPED = 2**63 - 1


def _bump(rounding: str, whole: int, rem: int) -> int:
    """1 if the leftover millionths round the whole up under `rounding`, else 0."""
    if rounding == "half_up":
        return int(rem >= HALF)
    if rounding == "half_even":
        return int(rem > HALF or (rem == HALF and whole % 2 == 1))
    if rounding == "up":
        return int(rem > 0)
    return 0  # down, floor: costs are never negative, so both truncate


def accrued_minor(rate_num: int, rate_den: int, seconds: int, power_e6: int, held: int,
                  rounding: str = "half_up") -> int:
    q, r = divmod(rate_num * seconds, rate_den)
    frac_e6 = (r * E6) // rate_den + power_e6 % E6
    whole = q + power_e6 // E6 + frac_e6 // E6
    rem = frac_e6 % E6
    return min(held, whole + _bump(rounding, whole, rem))


def energy2_until(energy2_mw_ms: int, last_power_mw: int | None, last_sample_at: int | None, until_ns: int) -> int:
    """The doubled energy integral (mW·ms) counted up to `until_ns`: the metered trapezoid sum
    plus, from the last power sample on, that sample's draw held constant (2 × p × Δt).

    The tail rule of a pay-as-you-go session: power drawn since the last sample is spent at
    the last draw. The cover counts it (the next sample will charge about that much), and a
    session that ends — or whose device stops reporting — is charged it at settlement. Same
    millisecond grid as the sample fold, so a later sample's trapezoid replaces the tail.
    """
    if not last_power_mw or last_sample_at is None:
        return energy2_mw_ms
    dt_ms = max(0, until_ns // 1_000_000 - last_sample_at // 1_000_000)
    return energy2_mw_ms + 2 * last_power_mw * dt_ms


def elapsed_seconds(started_at: int, now_ns: int, stop_at: int | None) -> int:
    end = now_ns if stop_at is None else min(now_ns, stop_at)
    return max(0, (end - started_at) // NS)


def accrued_minor_sql(rental: Any, now_ns: int, dialect: str) -> ColumnElement[Any]:
    """`accrued_minor` as a SQL expression over the rentals table (integer arithmetic only).

    `//` (SQLAlchemy's floordiv) is integer division on both SQLite and PostgreSQL;
    plain `/` would be true division and silently bring floats in.
    """
    least = func.least if dialect == "postgresql" else func.min
    now = literal(now_ns, BigInteger)
    stop = case((rental.expires_at.is_(None), now), else_=least(now, rental.expires_at))
    raw = (stop - rental.started_at) // NS
    secs = case((raw < 0, 0), else_=raw)
    product = rental.rate_num * secs
    q = product // rental.rate_den
    r = product % rental.rate_den
    frac_e6 = (r * E6) // rental.rate_den + rental.power_cost_e6 % E6
    whole = q + rental.power_cost_e6 // E6 + frac_e6 // E6
    rem = frac_e6 % E6
    bump = case(
        (rental.rounding == "half_up", case((rem >= HALF, 1), else_=0)),
        (rental.rounding == "half_even",
         case((rem > HALF, 1), ((rem == HALF) & (whole % 2 == 1), 1), else_=0)),
        (rental.rounding == "up", case((rem > 0, 1), else_=0)),
        else_=0,
    )
    return cast(least(rental.held_minor, whole + bump), BigInteger)
