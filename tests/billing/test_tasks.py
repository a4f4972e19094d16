"""The billing jobs: periods close on time (invoice → finalize → wallet → advance), a retried,
crashed or concurrent close never invoices a period twice, and open invoices are collected
on their retry schedule. Each test commits in its own tenant."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from meterline.billing import tasks
from meterline.billing.invoices import (
    CREDIT_REFUND_CODE,
    InvoiceService,
    credit_refund_transfer_id,
    invoice_service,
)
from meterline.billing.models import Invoice, Subscription
from meterline.billing.service import ItemSpec, billing_service
from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.ledger.service import ledger_service
from meterline.ledger.types import TransferIn
from meterline.ledger.verify import verify_ledger
from meterline.wallets.service import wallet_service
from meterline.worker.tasks import JobContext, default_jobs, make_dispatcher
from tests.billing.scenarios import invoice_early_and_pay, remove_first_item
from tests.factories import make_deposit, make_licensing_catalogue, make_subscription
from tests.threads import run_concurrently

NS = 1_000_000_000
CUSTOM = ItemSpec(name="Support", basis="camera", unit_price_minor=1000, quantity=10)  # $100.00 a month


def at(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * NS  # type: ignore[misc]


NOV_1, DEC_1, JAN_1 = at(2025, 11, 1), at(2025, 12, 1), at(2026, 1, 1)


@pytest.fixture
def tenant(db: Database, clock: FrozenClock, tenant_id: str) -> str:
    clock.set(NOV_1)
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
    return tenant_id


@pytest.fixture
def sub(db: Database, tenant: str, clock: FrozenClock) -> str:
    with db.session() as s:
        return make_subscription(s, tenant, clock, items=[CUSTOM])


def invoices(db: Database, tenant: str) -> list[Invoice]:
    with db.session(write=False) as s:
        return invoice_service.list_invoices(s, tenant).items


def subscription(db: Database, tenant: str, sid: str) -> Subscription:
    with db.session(write=False) as s:
        return billing_service.get_subscription(s, tenant, sid)


def fund(db: Database, tenant: str, clock: FrozenClock, amount_minor: int) -> None:
    with db.session() as s:
        make_deposit(s, tenant, clock, owner_id="tenant-123", owner_type="licensee", amount_minor=amount_minor)


def close(db: Database, clock: FrozenClock) -> int:
    """Run the job the way the worker does: until nothing is due (other tests' tenants too)."""
    return tasks.close_periods(db, clock, limit=1000)


def test_nothing_happens_before_the_period_ends(db, tenant, sub, clock):
    clock.set(DEC_1 - NS)
    close(db, clock)
    assert invoices(db, tenant) == []


def test_at_the_period_end_the_worker_invoices_collects_and_advances(db, tenant, sub, clock):
    fund(db, tenant, clock, 25_000)
    clock.set(DEC_1)
    assert close(db, clock) >= 1
    [inv] = invoices(db, tenant)
    assert (inv.period_start, inv.period_end, inv.status, inv.number, inv.total_minor) == (
        NOV_1, DEC_1, "paid", "INV-000001", 10_000)
    s = subscription(db, tenant, sub)
    assert (s.period_index, s.current_period_start, s.current_period_end) == (1, DEC_1, JAN_1)
    # Running it again — at once, or later within December — changes nothing.
    close(db, clock)
    clock.set(JAN_1 - NS)
    close(db, clock)
    assert [i.id for i in invoices(db, tenant)] == [inv.id]
    assert verify_ledger(db, tenant).ok


def test_a_late_worker_closes_every_missed_period_once(db, tenant, sub, clock):
    clock.set(at(2026, 2, 15))
    close(db, clock)
    rows = invoices(db, tenant)
    assert [(i.period_start, i.period_end, i.number) for i in rows] == [
        (NOV_1, DEC_1, "INV-000001"), (DEC_1, JAN_1, "INV-000002"), (JAN_1, at(2026, 2, 1), "INV-000003")]
    assert all(i.status == "open" and i.last_payment_error for i in rows)  # an empty wallet: due, not paid
    assert subscription(db, tenant, sub).current_period_start == at(2026, 2, 1)


def test_a_crash_mid_close_leaves_nothing_and_the_retry_invoices_once(db, tenant, sub, clock, monkeypatch):
    fund(db, tenant, clock, 10_000)
    clock.set(DEC_1)
    real = InvoiceService.attempt_payment

    def crash(self, session, inv, clk):  # after the invoice, its lines and its number are written
        raise RuntimeError("power cut")

    monkeypatch.setattr(InvoiceService, "attempt_payment", crash)
    close(db, clock)  # logged, not raised: the sweep goes on with other subscriptions
    assert invoices(db, tenant) == []
    assert subscription(db, tenant, sub).current_period_start == NOV_1
    monkeypatch.setattr(InvoiceService, "attempt_payment", real)
    close(db, clock)
    close(db, clock)
    [inv] = invoices(db, tenant)
    assert (inv.status, inv.number) == ("paid", "INV-000001")  # the crashed attempt's number was given back


def _cancel_with_a_credit(db: Database, tenant: str, sid: str, clock: FrozenClock) -> None:
    """November ($100.00) invoiced early and paid, the item removed on 16 Nov (−50.00), canceled."""
    fund(db, tenant, clock, 10_000)
    invoice_early_and_pay(db, tenant, sid, clock)
    clock.set(at(2025, 11, 16))
    remove_first_item(db, tenant, sid, clock, cancel=True)


def wallet(db: Database, tenant: str) -> int:
    with db.session(write=False) as s:
        return wallet_service.balance(s, tenant, "licensee", "tenant-123", "USD").available


def test_a_crash_after_the_credit_refund_leaves_nothing_and_the_retry_refunds_once(
        db, tenant, sub, clock, monkeypatch):
    _cancel_with_a_credit(db, tenant, sub, clock)
    clock.set(DEC_1)
    real = InvoiceService.finalize_locked

    def crash(self, session, inv, now_ns):  # after the last invoice and its refund are written
        raise RuntimeError("power cut")

    monkeypatch.setattr(InvoiceService, "finalize_locked", crash)
    close(db, clock)
    assert wallet(db, tenant) == 0 and len(invoices(db, tenant)) == 1
    assert subscription(db, tenant, sub).status == "active"
    monkeypatch.setattr(InvoiceService, "finalize_locked", real)
    close(db, clock)
    close(db, clock)
    assert wallet(db, tenant) == 5_000 and len(invoices(db, tenant)) == 2
    assert subscription(db, tenant, sub).status == "canceled"
    assert verify_ledger(db, tenant).ok


def test_a_refund_already_in_the_ledger_is_not_made_again(db, tenant, sub, clock):
    """Should the refund ever commit apart from the close (restored backup, a close replayed by
    hand), its id — the subscription's, not the invoice's — makes the retry find it."""
    _cancel_with_a_credit(db, tenant, sub, clock)
    clock.set(DEC_1)
    with db.session() as s:
        wallet_service.wallet_account(s, tenant, owner_type="licensee", owner_id="tenant-123", asset="USD",
                                      now_ns=clock.now_ns())
        [done] = ledger_service.post(s, tenant, [TransferIn(
            credit_refund_transfer_id(sub), "sys:platform_revenue:USD", "wal:licensee:tenant-123:USD", 5_000, "USD",
            code=CREDIT_REFUND_CODE, reference=sub, metadata={"subscription_id": sub})], clock)
        assert done.result == "ok"
    assert wallet(db, tenant) == 5_000
    close(db, clock)
    assert wallet(db, tenant) == 5_000  # not 10,000
    assert subscription(db, tenant, sub).status == "canceled"
    assert verify_ledger(db, tenant).ok


def test_a_payment_racing_the_close_is_never_counted_twice_against_the_credit(db, tenant, clock, monkeypatch):
    """November (10.00) is still open, December (110.00) invoiced early and paid, 100.00 of it
    removed on 16 Dec (−51.61), canceled. The customer pays November by hand just as the close
    starts: the close waits for the payment (it locks the subscription's invoices), sees November
    paid in cash and refunds all of the credit — never applying it to an amount the payment has
    just settled. On PostgreSQL this order deadlocked: the close held the subscription FOR UPDATE
    and waited for November, while the payment's second write to November re-checked its foreign
    key to the subscription (FOR KEY SHARE), which FOR UPDATE blocks."""
    with db.session() as s:
        sid = make_subscription(s, tenant, clock, items=[ItemSpec(name="Tiny", basis="tenant",
                                                                  unit_price_minor=1000)])
        november = billing_service.create_invoice(s, tenant, sid, clock).invoice
        invoice_service.finalize(s, tenant, november.id, clock.now_ns())  # open: the wallet is empty
    clock.set(DEC_1)
    with db.session() as s:
        billing_service.close_due(s, tenant, sid, clock)
        billing_service.add_item(s, tenant, sid, CUSTOM, clock)
    fund(db, tenant, clock, 11_000)
    invoice_early_and_pay(db, tenant, sid, clock)
    clock.set(at(2025, 12, 16))
    with db.session() as s:
        custom = billing_service.items(s, tenant, sid)[1]
        billing_service.remove_item(s, tenant, sid, custom.id, clock)
        billing_service.cancel(s, tenant, sid, clock)
    fund(db, tenant, clock, 1_000)
    clock.set(JAN_1)
    paying = threading.Event()
    real_mark_paid = InvoiceService._mark_paid

    def slow_mark_paid(inv, transfer_id, now_ns):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "pay":  # November is locked and written once
            paying.set()
            time.sleep(0.5)  # the close starts meanwhile and queues behind November's lock
        real_mark_paid(inv, transfer_id, now_ns)

    monkeypatch.setattr(InvoiceService, "_mark_paid", staticmethod(slow_mark_paid))

    failures: list[BaseException] = []

    def pay() -> None:
        try:
            with db.session() as s:
                assert invoice_service.pay(s, tenant, november.id, clock).paid
        except BaseException as e:  # reported below, on the test's thread
            failures.append(e)

    payer = threading.Thread(target=pay, name="pay")
    payer.start()
    assert paying.wait(10)
    close(db, clock)
    payer.join(10)
    assert failures == []
    with db.session(write=False) as s:
        revenue = wallet_service.system_account(s, tenant, "platform_revenue", "USD", 0)
        nov = invoice_service.get(s, tenant, november.id)
        refund = ledger_service.get_transfer(s, tenant, credit_refund_transfer_id(sid))
    assert (nov.status, nov.amount_paid_minor, nov.payment_transfer_id) == (
        "paid", 1_000, f"inv:{november.id}:payment")
    assert subscription(db, tenant, sid).status == "canceled"
    assert refund.amount == 5_161
    assert (wallet(db, tenant), revenue.credits_posted - revenue.debits_posted) == (5_161, 6_839)
    assert verify_ledger(db, tenant).ok


def test_an_invoiced_period_that_did_not_advance_is_not_invoiced_again(db, tenant, sub, clock):
    """The invoice and the advance commit together; should a period ever be found invoiced but
    not advanced (restored from a backup, edited by hand), the unique key makes the retry reuse
    the invoice."""
    clock.set(DEC_1)
    close(db, clock)
    [first] = invoices(db, tenant)
    with db.session() as s:
        s.execute(update(Subscription).where(Subscription.tenant_id == tenant, Subscription.id == sub)
                  .values(period_index=0, current_period_start=NOV_1, current_period_end=DEC_1))
    close(db, clock)
    assert [i.id for i in invoices(db, tenant)] == [first.id]
    assert subscription(db, tenant, sub).current_period_start == DEC_1


def test_concurrent_workers_invoice_each_period_once(db, tenant, clock):
    with db.session() as s:
        subs = [make_subscription(s, tenant, clock, items=[CUSTOM]) for _ in range(5)]
    clock.set(at(2026, 1, 15))
    barrier = threading.Barrier(4)

    def worker(_: int) -> None:
        barrier.wait()
        close(db, clock)

    run_concurrently(worker, 4)
    rows = invoices(db, tenant)
    assert sorted((i.subscription_id, i.period_start) for i in rows) == sorted(
        (sid, start) for sid in subs for start in (NOV_1, DEC_1))
    assert sorted(i.number for i in rows) == [f"INV-{n:06d}" for n in range(1, 11)]  # gapless


def test_open_invoices_are_collected_on_their_retry_schedule(db, tenant, sub, clock):
    clock.set(DEC_1)
    close(db, clock)
    [inv] = invoices(db, tenant)
    assert (inv.status, inv.payment_attempts, inv.next_payment_attempt_at) == ("open", 1, DEC_1 + 86_400 * NS)
    fund(db, tenant, clock, 10_000)
    clock.set(DEC_1 + 86_400 * NS - NS)
    tasks.collect_payments(db, clock, limit=1000)
    assert invoices(db, tenant)[0].status == "open"  # not due yet
    clock.set(DEC_1 + 86_400 * NS)
    assert tasks.collect_payments(db, clock, limit=1000) >= 1
    [paid] = invoices(db, tenant)
    assert (paid.status, paid.payment_attempts, paid.last_payment_error) == ("paid", 2, None)


def test_collection_gives_up_after_the_last_retry(db, tenant, sub, clock):
    clock.set(DEC_1)
    close(db, clock)
    for _ in range(10):
        clock.advance(8 * 86_400)
        tasks.collect_payments(db, clock, limit=1000)
    [inv] = invoices(db, tenant)
    assert (inv.status, inv.payment_attempts, inv.next_payment_attempt_at) == ("open", 5, None)


def test_the_worker_runs_the_billing_jobs(db, clock):
    from meterline.config import Settings

    ctx = JobContext(db=db, clock=clock, batcher=None, settings=Settings(), signer=None,  # type: ignore[arg-type]
                     events=make_dispatcher(db, clock, Settings()))
    names = {job.name for job in default_jobs(ctx)}
    assert {tasks.CLOSE_PERIODS, tasks.COLLECT_PAYMENTS} <= names


def test_paying_an_old_invoice_while_the_cancelling_close_runs_does_not_deadlock(db, tenant, clock, monkeypatch):
    """November open and unpaid, December invoiced early (a draft), canceled, then funded. At
    1 Jan the customer pays November just as the close runs. The pay holds November and then
    needs the ledger head; the close used to collect December first (taking the head) and then
    wait for November: a deadlock on PostgreSQL. Now the close locks every invoice first."""
    if db.is_sqlite:
        pytest.skip("row locks: PostgreSQL (SQLite's one writer serialises the two)")
    tiny = ItemSpec(name="Tiny", basis="tenant", unit_price_minor=1000)
    with db.session() as s:
        sid = make_subscription(s, tenant, clock, items=[tiny])
        nov = billing_service.create_invoice(s, tenant, sid, clock).invoice.id
        invoice_service.finalize(s, tenant, nov, clock.now_ns())
    clock.set(DEC_1)
    with db.session() as s:
        billing_service.close_due(s, tenant, sid, clock)
        billing_service.create_invoice(s, tenant, sid, clock)  # December, a draft
        billing_service.cancel(s, tenant, sid, clock)
    fund(db, tenant, clock, 5_000)
    clock.set(JAN_1)

    from meterline.wallets import service as wallets

    holding = threading.Event()
    real_balance = wallets.WalletService.balance

    def slow_balance(self, *a, **kw):  # the pay has November locked, not yet the ledger head
        if threading.current_thread().name == "pay":
            holding.set()
            time.sleep(1.0)
        return real_balance(self, *a, **kw)

    monkeypatch.setattr(wallets.WalletService, "balance", slow_balance)
    errors: dict[str, BaseException] = {}

    def pay() -> None:
        try:
            with db.session() as s:
                invoice_service.pay(s, tenant, nov, clock)
        except BaseException as e:
            errors["pay"] = e

    t = threading.Thread(target=pay, name="pay")
    t.start()
    assert holding.wait(10)
    try:
        with db.session() as s:
            billing_service.close_due(s, tenant, sid, clock)
    except BaseException as e:
        errors["close"] = e
    t.join(20)
    assert errors == {}, {k: f"{type(v).__name__}: {v}" for k, v in errors.items()}
    assert [i.status for i in invoices(db, tenant)] == ["paid", "paid"]
    assert verify_ledger(db, tenant).ok
