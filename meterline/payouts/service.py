"""Payouts: provider earnings requested, approved, executed through a rail, retried.

Lifecycle::

    request ──(amount ≤ threshold)──────────────► approved ──execute──► paid
       │                                            ▲   │
       └─(above threshold)─► requested ─N approvals─┘   └─send fails─► approved (retry later)
                                │                                       └─6th failure─► failed
                                └─reject (also from approved)─► rejected

The earnings are held by a pending ledger transfer from the moment of the
request; `paid` posts it, `rejected`/`failed` void it. Execution is
idempotent: executing a paid payout returns it unchanged, and the rail gets
the payout id as its idempotency reference, so a retry after a crash between
the send and the commit can't pay twice on a rail that honours it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from meterline.catalog.models import Provider
from meterline.clock import Clock
from meterline.config import Settings, get_settings
from meterline.db.scoping import scoped
from meterline.errors import Conflict, Forbidden, MeterlineError, NotFound
from meterline.events.outbox import amount, emit
from meterline.ledger.service import Page, keyset_page, ledger_service, new_id
from meterline.ledger.types import TransferFlags, TransferIn
from meterline.money import parse_amount
from meterline.payments.rails import SIMULATION_MODE, Rail, check_enabled, get_rail, known_rail
from meterline.payouts.models import PayoutRequest
from meterline.wallets.service import check_amount, raise_for_result, wallet_service

# -- errors -------------------------------------------------------------------------


class PayoutError(MeterlineError):
    code = "payout_error"


class PayoutNotFound(PayoutError, NotFound):
    code = "payout_not_found"
    title = "No such payout"


class InvalidPayoutRequest(PayoutError):
    status = 422
    code = "invalid_payout_request"
    title = "The payout request is not valid"


class PayoutNotApprovable(PayoutError, Conflict):
    code = "payout_not_approvable"
    title = "The payout is not waiting for approval"


class PayoutNotRejectable(PayoutError, Conflict):
    code = "payout_not_rejectable"
    title = "The payout can no longer be rejected"


class PayoutNotExecutable(PayoutError, Conflict):
    code = "payout_not_executable"
    title = "The payout is not approved for execution"


class PayoutRailMismatch(PayoutError, Conflict):
    code = "payout_rail_mismatch"
    title = "The payout was requested on another rail"


class SelfApprovalForbidden(PayoutError, Forbidden):
    code = "self_approval_forbidden"
    title = "A payout cannot be approved by its requester or its provider"


# -- policy -------------------------------------------------------------------------

MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 30
BACKOFF_CAP_S = 3600
_NS = 1_000_000_000


class PayoutStatus:
    REQUESTED = "requested"
    APPROVED = "approved"
    EXECUTING = "executing"
    PAID = "paid"
    FAILED = "failed"
    REJECTED = "rejected"


def backoff_s(attempt: int) -> int:
    """Seconds to wait after failed attempt number `attempt` (1-based): 30, 60, 120, … ≤ 1 h."""
    return min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_CAP_S)


def parse_thresholds(text: str) -> dict[str, str]:
    """``"USDC=1000,SOL=5"`` → ``{"USDC": "1000", "SOL": "5"}`` (major-unit decimal text).

    Amounts are converted to minor units per asset when used, with that asset's scale.
    """
    out: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        asset, sep, amount = part.partition("=")
        if not sep or not asset.strip() or not amount.strip():
            raise ValueError(f"METERLINE_PAYOUT_APPROVAL_THRESHOLD: {part!r} is not ASSET=amount")
        out[asset.strip().upper()] = amount.strip()
    return out


class PayoutService:
    def request(
        self, session: Session, tenant_id: str, *, provider_id: str, asset: str, amount_minor: int,
        destination: str, rail: str, clock: Clock, requested_by: str | None = None,
        settings: Settings | None = None,
    ) -> PayoutRequest:
        """Hold `amount_minor` of the provider's earnings and open a payout request.

        Above the asset's approval threshold it waits for `payout_required_approvals`
        distinct operators; otherwise it is approved (due for execution) at once.
        `requested_by` defaults to the provider (who may then not approve it either).
        """
        check_amount(amount_minor)
        if not destination or len(destination) > 200:
            raise InvalidPayoutRequest("destination must be 1-200 characters")
        rail_ = get_rail(rail)
        settings = settings or get_settings()
        scale = ledger_service.get_asset(session, tenant_id, asset).scale
        now = clock.now_ns()
        required = self._required_approvals(settings, asset, scale, amount_minor)

        earnings = wallet_service.provider_earnings_account(session, tenant_id, provider_id, asset, now)
        external = wallet_service.external_account(session, tenant_id, rail_.name, asset, now)
        payout_id = new_id("po")
        hold_id = f"{payout_id}:hold"
        [held] = ledger_service.post(session, tenant_id, [TransferIn(
            hold_id, earnings.id, external.id, amount_minor, asset, flags=int(TransferFlags.PENDING),
            code="payout", reference=payout_id, metadata=self._metadata(rail_, destination=destination),
        )], clock)
        raise_for_result(held, "payout")
        row = PayoutRequest(
            tenant_id=tenant_id, id=payout_id, provider_id=provider_id, asset=asset, amount_minor=amount_minor,
            destination=destination, rail=rail_.name,
            status=PayoutStatus.REQUESTED if required else PayoutStatus.APPROVED,
            requested_by=requested_by or provider_id, approvals=[], required_approvals=required, attempts=0,
            next_attempt_at=None if required else now, last_error=None, tx_signature=None,
            hold_transfer_id=hold_id, created_at=now, updated_at=now,
        )
        session.add(row)
        session.flush()
        _event(session, row, "payout.requested", now)
        return row

    @staticmethod
    def _required_approvals(settings: Settings, asset: str, scale: int, amount_minor: int) -> int:
        threshold = parse_thresholds(settings.payout_approval_threshold).get(asset)
        if threshold is None or amount_minor <= parse_amount(threshold, scale, allow_zero=True):
            return 0
        return max(1, settings.payout_required_approvals)

    @staticmethod
    def _metadata(rail: Rail, **extra: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {"rail": rail.name, **extra}
        if rail.simulated:
            meta["mode"] = SIMULATION_MODE
        return meta

    # -- approvals ------------------------------------------------------------------
    def approve(self, session: Session, tenant_id: str, payout_id: str, approver_id: str, clock: Clock) -> PayoutRequest:
        """Record one operator's approval; the Nth distinct one makes the payout due.
        Approving twice is a no-op (one operator counts once)."""
        row = self._lock(session, tenant_id, payout_id)
        if approver_id in row.approvals:
            return row
        if row.status != PayoutStatus.REQUESTED:
            raise PayoutNotApprovable(f"payout {payout_id} is {row.status}")
        # Neither whoever asked nor the provider's own people: its id, and its owner's.
        provider = session.get(Provider, (tenant_id, row.provider_id))
        owner = provider.owner_id if provider is not None else None
        if approver_id in (row.requested_by, row.provider_id, owner):
            raise SelfApprovalForbidden(f"{approver_id} requested payout {payout_id}, or is its provider")
        now = clock.now_ns()
        row.approvals = [*row.approvals, approver_id]  # a new list: JSON columns track reassignment
        if len(row.approvals) >= row.required_approvals:
            row.status = PayoutStatus.APPROVED
            row.next_attempt_at = now
        row.updated_at = now
        session.flush()
        return row

    def reject(
        self, session: Session, tenant_id: str, payout_id: str, approver_id: str, clock: Clock,
        reason: str | None = None,
    ) -> PayoutRequest:
        """Refuse a payout that has not been sent: the hold is voided, earnings return."""
        row = self._lock(session, tenant_id, payout_id)
        if row.status == PayoutStatus.REJECTED:
            return row
        if row.status not in (PayoutStatus.REQUESTED, PayoutStatus.APPROVED):
            raise PayoutNotRejectable(f"payout {payout_id} is {row.status}")
        self._void_hold(session, tenant_id, row, "payout_rejected", clock)
        row.status = PayoutStatus.REJECTED
        row.next_attempt_at = None
        row.last_error = f"rejected by {approver_id}" + (f": {reason}" if reason else "")
        row.updated_at = clock.now_ns()
        session.flush()
        _event(session, row, "payout.rejected", row.updated_at)
        return row

    # -- execution ------------------------------------------------------------------
    def execute(
        self, session: Session, tenant_id: str, payout_id: str, rail: Rail | None, clock: Clock
    ) -> PayoutRequest:
        """Send an approved payout through its rail (default: the rail it was requested on).

        Success posts the hold and records the signature. A failed send is recorded, not
        raised: the payout is retried after a backoff, and after the last attempt it fails
        and the hold is voided. A paid payout is returned unchanged.
        """
        row = self._lock(session, tenant_id, payout_id)
        if row.status == PayoutStatus.PAID:
            return row
        if row.status not in (PayoutStatus.APPROVED, PayoutStatus.EXECUTING):
            raise PayoutNotExecutable(f"payout {payout_id} is {row.status}")
        rail_ = rail or known_rail(row.rail)
        if rail_.name != row.rail:
            raise PayoutRailMismatch(f"payout {payout_id} is on rail {row.rail}, not {rail_.name}")
        row.status = PayoutStatus.EXECUTING
        row.attempts += 1
        row.updated_at = clock.now_ns()
        session.flush()
        try:
            # A rail turned off since the request is a failed attempt: after the last, the
            # hold is voided and the earnings come back — never a send that did not happen.
            check_enabled(rail_)
            sent = rail_.send(tenant_id, destination=row.destination, amount_minor=row.amount_minor,
                              asset=row.asset, reference=row.id)
        except Exception as exc:  # the rail is the outside world: any failure is a failed attempt
            return self._attempt_failed(session, tenant_id, row, exc, clock)
        [posted] = ledger_service.post(session, tenant_id, [TransferIn(
            f"{row.id}:paid", pending_id=row.hold_transfer_id, flags=int(TransferFlags.POST_PENDING),
            code="payout", reference=row.id,
            metadata=self._metadata(rail_, destination=row.destination, tx_signature=sent.tx_signature),
        )], clock)
        raise_for_result(posted, "payout")
        row.status = PayoutStatus.PAID
        row.tx_signature = sent.tx_signature
        row.next_attempt_at = None
        row.last_error = None
        row.updated_at = clock.now_ns()
        session.flush()
        _event(session, row, "payout.paid", row.updated_at)
        return row

    def _attempt_failed(
        self, session: Session, tenant_id: str, row: PayoutRequest, exc: Exception, clock: Clock
    ) -> PayoutRequest:
        now = clock.now_ns()
        row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
        if row.attempts >= MAX_ATTEMPTS:
            self._void_hold(session, tenant_id, row, "payout_failed", clock)
            row.status = PayoutStatus.FAILED
            row.next_attempt_at = None
            _event(session, row, "payout.failed", now)
        else:
            row.status = PayoutStatus.APPROVED
            row.next_attempt_at = now + backoff_s(row.attempts) * _NS
        row.updated_at = now
        session.flush()
        return row

    @staticmethod
    def _void_hold(session: Session, tenant_id: str, row: PayoutRequest, code: str, clock: Clock) -> None:
        [voided] = ledger_service.post(session, tenant_id, [TransferIn(
            f"{row.id}:void", pending_id=row.hold_transfer_id, flags=int(TransferFlags.VOID_PENDING),
            code=code, reference=row.id,
        )], clock)
        raise_for_result(voided, "payout release")

    def due_for_execution(self, session: Session, now_ns: int, limit: int = 100) -> list[PayoutRequest]:
        """Approved payouts whose next attempt is due, across tenants, oldest first.

        On PostgreSQL the rows are locked with SKIP LOCKED, so several workers share
        the queue without executing one payout twice.
        """
        stmt = (
            select(PayoutRequest)
            .where(PayoutRequest.status == PayoutStatus.APPROVED, PayoutRequest.next_attempt_at <= now_ns)
            .order_by(PayoutRequest.next_attempt_at)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        return list(session.scalars(stmt))

    # -- reads ----------------------------------------------------------------------
    def get(self, session: Session, tenant_id: str, payout_id: str) -> PayoutRequest:
        row = session.get(PayoutRequest, (tenant_id, payout_id))
        if row is None:
            raise PayoutNotFound(f"payout {payout_id} does not exist")
        return row

    def list_payouts(
        self, session: Session, tenant_id: str, *, provider_id: str | None = None, status: str | None = None,
        after: str | None = None, limit: int = 100,
    ) -> Page:
        stmt = scoped(select(PayoutRequest), PayoutRequest, tenant_id)
        if provider_id:
            stmt = stmt.where(PayoutRequest.provider_id == provider_id)
        if status:
            stmt = stmt.where(PayoutRequest.status == status)
        return keyset_page(session, stmt, PayoutRequest.id, after, limit)

    @staticmethod
    def _lock(session: Session, tenant_id: str, payout_id: str) -> PayoutRequest:
        # FOR UPDATE on PostgreSQL (SQLite's single writer already serialises): an approval,
        # a rejection and an execution of one payout never interleave.
        stmt = scoped(select(PayoutRequest), PayoutRequest, tenant_id).where(PayoutRequest.id == payout_id)
        row = session.scalars(stmt.with_for_update().execution_options(populate_existing=True)).first()
        if row is None:
            raise PayoutNotFound(f"payout {payout_id} does not exist")
        return row


payout_service = PayoutService()


def _event(session: Session, row: PayoutRequest, type_: str, now_ns: int) -> None:
    scale = ledger_service.get_asset(session, row.tenant_id, row.asset).scale
    emit(session, row.tenant_id, type_, {
        "payout_id": row.id, "provider_id": row.provider_id, "status": row.status, "asset": row.asset,
        "amount": amount(row.amount_minor, scale), "rail": row.rail, "destination": row.destination,
        "tx_signature": row.tx_signature, "attempts": row.attempts, "last_error": row.last_error,
    }, now_ns=now_ns)
