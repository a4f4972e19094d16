"""Wallets: per-owner, per-asset balances on top of the ledger.

A wallet is a ledger account (kind ``customer_wallet``, flag
``debits_must_not_exceed_credits``) with a deterministic id, so finding it is
a primary-key lookup and creating it twice is a no-op. The platform's own
accounts (escrow, fees, revenue, treasury and one ``external:<rail>`` account
per rail standing for the outside world) are created the same way.

Money enters through `deposit` (a verified payment proof, claimed once in the
payments inbox, then external:<rail> → wallet) and leaves through `withdraw`
(a hold on the wallet, the rail's send, then the hold posted to
external:<rail>). Everything happens in the caller's transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from meterline.clock import Clock
from meterline.errors import (
    AmountNotPositive,
    AmountOverflow,
    Conflict,
    IdempotencyConflict,
    InvalidAmount,
    MeterlineError,
    NotFound,
)
from meterline.events.outbox import amount, emit
from meterline.ledger.models import Account, Hold, Transfer
from meterline.ledger.service import AccountCreate, Page, ledger_service
from meterline.ledger.types import (
    AccountFlags,
    HoldState,
    TransferFlags,
    TransferIn,
    TransferResult,
)
from meterline.money import MAX_AMOUNT
from meterline.payments.rails import SIMULATION_MODE, get_rail
from meterline.payments.service import payment_service

# -- errors -------------------------------------------------------------------------


class WalletError(MeterlineError):
    code = "wallet_error"


class WalletNotFound(WalletError, NotFound):
    code = "wallet_not_found"
    title = "No such wallet"


class InvalidWalletOwner(WalletError):
    status = 422
    code = "invalid_wallet_owner"
    title = "The wallet owner is not valid"


class InsufficientFunds(WalletError):
    status = 402
    code = "insufficient_funds"
    title = "The balance does not cover this amount"


class InvalidWithdrawal(WalletError):
    status = 422
    code = "invalid_withdrawal"
    title = "The withdrawal request is not valid"


class WithdrawalNotCompleted(WalletError, Conflict):
    code = "withdrawal_not_completed"
    title = "A withdrawal with this idempotency id was started and did not complete"


class TransferRejected(WalletError, Conflict):
    """The ledger refused a transfer for a reason the caller could not have prevented."""

    code = "transfer_rejected"
    title = "The ledger rejected the transfer"


# -- values -------------------------------------------------------------------------

SYSTEM_KINDS = frozenset({
    "external:simulation", "external:solana", "external:stripe",
    "escrow", "platform_fees", "platform_revenue", "treasury",
})
# Accounts that hold money for someone must never go negative. External accounts mirror
# the outside world (their balance is minus what came in) and the treasury may front
# funds, so those carry no limit.
_NON_NEGATIVE = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_UNLIMITED_KINDS = frozenset({"external:simulation", "external:solana", "external:stripe", "treasury"})
_MAX_ID = 64
_IDEMPOTENCY_ID_MAX = 100


@dataclass(frozen=True, slots=True)
class WalletBalance:
    """Minor units. posted = credits_posted - debits_posted; pending = debits_pending
    (held, e.g. in escrow or a withdrawal in flight); available = posted - pending."""

    asset: str
    scale: int
    posted: int
    pending: int
    available: int


@dataclass(frozen=True, slots=True)
class Deposit:
    transfer_id: str
    account_id: str
    owner_type: str
    owner_id: str
    asset: str
    amount_minor: int
    rail: str
    proof: str
    simulated: bool


@dataclass(frozen=True, slots=True)
class Withdrawal:
    id: str  # the caller's idempotency id
    hold_transfer_id: str
    transfer_id: str  # the posting that completed it
    account_id: str
    owner_type: str
    owner_id: str
    asset: str
    amount_minor: int
    rail: str
    destination: str
    tx_signature: str
    simulated: bool


@dataclass(frozen=True, slots=True)
class WalletEntry:
    """One ledger transfer as seen from the wallet: `amount_minor` is signed (+ in, − out)."""

    transfer_id: str
    seq: int
    timestamp_ns: int
    amount_minor: int
    asset: str
    status: str  # posted | pending (a hold) | voided (a hold released)
    code: str
    reference: str | None
    counterparty_account_id: str
    metadata: dict[str, Any] | None


def owned_account_id(prefix: str, owner_type: str, owner_id: str, asset: str) -> str:
    """Deterministic ≤64-char id. Readable when it fits; otherwise a hash of the parts.

    Readable ids have at least three ':' (owner_type and asset contain none); hashed ids
    have exactly two, so the two forms can never collide. The account also stores
    owner_type/owner_id, and re-creating it with other owners fails loudly.
    """
    readable = f"{prefix}:{owner_type}:{owner_id}:{asset}"
    if len(readable) <= _MAX_ID:
        return readable
    digest = hashlib.sha256(f"{owner_type}\x00{owner_id}".encode()).hexdigest()
    return f"{prefix}:{digest[:_MAX_ID - len(prefix) - len(asset) - 2]}:{asset}"


def _check_owner(owner_type: str, owner_id: str) -> None:
    if not owner_type or len(owner_type) > 40 or ":" in owner_type or not owner_type.isascii():
        raise InvalidWalletOwner("owner_type must be 1-40 ASCII characters without ':'")
    # Printable and unpadded: a wallet named "   " or "alice\n" is a client's bug, not an owner.
    if not owner_id or len(owner_id) > 128 or not owner_id.isprintable() or owner_id.strip() != owner_id:
        raise InvalidWalletOwner("owner_id must be 1-128 printable characters without surrounding spaces")


def check_amount(amount_minor: int) -> None:
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise InvalidAmount("amount must be an integer number of minor units")
    if amount_minor <= 0:
        raise AmountNotPositive("amount must be greater than zero")
    if amount_minor > MAX_AMOUNT:
        raise AmountOverflow("amount does not fit in 64 bits of minor units")


def raise_for_result(result: TransferResult, what: str) -> None:
    """Map a failed ledger result to the domain error a caller can act on."""
    if result.ok:
        return
    if result.result == "exceeds_credits":
        raise InsufficientFunds(f"the balance does not cover this {what}")
    if result.result.startswith("exists_with_different") or result.result == "idempotency_conflict":
        raise IdempotencyConflict(f"{what} {result.id} already exists with different fields")
    raise TransferRejected(f"the ledger rejected the {what}: {result.result}", result=result.result)


class WalletService:
    # -- accounts -----------------------------------------------------------------
    def wallet_account(
        self, session: Session, tenant_id: str, *, owner_type: str, owner_id: str, asset: str, now_ns: int,
        create: bool = True,
    ) -> Account:
        """The one customer wallet of this owner in this asset (created on first use)."""
        _check_owner(owner_type, owner_id)
        spec = AccountCreate(asset=asset, kind="customer_wallet", id=owned_account_id("wal", owner_type, owner_id, asset),
                             owner_type=owner_type, owner_id=owner_id, flags=_NON_NEGATIVE)
        if not create:
            row = session.get(Account, (tenant_id, spec.id))
            if row is None:
                raise WalletNotFound(f"{owner_type} {owner_id} has no {asset} wallet")
            return ledger_service.same_account(row, spec)
        return self._ensure(session, tenant_id, spec, now_ns)

    def provider_earnings_account(
        self, session: Session, tenant_id: str, provider_id: str, asset: str, now_ns: int
    ) -> Account:
        _check_owner("provider", provider_id)
        return self._ensure(session, tenant_id, AccountCreate(
            asset=asset, kind="provider_earnings", id=owned_account_id("earn", "provider", provider_id, asset),
            owner_type="provider", owner_id=provider_id, flags=_NON_NEGATIVE), now_ns)

    def system_account(self, session: Session, tenant_id: str, kind: str, asset: str, now_ns: int) -> Account:
        """A platform account: escrow, platform_fees, platform_revenue, treasury, external:<rail>."""
        if kind not in SYSTEM_KINDS:
            raise ValueError(f"unknown system account kind {kind!r}")
        flags = 0 if kind in _UNLIMITED_KINDS else _NON_NEGATIVE
        return self._ensure(session, tenant_id, AccountCreate(asset=asset, kind=kind, id=f"sys:{kind}:{asset}",
                                                              flags=flags), now_ns)

    def external_account(self, session: Session, tenant_id: str, rail: str, asset: str, now_ns: int) -> Account:
        return self.system_account(session, tenant_id, f"external:{rail}", asset, now_ns)

    @staticmethod
    def _ensure(session: Session, tenant_id: str, spec: AccountCreate, now_ns: int) -> Account:
        # Created, or found — and then checked to be the account Meterline would create: one
        # with other flags (a wallet without its non-negative flag) is never adopted (409).
        row, _ = ledger_service.create_account(session, tenant_id, spec, now_ns)
        return row

    # -- reads --------------------------------------------------------------------
    def balance(self, session: Session, tenant_id: str, owner_type: str, owner_id: str, asset: str) -> WalletBalance:
        scale = ledger_service.get_asset(session, tenant_id, asset).scale
        _check_owner(owner_type, owner_id)
        # populate_existing: the ledger engine writes balances with driver SQL, so an Account
        # already in this session's identity map would show the balance before the posting.
        row = session.get(Account, (tenant_id, owned_account_id("wal", owner_type, owner_id, asset)),
                          populate_existing=True)
        if row is None:
            return WalletBalance(asset, scale, 0, 0, 0)
        return account_balance(row, scale)

    def history(
        self, session: Session, tenant_id: str, owner_type: str, owner_id: str, asset: str,
        after_seq: int | None = None, limit: int = 100,
    ) -> Page:
        """The wallet's transfers in ledger order, as `WalletEntry` items; cursor = last seq."""
        _check_owner(owner_type, owner_id)
        acc_id = owned_account_id("wal", owner_type, owner_id, asset)
        if session.get(Account, (tenant_id, acc_id)) is None:
            return Page([], None)
        page = ledger_service.list_transfers(session, tenant_id, account_id=acc_id, after_seq=after_seq,
                                             limit=limit)
        return Page([_entry(t, acc_id) for t in page.items], page.next_cursor)

    # -- money in -----------------------------------------------------------------
    def deposit(
        self, session: Session, tenant_id: str, *, owner_type: str, owner_id: str, asset: str,
        amount_minor: int, rail: str, proof: str, clock: Clock, internal: bool = False,
    ) -> Deposit:
        """Credit a wallet from a verified payment. A proof credits once, ever (409 after).
        `internal`: the proof is one Meterline made up (`INTERNAL_PROOF_PREFIX`), not a client's."""
        check_amount(amount_minor)
        rail_ = get_rail(rail)
        now = clock.now_ns()
        wallet = self.wallet_account(session, tenant_id, owner_type=owner_type, owner_id=owner_id,
                                     asset=asset, now_ns=now)
        external = self.external_account(session, tenant_id, rail_.name, asset, now)
        paid = payment_service.verify_and_claim(
            session, tenant_id, rail=rail_, proof=proof, kind="deposit", owner=f"{owner_type}:{owner_id}",
            amount_minor=amount_minor, asset=asset, now_ns=now, internal=internal,
        )
        transfer_id = f"dep:{rail_.name}:{proof}"
        [result] = ledger_service.post(session, tenant_id, [TransferIn(
            transfer_id, external.id, wallet.id, paid.amount_minor, asset, code="deposit",
            metadata=paid.ledger_metadata(),
        )], clock)
        if result.result == "exists":
            # The inbox claim was new, yet the ledger already has this deposit: the inbox
            # row was removed by hand. Refuse rather than credit twice.
            raise IdempotencyConflict(f"deposit {transfer_id} is already in the ledger")
        raise_for_result(result, "deposit")
        payment_service.mark_processed(session, tenant_id, rail_.name, paid.external_id,
                                       transfer_id=transfer_id, now_ns=now)
        _event(session, tenant_id, "wallet.deposited", wallet, paid.amount_minor, now, transfer_id=transfer_id,
               rail=rail_.name, simulated=paid.simulated)
        return Deposit(transfer_id, wallet.id, owner_type, owner_id, asset, paid.amount_minor, rail_.name,
                       proof, paid.simulated)

    # -- money out ----------------------------------------------------------------
    def withdraw(
        self, session: Session, tenant_id: str, *, owner_type: str, owner_id: str, asset: str,
        amount_minor: int, rail: str, destination: str, clock: Clock, idempotency_id: str,
    ) -> Withdrawal:
        """Send wallet funds out through a rail. The same idempotency id returns the same
        withdrawal (never a second debit); reused with other fields it is 409.

        The wallet is held first (so a concurrent spend cannot take the money while the
        rail sends), then the hold is posted to external:<rail> with the rail's signature.
        """
        check_amount(amount_minor)
        if not idempotency_id or len(idempotency_id) > _IDEMPOTENCY_ID_MAX:
            raise InvalidWithdrawal(f"idempotency_id must be 1-{_IDEMPOTENCY_ID_MAX} characters")
        if not destination or len(destination) > 200:
            raise InvalidWithdrawal("destination must be 1-200 characters")
        _check_owner(owner_type, owner_id)
        acc_id = owned_account_id("wal", owner_type, owner_id, asset)
        rail_ = get_rail(rail)
        now = clock.now_ns()
        # Scoped by wallet: two owners choosing the same client id never collide
        # (nor learn of each other's withdrawals through a conflict).
        scope = hashlib.sha256(acc_id.encode()).hexdigest()[:16]
        hold_id, sent_id = f"wd:{scope}:{idempotency_id}", f"wd:{scope}:{idempotency_id}:sent"
        meta: dict[str, Any] = {"rail": rail_.name, "destination": destination}
        if rail_.simulated:
            meta["mode"] = SIMULATION_MODE

        def replay(sent: Transfer) -> Withdrawal:
            """Answer with what was done, after checking it is the same withdrawal."""
            hold = ledger_service.get_transfer(session, tenant_id, hold_id)
            if (hold.debit_account_id, hold.amount, hold.asset, hold.metadata_) != (acc_id, amount_minor, asset, meta):
                raise IdempotencyConflict(f"withdrawal {idempotency_id} was made with different fields")
            tx = (sent.metadata_ or {}).get("tx_signature", "")
            return Withdrawal(idempotency_id, hold_id, sent_id, acc_id, owner_type, owner_id, asset, amount_minor,
                              rail_.name, destination, tx, rail_.simulated)

        sent = session.get(Transfer, (tenant_id, sent_id))
        if sent is not None:
            return replay(sent)

        try:  # (only a true wallet: see `wallet_account`)
            wallet = self.wallet_account(session, tenant_id, owner_type=owner_type, owner_id=owner_id, asset=asset,
                                         now_ns=now, create=False)
        except WalletNotFound:
            raise InsufficientFunds(f"{owner_type} {owner_id} has no {asset} balance") from None
        external = self.external_account(session, tenant_id, rail_.name, asset, now)
        [held] = ledger_service.post(session, tenant_id, [TransferIn(
            hold_id, wallet.id, external.id, amount_minor, asset, flags=int(TransferFlags.PENDING),
            code="withdrawal", reference=idempotency_id, metadata=meta,
        )], clock)
        raise_for_result(held, "withdrawal")
        if held.result == "exists":
            # Held by an earlier attempt whose send failed but whose transaction was committed
            # anyway: send now if the hold is still open, never if it was released. Or held and
            # sent by a request with this id that got there first (the same id sent twice at
            # once): that one is a replay, not a withdrawal "released without being sent".
            open_hold = session.get(Hold, (tenant_id, hold_id), populate_existing=True)
            if open_hold is None or open_hold.state != HoldState.PENDING:
                sent = session.get(Transfer, (tenant_id, sent_id), populate_existing=True)
                if sent is not None:
                    return replay(sent)
                raise WithdrawalNotCompleted(f"withdrawal {idempotency_id} was released without being sent")

        # The rail call is inside the transaction: if it raises, the hold rolls back with it.
        result = rail_.send(tenant_id, destination=destination, amount_minor=amount_minor, asset=asset,
                            reference=hold_id)
        [posted] = ledger_service.post(session, tenant_id, [TransferIn(
            sent_id, pending_id=hold_id, flags=int(TransferFlags.POST_PENDING), code="withdrawal",
            reference=idempotency_id, metadata={**meta, "tx_signature": result.tx_signature},
        )], clock)
        raise_for_result(posted, "withdrawal")
        _event(session, tenant_id, "wallet.withdrawn", wallet, amount_minor, now, transfer_id=sent_id,
               rail=rail_.name, simulated=result.simulated, destination=destination,
               tx_signature=result.tx_signature, idempotency_id=idempotency_id)
        return Withdrawal(idempotency_id, hold_id, sent_id, wallet.id, owner_type, owner_id, asset, amount_minor,
                          rail_.name, destination, result.tx_signature, result.simulated)

def _event(session: Session, tenant_id: str, type_: str, wallet: Account, amount_minor: int, now_ns: int,
           **fields: Any) -> None:
    scale = ledger_service.get_asset(session, tenant_id, wallet.asset).scale
    emit(session, tenant_id, type_, {
        "wallet": wallet.id, "owner_type": wallet.owner_type, "owner_id": wallet.owner_id, "asset": wallet.asset,
        "amount": amount(amount_minor, scale), **fields,
    }, now_ns=now_ns)


def account_balance(row: Account, scale: int) -> WalletBalance:
    posted = row.credits_posted - row.debits_posted
    return WalletBalance(row.asset, scale, posted, row.debits_pending, posted - row.debits_pending)


_PENDING, _POST, _VOID = int(TransferFlags.PENDING), int(TransferFlags.POST_PENDING), int(TransferFlags.VOID_PENDING)


def _entry(t: Transfer, acc_id: str) -> WalletEntry:
    incoming = t.credit_account_id == acc_id
    if t.flags & _PENDING:
        status = "pending"
    elif t.flags & _VOID:
        status = "voided"
    else:
        status = "posted"
    return WalletEntry(
        transfer_id=t.id, seq=t.seq, timestamp_ns=t.timestamp, amount_minor=t.amount if incoming else -t.amount,
        asset=t.asset, status=status, code=t.code, reference=t.reference,
        counterparty_account_id=t.debit_account_id if incoming else t.credit_account_id, metadata=t.metadata_,
    )


wallet_service = WalletService()
