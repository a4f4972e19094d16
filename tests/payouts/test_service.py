"""Payouts: earnings held on request, approvals, execution with retries, funds returned on failure."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from meterline.catalog.service import catalog_service
from meterline.config import Settings
from meterline.ledger.models import Account, Hold, Transfer
from meterline.ledger.service import ledger_service
from meterline.payments.rails import (
    SIMULATION_MODE,
    RailDisabled,
    RailSendFailed,
    SendResult,
    SimulationRail,
    UnknownRail,
    configure_rails,
)
from meterline.payouts.models import PayoutRequest
from meterline.payouts.service import (
    MAX_ATTEMPTS,
    InvalidPayoutRequest,
    PayoutNotApprovable,
    PayoutNotExecutable,
    PayoutNotFound,
    PayoutNotRejectable,
    PayoutRailMismatch,
    SelfApprovalForbidden,
    backoff_s,
    parse_thresholds,
    payout_service,
)
from meterline.wallets.service import InsufficientFunds
from tests.factories import make_earnings, make_tenant

NS = 1_000_000_000
PROVIDER = "prov-1"
EARN = f"earn:provider:{PROVIDER}:USDC"
EXT = "sys:external:simulation:USDC"
NO_APPROVALS = Settings(payout_approval_threshold="", payout_required_approvals=1)
TWO_ABOVE_100 = Settings(payout_approval_threshold="USDC=100, SOL=0.5", payout_required_approvals=2)


class FlakyRail(SimulationRail):
    """Fails the first `failures` sends, then succeeds with a real-looking signature."""

    simulated = False

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[str] = []

    def send(self, tenant_id, *, destination, amount_minor, asset, reference) -> SendResult:
        if self.failures > 0:
            self.failures -= 1
            raise RailSendFailed("RPC node timed out")
        self.sent.append(reference)
        return SendResult(f"5sig{len(self.sent)}", simulated=False)


@pytest.fixture
def tenant(session, tenant_id, clock):
    make_tenant(session, tenant_id, clock)
    make_earnings(session, tenant_id, clock, provider_id=PROVIDER, amount_minor=1_000_000_000)  # 1,000 USDC
    return tenant_id


def acc(session, tenant_id, account_id) -> tuple[int, int, int, int]:
    row = session.get(Account, (tenant_id, account_id), populate_existing=True)
    return row.debits_pending, row.debits_posted, row.credits_pending, row.credits_posted


def request(session, tenant_id, clock, amount_minor, settings=NO_APPROVALS, **kw):
    return payout_service.request(session, tenant_id, provider_id=PROVIDER, asset="USDC", amount_minor=amount_minor,
                                  destination="So1anaDest", rail="simulation", clock=clock, settings=settings, **kw)


# -- request ------------------------------------------------------------------------


def test_request_holds_the_earnings(session, tenant, clock):
    po = request(session, tenant, clock, 250_000_000)
    assert po.id.startswith("po_")
    assert (po.status, po.required_approvals, po.attempts, po.next_attempt_at) == ("approved", 0, 0, clock.now_ns())
    assert acc(session, tenant, EARN) == (250_000_000, 0, 0, 1_000_000_000)
    assert acc(session, tenant, EXT) == (0, 1_000_000_000, 250_000_000, 0)
    hold = session.get(Hold, (tenant, po.hold_transfer_id), populate_existing=True)
    assert (hold.state, hold.amount, hold.expires_at) == ("pending", 250_000_000, None)  # never expires
    t = ledger_service.get_transfer(session, tenant, po.hold_transfer_id)
    assert (t.code, t.reference, t.metadata_["mode"]) == ("payout", po.id, SIMULATION_MODE)


def test_earnings_cannot_be_requested_twice(session, tenant, clock):
    request(session, tenant, clock, 600_000_000)
    with pytest.raises(InsufficientFunds) as e:
        request(session, tenant, clock, 400_000_001)
    assert (e.value.status, e.value.code) == (402, "insufficient_funds")
    assert acc(session, tenant, EARN) == (600_000_000, 0, 0, 1_000_000_000)
    assert session.scalar(select(func.count()).select_from(PayoutRequest)
                          .where(PayoutRequest.tenant_id == tenant)) == 1
    with pytest.raises(InsufficientFunds):
        payout_service.request(session, tenant, provider_id="no-earnings", asset="USDC", amount_minor=1,
                               destination="d", rail="simulation", clock=clock, settings=NO_APPROVALS)


def test_request_validates_input(session, tenant, clock):
    with pytest.raises(InvalidPayoutRequest):
        payout_service.request(session, tenant, provider_id=PROVIDER, asset="USDC", amount_minor=1, destination="",
                               rail="simulation", clock=clock, settings=NO_APPROVALS)
    with pytest.raises(UnknownRail):
        payout_service.request(session, tenant, provider_id=PROVIDER, asset="USDC", amount_minor=1, destination="d",
                               rail="solana", clock=clock, settings=NO_APPROVALS)
    with pytest.raises(ValueError):
        parse_thresholds("USDC")
    assert parse_thresholds(" usdc=1.5 ,,SOL=2") == {"USDC": "1.5", "SOL": "2"}


# -- approvals ----------------------------------------------------------------------


def test_above_threshold_needs_n_distinct_operators(session, tenant, clock):
    at_threshold = request(session, tenant, clock, 100_000_000, settings=TWO_ABOVE_100)
    assert at_threshold.status == "approved"
    po = request(session, tenant, clock, 100_000_001, settings=TWO_ABOVE_100, requested_by="user-req")
    assert (po.status, po.required_approvals, po.next_attempt_at) == ("requested", 2, None)
    with pytest.raises(PayoutNotExecutable):
        payout_service.execute(session, tenant, po.id, None, clock)

    for selfish in ("user-req", PROVIDER):
        with pytest.raises(SelfApprovalForbidden) as e:
            payout_service.approve(session, tenant, po.id, selfish, clock)
        assert (e.value.status, e.value.code) == (403, "self_approval_forbidden")
    assert payout_service.approve(session, tenant, po.id, "op-1", clock).status == "requested"
    assert payout_service.approve(session, tenant, po.id, "op-1", clock).approvals == ["op-1"]  # counts once
    clock.advance(5)
    po = payout_service.approve(session, tenant, po.id, "op-2", clock)
    assert (po.status, po.approvals, po.next_attempt_at) == ("approved", ["op-1", "op-2"], clock.now_ns())
    with pytest.raises(PayoutNotApprovable) as e2:
        payout_service.approve(session, tenant, po.id, "op-3", clock)
    assert (e2.value.status, e2.value.code) == (409, "payout_not_approvable")
    assert session.get(PayoutRequest, (tenant, po.id), populate_existing=True).approvals == ["op-1", "op-2"]


def test_the_providers_owner_cannot_approve_its_payout(session, tenant, clock):
    """An operator whose id is the provider's owner is the provider's own people."""
    catalog_service.create_provider(session, tenant, id=PROVIDER, name="P", owner_id="owner-1",
                                    now_ns=clock.now_ns())
    po = request(session, tenant, clock, 100_000_001, settings=TWO_ABOVE_100, requested_by="user-req")
    with pytest.raises(SelfApprovalForbidden):
        payout_service.approve(session, tenant, po.id, "owner-1", clock)
    assert payout_service.approve(session, tenant, po.id, "op-1", clock).approvals == ["op-1"]


def test_reject_voids_the_hold(session, tenant, clock):
    po = request(session, tenant, clock, 300_000_000, settings=TWO_ABOVE_100)
    po = payout_service.reject(session, tenant, po.id, "op-1", clock, reason="unverified destination")
    assert po.status == "rejected"
    assert acc(session, tenant, EARN) == (0, 0, 0, 1_000_000_000)
    assert acc(session, tenant, EXT) == (0, 1_000_000_000, 0, 0)
    assert session.get(Hold, (tenant, po.hold_transfer_id), populate_existing=True).state == "voided"
    assert payout_service.reject(session, tenant, po.id, "op-1", clock).status == "rejected"  # idempotent
    with pytest.raises(PayoutNotApprovable):
        payout_service.approve(session, tenant, po.id, "op-2", clock)
    with pytest.raises(PayoutNotExecutable):
        payout_service.execute(session, tenant, po.id, None, clock)
    # The released earnings can be requested again.
    assert request(session, tenant, clock, 1_000_000_000).status == "approved"


# -- execution ----------------------------------------------------------------------


def test_execute_pays_and_is_idempotent(session, tenant, clock):
    po = request(session, tenant, clock, 250_000_000)
    clock.advance(1)
    paid = payout_service.execute(session, tenant, po.id, None, clock)
    assert (paid.status, paid.tx_signature, paid.attempts, paid.next_attempt_at) == ("paid", SIMULATION_MODE, 1, None)
    assert acc(session, tenant, EARN) == (0, 250_000_000, 0, 1_000_000_000)
    assert acc(session, tenant, EXT) == (0, 1_000_000_000, 0, 250_000_000)
    t = ledger_service.get_transfer(session, tenant, f"{po.id}:paid")
    assert t.metadata_ == {"rail": "simulation", "destination": "So1anaDest", "tx_signature": SIMULATION_MODE,
                           "mode": SIMULATION_MODE}

    count = session.scalar(select(func.count()).select_from(Transfer).where(Transfer.tenant_id == tenant))
    again = payout_service.execute(session, tenant, po.id, None, clock)
    assert (again.status, again.attempts) == ("paid", 1)
    assert session.scalar(select(func.count()).select_from(Transfer).where(Transfer.tenant_id == tenant)) == count
    with pytest.raises(PayoutNotRejectable):
        payout_service.reject(session, tenant, po.id, "op-1", clock)


def test_failed_sends_back_off_then_fail_and_return_the_funds(session, tenant, clock):
    rail = FlakyRail(failures=99)
    po = request(session, tenant, clock, 250_000_000)
    expected_waits = [30, 60, 120, 240, 480]
    for attempt, wait in enumerate(expected_waits, start=1):
        now = clock.now_ns()
        po = payout_service.execute(session, tenant, po.id, rail, clock)
        assert (po.status, po.attempts, po.next_attempt_at) == ("approved", attempt, now + wait * NS)
        assert po.last_error == "RailSendFailed: RPC node timed out"
        assert acc(session, tenant, EARN) == (250_000_000, 0, 0, 1_000_000_000)  # still held
        assert po.id not in {p.id for p in payout_service.due_for_execution(session, po.next_attempt_at - 1)}
        clock.set(po.next_attempt_at)
        assert po.id in {p.id for p in payout_service.due_for_execution(session, clock.now_ns())}

    po = payout_service.execute(session, tenant, po.id, rail, clock)  # the sixth and last attempt
    assert (po.status, po.attempts, po.next_attempt_at) == ("failed", 6, None)
    assert acc(session, tenant, EARN) == (0, 0, 0, 1_000_000_000)  # funds are back
    assert acc(session, tenant, EXT) == (0, 1_000_000_000, 0, 0)
    assert session.get(Hold, (tenant, po.hold_transfer_id), populate_existing=True).state == "voided"
    assert po.id not in {p.id for p in payout_service.due_for_execution(session, clock.now_ns() + 10**15)}
    with pytest.raises(PayoutNotExecutable):
        payout_service.execute(session, tenant, po.id, rail, clock)
    assert rail.sent == []


def test_a_payout_on_a_rail_turned_off_since_its_request_fails_and_returns_the_funds(session, tenant, clock):
    po = request(session, tenant, clock, 250_000_000)
    configure_rails(Settings(dev=False))  # the server restarted without simulation
    for attempt in range(1, MAX_ATTEMPTS + 1):
        po = payout_service.execute(session, tenant, po.id, None, clock)
        assert po.attempts == attempt and po.tx_signature is None
        assert po.last_error.startswith("RailDisabled: the simulation rail is turned off")
        if po.next_attempt_at is not None:
            clock.set(po.next_attempt_at)
    assert po.status == "failed"
    assert acc(session, tenant, EARN) == (0, 0, 0, 1_000_000_000)  # nothing was "sent": the earnings are back
    with pytest.raises(RailDisabled):
        request(session, tenant, clock, 100)  # and no new payout starts on it


def test_retry_after_a_failure_pays_once(session, tenant, clock):
    rail = FlakyRail(failures=1)
    po = request(session, tenant, clock, 100)
    assert payout_service.execute(session, tenant, po.id, rail, clock).status == "approved"
    clock.advance(30)
    po = payout_service.execute(session, tenant, po.id, rail, clock)
    assert (po.status, po.attempts, po.tx_signature, po.last_error) == ("paid", 2, "5sig1", None)
    assert payout_service.execute(session, tenant, po.id, rail, clock).status == "paid"
    assert rail.sent == [po.id]  # the payout id is the rail's idempotency reference
    assert acc(session, tenant, EARN) == (0, 100, 0, 1_000_000_000)
    assert "mode" not in ledger_service.get_transfer(session, tenant, f"{po.id}:paid").metadata_


def test_execute_refuses_another_rail(session, tenant, clock):
    class OtherRail(SimulationRail):
        name = "other"

    po = request(session, tenant, clock, 100)
    with pytest.raises(PayoutRailMismatch):
        payout_service.execute(session, tenant, po.id, OtherRail(), clock)
    assert session.get(PayoutRequest, (tenant, po.id), populate_existing=True).attempts == 0


def test_backoff_is_exponential_and_capped():
    assert [backoff_s(a) for a in (1, 2, 3, 7, 8, 20)] == [30, 60, 120, 1920, 3600, 3600]


def test_payouts_are_tenant_scoped(session, tenant, clock):
    po = request(session, tenant, clock, 100)
    other = make_tenant(session, tenant + "-b", clock)
    for op in (lambda: payout_service.get(session, other, po.id),
               lambda: payout_service.approve(session, other, po.id, "op", clock),
               lambda: payout_service.execute(session, other, po.id, None, clock)):
        with pytest.raises(PayoutNotFound) as e:
            op()
        assert e.value.status == 404
    assert payout_service.list_payouts(session, other).items == []
    page = payout_service.list_payouts(session, tenant, provider_id=PROVIDER, status="approved")
    assert [p.id for p in page.items] == [po.id]


def test_request_rolled_back_with_its_transaction(db, tenant_id, clock):
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        make_earnings(s, tenant_id, clock, provider_id=PROVIDER, amount_minor=500)
    with pytest.raises(RuntimeError), db.session() as s:
        request(s, tenant_id, clock, 500)
        raise RuntimeError("crash before commit")
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(PayoutRequest)
                        .where(PayoutRequest.tenant_id == tenant_id)) == 0
        assert acc(s, tenant_id, EARN) == (0, 0, 0, 500)
        po = request(s, tenant_id, clock, 500)
        payout_service.execute(s, tenant_id, po.id, None, clock)
    with db.session() as s:
        assert payout_service.get(s, tenant_id, po.id).status == "paid"
        assert acc(s, tenant_id, EARN) == (0, 500, 0, 500)


# -- events -------------------------------------------------------------------------


def payout_events(session, tenant_id) -> list[tuple[str, dict]]:
    from meterline.events.models import Event

    return [(e.type, e.data) for e in session.scalars(select(Event).where(
        Event.tenant_id == tenant_id, Event.type.like("payout.%")).order_by(Event.seq))]


def test_a_payout_reports_its_request_and_its_outcome(session, tenant, clock):
    paid = request(session, tenant, clock, 250_000_000)
    payout_service.execute(session, tenant, paid.id, None, clock)
    rejected = request(session, tenant, clock, 1_000_000)
    payout_service.reject(session, tenant, rejected.id, "op-1", clock, reason="not today")
    failing = request(session, tenant, clock, 2_000_000)
    rail = FlakyRail(failures=MAX_ATTEMPTS)
    for _ in range(MAX_ATTEMPTS):
        payout_service.execute(session, tenant, failing.id, rail, clock)
    got = payout_events(session, tenant)
    assert [(t, d["payout_id"], d["status"]) for t, d in got] == [
        ("payout.requested", paid.id, "approved"), ("payout.paid", paid.id, "paid"),
        ("payout.requested", rejected.id, "approved"), ("payout.rejected", rejected.id, "rejected"),
        ("payout.requested", failing.id, "approved"), ("payout.failed", failing.id, "failed"),
    ]
    assert got[1][1]["amount"] == "250.000000" and got[1][1]["tx_signature"] == paid.tx_signature
    assert got[5][1]["attempts"] == MAX_ATTEMPTS and "RPC node timed out" in got[5][1]["last_error"]
