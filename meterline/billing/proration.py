"""Proration by the second: the part of a full period's amount that falls after a change.

The rule, in one place: a period of L seconds, a change at second t of it
(elapsed e = t − start, remaining r = end − t), and an item whose full-period
charge is F = quantity × unit price (integer minor units). F is split into the
elapsed part and the remaining part with `money.allocate` (largest remainder),
so the two parts are integers that always sum to exactly F:

- each part first gets the floor of its exact share (F·e/L and F·r/L);
- a leftover cent goes to the part with the larger fraction; on a tie (exactly
  half a cent each) the elapsed part, which comes first, gets it.

A change from quantity a to b credits the remaining part of a's full charge and
charges the remaining part of b's. Because every piece comes from one split of a
whole period's charge, a credit and the charge it undoes are always equal, and a
quantity that stays put for the whole period costs exactly F — no cent appears
or disappears however many times it changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from meterline.money import allocate


@dataclass(frozen=True, slots=True)
class Proration:
    """What a quantity change at one second credits and charges (both ≥ 0, minor units)."""

    credit_minor: int  # the remaining part of the old quantity's full-period charge
    charge_minor: int  # the remaining part of the new quantity's full-period charge
    elapsed_s: int
    remaining_s: int

    @property
    def net_minor(self) -> int:
        return self.charge_minor - self.credit_minor


def _check_period(start_s: int, end_s: int, at_s: int) -> None:
    if end_s <= start_s:
        raise ValueError("a period must be longer than zero seconds")
    if not start_s <= at_s <= end_s:
        raise ValueError("the change must fall inside the period")


def remaining_part(full_minor: int, start_s: int, end_s: int, at_s: int) -> int:
    """The part of `full_minor` (one whole period's charge) for [at_s, end_s)."""
    _check_period(start_s, end_s, at_s)
    return split_period(full_minor, start_s, end_s, [at_s])[1]


def prorate(
    unit_price_minor: int, old_quantity: int, new_quantity: int, start_s: int, end_s: int, at_s: int
) -> Proration:
    """Credit and charge for changing a quantity at `at_s` within [start_s, end_s)."""
    if unit_price_minor < 0 or old_quantity < 0 or new_quantity < 0:
        raise ValueError("prices and quantities are never negative")
    return Proration(
        credit_minor=remaining_part(old_quantity * unit_price_minor, start_s, end_s, at_s),
        charge_minor=remaining_part(new_quantity * unit_price_minor, start_s, end_s, at_s),
        elapsed_s=at_s - start_s,
        remaining_s=end_s - at_s,
    )


def split_period(full_minor: int, start_s: int, end_s: int, cuts_s: Sequence[int]) -> list[int]:
    """`full_minor` split into the pieces between sorted cut seconds, summing to it exactly
    (what a customer would have paid for each stretch of a period at one quantity)."""
    bounds = [start_s, *cuts_s, end_s]
    spans = [later - earlier for earlier, later in pairwise(bounds)]
    if end_s <= start_s or any(span < 0 for span in spans):
        raise ValueError("cuts must be sorted and inside the period")
    return allocate(full_minor, spans)
