"""Monthly billing periods: pure calendar arithmetic in whole UTC seconds.

A subscription's period k runs from ``add_months(anchor, k)`` to
``add_months(anchor, k + 1)``. A day the month lacks is clamped to its last day
(an anchor on 31 January gives 28/29 February), and — because each boundary is
computed from the anchor, not from the previous boundary — March comes back to
the 31st, as in Stripe.
"""

from __future__ import annotations

from calendar import monthrange
from datetime import UTC, datetime

NS = 1_000_000_000


def add_months(anchor_s: int, months: int) -> int:
    """The instant `months` calendar months after `anchor_s` (Unix seconds, UTC)."""
    dt = datetime.fromtimestamp(anchor_s, tz=UTC)
    index = dt.year * 12 + (dt.month - 1) + months
    year, month0 = divmod(index, 12)
    day = min(dt.day, monthrange(year, month0 + 1)[1])
    return int(dt.replace(year=year, month=month0 + 1, day=day).timestamp())


def period_bounds_ns(anchor_ns: int, index: int) -> tuple[int, int]:
    """[start, end) of period `index` in nanoseconds; the anchor must be a whole second."""
    anchor_s = anchor_ns // NS
    return add_months(anchor_s, index) * NS, add_months(anchor_s, index + 1) * NS


def whole_second(ns: int) -> int:
    """Truncate to the second: periods and prorations are counted in whole seconds."""
    return ns - ns % NS
