"""Invoices: composed from a period's recurring charges and the pending lines, then
draft → open → paid | void.

    draft ──finalize (number assigned)──► open ──pay (wallet → platform revenue)──► paid
      └──────────────void──────────────────┴──void──► void

Every transition locks the invoice row and checks the state it starts from; any
other is 409 `invalid_invoice_state`. Paying is one ledger transfer from the
customer's wallet to the tenant's `platform_revenue` account, whose id is
derived from the invoice (`inv:<id>:payment`), so no retry can pay twice. A
wallet that does not cover the amount due pays nothing: the invoice stays open
with the reason in `last_payment_error` and a next attempt scheduled.

A credit larger than an invoice's charges is carried to the subscription's next
invoice — except on the last invoice of a canceled subscription, which has no next
one: there it first pays what the subscription's open invoices still owe, and only
what the customer paid beyond what the service cost goes back to the same wallet, the
reverse of a payment (platform_revenue → wallet, `sub:<id>:credit_refund`, one per
subscription). `billing.credits` holds that rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from meterline.billing.credits import Position, settle
from meterline.billing.models import Invoice, InvoiceCounter, InvoiceLine, Subscription
from meterline.clock import Clock
from meterline.db.scoping import scoped
from meterline.errors import AmountOverflow, Conflict, MeterlineError, NotFound
from meterline.events.outbox import amount, emit
from meterline.ledger.service import Page, keyset_page, ledger_service, new_id
from meterline.ledger.types import TransferIn
from meterline.money import MAX_AMOUNT, format_amount
from meterline.wallets.service import InsufficientFunds, raise_for_result, wallet_service

NS = 1_000_000_000
# After a failed automatic attempt n, the next one waits RETRY_AFTER_S[n-1]; after the last
# the invoice stays open for someone to pay by hand (the customer tops up and calls pay).
RETRY_AFTER_S = (86_400, 3 * 86_400, 5 * 86_400, 7 * 86_400)
PAYMENT_CODE = "invoice_payment"
CREDIT_REFUND_CODE = "invoice_credit_refund"

# -- errors -------------------------------------------------------------------------


class InvoiceError(MeterlineError):
    code = "invoice_error"


class InvoiceNotFound(InvoiceError, NotFound):
    code = "invoice_not_found"
    title = "No such invoice"


class InvalidInvoiceState(InvoiceError, Conflict):
    code = "invalid_invoice_state"
    title = "The invoice is not in a state that allows this"


class InvoiceExists(InvoiceError, Conflict):
    code = "invoice_exists"
    title = "This period is already invoiced"


# -- values -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvoiceDocument:
    """An invoice with its lines in display order. A preview's rows are never saved."""

    invoice: Invoice
    lines: list[InvoiceLine]


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    invoice: Invoice
    error: InsufficientFunds | None  # None: paid

    @property
    def paid(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Composed:
    """An invoice as composed: its own lines, the credit carried to the next invoice (or
    None), its total, and — on a final invoice — the parts of a credit that pay open
    invoices and that are refunded."""

    lines: list[InvoiceLine]
    carry: InvoiceLine | None
    total_minor: int
    refund_minor: int
    applied: tuple[tuple[Invoice, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Charge:
    """One recurring charge of a period: an item's name, quantity and unit price."""

    item_id: str
    name: str
    quantity: int
    unit_price_minor: int


def payment_transfer_id(invoice_id: str) -> str:
    return f"inv:{invoice_id}:payment"


def credit_refund_transfer_id(subscription_id: str) -> str:
    """A canceled subscription's leftover credit is refunded once: the id is the subscription's,
    not the final invoice's (whose id a retried close would draw afresh)."""
    return f"sub:{subscription_id}:credit_refund"


def when(ns: int) -> str:
    """How a moment reads in a line description (UTC, to the second)."""
    return datetime.fromtimestamp(ns // NS, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pending_order(lines: list[InvoiceLine]) -> list[InvoiceLine]:
    return sorted(lines, key=lambda ln: (ln.created_at, ln.position, ln.id))


class InvoiceService:
    # -- composing ------------------------------------------------------------------
    def compose(
        self, sub: Subscription, invoice_id: str | None, start: int, end: int, charges: list[Charge],
        pending: list[InvoiceLine], now_ns: int, *, final: Position | None = None,
    ) -> Composed:
        """The new lines of an invoice (recurring charges, and balancing lines when credits
        exceed charges), the pending credit to carry forward (or None), the total, and how a
        final invoice's credit is settled.

        Pure: nothing is added to a session, so a preview can use it as it is. A negative
        total is never billed: it is brought to zero here. While the subscription goes on
        (`final` None) the same amount waits, as a pending credit, for its next invoice
        (Stripe's customer balance, kept per subscription). On the final invoice of a canceled
        subscription there is no next invoice: `final` is where the subscription stands
        (`credits.position`) and `credits.settle` splits the credit — what pays open invoices,
        what is refunded, and what is not money (it offsets charges never paid) and stays
        pending as a record. One balancing line shows each part.
        """
        new: list[InvoiceLine] = [
            self._line(sub, invoice_id, c.item_id, "subscription", c.name, c.quantity, c.unit_price_minor,
                       c.quantity * c.unit_price_minor, start, end, now_ns, i)
            for i, c in enumerate(charges)
        ]
        total = sum(ln.amount_minor for ln in pending) + sum(ln.amount_minor for ln in new)
        carry = None
        refund = 0
        applied: tuple[tuple[Invoice, int], ...] = ()
        if total < 0:
            credit = kept = -total

            def balance(description: str, amount_minor: int) -> None:
                new.append(self._line(sub, invoice_id, None, "balance", description, 1, amount_minor,
                                      amount_minor, start, end, now_ns, len(new)))

            if final is not None:
                settled = settle(credit, final, [*pending, *new])
                applied, refund, kept = settled.applied, settled.refund_minor, settled.kept_minor
                for target, part in applied:
                    balance(f"Credit applied to invoice {target.number or target.id} (still {target.status})", part)
                if refund:
                    balance(f"Credit refunded to the wallet (transfer {credit_refund_transfer_id(sub.id)})", refund)
            if kept:
                source = invoice_id or "(upcoming)"
                if final is not None:
                    balance("Credit not refunded: it offsets charges that were never paid", kept)
                    note = f"Credit from invoice {source} not refunded (it offsets charges that were never paid)"
                else:
                    balance("Credit carried forward to the next invoice", kept)
                    note = f"Credit carried forward from invoice {source}"
                carry = self._line(sub, None, None, "balance", note, 1, -kept, -kept, start, end, now_ns, 0)
            total = 0
        if total > MAX_AMOUNT:
            raise AmountOverflow("the invoice total does not fit in 64 bits of minor units")
        return Composed(new, carry, total, refund, applied)

    def create(
        self, session: Session, sub: Subscription, start: int, end: int, charges: list[Charge], now_ns: int,
    ) -> Invoice:
        """A draft invoice for [start, end): the charges plus every pending line of the
        subscription. The caller holds the subscription's lock; the unique (subscription,
        period start) index turns a concurrent second invoice into `InvoiceExists`."""
        return self._create(session, sub, start, end, charges, now_ns, None)[0]

    def create_final(
        self, session: Session, sub: Subscription, start: int, end: int, charges: list[Charge], clock: Clock,
        *, position: Position,
    ) -> Invoice:
        """The last invoice of a subscription that is being canceled (as `create`), given where
        the subscription stands (`credits.position`, read under the close's locks). A credit
        left on it is settled in the same transaction (`credits.settle`): it first pays the
        open invoices — each one's `amount_paid` grows by its part, and one paid in full is
        paid — then the rest that is money goes back to the customer's wallet, one ledger
        transfer platform_revenue → wallet, the reverse of a payment, whose id is the
        subscription's (`sub:<id>:credit_refund`), so no retry refunds twice."""
        now = clock.now_ns()
        inv, composed = self._create(session, sub, start, end, charges, now, position)
        # Numbered first: the events of what its credit does (`invoice.credit_refunded`) name
        # the invoice as it commits, not a draft that never does. (The close then collects it.)
        self.finalize_locked(session, inv, now)
        for target, part in composed.applied:
            self._apply_credit(session, target, part, inv, now)
        if composed.refund_minor:
            self._refund_credit(session, sub, inv, composed.refund_minor, clock)
        return inv

    def _create(
        self, session: Session, sub: Subscription, start: int, end: int, charges: list[Charge], now_ns: int,
        final: Position | None,
    ) -> tuple[Invoice, Composed]:
        inv = Invoice(
            tenant_id=sub.tenant_id, id=new_id("in"), subscription_id=sub.id, customer_type=sub.customer_type,
            customer_id=sub.customer_id, currency=sub.currency, number=None, status="draft", period_start=start,
            period_end=end, total_minor=0, amount_paid_minor=0, payment_attempts=0, created_at=now_ns,
            updated_at=now_ns,
        )
        pending = self.pending_lines(session, sub.tenant_id, sub.id)
        composed = self.compose(sub, inv.id, start, end, charges, pending, now_ns, final=final)
        inv.total_minor = composed.total_minor
        try:
            with session.begin_nested():
                session.add(inv)
                session.flush()
        except IntegrityError:
            raise InvoiceExists(f"subscription {sub.id} already has an invoice for this period") from None
        # An invoice's order is fixed here: what was pending (oldest first), then its own lines.
        for position, ln in enumerate([*pending, *composed.lines]):
            ln.position = position
        for ln in pending:  # every pending line is written under the subscription's lock too
            ln.invoice_id = inv.id
        session.add_all(composed.lines)
        if composed.carry is not None:
            session.add(composed.carry)
        session.flush()
        return inv, composed

    def _apply_credit(self, session: Session, target: Invoice, amount_minor: int, source: Invoice,
                      now_ns: int) -> None:
        """Part of a final invoice's credit pays an open invoice (locked by `credits.position`):
        no money moves — what the customer owes shrinks. A wallet payment then collects only
        what is left (`attempt_payment` takes total − amount_paid)."""
        target.amount_paid_minor += amount_minor
        target.updated_at = now_ns
        if target.amount_paid_minor == target.total_minor:
            self._mark_paid(target, target.payment_transfer_id, now_ns)
        session.flush()
        _event(session, target, "invoice.credit_applied", now_ns,
               extra={"credited": amount_minor, "credit_invoice_id": source.id})
        if target.status == "paid":
            _event(session, target, "invoice.paid", now_ns)

    @staticmethod
    def _refund_credit(session: Session, sub: Subscription, inv: Invoice, amount_minor: int, clock: Clock) -> None:
        # Every field is the subscription's, none the invoice's: a close retried after this
        # transfer committed (it commits with the invoice, but should they ever part) finds it
        # `exists` instead of refunding again — or, for another amount, fails loudly.
        now = clock.now_ns()
        tenant = sub.tenant_id
        wallet = wallet_service.wallet_account(session, tenant, owner_type=sub.customer_type,
                                               owner_id=sub.customer_id, asset=sub.currency, now_ns=now)
        revenue = wallet_service.system_account(session, tenant, "platform_revenue", sub.currency, now)
        [result] = ledger_service.post(session, tenant, [TransferIn(
            credit_refund_transfer_id(sub.id), revenue.id, wallet.id, amount_minor, sub.currency,
            code=CREDIT_REFUND_CODE, reference=sub.id, metadata={"subscription_id": sub.id},
        )], clock)
        raise_for_result(result, "credit refund")
        if result.result == "ok":
            _event(session, inv, "invoice.credit_refunded", now,
                   extra={"refunded": amount_minor, "refund_transfer_id": credit_refund_transfer_id(sub.id)})

    @staticmethod
    def _line(
        sub: Subscription, invoice_id: str | None, item_id: str | None, kind: str, description: str, quantity: int,
        unit_price_minor: int, amount_minor: int, start: int, end: int, now_ns: int, position: int,
    ) -> InvoiceLine:
        return InvoiceLine(
            tenant_id=sub.tenant_id, id=new_id("il"), subscription_id=sub.id, invoice_id=invoice_id,
            item_id=item_id, kind=kind, description=description[:300], quantity=quantity,
            unit_price_minor=unit_price_minor, amount_minor=amount_minor, period_start=start, period_end=end,
            created_at=now_ns, position=position,
        )

    def pending_line(
        self, sub: Subscription, item_id: str, description: str, quantity: int, unit_price_minor: int,
        amount_minor: int, start: int, end: int, now_ns: int, position: int,
    ) -> InvoiceLine:
        """A proration line waiting for the next invoice (the caller adds it to the session)."""
        return self._line(sub, None, item_id, "proration", description, quantity, unit_price_minor, amount_minor,
                          start, end, now_ns, position)

    # -- transitions ----------------------------------------------------------------
    def finalize(self, session: Session, tenant_id: str, invoice_id: str, now_ns: int) -> Invoice:
        """Draft → open: the invoice gets its number and becomes immutable. An invoice with
        nothing to pay is paid on the spot; any other is due at once and collected from
        the wallet by the worker (or by `pay`)."""
        inv = self.lock(session, tenant_id, invoice_id)
        if inv.status != "draft":
            raise InvalidInvoiceState(f"invoice {invoice_id} is {inv.status}; only a draft can be finalized",
                                      invoice_status=inv.status)
        return self.finalize_locked(session, inv, now_ns)

    def finalize_locked(self, session: Session, inv: Invoice, now_ns: int) -> Invoice:
        inv.number = self._next_number(session, inv.tenant_id)
        inv.status = "open"
        inv.finalized_at = now_ns
        inv.updated_at = now_ns
        inv.next_payment_attempt_at = now_ns
        if inv.total_minor == 0:
            self._mark_paid(inv, None, now_ns)
        session.flush()
        _event(session, inv, "invoice.finalized", now_ns)
        if inv.status == "paid":
            _event(session, inv, "invoice.paid", now_ns)
        return inv

    def pay(self, session: Session, tenant_id: str, invoice_id: str, clock: Clock) -> PaymentOutcome:
        """Open → paid from the customer's wallet, in full or not at all."""
        inv = self.lock(session, tenant_id, invoice_id)
        if inv.status != "open":
            hint = "finalize it first" if inv.status == "draft" else "there is nothing left to pay"
            raise InvalidInvoiceState(f"invoice {invoice_id} is {inv.status}; {hint}", invoice_status=inv.status)
        return self.attempt_payment(session, inv, clock)

    def void(self, session: Session, tenant_id: str, invoice_id: str, now_ns: int) -> Invoice:
        """Draft or open → void: nothing is owed. Its lines stay with it (they are not
        offered to the next invoice again); a paid invoice cannot be voided."""
        inv = self.lock(session, tenant_id, invoice_id)
        if inv.status not in ("draft", "open"):
            raise InvalidInvoiceState(f"invoice {invoice_id} is {inv.status}; only a draft or open invoice can "
                                      "be voided", invoice_status=inv.status)
        inv.status = "void"
        inv.voided_at = inv.updated_at = now_ns
        inv.next_payment_attempt_at = None
        session.flush()
        _event(session, inv, "invoice.voided", now_ns)
        return inv

    def attempt_payment(self, session: Session, inv: Invoice, clock: Clock) -> PaymentOutcome:
        """One attempt to collect an open invoice (locked by the caller) from the wallet.

        The balance is checked first for a clear reason; the ledger's no-overdraft flag on
        the wallet is what actually guards against a concurrent spend (`exceeds_credits`)."""
        now = clock.now_ns()
        due = inv.total_minor - inv.amount_paid_minor
        inv.payment_attempts += 1
        inv.updated_at = now
        if due <= 0:
            self._mark_paid(inv, None, now)
            session.flush()
            _event(session, inv, "invoice.paid", now)
            return PaymentOutcome(inv, None)
        tenant, owner = inv.tenant_id, (inv.customer_type, inv.customer_id)
        balance = wallet_service.balance(session, tenant, *owner, inv.currency)
        refused = balance.available < due
        transfer_id = payment_transfer_id(inv.id)
        if not refused:
            wallet = wallet_service.wallet_account(session, tenant, owner_type=owner[0], owner_id=owner[1],
                                                   asset=inv.currency, now_ns=now, create=False)
            revenue = wallet_service.system_account(session, tenant, "platform_revenue", inv.currency, now)
            [result] = ledger_service.post(session, tenant, [TransferIn(
                transfer_id, wallet.id, revenue.id, due, inv.currency, code=PAYMENT_CODE, reference=inv.id,
                metadata={"invoice_number": inv.number, "subscription_id": inv.subscription_id},
            )], clock)
            refused = result.result == "exceeds_credits"
            if not refused:
                raise_for_result(result, "invoice payment")
        if refused:
            s = balance.scale
            reason = (f"the {inv.currency} wallet of {owner[0]} {owner[1]} has {format_amount(balance.available, s)} "
                      f"available; the invoice is due {format_amount(due, s)}")
            inv.last_payment_error = reason
            attempt = inv.payment_attempts
            inv.next_payment_attempt_at = (now + RETRY_AFTER_S[attempt - 1] * NS
                                           if attempt <= len(RETRY_AFTER_S) else None)
            session.flush()
            _event(session, inv, "invoice.payment_failed", now)
            return PaymentOutcome(inv, InsufficientFunds(
                reason, invoice_id=inv.id, amount_due=format_amount(due, s),
                available=format_amount(balance.available, s), currency=inv.currency))
        self._mark_paid(inv, transfer_id, now)
        session.flush()
        _event(session, inv, "invoice.paid", now)
        return PaymentOutcome(inv, None)

    @staticmethod
    def _mark_paid(inv: Invoice, transfer_id: str | None, now_ns: int) -> None:
        inv.status = "paid"
        inv.amount_paid_minor = inv.total_minor
        inv.payment_transfer_id = transfer_id
        inv.paid_at = inv.updated_at = now_ns
        inv.next_payment_attempt_at = None
        inv.last_payment_error = None

    @staticmethod
    def _next_number(session: Session, tenant_id: str) -> str:
        """The tenant's next invoice number, from a counter row locked for the rest of the
        transaction: finalizations queue on it, and a rollback returns the number."""
        stmt = (select(InvoiceCounter).where(InvoiceCounter.tenant_id == tenant_id).with_for_update()
                .execution_options(populate_existing=True))
        counter = session.scalars(stmt).first()
        if counter is None:
            try:
                with session.begin_nested():
                    session.add(InvoiceCounter(tenant_id=tenant_id, last_number=0))
                    session.flush()
            except IntegrityError:
                pass  # created by a concurrent finalization; lock theirs
            counter = session.scalars(stmt).one()
        counter.last_number += 1
        session.flush()
        return f"INV-{counter.last_number:06d}"

    # -- reads ----------------------------------------------------------------------
    def get(self, session: Session, tenant_id: str, invoice_id: str) -> Invoice:
        row = session.get(Invoice, (tenant_id, invoice_id))
        if row is None:
            raise InvoiceNotFound(f"invoice {invoice_id} does not exist")
        return row

    def document(self, session: Session, inv: Invoice) -> InvoiceDocument:
        return InvoiceDocument(inv, self.lines_for(session, inv.tenant_id, [inv.id]).get(inv.id, []))

    def lines_for(self, session: Session, tenant_id: str, invoice_ids: list[str]) -> dict[str, list[InvoiceLine]]:
        """The lines of several invoices in one query (a list page)."""
        if not invoice_ids:
            return {}
        rows = session.scalars(scoped(select(InvoiceLine), InvoiceLine, tenant_id)
                               .where(InvoiceLine.invoice_id.in_(invoice_ids)))
        out: dict[str, list[InvoiceLine]] = {i: [] for i in invoice_ids}
        for ln in rows:
            assert ln.invoice_id is not None
            out[ln.invoice_id].append(ln)
        return {k: sorted(v, key=lambda ln: (ln.position, ln.id)) for k, v in out.items()}

    def pending_lines(self, session: Session, tenant_id: str, subscription_id: str) -> list[InvoiceLine]:
        return _pending_order(list(session.scalars(self._pending(select(InvoiceLine), tenant_id, subscription_id))))

    def pending_count(self, session: Session, tenant_id: str, subscription_id: str) -> int:
        stmt = self._pending(select(func.count()).select_from(InvoiceLine), tenant_id, subscription_id)
        return int(session.scalar(stmt) or 0)

    @staticmethod
    def _pending(stmt: Select[Any], tenant_id: str, subscription_id: str) -> Select[Any]:
        return scoped(stmt, InvoiceLine, tenant_id).where(
            InvoiceLine.subscription_id == subscription_id, InvoiceLine.invoice_id.is_(None))

    def for_period(self, session: Session, tenant_id: str, subscription_id: str, start: int) -> Invoice | None:
        stmt = scoped(select(Invoice), Invoice, tenant_id).where(
            Invoice.subscription_id == subscription_id, Invoice.period_start == start)
        return session.scalars(stmt).first()

    def list_invoices(
        self, session: Session, tenant_id: str, *, subscription_id: str | None = None,
        customer_id: str | None = None, status: str | None = None, after: str | None = None, limit: int = 100,
    ) -> Page:
        stmt = scoped(select(Invoice), Invoice, tenant_id)
        if subscription_id is not None:
            stmt = stmt.where(Invoice.subscription_id == subscription_id)
        if customer_id is not None:
            stmt = stmt.where(Invoice.customer_id == customer_id)
        if status is not None:
            stmt = stmt.where(Invoice.status == status)
        return keyset_page(session, stmt, Invoice.id, after, limit)

    # -- collection -----------------------------------------------------------------
    def due_for_collection(self, session: Session, now_ns: int, limit: int = 100) -> list[tuple[str, str]]:
        """(tenant, invoice) of open invoices whose next payment attempt is due, across tenants."""
        stmt = (select(Invoice.tenant_id, Invoice.id)
                .where(Invoice.status == "open", Invoice.next_payment_attempt_at <= now_ns)
                .order_by(Invoice.next_payment_attempt_at).limit(limit))
        return [(t, i) for t, i in session.execute(stmt)]

    def collect(self, session: Session, tenant_id: str, invoice_id: str, clock: Clock) -> PaymentOutcome | None:
        """The collection job's attempt: locked and re-checked, since another worker (or a
        `pay` call) may have settled it after the list was read."""
        inv = self.lock(session, tenant_id, invoice_id)
        due_at = inv.next_payment_attempt_at
        if inv.status != "open" or due_at is None or due_at > clock.now_ns():
            return None
        return self.attempt_payment(session, inv, clock)

    @staticmethod
    def lock_all(session: Session, tenant_id: str, subscription_id: str) -> None:
        """Lock every invoice of a subscription, in id order (as `credits.position` reads them)."""
        stmt = scoped(select(Invoice.id), Invoice, tenant_id).where(Invoice.subscription_id == subscription_id)
        session.execute(stmt.order_by(Invoice.id).with_for_update())

    @staticmethod
    def lock(session: Session, tenant_id: str, invoice_id: str) -> Invoice:
        # FOR UPDATE on PostgreSQL (SQLite's single writer already serialises): a payment, a
        # void and a collection of one invoice never interleave.
        stmt = scoped(select(Invoice), Invoice, tenant_id).where(Invoice.id == invoice_id)
        row = session.scalars(stmt.with_for_update().execution_options(populate_existing=True)).first()
        if row is None:
            raise InvoiceNotFound(f"invoice {invoice_id} does not exist")
        return row


invoice_service = InvoiceService()


def _event(session: Session, inv: Invoice, type_: str, now_ns: int, *, extra: dict[str, Any] | None = None
           ) -> None:
    """An invoice's event (docs/events.md), with the figures as the invoice shows them; in
    `extra`, an int is an amount in minor units, anything else is written as it is."""
    scale = ledger_service.get_asset(session, inv.tenant_id, inv.currency).scale
    data: dict[str, Any] = {
        "invoice_id": inv.id, "number": inv.number, "subscription_id": inv.subscription_id,
        "customer_type": inv.customer_type, "customer_id": inv.customer_id, "status": inv.status,
        "currency": inv.currency, "total": amount(inv.total_minor, scale),
        "amount_paid": amount(inv.amount_paid_minor, scale),
        "amount_due": amount(inv.total_minor - inv.amount_paid_minor, scale),
        "payment_attempts": inv.payment_attempts, "last_payment_error": inv.last_payment_error,
        "payment_transfer_id": inv.payment_transfer_id,
    }
    for key, value in (extra or {}).items():
        data[key] = amount(value, scale) if isinstance(value, int) else value
    emit(session, inv.tenant_id, type_, data, now_ns=now_ns)
