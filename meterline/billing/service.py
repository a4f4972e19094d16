"""Subscriptions: items priced per camera, device or tenant, monthly periods billed in
arrears, and Stripe-style proration lines when an item changes mid-period.

A period's invoice bills each item at the quantity it had when the period began
(`period_quantity`); every prorated change since then adds proration lines — a
credit for the rest of the period at the quantity the period was charging
(`billed_quantity`: a change without proration counts from the next period and
leaves it as it was) and a charge at the new one
(`billing.proration` holds the rule) — which wait as pending lines for the next
invoice. Whatever happens in between, the lines of a period sum to what each
quantity cost for the seconds it was in force.

Closing a period (the worker, or any change that finds its period over) is one
transaction: get-or-create the period's invoice (unique per subscription and
period start), finalize it, try the wallet, advance to the next period. A crash
leaves all of it or none; a retry finds the invoice instead of making another. The
close that ends a canceled subscription makes its last invoice final: a credit left
on it pays the subscription's open invoices and the rest that is money is refunded to
the wallet, in the same transaction (`billing.credits`, `invoice_service.create_final`).

Catalogue items take their name, basis and price from the licensing catalogue
(`licensing_service`), and a camera or device quantity left out defaults to the
licensee's allowance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from meterline.billing import credits
from meterline.billing.invoices import Charge, InvoiceDocument, InvoiceExists, invoice_service, when
from meterline.billing.models import Invoice, InvoiceLine, Subscription, SubscriptionItem
from meterline.billing.periods import NS, period_bounds_ns, whole_second
from meterline.billing.proration import prorate
from meterline.clock import Clock
from meterline.db.scoping import scoped
from meterline.errors import AmountOverflow, Conflict, MeterlineError, NotFound
from meterline.ledger.service import Page, keyset_page, ledger_service, new_id
from meterline.licensing.service import DEMO_LICENSEE, LicenseNotFound, licensing_service

# -- errors -------------------------------------------------------------------------


class BillingError(MeterlineError):
    code = "billing_error"


class SubscriptionNotFound(BillingError, NotFound):
    code = "subscription_not_found"
    title = "No such subscription"


class SubscriptionItemNotFound(BillingError, NotFound):
    code = "subscription_item_not_found"
    title = "No such item on this subscription"


class InvalidBillingRequest(BillingError):
    status = 422
    code = "invalid_billing_request"
    title = "The billing request is not valid"


class SubscriptionCanceled(BillingError, Conflict):
    code = "subscription_canceled"
    title = "The subscription is canceled"


class DuplicateSubscriptionItem(BillingError, Conflict):
    code = "duplicate_subscription_item"
    title = "The subscription already has an item for this plan or pack"


# -- values -------------------------------------------------------------------------

LICENSEE = "licensee"
MAX_ITEMS = 100
MAX_QUANTITY = 10_000_000
# A line at most 10^15 minor units (ten trillion dollars), so totals of many lines fit in 64 bits.
MAX_LINE_MINOR = 10**15
# Periods one pass closes for a subscription the worker has not seen for a long time.
MAX_CATCH_UP = 24
DEMO_SUBSCRIPTION = "sub_demo_tenant-123"

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}")
_OWNER_TYPE = re.compile(r"[A-Za-z0-9_.-]{1,40}")


@dataclass(frozen=True, slots=True)
class ItemSpec:
    """An item to add: a catalogue plan, a catalogue pack, or a custom price (name, basis,
    unit price). `quantity` None: 1 per tenant, else the licensee's allowance."""

    plan_id: str | None = None
    pack_id: str | None = None
    name: str | None = None
    basis: str | None = None
    unit_price_minor: int | None = None
    quantity: int | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """What an item change did: the subscription, the item, and the proration lines it wrote."""

    subscription: Subscription
    item: SubscriptionItem
    prorations: list[InvoiceLine]


def _check_quantity(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUANTITY:
        raise InvalidBillingRequest(f"quantity must be a whole number from 0 to {MAX_QUANTITY}")
    return value


class BillingService:
    # -- subscriptions --------------------------------------------------------------
    def create_subscription(
        self, session: Session, tenant_id: str, *, customer_id: str, items: list[ItemSpec], now_ns: int,
        customer_type: str = LICENSEE, currency: str = "USD", id: str | None = None,
    ) -> Subscription:
        """Start a subscription now: its first period runs a calendar month from this second."""
        if not isinstance(customer_id, str) or not _ID.fullmatch(customer_id):
            raise InvalidBillingRequest("customer_id must be 1-128 letters, digits or _ . : @ / -")
        if not _OWNER_TYPE.fullmatch(customer_type):
            raise InvalidBillingRequest("customer_type must be 1-40 letters, digits or _ . -")
        if not 1 <= len(items) <= MAX_ITEMS:
            raise InvalidBillingRequest(f"a subscription has 1-{MAX_ITEMS} items")
        ledger_service.get_asset(session, tenant_id, currency)  # 404 asset_not_found
        if customer_type == LICENSEE:
            self._lock_license(session, tenant_id, customer_id)
        start_ns = whole_second(now_ns)
        start, end = period_bounds_ns(start_ns, 0)
        sub = Subscription(
            tenant_id=tenant_id, id=id or new_id("sub"), customer_type=customer_type, customer_id=customer_id,
            currency=currency, status="active", cancel_at_period_end=False, billing_anchor=start_ns,
            period_index=0, current_period_start=start, current_period_end=end, canceled_at=None,
            created_at=now_ns, updated_at=now_ns,
        )
        session.add(sub)
        session.flush()
        for spec in items:
            self._add(session, sub, spec, start, prorate=False)
        return sub

    def get_subscription(self, session: Session, tenant_id: str, subscription_id: str) -> Subscription:
        row = session.get(Subscription, (tenant_id, subscription_id))
        if row is None:
            raise SubscriptionNotFound(f"subscription {subscription_id} does not exist")
        return row

    def list_subscriptions(
        self, session: Session, tenant_id: str, *, customer_id: str | None = None, status: str | None = None,
        after: str | None = None, limit: int = 100,
    ) -> Page:
        stmt = scoped(select(Subscription), Subscription, tenant_id)
        if customer_id is not None:
            stmt = stmt.where(Subscription.customer_id == customer_id)
        if status is not None:
            stmt = stmt.where(Subscription.status == status)
        return keyset_page(session, stmt, Subscription.id, after, limit)

    def items(self, session: Session, tenant_id: str, subscription_id: str, *,
              include_removed: bool = False) -> list[SubscriptionItem]:
        stmt = scoped(select(SubscriptionItem), SubscriptionItem, tenant_id).where(
            SubscriptionItem.subscription_id == subscription_id)
        if not include_removed:
            stmt = stmt.where(SubscriptionItem.status == "active")
        # Afresh: under the subscription's lock they must be what the last holder committed,
        # not what this session loaded before it queued for the lock.
        stmt = stmt.execution_options(populate_existing=True)
        return list(session.scalars(stmt.order_by(SubscriptionItem.position)))

    def cancel(self, session: Session, tenant_id: str, subscription_id: str, clock: Clock) -> Subscription:
        """Cancel at the end of the current period: that period is still invoiced in full
        (with its prorations), then the subscription stops. Cancelling twice is a no-op."""
        sub = self.lock(session, tenant_id, subscription_id)
        self._catch_up(session, sub, clock, limit=None)
        if sub.status == "canceled":
            return sub
        sub.cancel_at_period_end = True
        sub.updated_at = clock.now_ns()
        session.flush()
        return sub

    # -- item changes ---------------------------------------------------------------
    def add_item(self, session: Session, tenant_id: str, subscription_id: str, spec: ItemSpec, clock: Clock,
                 *, prorate: bool = True) -> Change:
        """Add an item now; with `prorate`, charge it for the rest of the current period."""
        customer = session.get(Subscription, (tenant_id, subscription_id))  # (who it bills never changes)
        if customer is not None and customer.customer_type == LICENSEE:
            self._lock_license(session, tenant_id, customer.customer_id)
        sub = self._changeable(session, tenant_id, subscription_id, clock)
        at = self._now(sub, clock)
        if len(self.items(session, tenant_id, sub.id)) >= MAX_ITEMS:
            raise InvalidBillingRequest(f"a subscription has at most {MAX_ITEMS} items")
        return self._add(session, sub, spec, at, prorate=prorate)

    def update_item(self, session: Session, tenant_id: str, subscription_id: str, item_id: str, *, quantity: int,
                    clock: Clock, prorate: bool = True) -> Change:
        """Change an item's quantity now (cameras added, devices retired)."""
        sub = self._changeable(session, tenant_id, subscription_id, clock)
        item = self._item(session, sub, item_id)
        quantity = _check_quantity(quantity)
        if item.basis == "tenant" and quantity != 1:
            raise InvalidBillingRequest("a per-tenant item's quantity is always 1; remove the item instead")
        self._check_line(quantity, item.unit_price_minor)
        at = self._now(sub, clock)
        lines: list[InvoiceLine] = []
        if prorate and quantity != item.quantity:  # (the same quantity again changes nothing)
            lines = self._prorate(session, sub, item, item.billed_quantity, quantity, at)
            item.billed_quantity = quantity
        item.quantity = quantity
        item.updated_at = at
        session.flush()
        return Change(sub, item, lines)

    def remove_item(self, session: Session, tenant_id: str, subscription_id: str, item_id: str, clock: Clock,
                    *, prorate: bool = True) -> Change:
        """Remove an item now; with `prorate`, credit the rest of the current period. The
        period's invoice still bills it at its starting quantity (the credit offsets it)."""
        sub = self._changeable(session, tenant_id, subscription_id, clock)
        item = self._item(session, sub, item_id)
        at = self._now(sub, clock)
        lines: list[InvoiceLine] = []
        if prorate:
            lines = self._prorate(session, sub, item, item.billed_quantity, 0, at)
            item.billed_quantity = 0
        item.quantity = 0
        item.status = "removed"
        item.removed_at = item.updated_at = at
        session.flush()
        return Change(sub, item, lines)

    def _add(self, session: Session, sub: Subscription, spec: ItemSpec, at: int, *, prorate: bool) -> Change:
        name, basis, price, plan_id, pack_id = self._resolve(session, sub, spec)
        quantity = self._default_quantity(session, sub, basis, spec.quantity)
        self._check_line(quantity, price)
        every = self.items(session, sub.tenant_id, sub.id, include_removed=True)
        if plan_id or pack_id:
            for other in (i for i in every if i.status == "active"):
                if (plan_id and other.plan_id == plan_id) or (pack_id and other.pack_id == pack_id):
                    raise DuplicateSubscriptionItem(
                        f"item {other.id} already bills {plan_id or pack_id}; change its quantity instead",
                        item_id=other.id)
        # Present from the period's first second, before it was invoiced: the period's own
        # invoice bills it in full, no proration needed.
        from_start = at == sub.current_period_start and invoice_service.for_period(
            session, sub.tenant_id, sub.id, at) is None
        item = SubscriptionItem(
            tenant_id=sub.tenant_id, id=new_id("si"), subscription_id=sub.id, plan_id=plan_id, pack_id=pack_id,
            name=name, basis=basis, unit_price_minor=price, quantity=quantity,
            period_quantity=quantity if from_start else 0,
            billed_quantity=quantity if from_start or prorate else 0, status="active", position=len(every), created_at=at,
            updated_at=at, removed_at=None,
        )
        session.add(item)
        session.flush()
        lines = self._prorate(session, sub, item, 0, quantity, at) if prorate and not from_start else []
        return Change(sub, item, lines)

    def _resolve(self, session: Session, sub: Subscription, spec: ItemSpec
                 ) -> tuple[str, str, int, str | None, str | None]:
        """(name, basis, unit price, plan id, pack id) from the catalogue or the custom fields."""
        named = [spec.plan_id is not None, spec.pack_id is not None, spec.unit_price_minor is not None]
        if sum(named) != 1:
            raise InvalidBillingRequest("an item names exactly one of plan_id, pack_id or a custom unit_price")
        tenant = sub.tenant_id
        if spec.plan_id is not None or spec.pack_id is not None:
            if spec.name is not None or spec.basis is not None:
                raise InvalidBillingRequest("a catalogue item takes its name and basis from the catalogue")
            entry: Any = (licensing_service.get_plan(session, tenant, spec.plan_id) if spec.plan_id is not None
                          else licensing_service.get_pack(session, tenant, spec.pack_id or ""))
            if entry.currency != sub.currency:
                raise InvalidBillingRequest(f"{entry.id} is priced in {entry.currency}, the subscription in "
                                            f"{sub.currency}")
            return entry.name, entry.unit, entry.price_minor, spec.plan_id, spec.pack_id
        if not spec.name or len(spec.name) > 200:
            raise InvalidBillingRequest("a custom item needs a name of 1-200 characters")
        if spec.basis not in ("camera", "device", "tenant"):
            raise InvalidBillingRequest("a custom item needs a basis: camera, device or tenant")
        price = spec.unit_price_minor
        if isinstance(price, bool) or not isinstance(price, int) or price < 0:
            raise InvalidBillingRequest("unit_price must be zero or more")
        return spec.name, spec.basis, price, None, None

    @staticmethod
    def _lock_license(session: Session, tenant_id: str, licensee_id: str) -> None:
        """Lock a licensee's license (if it has one) before a subscription takes its counts.

        Why: a license change (PATCH /v1/licenses) locks the license and then brings the
        licensee's subscriptions in line. A subscription created or given an item meanwhile
        would otherwise read the allowance before the change commits — its items disagreeing
        with the license, and with each other — while the change cannot see it yet. Holding
        the license, one waits for the other, and each item reads the same allowance."""
        try:
            licensing_service.get_license(session, tenant_id, licensee_id, lock=True)
        except LicenseNotFound:
            pass

    def _default_quantity(self, session: Session, sub: Subscription, basis: str, given: int | None) -> int:
        if basis == "tenant":
            if given not in (None, 1):
                raise InvalidBillingRequest("a per-tenant item's quantity is always 1")
            return 1
        if given is not None:
            return _check_quantity(given)
        if sub.customer_type == LICENSEE:
            try:
                lic = licensing_service.get_license(session, sub.tenant_id, sub.customer_id)
            except LicenseNotFound:
                pass
            else:
                return lic.cameras_allowed if basis == "camera" else lic.devices_allowed
        raise InvalidBillingRequest(f"quantity is required: {sub.customer_id} has no license to take the "
                                    f"{basis} count from")

    @staticmethod
    def _check_line(quantity: int, unit_price_minor: int) -> None:
        if quantity * unit_price_minor > MAX_LINE_MINOR:
            raise AmountOverflow(f"quantity × unit price must not exceed {MAX_LINE_MINOR} minor units a month")

    def _prorate(self, session: Session, sub: Subscription, item: SubscriptionItem, old: int, new: int, at: int
                 ) -> list[InvoiceLine]:
        """The credit for `old` and the charge for `new` from `at` to the period's end."""
        if old == new:
            return []
        start, end = sub.current_period_start, sub.current_period_end
        p = prorate(item.unit_price_minor, old, new, start // NS, end // NS, at // NS)
        # Pending lines are listed oldest first; changes in one second keep the order they were
        # made in (the credit, then the charge, of each), numbered after the lines waiting.
        n = invoice_service.pending_count(session, sub.tenant_id, sub.id)
        lines = []
        if old:
            lines.append(invoice_service.pending_line(
                sub, item.id, f"Unused time on {old} × {item.name} after {when(at)}", old, item.unit_price_minor,
                -p.credit_minor, at, end, at, n))
        if new:
            lines.append(invoice_service.pending_line(
                sub, item.id, f"Remaining time on {new} × {item.name} after {when(at)}", new,
                item.unit_price_minor, p.charge_minor, at, end, at, n + 1))
        session.add_all(lines)
        session.flush()
        return lines

    # -- invoices of a subscription -------------------------------------------------
    def create_invoice(self, session: Session, tenant_id: str, subscription_id: str, clock: Clock) -> InvoiceDocument:
        """Invoice the current period now, as a draft, instead of waiting for its end. Changes
        after this are prorated onto the next period's invoice."""
        sub = self.lock(session, tenant_id, subscription_id)
        self._catch_up(session, sub, clock, limit=None)
        if sub.status == "canceled":
            raise SubscriptionCanceled(f"subscription {sub.id} is canceled")
        existing = invoice_service.for_period(session, tenant_id, sub.id, sub.current_period_start)
        if existing is not None:
            raise InvoiceExists(f"the current period of {sub.id} is invoiced as {existing.id}",
                                invoice_id=existing.id)
        inv = self._period_invoice(session, sub, clock.now_ns())
        return invoice_service.document(session, inv)

    def preview(self, session: Session, tenant_id: str, subscription_id: str, now_ns: int) -> InvoiceDocument:
        """The next invoice this subscription will get, as it stands now (nothing is saved):
        the current period's, or — when that one exists already — the next period's."""
        sub = self.get_subscription(session, tenant_id, subscription_id)
        if sub.status == "canceled":
            raise SubscriptionCanceled(f"subscription {sub.id} is canceled; no invoice is coming")
        invoiced = invoice_service.for_period(session, tenant_id, sub.id, sub.current_period_start) is not None
        # The subscription's last invoice settles a leftover credit instead of carrying it, as
        # the close will with the invoices as they stand now (`credits`; nothing is locked).
        final = credits.position(session, tenant_id, sub.id, lock=False) if sub.cancel_at_period_end else None
        if not invoiced:
            start, end = sub.current_period_start, sub.current_period_end
            charges = self._charges(session, sub, current=True)
        elif sub.cancel_at_period_end:
            start = end = sub.current_period_end  # only the leftover prorations remain to bill
            charges = []
        else:
            start, end = period_bounds_ns(sub.billing_anchor, sub.period_index + 1)
            charges = self._charges(session, sub, current=False)
        pending = invoice_service.pending_lines(session, tenant_id, sub.id)
        inv = Invoice(
            tenant_id=tenant_id, id=None, subscription_id=sub.id, customer_type=sub.customer_type,
            customer_id=sub.customer_id, currency=sub.currency, number=None, status="upcoming",
            period_start=start, period_end=end, total_minor=0, amount_paid_minor=0, payment_attempts=0,
            created_at=now_ns, updated_at=now_ns,
        )
        composed = invoice_service.compose(sub, None, start, end, charges, pending, now_ns, final=final)
        inv.total_minor = composed.total_minor
        return InvoiceDocument(inv, [*pending, *composed.lines])

    def _charges(self, session: Session, sub: Subscription, *, current: bool) -> list[Charge]:
        """Recurring charges: the current period's at starting quantities (removed items
        included — they were there when it began), or the next one's at today's."""
        items = self.items(session, sub.tenant_id, sub.id, include_removed=current)
        pairs = [(i, i.period_quantity if current else i.quantity) for i in items]
        return [Charge(i.id, i.name, q, i.unit_price_minor) for i, q in pairs if q > 0]

    def _period_invoice(self, session: Session, sub: Subscription, now_ns: int) -> Invoice:
        return invoice_service.create(session, sub, sub.current_period_start, sub.current_period_end,
                                      self._charges(session, sub, current=True), now_ns)

    # -- closing periods ------------------------------------------------------------
    def close_due(self, session: Session, tenant_id: str, subscription_id: str, clock: Clock) -> list[Invoice]:
        """The period job's unit of work: lock, re-check, close every period that has ended."""
        return self._catch_up(session, self.lock(session, tenant_id, subscription_id), clock)

    def due_subscriptions(self, session: Session, now_ns: int, limit: int = 100) -> list[tuple[str, str]]:
        """(tenant, subscription) of active subscriptions whose period has ended, across tenants."""
        stmt = (select(Subscription.tenant_id, Subscription.id)
                .where(Subscription.status == "active", Subscription.current_period_end <= now_ns)
                .order_by(Subscription.current_period_end).limit(limit))
        return [(t, s) for t, s in session.execute(stmt)]

    def _catch_up(self, session: Session, sub: Subscription, clock: Clock, *,
                  limit: int | None = MAX_CATCH_UP) -> list[Invoice]:
        """Close the periods that ended: at most `limit` (a worker pass), or all of them (None:
        a request, whose change or cancel must land in the period that is current now)."""
        closed: list[Invoice] = []
        passes = 0
        while sub.status == "active" and sub.current_period_end <= clock.now_ns():
            if limit is not None and passes >= limit:
                break
            closed.extend(self._close_period(session, sub, clock))
            passes += 1
        return closed

    def _close_period(self, session: Session, sub: Subscription, clock: Clock) -> list[Invoice]:
        """Invoice the ended period (or take the invoice made early), finalize it, try the
        wallet once, then open the next period — or, when cancelling, bill what is left and stop."""
        now = clock.now_ns()
        if sub.cancel_at_period_end:
            # Every invoice of the subscription is locked before anything posts to the ledger
            # (subscription → its invoices → the tenant's ledger head, the order a `pay` keeps:
            # its invoice, then the head). Collecting the early invoice first took the head, and
            # the lock on an old invoice a customer was paying meanwhile then deadlocked.
            invoice_service.lock_all(session, sub.tenant_id, sub.id)
        early = invoice_service.for_period(session, sub.tenant_id, sub.id, sub.current_period_start)
        end = sub.current_period_end
        invoices: list[Invoice] = []
        if early is not None:
            # An invoice made early is locked before it is finalized here: a `finalize` call
            # racing this close must not have its number overwritten. It is collected before a
            # last invoice is made, so what it is paid counts towards a refund.
            invoices.append(self._collect(session, invoice_service.lock(session, sub.tenant_id, early.id), clock))
        if sub.cancel_at_period_end:
            # The last invoice of a canceled subscription is final: there is no next invoice to
            # carry a credit to, so a credit left over pays the open invoices and the rest that
            # is money is refunded to the wallet (`credits`). The subscription's invoices are
            # locked (after the subscription, as everywhere) so none is paid or voided meanwhile.
            final = credits.position(session, sub.tenant_id, sub.id, lock=True)
            if early is None:
                invoices.append(invoice_service.create_final(
                    session, sub, sub.current_period_start, end, self._charges(session, sub, current=True), clock,
                    position=final))
            elif invoice_service.pending_lines(session, sub.tenant_id, sub.id):
                # Changes after the early invoice (and a credit it carried): billed, or
                # settled, on a last invoice at the period's end.
                invoices.append(invoice_service.create_final(session, sub, end, end, [], clock, position=final))
            sub.status, sub.canceled_at = "canceled", end
        else:
            if early is None:
                invoices.append(self._period_invoice(session, sub, now))
            sub.period_index += 1
            sub.current_period_start, sub.current_period_end = period_bounds_ns(sub.billing_anchor,
                                                                                sub.period_index)
            # The new period bills what each item has now (a removed item: nothing).
            session.execute(
                update(SubscriptionItem)
                .where(SubscriptionItem.tenant_id == sub.tenant_id, SubscriptionItem.subscription_id == sub.id,
                       (SubscriptionItem.period_quantity != SubscriptionItem.quantity)
                       | (SubscriptionItem.billed_quantity != SubscriptionItem.quantity))
                .values(period_quantity=SubscriptionItem.quantity, billed_quantity=SubscriptionItem.quantity)
                .execution_options(synchronize_session="fetch")
            )
        sub.updated_at = now
        session.flush()
        for inv in invoices[1 if early is not None else 0:]:
            self._collect(session, inv, clock)
        return invoices

    @staticmethod
    def _collect(session: Session, inv: Invoice, clock: Clock) -> Invoice:
        """Finalize a draft and try the wallet once."""
        if inv.status == "draft":
            invoice_service.finalize_locked(session, inv, clock.now_ns())
        if inv.status == "open":
            invoice_service.attempt_payment(session, inv, clock)
        return inv

    # -- helpers --------------------------------------------------------------------
    def _changeable(self, session: Session, tenant_id: str, subscription_id: str, clock: Clock) -> Subscription:
        """Locked, brought up to date (a period that ended is closed first, so a change always
        falls inside the current period), and not canceled."""
        sub = self.lock(session, tenant_id, subscription_id)
        self._catch_up(session, sub, clock, limit=None)
        if sub.status == "canceled":
            raise SubscriptionCanceled(f"subscription {sub.id} is canceled")
        return sub

    @staticmethod
    def _now(sub: Subscription, clock: Clock) -> int:
        """The second a change counts from. Never before the current period: another process
        whose clock runs a little ahead may have opened it."""
        return max(whole_second(clock.now_ns()), sub.current_period_start)

    def _item(self, session: Session, sub: Subscription, item_id: str) -> SubscriptionItem:
        row = session.get(SubscriptionItem, (sub.tenant_id, item_id), populate_existing=True)  # (see `items`)
        if row is None or row.subscription_id != sub.id or row.status != "active":
            raise SubscriptionItemNotFound(f"subscription {sub.id} has no item {item_id}")
        return row

    @staticmethod
    def lock(session: Session, tenant_id: str, subscription_id: str) -> Subscription:
        """The subscription, locked and read afresh. Every change, invoice and period close of
        one subscription queues on its row (FOR NO KEY UPDATE on PostgreSQL; SQLite's single
        writer serialises anyway). A licensee's license is locked before its subscriptions, never
        after (`_lock_license`), as a license change does.

        NO KEY UPDATE, not UPDATE: holders still queue on each other, but a row that refers to
        the subscription may be written meanwhile. A payment of one of its invoices writes the
        invoice twice, and the second write re-checks the invoice's foreign key to the
        subscription (FOR KEY SHARE, which FOR UPDATE blocks): a close holding the subscription
        and waiting for that invoice's lock deadlocked with it. The key never changes."""
        stmt = scoped(select(Subscription), Subscription, tenant_id).where(Subscription.id == subscription_id)
        locked = stmt.with_for_update(key_share=True).execution_options(populate_existing=True)
        row = session.scalars(locked).first()
        if row is None:
            raise SubscriptionNotFound(f"subscription {subscription_id} does not exist")
        return row

    # -- demo -----------------------------------------------------------------------
    def seed_demo(self, session: Session, tenant_id: str, now_ns: int) -> None:
        """tenant-123 subscribed to what its demo license grants (plan and packs, at its
        camera allowance). Idempotent; nothing without the licensing demo."""
        if session.get(Subscription, (tenant_id, DEMO_SUBSCRIPTION)) is not None:
            return
        try:
            lic = licensing_service.get_license(session, tenant_id, DEMO_LICENSEE)
        except LicenseNotFound:
            return
        items = [ItemSpec(plan_id=lic.plan_id), *(ItemSpec(pack_id=p) for p in lic.packs or [])]
        try:
            with session.begin_nested():
                self.create_subscription(session, tenant_id, customer_id=DEMO_LICENSEE, items=items,
                                         now_ns=now_ns, id=DEMO_SUBSCRIPTION)
        except IntegrityError:
            pass  # seeded by a concurrent process


billing_service = BillingService()
