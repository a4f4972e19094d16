"""Billing rules on both backends: catalogue items, prorations to the cent, invoice states,
paying from the wallet through the ledger, credits carried forward, isolation between tenants.
Each test commits in its own tenant."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from meterline.billing.invoices import (
    InvalidInvoiceState,
    InvoiceExists,
    InvoiceNotFound,
    credit_refund_transfer_id,
    invoice_service,
    payment_transfer_id,
)
from meterline.billing.models import Invoice
from meterline.billing.service import (
    DEMO_SUBSCRIPTION,
    DuplicateSubscriptionItem,
    InvalidBillingRequest,
    ItemSpec,
    SubscriptionCanceled,
    SubscriptionItemNotFound,
    SubscriptionNotFound,
    billing_service,
)
from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.errors import AmountOverflow
from meterline.events.models import Event
from meterline.ledger.models import Transfer
from meterline.ledger.service import AssetNotFound, ledger_service
from meterline.ledger.verify import verify_ledger
from meterline.licensing.service import GrowthPackNotFound, PlanNotFound
from meterline.wallets.service import wallet_service
from tests.billing.scenarios import invoice_early_and_pay, remove_first_item
from tests.factories import make_deposit, make_licensing_catalogue, make_subscription

NS = 1_000_000_000


def at(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * NS  # type: ignore[misc]


NOV_1, DEC_1, JAN_1 = at(2025, 11, 1), at(2025, 12, 1), at(2026, 1, 1)
CUSTOM = ItemSpec(name="Support", basis="camera", unit_price_minor=1000, quantity=10)


@pytest.fixture
def tenant(db: Database, clock: FrozenClock, tenant_id: str) -> str:
    """The BrinkByte catalogue and tenant-123's license (100 cameras, 10 devices), on 1 Nov 2025."""
    clock.set(NOV_1)
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
    return tenant_id


def subscribe(db: Database, tenant: str, clock: FrozenClock, items: list[ItemSpec] | None = None,
              customer_id: str = "tenant-123") -> str:
    with db.session() as s:
        return make_subscription(s, tenant, clock, items=items, customer_id=customer_id)


def lines(doc) -> list[tuple[str, int, int]]:  # type: ignore[no-untyped-def]
    return [(ln.kind, ln.quantity, ln.amount_minor) for ln in doc.lines]


def deposit(db: Database, tenant: str, clock: FrozenClock, amount_minor: int, owner: str = "tenant-123") -> None:
    with db.session() as s:
        make_deposit(s, tenant, clock, owner_id=owner, owner_type="licensee", amount_minor=amount_minor)


def wallet(db: Database, tenant: str, owner: str = "tenant-123") -> int:
    with db.session(write=False) as s:
        return wallet_service.balance(s, tenant, "licensee", owner, "USD").available


# -- subscriptions and items ------------------------------------------------------------------
def test_catalogue_items_take_the_catalogue_price_and_the_license_allowance(db, tenant, clock):
    sid = subscribe(db, tenant, clock, [ItemSpec(plan_id="base_license"), ItemSpec(pack_id="advanced_analytics"),
                                        ItemSpec(pack_id="intelligence"), ItemSpec(plan_id="edge_device_basic"),
                                        ItemSpec(plan_id="edge_device_managed", quantity=3), CUSTOM])
    with db.session(write=False) as s:
        sub = billing_service.get_subscription(s, tenant, sid)
        items = billing_service.items(s, tenant, sid)
    assert [(i.name, i.basis, i.unit_price_minor, i.quantity, i.period_quantity) for i in items] == [
        ("Base License", "camera", 6000, 100, 100), ("Advanced Analytics Pack", "camera", 2000, 100, 100),
        ("Intelligence Pack", "tenant", 40000, 1, 1), ("Edge Device Basic", "device", 5000, 10, 10),
        ("Edge Device Managed", "device", 6500, 3, 3), ("Support", "camera", 1000, 10, 10)]
    assert (sub.current_period_start, sub.current_period_end, sub.status) == (NOV_1, DEC_1, "active")
    assert (sub.customer_type, sub.customer_id, sub.currency) == ("licensee", "tenant-123", "USD")


@pytest.mark.parametrize(("spec", "error"), [
    (ItemSpec(plan_id="base_license", pack_id="intelligence"), InvalidBillingRequest),
    (ItemSpec(), InvalidBillingRequest),
    (ItemSpec(plan_id="base_license", name="x"), InvalidBillingRequest),
    (ItemSpec(pack_id="intelligence", quantity=2), InvalidBillingRequest),
    (ItemSpec(plan_id="base_license", quantity=-1), InvalidBillingRequest),
    (ItemSpec(plan_id="base_license", quantity=10_000_001), InvalidBillingRequest),
    (ItemSpec(name="x", basis="room", unit_price_minor=1), InvalidBillingRequest),
    (ItemSpec(name="", basis="camera", unit_price_minor=1), InvalidBillingRequest),
    (ItemSpec(name="x", basis="camera", unit_price_minor=-1, quantity=1), InvalidBillingRequest),
    (ItemSpec(plan_id="platinum"), PlanNotFound),
    (ItemSpec(pack_id="teleportation"), GrowthPackNotFound),
    (ItemSpec(name="x", basis="camera", unit_price_minor=10**12, quantity=10_000), AmountOverflow),
])
def test_bad_items_are_refused(db, tenant, clock, spec, error):
    with db.session() as s, pytest.raises(error):
        make_subscription(s, tenant, clock, items=[spec])


def test_bad_subscriptions_are_refused(db, tenant, clock):
    with db.session() as s:
        with pytest.raises(InvalidBillingRequest, match="no license"):
            make_subscription(s, tenant, clock, customer_id="nobody", items=[ItemSpec(plan_id="base_license")])
        with pytest.raises(InvalidBillingRequest, match="1-100 items"):
            make_subscription(s, tenant, clock, items=[])
        with pytest.raises(InvalidBillingRequest, match="customer_id"):
            make_subscription(s, tenant, clock, customer_id="a b")
        with pytest.raises(DuplicateSubscriptionItem):
            make_subscription(s, tenant, clock, items=[ItemSpec(plan_id="base_license")] * 2)
        with pytest.raises(AssetNotFound):
            billing_service.create_subscription(s, tenant, customer_id="tenant-123", items=[CUSTOM],
                                                currency="XYZ", now_ns=clock.now_ns())
        with pytest.raises(InvalidBillingRequest, match="priced in USD"):
            billing_service.create_subscription(s, tenant, customer_id="tenant-123", currency="USDC",
                                                items=[ItemSpec(plan_id="base_license")], now_ns=clock.now_ns())


def test_the_worked_example(db, tenant, clock):
    """docs/billing.md: cameras 100 → 120 and the intelligence pack enabled on 20 Nov, 08:00."""
    sid = subscribe(db, tenant, clock, [ItemSpec(plan_id="base_license"), ItemSpec(pack_id="advanced_analytics"),
                                        ItemSpec(pack_id="active_transport")])
    clock.set(at(2025, 11, 20, 8))
    with db.session() as s:
        base = billing_service.items(s, tenant, sid)[0]
        change = billing_service.update_item(s, tenant, sid, base.id, quantity=120, clock=clock)
        added = billing_service.add_item(s, tenant, sid, ItemSpec(pack_id="intelligence"), clock)
    assert [(ln.description, ln.amount_minor) for ln in change.prorations + added.prorations] == [
        ("Unused time on 100 × Base License after 2025-11-20 08:00:00 UTC", -213_333),
        ("Remaining time on 120 × Base License after 2025-11-20 08:00:00 UTC", 256_000),
        ("Remaining time on 1 × Intelligence Pack after 2025-11-20 08:00:00 UTC", 14_222),
    ]
    assert (added.item.quantity, added.item.period_quantity) == (1, 0)  # billed by proration this period
    with db.session(write=False) as s:
        preview = billing_service.preview(s, tenant, sid, clock.now_ns())
    assert lines(preview) == [("proration", 100, -213_333), ("proration", 120, 256_000), ("proration", 1, 14_222),
                              ("subscription", 100, 600_000), ("subscription", 100, 200_000),
                              ("subscription", 100, 200_000)]
    assert preview.invoice.total_minor == 1_056_889  # $10,568.89
    clock.set(DEC_1)
    with db.session() as s:
        [inv] = billing_service.close_due(s, tenant, sid, clock)
        doc = invoice_service.document(s, inv)
    assert lines(doc) == lines(preview) and inv.total_minor == 1_056_889
    assert (inv.period_start, inv.period_end, inv.status, inv.number) == (NOV_1, DEC_1, "open", "INV-000001")
    # December bills the new quantities in full, with nothing pending.
    with db.session(write=False) as s:
        december = billing_service.preview(s, tenant, sid, clock.now_ns())
    assert lines(december) == [("subscription", 120, 720_000), ("subscription", 100, 200_000),
                               ("subscription", 100, 200_000), ("subscription", 1, 40_000)]


def test_removing_an_item_credits_the_rest_and_stops_billing_it(db, tenant, clock):
    sid = subscribe(db, tenant, clock, [CUSTOM, ItemSpec(pack_id="intelligence")])
    clock.set(at(2025, 11, 11))  # a third of November gone
    with db.session() as s:
        pack = billing_service.items(s, tenant, sid)[1]
        change = billing_service.remove_item(s, tenant, sid, pack.id, clock)
        with pytest.raises(SubscriptionItemNotFound):
            billing_service.update_item(s, tenant, sid, pack.id, quantity=1, clock=clock)
    assert [ln.amount_minor for ln in change.prorations] == [-26_667]  # 40000 × 20/30, rounded to the nearest cent
    assert (change.item.status, change.item.quantity, change.item.period_quantity) == ("removed", 0, 1)
    clock.set(DEC_1)
    with db.session() as s:
        [inv] = billing_service.close_due(s, tenant, sid, clock)
        assert lines(invoice_service.document(s, inv)) == [
            ("proration", 1, -26_667), ("subscription", 10, 10_000), ("subscription", 1, 40_000)]
    with db.session(write=False) as s:
        assert lines(billing_service.preview(s, tenant, sid, clock.now_ns())) == [("subscription", 10, 10_000)]
        assert [i.name for i in billing_service.items(s, tenant, sid)] == ["Support"]


def test_changes_without_proration_count_from_the_next_period(db, tenant, clock):
    sid = subscribe(db, tenant, clock, [CUSTOM])
    clock.set(at(2025, 11, 16))
    with db.session() as s:
        item = billing_service.items(s, tenant, sid)[0]
        change = billing_service.update_item(s, tenant, sid, item.id, quantity=20, clock=clock, prorate=False)
        assert change.prorations == []
        assert lines(billing_service.preview(s, tenant, sid, clock.now_ns())) == [("subscription", 10, 10_000)]
        # The same quantity again writes nothing either way.
        assert billing_service.update_item(s, tenant, sid, item.id, quantity=20, clock=clock).prorations == []


def test_a_prorated_change_after_one_without_credits_only_what_the_period_charged(db, tenant, clock):
    """A change without proration counts from the next period. A prorated change after it
    credited the rest of the period at the new quantity — time never charged: 100 cameras
    added without proration and then removed credited 3,000.00 against nothing."""
    sid = subscribe(db, tenant, clock, [CUSTOM])  # 10 × 10.00 a month, from 1 Nov
    clock.set(at(2025, 11, 16))  # half of a 30-day month left
    with db.session() as s:
        cams = billing_service.add_item(s, tenant, sid, ItemSpec(name="Cams", basis="camera", unit_price_minor=6000,
                                                                 quantity=100), clock, prorate=False).item
        assert billing_service.remove_item(s, tenant, sid, cams.id, clock).prorations == []  # never charged
        support = billing_service.items(s, tenant, sid)[0]
        billing_service.update_item(s, tenant, sid, support.id, quantity=1000, clock=clock, prorate=False)
        change = billing_service.update_item(s, tenant, sid, support.id, quantity=1, clock=clock)
        # The period charges 10 until now: credit the rest of 10, charge the rest of 1.
        assert [(ln.quantity, ln.amount_minor) for ln in change.prorations] == [(10, -5_000), (1, 500)]
        assert sorted(lines(billing_service.preview(s, tenant, sid, clock.now_ns()))) == [
            ("proration", 1, 500), ("proration", 10, -5_000), ("subscription", 10, 10_000)]
    clock.set(DEC_1)
    with db.session() as s:
        [november] = billing_service.close_due(s, tenant, sid, clock)
        assert november.total_minor == 5_500  # half a month of 10, half of 1
        [support] = billing_service.items(s, tenant, sid)
        assert (support.period_quantity, support.billed_quantity) == (1, 1)


def test_pending_lines_of_changes_in_one_second_keep_the_order_they_were_made_in(db, tenant, clock):
    sid = subscribe(db, tenant, clock, [CUSTOM])
    clock.set(at(2025, 11, 16))
    with db.session() as s:
        item = billing_service.items(s, tenant, sid)[0]
        for q in (12, 13, 11):
            billing_service.update_item(s, tenant, sid, item.id, quantity=q, clock=clock)
        pending = invoice_service.pending_lines(s, tenant, sid)
        assert [(ln.quantity, ln.amount_minor > 0) for ln in pending] == [
            (10, False), (12, True), (12, False), (13, True), (13, False), (11, True)]


def test_an_item_added_and_removed_in_one_second_costs_nothing(db, tenant, clock):
    sid = subscribe(db, tenant, clock, [CUSTOM])
    clock.set(at(2025, 11, 7, 13, 17, 5))
    with db.session() as s:
        item = billing_service.add_item(s, tenant, sid, ItemSpec(plan_id="edge_device_managed", quantity=7), clock)
        billing_service.remove_item(s, tenant, sid, item.item.id, clock)
        doc = billing_service.preview(s, tenant, sid, clock.now_ns())
    assert sum(ln.amount_minor for ln in doc.lines if ln.kind == "proration") == 0
    assert doc.invoice.total_minor == 10_000


def test_duplicate_catalogue_items_are_refused_but_a_removed_one_can_return(db, tenant, clock):
    sid = subscribe(db, tenant, clock, [ItemSpec(pack_id="intelligence")])
    with db.session() as s:
        with pytest.raises(DuplicateSubscriptionItem):
            billing_service.add_item(s, tenant, sid, ItemSpec(pack_id="intelligence"), clock)
        first = billing_service.items(s, tenant, sid)[0]
        billing_service.remove_item(s, tenant, sid, first.id, clock)
        again = billing_service.add_item(s, tenant, sid, ItemSpec(pack_id="intelligence"), clock)
    assert again.item.id != first.id


# -- invoices ---------------------------------------------------------------------------------
def test_invoice_states_and_numbers(db, tenant, clock):
    a, b = subscribe(db, tenant, clock, [CUSTOM]), subscribe(db, tenant, clock, [CUSTOM])
    with db.session() as s:
        inv_a = billing_service.create_invoice(s, tenant, a, clock).invoice
        inv_b = billing_service.create_invoice(s, tenant, b, clock).invoice
        with pytest.raises(InvoiceExists) as exists:
            billing_service.create_invoice(s, tenant, a, clock)
        assert exists.value.extra["invoice_id"] == inv_a.id
    assert (inv_a.status, inv_a.number, inv_a.total_minor) == ("draft", None, 10_000)
    with db.session() as s:
        with pytest.raises(InvalidInvoiceState, match="finalize it first"):
            invoice_service.pay(s, tenant, inv_a.id, clock)
        assert invoice_service.finalize(s, tenant, inv_b.id, clock.now_ns()).number == "INV-000001"
        assert invoice_service.finalize(s, tenant, inv_a.id, clock.now_ns()).number == "INV-000002"
        with pytest.raises(InvalidInvoiceState, match="only a draft"):
            invoice_service.finalize(s, tenant, inv_a.id, clock.now_ns())
        voided = invoice_service.void(s, tenant, inv_b.id, clock.now_ns())
        assert (voided.status, voided.voided_at, voided.next_payment_attempt_at) == ("void", clock.now_ns(), None)
        for op in (lambda: invoice_service.void(s, tenant, inv_b.id, 0),
                   lambda: invoice_service.pay(s, tenant, inv_b.id, clock),
                   lambda: invoice_service.finalize(s, tenant, inv_b.id, 0)):
            with pytest.raises(InvalidInvoiceState):
                op()
        with pytest.raises(InvoiceNotFound):
            invoice_service.get(s, tenant, "in_nope")


def test_paying_from_the_wallet_is_one_ledger_transfer_in_full_or_not_at_all(db, tenant, clock):
    sid = subscribe(db, tenant, clock, [CUSTOM])
    with db.session() as s:
        inv = billing_service.create_invoice(s, tenant, sid, clock).invoice
        invoice_service.finalize(s, tenant, inv.id, clock.now_ns())
    deposit(db, tenant, clock, 9_999)
    with db.session() as s:
        outcome = invoice_service.pay(s, tenant, inv.id, clock)
    assert not outcome.paid and outcome.error is not None
    assert outcome.error.code == "insufficient_funds" and outcome.error.extra["amount_due"] == "100.00"
    with db.session(write=False) as s:
        row = invoice_service.get(s, tenant, inv.id)
        assert (row.status, row.payment_attempts, row.amount_paid_minor) == ("open", 1, 0)
        assert row.last_payment_error == ("the USD wallet of licensee tenant-123 has 99.99 available; "
                                          "the invoice is due 100.00")
        assert row.next_payment_attempt_at == clock.now_ns() + 86_400 * NS
    assert wallet(db, tenant) == 9_999  # nothing was taken
    deposit(db, tenant, clock, 1)
    with db.session() as s:
        paid = invoice_service.pay(s, tenant, inv.id, clock)
        revenue = wallet_service.system_account(s, tenant, "platform_revenue", "USD", clock.now_ns())
        transfer = ledger_service.get_transfer(s, tenant, payment_transfer_id(inv.id))
        assert (transfer.amount, transfer.credit_account_id, transfer.code, transfer.reference) == (
            10_000, revenue.id, "invoice_payment", inv.id)
        assert revenue.credits_posted == 10_000
    assert paid.paid and paid.invoice.status == "paid" and paid.invoice.amount_paid_minor == 10_000
    assert paid.invoice.last_payment_error is None and paid.invoice.next_payment_attempt_at is None
    assert wallet(db, tenant) == 0
    with db.session() as s, pytest.raises(InvalidInvoiceState, match="nothing left to pay"):
        invoice_service.pay(s, tenant, inv.id, clock)
    with db.session() as s, pytest.raises(InvalidInvoiceState):
        invoice_service.void(s, tenant, inv.id, clock.now_ns())
    with db.session(write=False) as s:
        assert verify_ledger(s, tenant).ok


def test_a_zero_invoice_is_paid_when_finalized(db, tenant, clock):
    sid = subscribe(db, tenant, clock, [ItemSpec(plan_id="trial", quantity=2)])
    with db.session() as s:
        inv = billing_service.create_invoice(s, tenant, sid, clock).invoice
        done = invoice_service.finalize(s, tenant, inv.id, clock.now_ns())
    assert (done.status, done.total_minor, done.payment_transfer_id) == ("paid", 0, None)


def test_a_credit_larger_than_the_charges_is_carried_forward(db, tenant, clock):
    sid = subscribe(db, tenant, clock, [CUSTOM])
    with db.session() as s:
        november = billing_service.create_invoice(s, tenant, sid, clock).invoice  # invoiced early
    clock.set(at(2025, 11, 16))
    with db.session() as s:
        item = billing_service.items(s, tenant, sid)[0]
        billing_service.remove_item(s, tenant, sid, item.id, clock)  # −50.00, for the next invoice
        billing_service.add_item(s, tenant, sid, ItemSpec(name="Tiny", basis="tenant", unit_price_minor=1000), clock)
    clock.set(DEC_1)
    with db.session() as s:
        [closed] = billing_service.close_due(s, tenant, sid, clock)
        assert closed.id == november.id and closed.status == "open"
    clock.set(JAN_1)
    with db.session() as s:
        [december] = billing_service.close_due(s, tenant, sid, clock)
        doc = invoice_service.document(s, december)
        carried = invoice_service.pending_lines(s, tenant, sid)
    # −50.00 credit, +5.00 for half of November's Tiny, +10.00 Tiny for December: −35.00.
    assert lines(doc) == [("proration", 10, -5_000), ("proration", 1, 500), ("subscription", 1, 1_000),
                          ("balance", 1, 3_500)]
    assert (december.total_minor, december.status) == (0, "paid")
    assert [(ln.kind, ln.amount_minor, ln.invoice_id) for ln in carried] == [("balance", -3_500, None)]
    clock.set(at(2026, 2, 1))
    with db.session() as s:
        [january] = billing_service.close_due(s, tenant, sid, clock)
        assert january.total_minor == 0 and len(invoice_service.pending_lines(s, tenant, sid)) == 1


def test_preview_is_what_the_invoice_will_be_and_saves_nothing(db, tenant, clock):
    sid = subscribe(db, tenant, clock)
    clock.set(at(2025, 11, 9, 10, 11, 12))
    with db.session() as s:
        item = billing_service.items(s, tenant, sid)[0]
        billing_service.update_item(s, tenant, sid, item.id, quantity=37, clock=clock)
    with db.session(write=False) as s:
        preview = billing_service.preview(s, tenant, sid, clock.now_ns())
        assert s.scalar(select(func.count()).select_from(Invoice).where(Invoice.tenant_id == tenant)) == 0
    assert (preview.invoice.id, preview.invoice.status) == (None, "upcoming")
    with db.session() as s:
        doc = billing_service.create_invoice(s, tenant, sid, clock)
        nxt = billing_service.preview(s, tenant, sid, clock.now_ns())
    assert lines(doc) == lines(preview) and doc.invoice.total_minor == preview.invoice.total_minor
    # Once the period is invoiced, the upcoming invoice is December's at today's quantities.
    assert (nxt.invoice.period_start, nxt.invoice.period_end) == (DEC_1, JAN_1)
    assert lines(nxt) == [("subscription", 37, 222_000), ("subscription", 100, 200_000)]


def test_cancel_at_period_end(db, tenant, clock):
    sid = subscribe(db, tenant, clock, [CUSTOM])
    with db.session() as s:
        billing_service.create_invoice(s, tenant, sid, clock)
    clock.set(at(2025, 11, 16))
    with db.session() as s:
        item = billing_service.items(s, tenant, sid)[0]
        billing_service.update_item(s, tenant, sid, item.id, quantity=20, clock=clock)
        sub = billing_service.cancel(s, tenant, sid, clock)
        assert sub.cancel_at_period_end and sub.status == "active"
        leftover = billing_service.preview(s, tenant, sid, clock.now_ns())
    assert (leftover.invoice.period_start, leftover.invoice.period_end) == (DEC_1, DEC_1)
    assert leftover.invoice.total_minor == 5_000
    clock.set(DEC_1 + 5 * NS)
    with db.session() as s:
        closed = billing_service.close_due(s, tenant, sid, clock)
        sub = billing_service.get_subscription(s, tenant, sid)
    assert [(i.period_start, i.total_minor) for i in closed] == [(NOV_1, 10_000), (DEC_1, 5_000)]
    assert (sub.status, sub.canceled_at) == ("canceled", DEC_1)
    with db.session() as s:
        assert billing_service.cancel(s, tenant, sid, clock).status == "canceled"
        for op in (lambda: billing_service.add_item(s, tenant, sid, CUSTOM, clock),
                   lambda: billing_service.create_invoice(s, tenant, sid, clock),
                   lambda: billing_service.preview(s, tenant, sid, clock.now_ns())):
            with pytest.raises(SubscriptionCanceled):
                op()


def _paid_early_then_removed(db, tenant, clock) -> str:  # type: ignore[no-untyped-def]
    """CUSTOM ($100.00 a month) from 1 Nov, November invoiced early and paid from the wallet, the
    item removed on 16 Nov (−50.00 waiting for the next invoice), then canceled."""
    sid = subscribe(db, tenant, clock, [CUSTOM])
    deposit(db, tenant, clock, 10_000)
    invoice_early_and_pay(db, tenant, sid, clock)
    clock.set(at(2025, 11, 16))
    remove_first_item(db, tenant, sid, clock, cancel=True)
    return sid


def revenue(db: Database, tenant: str) -> int:
    with db.session(write=False) as s:
        acc = wallet_service.system_account(s, tenant, "platform_revenue", "USD", 0)
        return acc.credits_posted - acc.debits_posted


def test_a_credit_left_at_cancellation_is_refunded_to_the_wallet(db, tenant, clock):
    """The bug: the leftover −50.00 went on a (1 Dec, 1 Dec) invoice, which carried it forward
    again as a pending line of a subscription that never invoices again — the customer lost it."""
    sid = _paid_early_then_removed(db, tenant, clock)
    assert (wallet(db, tenant), revenue(db, tenant)) == (0, 10_000)
    with db.session(write=False) as s:
        upcoming = billing_service.preview(s, tenant, sid, clock.now_ns())
    assert lines(upcoming) == [("proration", 10, -5_000), ("balance", 1, 5_000)]
    clock.set(DEC_1 + 5 * NS)
    with db.session() as s:
        [november, final] = billing_service.close_due(s, tenant, sid, clock)
        doc = invoice_service.document(s, final)
        assert invoice_service.pending_lines(s, tenant, sid) == []
        refund = ledger_service.get_transfer(s, tenant, credit_refund_transfer_id(sid))
    assert (november.period_start, november.status) == (NOV_1, "paid")
    assert (final.period_start, final.period_end, final.status, final.total_minor) == (DEC_1, DEC_1, "paid", 0)
    assert lines(doc) == lines(upcoming)
    assert doc.lines[-1].description == f"Credit refunded to the wallet (transfer sub:{sid}:credit_refund)"
    assert (refund.amount, refund.code, refund.reference) == (5_000, "invoice_credit_refund", sid)
    assert refund.debit_account_id == "sys:platform_revenue:USD"  # back from where the payment went
    assert (wallet(db, tenant), revenue(db, tenant)) == (5_000, 5_000)
    assert verify_ledger(db, tenant).ok


def test_a_credit_carried_from_an_earlier_period_is_refunded_at_cancellation(db, tenant, clock):
    sid = subscribe(db, tenant, clock, [CUSTOM])
    deposit(db, tenant, clock, 10_000)
    invoice_early_and_pay(db, tenant, sid, clock)
    clock.set(at(2025, 11, 16))
    with db.session() as s:
        item = billing_service.items(s, tenant, sid)[0]
        billing_service.remove_item(s, tenant, sid, item.id, clock)  # −50.00
        billing_service.add_item(s, tenant, sid, ItemSpec(name="Tiny", basis="tenant", unit_price_minor=1000), clock)
    clock.set(JAN_1)
    with db.session() as s:
        billing_service.close_due(s, tenant, sid, clock)  # December: −35.00 carried forward
        assert [ln.amount_minor for ln in invoice_service.pending_lines(s, tenant, sid)] == [-3_500]
    clock.set(at(2026, 1, 10))
    with db.session() as s:
        billing_service.cancel(s, tenant, sid, clock)
    clock.set(at(2026, 2, 1))
    with db.session() as s:
        [january] = billing_service.close_due(s, tenant, sid, clock)  # the last period: +10.00 − 35.00
        doc = invoice_service.document(s, january)
        assert invoice_service.pending_lines(s, tenant, sid) == []
        assert billing_service.get_subscription(s, tenant, sid).status == "canceled"
    assert lines(doc) == [("balance", 1, -3_500), ("subscription", 1, 1_000), ("balance", 1, 2_500)]
    assert (january.total_minor, january.status) == (0, "paid")
    assert wallet(db, tenant) == 2_500 and revenue(db, tenant) == 10_000 - 2_500
    assert verify_ledger(db, tenant).ok


def test_an_early_invoice_collected_at_the_close_counts_towards_the_refund(db, tenant, clock):
    """The close finalizes and collects an early draft before the last invoice is made, so
    what it is paid then is refundable at once."""
    sid = subscribe(db, tenant, clock, [CUSTOM])
    deposit(db, tenant, clock, 10_000)
    with db.session() as s:
        billing_service.create_invoice(s, tenant, sid, clock)  # a draft, left for the worker
    clock.set(at(2025, 11, 16))
    remove_first_item(db, tenant, sid, clock, cancel=True)
    clock.set(DEC_1)
    with db.session() as s:
        november, final = billing_service.close_due(s, tenant, sid, clock)
        assert invoice_service.pending_lines(s, tenant, sid) == []
    assert [(i.number, i.status, i.total_minor) for i in (november, final)] == [
        ("INV-000001", "paid", 10_000), ("INV-000002", "paid", 0)]
    assert wallet(db, tenant) == 5_000 and verify_ledger(db, tenant).ok


def test_a_credit_is_refunded_only_as_far_as_the_subscription_was_paid(db, tenant, clock):
    """Credits that offset an invoice still unpaid are not cash: refunding them would pay out
    money never received. The credit pays half of the open November instead (it was kept as a
    pending credit of the canceled subscription while November stayed due in full)."""
    sid = subscribe(db, tenant, clock, [CUSTOM])
    with db.session() as s:
        inv = billing_service.create_invoice(s, tenant, sid, clock).invoice
        invoice_service.finalize(s, tenant, inv.id, clock.now_ns())  # open: the wallet is empty
    clock.set(at(2025, 11, 16))
    remove_first_item(db, tenant, sid, clock, cancel=True)
    clock.set(DEC_1)
    with db.session() as s:
        november, final = billing_service.close_due(s, tenant, sid, clock)
        doc = invoice_service.document(s, final)
        assert invoice_service.pending_lines(s, tenant, sid) == []
    assert lines(doc) == [("proration", 10, -5_000), ("balance", 1, 5_000)]
    assert doc.lines[-1].description == "Credit applied to invoice INV-000001 (still open)"
    assert (november.status, november.amount_paid_minor, november.total_minor) == ("open", 5_000, 10_000)
    assert not refunded(db, tenant, sid)
    assert wallet(db, tenant) == 0 and verify_ledger(db, tenant).ok


def _december_invoiced_early_then_removed(db, tenant, clock, *, void: bool) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """CUSTOM ($100.00 a month) from 1 Nov; November invoiced early and paid (the wallet is then
    empty); December invoiced early and left open (or voided); the item removed on 16 Dec — a
    credit of 16/31 of December, −51.61 — and the subscription canceled."""
    sid = subscribe(db, tenant, clock, [CUSTOM])
    deposit(db, tenant, clock, 10_000)
    invoice_early_and_pay(db, tenant, sid, clock)
    clock.set(DEC_1)
    with db.session() as s:
        billing_service.close_due(s, tenant, sid, clock)
        december = billing_service.create_invoice(s, tenant, sid, clock).invoice
        invoice_service.finalize(s, tenant, december.id, clock.now_ns())  # open: the wallet is empty
        if void:
            invoice_service.void(s, tenant, december.id, clock.now_ns())
    clock.set(at(2025, 12, 16))
    remove_first_item(db, tenant, sid, clock, cancel=True)
    return sid, december.id


def preview_then_close(db: Database, tenant: str, sid: str, clock: FrozenClock, when: int):  # type: ignore[no-untyped-def]
    """The upcoming invoice now, then the close at `when`: (preview, invoices, the last one's
    document, the lines left pending)."""
    with db.session(write=False) as s:
        upcoming = billing_service.preview(s, tenant, sid, clock.now_ns())
    clock.set(when)
    with db.session() as s:
        invoices = billing_service.close_due(s, tenant, sid, clock)
        return upcoming, invoices, invoice_service.document(s, invoices[-1]), invoice_service.pending_lines(
            s, tenant, sid)


def refunded(db: Database, tenant: str, sid: str) -> bool:
    with db.session(write=False) as s:
        return s.get(Transfer, (tenant, credit_refund_transfer_id(sid))) is not None


def test_a_credit_at_cancellation_first_offsets_an_invoice_still_open(db, tenant, clock):
    """The leak: the −51.61 was refunded as cash while December's 100.00 was still owed. It
    pays part of December instead (no money moves); December is then due 48.39."""
    sid, dec_id = _december_invoiced_early_then_removed(db, tenant, clock, void=False)
    upcoming, [december, final], doc, pending = preview_then_close(db, tenant, sid, clock, JAN_1)
    assert pending == []
    assert lines(doc) == lines(upcoming) == [("proration", 10, -5_161), ("balance", 1, 5_161)]
    assert doc.lines[-1].description == "Credit applied to invoice INV-000002 (still open)"
    assert (final.status, final.total_minor) == ("paid", 0)
    assert (december.id, december.status, december.total_minor, december.amount_paid_minor) == (
        dec_id, "open", 10_000, 5_161)
    assert not refunded(db, tenant, sid)
    assert (wallet(db, tenant), revenue(db, tenant)) == (0, 10_000)
    deposit(db, tenant, clock, 4_839)  # what is left of December, and not a cent more
    with db.session() as s:
        assert invoice_service.pay(s, tenant, dec_id, clock).paid
        assert ledger_service.get_transfer(s, tenant, payment_transfer_id(dec_id)).amount == 4_839
    assert (wallet(db, tenant), revenue(db, tenant)) == (0, 14_839)  # November + 15/31 of December
    applied = [d for t, d in invoice_events(db, tenant) if t == "invoice.credit_applied"]
    assert [(d["invoice_id"], d["credited"], d["amount_due"]) for d in applied] == [(dec_id, "51.61", "48.39")]
    assert verify_ledger(db, tenant).ok


def test_a_credit_for_a_period_whose_invoice_was_voided_refunds_nothing(db, tenant, clock):
    """The leak: December's invoice was voided — never paid — and the −51.61 for December came
    back as cash. A credit for forgiven time is worth nothing; it stays on record, not refunded."""
    sid, _ = _december_invoiced_early_then_removed(db, tenant, clock, void=True)
    upcoming, [december, _], doc, kept = preview_then_close(db, tenant, sid, clock, JAN_1)
    with db.session(write=False) as s:
        assert billing_service.get_subscription(s, tenant, sid).status == "canceled"
    assert december.status == "void"
    assert lines(doc) == lines(upcoming) == [("proration", 10, -5_161), ("balance", 1, 5_161)]
    assert doc.lines[-1].description.startswith("Credit not refunded")
    assert [(ln.kind, ln.amount_minor) for ln in kept] == [("balance", -5_161)]
    assert not refunded(db, tenant, sid)
    assert (wallet(db, tenant), revenue(db, tenant)) == (0, 10_000)
    assert verify_ledger(db, tenant).ok


def test_a_credit_offsets_what_is_owed_and_only_the_rest_is_refunded(db, tenant, clock):
    """November (10.00) is still open; December (110.00) was invoiced early and paid; 100.00 of
    it removed on 16 Dec (−51.61). 10.00 of the credit settles November, 41.61 is refunded."""
    sid = subscribe(db, tenant, clock, [ItemSpec(name="Tiny", basis="tenant", unit_price_minor=1000)])
    with db.session() as s:
        november = billing_service.create_invoice(s, tenant, sid, clock).invoice
        invoice_service.finalize(s, tenant, november.id, clock.now_ns())  # open: the wallet is empty
    clock.set(DEC_1)
    with db.session() as s:
        billing_service.close_due(s, tenant, sid, clock)
        billing_service.add_item(s, tenant, sid, CUSTOM, clock)  # from December's first second
    deposit(db, tenant, clock, 11_000)
    invoice_early_and_pay(db, tenant, sid, clock)  # December: 110.00
    clock.set(at(2025, 12, 16))
    with db.session() as s:
        custom = billing_service.items(s, tenant, sid)[1]
        billing_service.remove_item(s, tenant, sid, custom.id, clock)
        billing_service.cancel(s, tenant, sid, clock)
        upcoming = billing_service.preview(s, tenant, sid, clock.now_ns())
    clock.set(JAN_1)
    with db.session() as s:
        closed = billing_service.close_due(s, tenant, sid, clock)
        doc = invoice_service.document(s, closed[-1])
        nov = invoice_service.get(s, tenant, november.id)
        refund = ledger_service.get_transfer(s, tenant, credit_refund_transfer_id(sid))
    assert lines(doc) == lines(upcoming) == [("proration", 10, -5_161), ("balance", 1, 1_000),
                                             ("balance", 1, 4_161)]
    assert [ln.description for ln in doc.lines[1:]] == [
        "Credit applied to invoice INV-000001 (still open)",
        f"Credit refunded to the wallet (transfer sub:{sid}:credit_refund)"]
    assert (nov.status, nov.amount_paid_minor, nov.payment_transfer_id) == ("paid", 1_000, None)
    assert refund.amount == 4_161
    assert (wallet(db, tenant), revenue(db, tenant)) == (4_161, 11_000 - 4_161)
    assert verify_ledger(db, tenant).ok


def test_a_change_or_cancel_after_more_than_two_years_without_the_worker_lands_in_todays_period(
        db, tenant, clock):
    """A request caught up at most 24 periods: the 25th still-ended period made every change
    a 500 (outside its period), and a cancel stopped billing at that stale period's end."""
    sid = subscribe(db, tenant, clock, [CUSTOM])  # from 1 Nov 2025
    clock.set(at(2027, 12, 15))  # 25 periods later, no worker
    with db.session() as s:
        item = billing_service.items(s, tenant, sid)[0]
        change = billing_service.update_item(s, tenant, sid, item.id, quantity=11, clock=clock)
        assert change.subscription.current_period_start == at(2027, 12, 1)
        assert [ln.amount_minor > 0 for ln in change.prorations] == [False, True]
        sub = billing_service.cancel(s, tenant, sid, clock)
        assert sub.current_period_end == at(2028, 1, 1) and sub.cancel_at_period_end
    clock.set(at(2028, 1, 1))
    with db.session() as s:
        billing_service.close_due(s, tenant, sid, clock)
        sub = billing_service.get_subscription(s, tenant, sid)
        assert (sub.status, sub.canceled_at) == ("canceled", at(2028, 1, 1))  # December 2027 was billed


def test_a_change_after_the_period_ended_closes_that_period_first(db, tenant, clock):
    sid = subscribe(db, tenant, clock, [CUSTOM])
    clock.set(at(2025, 12, 16, 12))  # half of December; the worker has not run since November
    with db.session() as s:
        item = billing_service.items(s, tenant, sid)[0]
        change = billing_service.update_item(s, tenant, sid, item.id, quantity=20, clock=clock)
        invoices = invoice_service.list_invoices(s, tenant).items
    assert [(i.period_start, i.total_minor) for i in invoices] == [(NOV_1, 10_000)]
    assert [ln.amount_minor for ln in change.prorations] == [-5_000, 10_000]  # half of December
    assert change.subscription.current_period_start == DEC_1


# -- isolation and the demo ------------------------------------------------------------------
def test_another_tenant_sees_nothing(db, tenant, clock, tenant_id):
    sid = subscribe(db, tenant, clock, [CUSTOM])
    with db.session() as s:
        inv = billing_service.create_invoice(s, tenant, sid, clock).invoice
    other = f"{tenant_id}-other"
    with db.session() as s:
        make_licensing_catalogue(s, other, clock)
        with pytest.raises(SubscriptionNotFound):
            billing_service.get_subscription(s, other, sid)
        with pytest.raises(SubscriptionNotFound):
            billing_service.add_item(s, other, sid, CUSTOM, clock)
        with pytest.raises(SubscriptionNotFound):
            billing_service.create_invoice(s, other, sid, clock)
        for op in (lambda: invoice_service.get(s, other, inv.id),
                   lambda: invoice_service.finalize(s, other, inv.id, 0),
                   lambda: invoice_service.pay(s, other, inv.id, clock),
                   lambda: invoice_service.void(s, other, inv.id, 0)):
            with pytest.raises(InvoiceNotFound):
                op()
        assert billing_service.list_subscriptions(s, other).items == []
        assert invoice_service.list_invoices(s, other).items == []
        assert billing_service.items(s, other, sid) == []
        assert invoice_service.lines_for(s, other, [inv.id]) == {inv.id: []}


def test_the_demo_subscription_bills_what_the_demo_license_grants(db, tenant, clock):
    for _ in range(2):  # idempotent
        with db.session() as s:
            billing_service.seed_demo(s, tenant, clock.now_ns())
    with db.session(write=False) as s:
        items = billing_service.items(s, tenant, DEMO_SUBSCRIPTION)
        preview = billing_service.preview(s, tenant, DEMO_SUBSCRIPTION, clock.now_ns())
    assert [(i.plan_id or i.pack_id, i.quantity) for i in items] == [
        ("base_license", 100), ("advanced_analytics", 100), ("active_transport", 100)]
    assert preview.invoice.total_minor == 1_000_000  # $10,000.00 a month


def test_a_clock_a_little_behind_the_period_start_counts_from_the_start(db, tenant, clock):
    """Another process (its clock ahead) opened December; this one's change stamped 30 Nov 23:59:58
    counts from December's first second instead of failing."""
    sid = subscribe(db, tenant, clock, [CUSTOM])
    clock.set(DEC_1)
    with db.session() as s:
        billing_service.close_due(s, tenant, sid, clock)
    clock.set(DEC_1 - 2 * NS)
    with db.session() as s:
        item = billing_service.items(s, tenant, sid)[0]
        change = billing_service.update_item(s, tenant, sid, item.id, quantity=20, clock=clock)
    assert [(ln.amount_minor, ln.period_start) for ln in change.prorations] == [(-10_000, DEC_1), (20_000, DEC_1)]


# -- events -------------------------------------------------------------------------------


def invoice_events(db: Database, tenant: str) -> list[tuple[str, dict]]:
    with db.session(write=False) as s:
        return [(e.type, e.data) for e in s.scalars(select(Event).where(
            Event.tenant_id == tenant, Event.type.like("invoice.%")).order_by(Event.seq))]


def test_an_invoice_reports_each_step_of_its_life(db, tenant, clock):
    sid = subscribe(db, tenant, clock, [CUSTOM])
    with db.session() as s:
        inv = billing_service.create_invoice(s, tenant, sid, clock).invoice
        invoice_service.finalize(s, tenant, inv.id, clock.now_ns())
        assert not invoice_service.pay(s, tenant, inv.id, clock).paid  # an empty wallet
    deposit(db, tenant, clock, 10_000)
    with db.session() as s:
        assert invoice_service.pay(s, tenant, inv.id, clock).paid
    got = invoice_events(db, tenant)
    assert [(t, d["status"], d["amount_due"]) for t, d in got] == [
        ("invoice.finalized", "open", "100.00"), ("invoice.payment_failed", "open", "100.00"),
        ("invoice.paid", "paid", "0.00")]
    assert got[1][1]["last_payment_error"] and got[2][1]["payment_transfer_id"]
    assert got[2][1]["number"] == got[0][1]["number"] is not None


def test_a_voided_invoice_and_a_refunded_credit_are_reported(db, tenant, clock):
    sid = _paid_early_then_removed(db, tenant, clock)
    clock.set(DEC_1 + 5 * NS)
    with db.session() as s:
        billing_service.close_due(s, tenant, sid, clock)
    [refund] = [d for t, d in invoice_events(db, tenant) if t == "invoice.credit_refunded"]
    assert (refund["refunded"], refund["refund_transfer_id"]) == ("50.00", f"sub:{sid}:credit_refund")
    # It names the last invoice as it committed — numbered and paid, not a draft — after its
    # finalization in the event order.
    with db.session(write=False) as s:
        last = invoice_service.get(s, tenant, refund["invoice_id"])
    assert (refund["number"], refund["status"]) == (last.number, last.status) == (last.number, "paid")
    assert last.number is not None
    assert [t for t, d in invoice_events(db, tenant) if d["invoice_id"] == last.id] == [
        "invoice.finalized", "invoice.paid", "invoice.credit_refunded"]

    other = subscribe(db, tenant, clock, [CUSTOM], customer_id="tenant-9")
    with db.session() as s:
        draft = billing_service.create_invoice(s, tenant, other, clock).invoice
        invoice_service.void(s, tenant, draft.id, clock.now_ns())
    assert invoice_events(db, tenant)[-1][0] == "invoice.voided"
