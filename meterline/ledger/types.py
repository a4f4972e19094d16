"""Plain values the ledger takes and returns: flags, transfer input, results.

Result codes follow TigerBeetle's names where one exists. `ok` and `exists`
are successes (an identical resubmission returns the stored transfer as
`exists`); every other code means the transfer was not applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntFlag
from typing import Any


class AccountFlags(IntFlag):
    NONE = 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1
    CREDITS_MUST_NOT_EXCEED_DEBITS = 2


class TransferFlags(IntFlag):
    NONE = 0
    PENDING = 1
    POST_PENDING = 2
    VOID_PENDING = 4
    LINKED = 8


ACCOUNT_FLAG_NAMES = {
    "debits_must_not_exceed_credits": AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    "credits_must_not_exceed_debits": AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
}
TRANSFER_FLAG_NAMES = {
    "pending": TransferFlags.PENDING,
    "post_pending": TransferFlags.POST_PENDING,
    "void_pending": TransferFlags.VOID_PENDING,
    "linked": TransferFlags.LINKED,
}


_FLAG_NAMES: dict[tuple[tuple[tuple[str, Any], ...], int], tuple[str, ...]] = {}


def flag_names(value: int, names: dict[str, Any]) -> list[str]:
    # Memoised per (mapping, value): every transfer answer renders its flags, and testing
    # each enum bit costs more than the rest of the rendering.
    key = (tuple(names.items()), value)
    found = _FLAG_NAMES.get(key)
    if found is None:
        found = _FLAG_NAMES[key] = tuple(name for name, bit in names.items() if value & bit)
    return list(found)


class HoldState:
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


# Transfer codes the ledger itself writes.
CODE_EXPIRED = "expired"

SUCCESS = frozenset({"ok", "exists"})


@dataclass(slots=True)
class TransferIn:
    """A transfer as submitted. Amounts are minor units.

    For `post_pending`/`void_pending`, accounts and asset may be omitted (they
    come from the pending transfer) and `amount=None` means the full pending
    amount.
    """

    id: str
    debit_account_id: str | None = None
    credit_account_id: str | None = None
    amount: int | None = None
    asset: str | None = None
    pending_id: str | None = None
    flags: int = 0
    timeout_s: int = 0
    code: str = ""
    reference: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(slots=True)
class StoredTransfer:
    tenant_id: str
    id: str
    seq: int
    debit_account_id: str
    credit_account_id: str
    amount: int
    asset: str
    pending_id: str | None
    flags: int
    timeout_s: int
    code: str
    reference: str | None
    metadata: dict[str, Any] | None
    timestamp: int
    hash: str

    def as_row(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "id": self.id,
            "seq": self.seq,
            "debit_account_id": self.debit_account_id,
            "credit_account_id": self.credit_account_id,
            "amount": self.amount,
            "asset": self.asset,
            "pending_id": self.pending_id,
            "flags": self.flags,
            "timeout_s": self.timeout_s,
            "code": self.code,
            "reference": self.reference,
            "metadata": self.metadata,
            "timestamp": self.timestamp,
            "hash": self.hash,
        }


@dataclass(slots=True)
class TransferResult:
    index: int
    id: str
    result: str
    transfer: StoredTransfer | None = None

    @property
    def ok(self) -> bool:
        return self.result in SUCCESS


@dataclass(slots=True)
class AccountBalance:
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0


@dataclass(slots=True)
class Segment:
    """One caller's batch inside a group commit: linked chains never cross segments."""

    transfers: list[TransferIn]
    system: bool = False
    results: list[TransferResult] = field(default_factory=list)
