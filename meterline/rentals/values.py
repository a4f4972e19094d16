"""What the rentals service hands back and reads: the accrual, extension and settlement
results, and the protocols of the rows the accrual and the sample rules work on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from meterline.rentals.models import Rental


class AccrualState(Protocol):
    """What the accrual (the running cost) and the status of a rental read.

    A `Rental` row is one; so are the sample batcher's row (sampler.py) and the lean
    primary-key read of a contract's status (reads.py).
    """

    id: str
    status: str
    scale: int
    held_minor: int
    duration_s: int | None
    started_at: int
    expires_at: int | None
    ended_at: int | None
    settled_at: int | None
    used_minor: int | None
    rate_num: int
    rate_den: int
    rounding: str
    power_cost_e6: int


class RentalState(AccrualState, Protocol):
    """What the sample rules and the energy integral also read and write.

    A `Rental` row is one; so is the sample batcher's lighter row (sampler.py), which
    loads only these columns — both go through the same functions below.
    """

    style: str
    quote: dict[str, Any]
    energy2_mw_ms: int
    last_sample_at: int | None
    last_power_mw: int | None
    sample_count: int


@dataclass(frozen=True, slots=True)
class Accrual:
    """What a rental has cost at `at_ns`. A prepaid contract's cost never exceeds what is held
    (cost + refund == held); a pay-as-you-go session's committed cost may run past its holds
    until the worker renews them (settlement then debits the excess from the wallet), and its
    refund is then 0."""

    at_ns: int
    elapsed_s: int
    cost_minor: int
    held_minor: int

    @property
    def refund_minor(self) -> int:
        return max(0, self.held_minor - self.cost_minor)


@dataclass(frozen=True, slots=True)
class ExtendResult:
    rental: Rental
    added_seconds: int
    added_minor: int  # held for the extension
    cost_minor: int | None = None  # its price, where it is less than what was held (an overpayment)


@dataclass(frozen=True, slots=True)
class Settlement:
    rental: Rental
    used_minor: int  # collected: posted from the holds plus debited from the wallet beyond them
    refund_minor: int
    provider_minor: int
    fee_minor: int
    refund_tx: str | None
    unpaid_minor: int = 0  # the cost the wallet could not pay (pay-as-you-go only)

    @property
    def cost_minor(self) -> int:
        """What the rental cost: collected + unpaid."""
        return self.used_minor + self.unpaid_minor
