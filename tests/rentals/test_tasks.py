"""Rental jobs: expired contracts are settled by the worker, sessions' cover is renewed or ended.

The jobs sweep every tenant in the database, so other tests' rentals may be
swept too; assertions look only at this test's tenant.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, func, select

from meterline.clock import FrozenClock
from meterline.config import Settings
from meterline.db.engine import Database
from meterline.events.models import Event
from meterline.ledger.batcher import LedgerBatcher
from meterline.ledger.models import Transfer
from meterline.ledger.signing import Signer
from meterline.ledger.verify import verify_ledger
from meterline.money import format_amount, parse_amount
from meterline.payouts import tasks as payout_tasks
from meterline.rentals import tasks as rental_tasks
from meterline.rentals.contracts import contract_service
from meterline.rentals.models import Rental
from meterline.rentals.service import ACTIVE, SETTLED, rental_service
from meterline.rentals.sessions import session_service
from meterline.wallets.service import wallet_service
from meterline.worker.runner import Worker
from meterline.worker.tasks import JobContext, default_jobs, make_dispatcher
from tests.factories import make_demo_tenant

NS = 1_000_000_000
HOUR = 3600
SLICE = 41_667  # a whole 4090's first five-minute slice, of time (see test_sessions.py)


@pytest.fixture
def tenant(db: Database, tenant_id: str, clock: FrozenClock) -> str:
    with db.session() as s:
        make_demo_tenant(s, tenant_id, clock)
    return tenant_id


@pytest.fixture
def batcher(db: Database, clock: FrozenClock) -> Iterator[LedgerBatcher]:
    with LedgerBatcher(db, clock) as b:
        yield b


@pytest.fixture
def ctx(db: Database, clock: FrozenClock, batcher: LedgerBatcher) -> JobContext:
    settings = Settings(database_url=db.url, sweep_interval_s=2.0)
    return JobContext(db=db, clock=clock, batcher=batcher, settings=settings, signer=Signer.generate(),
                      events=make_dispatcher(db, clock, settings))


def rent(db: Database, tenant: str, clock: FrozenClock, seconds: int = HOUR) -> str:
    with db.session() as s:
        return contract_service.rent(s, tenant, wallet=f"w-{uuid.uuid4().hex[:8]}", tier="M2", duration_s=seconds,
                                     paid_minor=None, proof=f"p-{uuid.uuid4().hex}", rail=None, clock=clock).rental.id


def start_session(db: Database, tenant: str, clock: FrozenClock, *, funds: int, user: str) -> str:
    with db.session() as s:
        wallet_service.deposit(s, tenant, owner_type="user", owner_id=user, asset="DGPU", amount_minor=funds,
                               rail="simulation", proof=f"fund-{user}", clock=clock)
    with db.session() as s:
        return session_service.start(s, tenant, customer_id=user, device_id=None, gpu_model="nvidia_rtx_4090",
                                     vram_gb=None, watts=None, clock=clock).id


def get(db: Database, tenant: str, rid: str) -> Rental:
    with db.session(write=False) as s:
        return rental_service.get(s, tenant, rid)


def ledger_ok(db: Database, tenant: str) -> None:
    report = verify_ledger(db, tenant)
    assert report.ok, [str(p) for p in report.problems]


# -- settle_expired -----------------------------------------------------------------------


def test_the_worker_settles_an_expired_contract_within_one_run(db, tenant, clock, ctx):
    rid = rent(db, tenant, clock)
    later = rent(db, tenant, clock, seconds=2 * HOUR)
    clock.advance(HOUR + ctx.settings.sweep_interval_s)
    assert get(db, tenant, rid).status == ACTIVE  # nothing settles it until the worker runs
    done = Worker(db=db, clock=clock, batcher=ctx.batcher, settings=ctx.settings, signer=ctx.signer).run_once(
        force=True)
    assert done[rental_tasks.SETTLE_EXPIRED] >= 1
    r = get(db, tenant, rid)
    assert (r.status, r.end_reason, r.ended_at, r.used_minor, r.refund_minor) == (
        SETTLED, "expired", r.expires_at, 1_000_000, 0)
    assert (r.provider_minor, r.fee_minor) == (950_000, 50_000)
    assert get(db, tenant, later).status == ACTIVE
    ledger_ok(db, tenant)


def test_settle_expired_is_an_idempotent_sweep(db, tenant, clock):
    ids = [rent(db, tenant, clock, seconds=60 * (i + 1)) for i in range(5)]
    clock.advance(180)  # the first three have expired
    assert rental_tasks.settle_expired(db, clock, limit=2) >= 3  # rounds of two until none is due
    statuses = [get(db, tenant, rid).status for rid in ids]
    assert statuses == [SETTLED] * 3 + [ACTIVE] * 2
    rental_tasks.settle_expired(db, clock)
    assert [get(db, tenant, rid).status for rid in ids] == statuses
    for rid in ids[:3]:
        r = get(db, tenant, rid)
        assert r.end_reason == "expired" and r.used_minor == r.held_minor and r.refund_minor == 0


def test_racing_workers_settle_each_contract_once(db, tenant, clock):
    ids = [rent(db, tenant, clock, seconds=60) for _ in range(6)]
    clock.advance(61)
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def sweep() -> None:
        barrier.wait()
        try:
            rental_tasks.settle_expired(db, clock)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert all(get(db, tenant, rid).status == SETTLED for rid in ids)
    with db.session(write=False) as s:
        provider_shares = s.scalar(select(func.count()).select_from(Transfer).where(
            Transfer.tenant_id == tenant, Transfer.code == "rental_provider_share"))
    assert provider_shares == len(ids)
    ledger_ok(db, tenant)


# -- renew_cover --------------------------------------------------------------------------


def test_renew_cover_tops_up_funded_sessions_and_terminates_dry_ones(db, tenant, clock):
    rich = start_session(db, tenant, clock, funds=1_000_000, user=f"rich-{tenant}")
    poor = start_session(db, tenant, clock, funds=50_000, user=f"poor-{tenant}")
    idle = start_session(db, tenant, clock, funds=1_000_000, user=f"idle-{tenant}")
    clock.advance(100)
    assert rental_tasks.renew_cover(db, clock) >= 0
    assert [get(db, tenant, i).hold_count for i in (rich, poor, idle)] == [1, 1, 1]  # plenty of cover left
    with db.session() as s:
        session_service.end(s, tenant, idle, clock)
    clock.advance(243)  # 343 s: used 47,638.9 → 47,639, past the 41,667 held
    assert rental_tasks.renew_cover(db, clock, page=1) >= 2  # paging one session at a time
    r = get(db, tenant, rich)
    # One hold covers the 5,972 used past the holds and the next slice (it held one slice,
    # leaving the session 5,972 short of its usage).
    assert (r.status, r.held_minor, r.hold_count) == (ACTIVE, 2 * SLICE + 5_972, 2)
    p = get(db, tenant, poor)
    assert (p.status, p.end_reason) == (SETTLED, "insufficient_funds")
    # Its 50,000 cannot hold that much, but it pays what it used: the holds, then 5,972 more
    # from the wallet (the settlement was capped at the 41,667 held).
    assert (p.used_minor, p.unpaid_minor, p.held_minor) == (47_639, 0, SLICE)
    assert get(db, tenant, idle).hold_count == 1  # ended sessions are left alone
    ledger_ok(db, tenant)


# -- registration -------------------------------------------------------------------------


def test_the_jobs_are_registered_with_the_worker(ctx):
    jobs = {j.name: j.interval_s for j in default_jobs(ctx)}
    assert jobs["rentals.settle_expired"] == ctx.settings.sweep_interval_s
    assert jobs["rentals.renew_cover"] == ctx.settings.sweep_interval_s
    assert jobs[payout_tasks.EXECUTE_DUE] == 5.0


def test_a_contract_extended_after_the_sweep_listed_it_is_not_settled(db, tenant, clock, monkeypatch):
    rid = rent(db, tenant, clock, seconds=60)
    clock.advance(60)
    real = rental_service.due_for_settlement

    def listed_then_extended(session, now_ns, limit=200, after=None):
        due = real(session, now_ns, limit, after=after)
        # Between the sweep's read and its settlement the contract gets more time (e.g. an
        # API process whose clock is a little behind accepted an extension).
        with db.session() as s:
            r = rental_service.get(s, tenant, rid, lock=True)
            r.expires_at += HOUR * NS
        return due

    monkeypatch.setattr(rental_service, "due_for_settlement", listed_then_extended)
    rental_tasks.settle_expired(db, clock)
    monkeypatch.undo()
    assert get(db, tenant, rid).status == ACTIVE


def test_a_broken_rental_does_not_stall_the_sweep(db, tenant, clock):
    """Rentals the sweep cannot settle (here: a corrupt stored quote) are logged and passed
    over; the valid contracts behind them, even beyond the first page, still settle."""
    good = rent(db, tenant, clock, seconds=60)
    with db.session() as s:
        row = rental_service.get(s, tenant, good)
        template = {c.key: getattr(row, c.key) for c in Rental.__table__.columns}
    with db.session() as s:
        for i in range(5):  # expire before the good one, so they come first in every page
            s.add(Rental(**{**template, "id": f"CTR-BAD{i:05d}", "quote": {},
                            "expires_at": template["expires_at"] - (10 - i) * NS}))
    clock.advance(120)
    rental_tasks.settle_expired(db, clock, limit=2)
    assert get(db, tenant, good).status == SETTLED
    assert all(get(db, tenant, f"CTR-BAD{i:05d}").status == ACTIVE for i in range(5))
    with db.session() as s:  # leave nothing broken behind for other tests' sweeps
        s.execute(delete(Rental).where(Rental.tenant_id == tenant, Rental.id.like("CTR-BAD%")))


# -- events ---------------------------------------------------------------------------------


def rental_events(db: Database, tenant: str) -> list[tuple[str, dict]]:
    with db.session(write=False) as s:
        return [(e.type, e.data) for e in s.scalars(select(Event).where(Event.tenant_id == tenant)
                                                     .order_by(Event.seq)) if e.type.startswith("rental.")]


def test_a_session_reports_its_start_usage_and_settlement(db, tenant, clock):
    rid = start_session(db, tenant, clock, funds=10_000_000, user="ev-user")
    clock.advance(90)
    assert rental_tasks.emit_usage(db, clock, 60) >= 1
    assert rental_tasks.emit_usage(db, clock, 60) >= 1  # the same period again: no second event
    clock.advance(60)
    rental_tasks.emit_usage(db, clock, 60)
    with db.session() as s:
        settlement = session_service.end(s, tenant, rid, clock)
    got = rental_events(db, tenant)
    assert [t for t, _ in got] == ["rental.started", "rental.usage", "rental.usage", "rental.settled"]
    started, use1, use2, settled = (d for _, d in got)
    assert started["rental_id"] == rid and started["style"] == "payg" and started["customer_id"] == "ev-user"
    assert (use1["elapsed_seconds"], use2["elapsed_seconds"]) == (90, 150)
    # Every amount is an exact decimal string of the ledger's figures.
    r = get(db, tenant, rid)
    assert settled["used"] == format_amount(settlement.used_minor, r.scale)
    assert (settled["cost"], settled["unpaid"]) == (settled["used"], "0.000000")  # paid in full
    assert (settled["end_reason"], settled["status"]) == ("ended", SETTLED)
    assert parse_amount(use2["held"], r.scale) - parse_amount(use2["cost"], r.scale) == parse_amount(
        use2["cover_left"], r.scale, allow_zero=True)


def test_an_expired_contract_reports_its_settlement(db, tenant, clock):
    rid = rent(db, tenant, clock, seconds=60)
    clock.advance(61)
    rental_tasks.settle_expired(db, clock)
    [(_, started), (_, settled)] = [e for e in rental_events(db, tenant) if e[1]["rental_id"] == rid]
    assert started["expires_at"] and settled["end_reason"] == "expired"
    r = get(db, tenant, rid)
    assert (settled["used"], settled["refund"]) == (format_amount(r.used_minor or 0, r.scale),
                                                    format_amount(r.refund_minor or 0, r.scale))
    assert settled["provider_share"] == format_amount(r.provider_minor or 0, r.scale)


def test_a_sessions_usage_event_shows_the_cover_its_renewal_judges_by(db, tenant, clock):
    """`cover_left` was held − the accrual, which leaves out the power drawn since the last
    sample: at 10 kW it showed cover the renewal (held − committed) saw already spent."""
    rid = start_session(db, tenant, clock, funds=10_000_000, user="cover-user")
    with db.session() as s:
        rental_service.record_sample(s, tenant, rid, {"power_w": 10_000}, clock)
    clock.advance(60)
    rental_tasks.emit_usage(db, clock, 60)
    [use] = [d for t, d in rental_events(db, tenant) if t == "rental.usage" and d["rental_id"] == rid]
    r = get(db, tenant, rid)
    committed = rental_service.committed_minor(r, clock.now_ns())
    # time 60 s = 8,333.3; power since the sample 10 kW × 60 s = 166.7 Wh → 166,666.7
    assert committed == 175_000
    assert (use["cost"], use["cover_left"]) == (format_amount(committed, 6), format_amount(SLICE - committed, 6))
