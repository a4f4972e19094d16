"""The payout job: approved payouts are executed by the worker; a rail that keeps failing
returns the funds after the last attempt. Each test commits in its own tenant."""

from __future__ import annotations

import threading
import time

import pytest

from meterline.clock import FrozenClock
from meterline.config import Settings
from meterline.db.engine import Database
from meterline.ledger.models import Account
from meterline.ledger.verify import verify_ledger
from meterline.payments.rails import (
    _RAILS,
    SIMULATION_MODE,
    RailSendFailed,
    SendResult,
    SimulationRail,
)
from meterline.payouts.service import MAX_ATTEMPTS, PayoutStatus, backoff_s, payout_service
from meterline.payouts.tasks import execute_due
from tests.factories import make_earnings, make_tenant

NS = 1_000_000_000
PROVIDER = "prov-1"
EARN = f"earn:provider:{PROVIDER}:USDC"
NO_APPROVALS = Settings(payout_approval_threshold="", payout_required_approvals=1)
ABOVE_100 = Settings(payout_approval_threshold="USDC=100", payout_required_approvals=1)


class FailingRail(SimulationRail):
    """A real-money rail whose every send fails."""

    name = "solana"
    simulated = False

    def __init__(self) -> None:
        self.calls = 0

    def send(self, tenant_id, *, destination, amount_minor, asset, reference) -> SendResult:
        self.calls += 1
        raise RailSendFailed("RPC node unreachable")


class SlowRail(SimulationRail):
    """Succeeds slowly and counts its sends, to widen the window two workers could race in."""

    name = "stripe"
    simulated = False

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._lock = threading.Lock()

    def send(self, tenant_id, *, destination, amount_minor, asset, reference) -> SendResult:
        time.sleep(0.2)
        with self._lock:
            self.sent.append(reference)
        return SendResult(f"sig-{reference}", simulated=False)


@pytest.fixture
def tenant(db: Database, tenant_id: str, clock: FrozenClock) -> str:
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        make_earnings(s, tenant_id, clock, provider_id=PROVIDER, amount_minor=1_000_000_000)  # 1,000 USDC
    return tenant_id


def request(db: Database, tenant: str, clock: FrozenClock, amount_minor: int, *, rail: str = "simulation",
            settings: Settings = NO_APPROVALS) -> str:
    with db.session() as s:
        return payout_service.request(s, tenant, provider_id=PROVIDER, asset="USDC", amount_minor=amount_minor,
                                      destination="So1anaDest", rail=rail, clock=clock, settings=settings).id


def payout(db: Database, tenant: str, payout_id: str):
    with db.session(write=False) as s:
        return payout_service.get(s, tenant, payout_id)


def earnings(db: Database, tenant: str) -> tuple[int, int]:
    with db.session(write=False) as s:
        row = s.get(Account, (tenant, EARN))
        return row.credits_posted - row.debits_posted, row.debits_pending


def ledger_ok(db: Database, tenant: str) -> None:
    report = verify_ledger(db, tenant)
    assert report.ok, [str(p) for p in report.problems]


def test_the_worker_executes_an_approved_payout(db, tenant, clock):
    po = request(db, tenant, clock, 250_000_000)
    assert payout(db, tenant, po).status == PayoutStatus.APPROVED
    assert execute_due(db, clock) >= 1
    row = payout(db, tenant, po)
    assert (row.status, row.tx_signature, row.attempts) == (PayoutStatus.PAID, SIMULATION_MODE, 1)
    assert earnings(db, tenant) == (750_000_000, 0)
    execute_due(db, clock)  # a paid payout is not due any more
    assert payout(db, tenant, po).attempts == 1
    ledger_ok(db, tenant)


def test_a_payout_above_the_threshold_waits_for_its_approval(db, tenant, clock):
    po = request(db, tenant, clock, 150_000_000, settings=ABOVE_100)
    execute_due(db, clock)
    assert payout(db, tenant, po).status == PayoutStatus.REQUESTED
    with db.session() as s:
        payout_service.approve(s, tenant, po, "operator-1", clock)
    execute_due(db, clock)
    assert payout(db, tenant, po).status == PayoutStatus.PAID
    assert earnings(db, tenant) == (850_000_000, 0)


def test_a_failing_rail_is_retried_with_backoff_then_the_funds_return(db, tenant, clock, monkeypatch):
    rail = FailingRail()
    monkeypatch.setitem(_RAILS, rail.name, rail)
    po = request(db, tenant, clock, 400_000_000, rail=rail.name)
    assert earnings(db, tenant) == (1_000_000_000, 400_000_000)  # held while it is attempted
    for attempt in range(1, MAX_ATTEMPTS + 1):
        execute_due(db, clock)
        row = payout(db, tenant, po)
        assert row.attempts == attempt and "RPC node unreachable" in row.last_error
        if attempt < MAX_ATTEMPTS:
            assert row.status == PayoutStatus.APPROVED
            assert row.next_attempt_at == clock.now_ns() + backoff_s(attempt) * NS
            clock.advance(backoff_s(attempt) - 1)
            execute_due(db, clock)  # not due yet: no attempt before the backoff ends
            assert payout(db, tenant, po).attempts == attempt
            clock.advance(1)
    row = payout(db, tenant, po)
    assert (row.status, row.next_attempt_at, row.tx_signature) == (PayoutStatus.FAILED, None, None)
    assert rail.calls == MAX_ATTEMPTS
    assert earnings(db, tenant) == (1_000_000_000, 0)  # the hold is voided: the funds are back
    execute_due(db, clock)
    assert rail.calls == MAX_ATTEMPTS
    ledger_ok(db, tenant)


def test_racing_workers_send_a_payout_once(db, tenant, clock, monkeypatch):
    rail = SlowRail()
    monkeypatch.setitem(_RAILS, rail.name, rail)
    ids = [request(db, tenant, clock, 1_000_000 * (i + 1), rail=rail.name) for i in range(3)]
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def sweep() -> None:
        barrier.wait()
        try:
            execute_due(db, clock)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(rail.sent) == sorted(ids)  # each payout sent exactly once
    assert all(payout(db, tenant, po).status == PayoutStatus.PAID for po in ids)
    assert all(payout(db, tenant, po).attempts == 1 for po in ids)
    assert earnings(db, tenant) == (1_000_000_000 - 6_000_000, 0)
    ledger_ok(db, tenant)
