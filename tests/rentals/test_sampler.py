"""The sample batcher: group-committed samples keep the exact energy integral and the per-sample rules."""

from __future__ import annotations

import itertools
import random
import threading
from decimal import Decimal

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from meterline.api.runtime import Runtime
from meterline.catalog.service import catalog_service
from meterline.clock import Clock, FrozenClock, SystemClock
from meterline.config import Settings
from meterline.db.engine import Database
from meterline.db.group_commit import _Entry
from meterline.pricing.service import pricing_service
from meterline.rentals import accrual
from meterline.rentals.contracts import contract_service
from meterline.rentals.models import Rental, RentalSample
from meterline.rentals.sampler import Recorded, SampleBatcher, _Item
from meterline.rentals.service import (
    PAYG,
    PREPAID,
    RentalAlreadySettled,
    RentalExpired,
    RentalNotFound,
    rental_service,
)
from meterline.wallets.service import wallet_service
from tests.factories import make_demo_tenant
from tests.threads import run_concurrently

USER = "carol"


def _tenant(db: Database, tenant_id: str, clock: Clock) -> str:
    with db.session() as s:
        make_demo_tenant(s, tenant_id, clock)
        wallet_service.deposit(s, tenant_id, owner_type="user", owner_id=USER, asset="DGPU",
                               amount_minor=100_000_000, rail="simulation", proof="fund-carol", clock=clock)
    return tenant_id


def _session(db: Database, tenant: str, clock: Clock) -> str:
    """A pay-as-you-go 4090 session (time + 0.001 DGPU/Wh metered power), no expiry."""
    with db.session() as s:
        device = catalog_service.get_device(s, tenant, "gpu-4090-001")
        quote = pricing_service.quote_for_device(s, tenant, device, utilisation=Decimal(0))
        now = clock.now_ns()
        wallet = wallet_service.wallet_account(s, tenant, owner_type="user", owner_id=USER, asset="DGPU", now_ns=now)
        escrow = wallet_service.system_account(s, tenant, "escrow", "DGPU", now)
        r = rental_service.create(
            s, tenant, style=PAYG, customer_type="user", customer_id=USER, wallet_account_id=wallet.id,
            escrow_account_id=escrow.id, asset="DGPU", scale=6, quote=quote, duration_s=None,
            initial_hold_minor=1_000_000, payment_rail="wallet", payment_proof=None, refund_to_rail=False,
            provider_id=device.provider_id, device_id=device.id, tier=device.tier_id,
            gpu_model=device.gpu_model_id, vram_gb=device.vram_gb, clock=clock,
        )
        return r.id


def _sample(power: str) -> dict[str, Decimal]:
    return rental_service.validate_sample({"power_w": Decimal(power), "cpu_percent": Decimal(50)})


def test_concurrent_samples_keep_the_exact_integral(db: Database, tenant_id: str):
    clock = SystemClock()  # real, distinct timestamps: intervals are integrated for real
    tenant = _tenant(db, tenant_id, clock)
    ids = [_session(db, tenant, clock) for _ in range(12)]
    acks: dict[str, list[int]] = {i: [] for i in ids}
    lock = threading.Lock()

    with SampleBatcher(db, clock, window_ms=2) as batcher:
        def client(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(25):
                rid = rng.choice(ids)
                done = batcher.record(tenant, rid, [_sample(f"{rng.randint(0, 700)}.{rng.randint(0, 999)}")])
                with lock:
                    acks[rid].append(done.rental.sample_count)

        run_concurrently(client, 8)

    with db.session(write=False) as s:
        for rid in ids:
            rental = rental_service.get(s, tenant, rid)
            rows = list(s.scalars(select(RentalSample).where(RentalSample.tenant_id == tenant,
                                                             RentalSample.rental_id == rid)
                                  .order_by(RentalSample.id)))
            # Every acknowledged sample is stored once, and each caller saw the count after its own.
            assert sorted(acks[rid]) == list(range(1, len(rows) + 1))
            assert rental.sample_count == len(rows)
            # Arrival order = row order, timestamps never go back: the sequential integral.
            assert [r.ts for r in rows] == sorted(r.ts for r in rows)
            energy2 = 0
            for prev, cur in itertools.pairwise(rows):
                assert prev.power_mw is not None and cur.power_mw is not None
                energy2 += (prev.power_mw + cur.power_mw) * (cur.ts // 1_000_000 - prev.ts // 1_000_000)
            assert rental.energy2_mw_ms == energy2
            rate = Decimal(str(rental.quote["power_rate_per_wh"]))
            assert rental.power_cost_e6 == accrual.power_cost_e6(rate, rental.scale, energy2)
            if rows:
                assert (rental.last_sample_at, rental.last_power_mw) == (rows[-1].ts, rows[-1].power_mw)


def test_batched_equals_one_by_one(db: Database, tenant_id: str):
    """The same samples at the same times, through the batcher and through `record_sample`."""
    clock = FrozenClock()
    tenant = _tenant(db, tenant_id, clock)
    a, b = _session(db, tenant, clock), _session(db, tenant, clock)
    powers = ["450", "300.5", "0", "612.25", "450", "1.001"]
    with SampleBatcher(db, clock) as batcher:
        for p in powers:
            clock.advance(0.7371)
            batcher.record(tenant, a, [_sample(p)])
            with db.session() as s:
                rental_service.record_sample(s, tenant, b, {"power_w": Decimal(p), "cpu_percent": Decimal(50)}, clock)
    with db.session(write=False) as s:
        ra, rb = rental_service.get(s, tenant, a), rental_service.get(s, tenant, b)
        fields = ("energy2_mw_ms", "power_cost_e6", "last_power_mw", "last_sample_at", "sample_count")
        assert [getattr(ra, f) for f in fields] == [getattr(rb, f) for f in fields]
        assert ra.power_cost_e6 > 0


def test_one_batch_with_a_rental_twice_answers_each_caller_its_own_count_and_stores_exact_values(
        db: Database, tenant_id: str):
    clock = FrozenClock()
    tenant = _tenant(db, tenant_id, clock)
    a, b = _session(db, tenant, clock), _session(db, tenant, clock)
    values = {"power_w": Decimal("450.125"), "cpu_percent": Decimal("12.50"), "memory_mb": Decimal(3500)}
    with SampleBatcher(db, clock, window_ms=300) as batcher:  # a wide window: one batch
        futures = [batcher.submit(tenant, rid, [rental_service.validate_sample(values)]) for rid in (a, b, a, a)]
        done = [f.result() for f in futures]
    assert [d.rental.sample_count for d in done] == [1, 1, 2, 3]
    assert done[0].rental is not done[2].rental  # the earlier caller's row was not folded into
    with db.session(write=False) as s:
        rows = list(s.scalars(select(RentalSample).where(RentalSample.tenant_id == tenant)
                              .order_by(RentalSample.id)))
        assert [r.rental_id for r in rows] == [a, b, a, a]
        assert all(r.values == {"power_w": "450.125", "cpu_percent": "12.50", "memory_mb": "3500"} for r in rows)
        assert all(r.power_mw == 450125 for r in rows)
        assert rental_service.get(s, tenant, a).sample_count == 3


def test_a_refused_sample_does_not_fail_its_neighbours(db: Database, tenant_id: str):
    clock = FrozenClock()
    tenant = _tenant(db, tenant_id, clock)
    other = _tenant(db, f"{tenant_id}-o", clock)
    good, settled, foreign = _session(db, tenant, clock), _session(db, tenant, clock), _session(db, other, clock)
    with db.session() as s:
        rental_service.settle(s, tenant, settled, clock)
        expiring = contract_service.rent(s, tenant, wallet="w1", tier="M2", duration_s=60, paid_minor=None,
                                         proof="tx-expiring", rail=None, clock=clock).rental.id
    clock.advance(120)  # the prepaid contract is now past its term
    with SampleBatcher(db, clock, window_ms=300) as batcher:  # a wide window: one batch
        futures = {
            "good": batcher.submit(tenant, good, [_sample("100")]),
            "missing": batcher.submit(tenant, "CTR-NOPE0000", [_sample("100")]),
            "settled": batcher.submit(tenant, settled, [_sample("100")]),
            "foreign": batcher.submit(tenant, foreign, [_sample("100")]),
            "not_owner": batcher.submit(tenant, good, [_sample("100")], owner="mallory"),
            "not_a_contract": batcher.submit(tenant, good, [_sample("100")], style=PREPAID),
            "expired": batcher.submit(tenant, expiring, [_sample("100")]),
            "good_again": batcher.submit(tenant, good, [_sample("200"), _sample("300")]),
        }
        assert futures["good"].result(10).rental.sample_count == 1
        assert futures["good_again"].result(10).rental.sample_count == 3
        for name, exc in [("missing", RentalNotFound), ("settled", RentalAlreadySettled),
                          ("foreign", RentalNotFound), ("not_owner", RentalNotFound),
                          ("not_a_contract", RentalNotFound), ("expired", RentalExpired)]:
            with pytest.raises(exc):
                futures[name].result(10)
    with db.session(write=False) as s:
        counts = {rid: s.get(Rental, (t, rid)).sample_count  # type: ignore[union-attr]
                  for t, rid in [(tenant, good), (tenant, settled), (other, foreign), (tenant, expiring)]}
        assert counts == {good: 3, settled: 0, foreign: 0, expiring: 0}
        stored = s.scalars(select(RentalSample.rental_id).where(RentalSample.tenant_id.in_([tenant, other])))
        assert sorted(stored) == [good] * 3


def test_a_caller_cancelled_while_queued_is_skipped(db: Database, tenant_id: str):
    clock = FrozenClock()
    tenant = _tenant(db, tenant_id, clock)
    rid = _session(db, tenant, clock)
    with SampleBatcher(db, clock, window_ms=300) as batcher:
        first = batcher.submit(tenant, rid, [_sample("100")])
        gone = batcher.submit(tenant, rid, [_sample("200")])
        assert gone.cancel()  # still queued: the writer is waiting out its window
        last = batcher.submit(tenant, rid, [_sample("300")])
        assert first.result(10).rental.sample_count == 1
        assert last.result(10).rental.sample_count == 2
        assert gone.cancelled()
    with db.session(write=False) as s:
        powers = list(s.scalars(select(RentalSample.power_mw).where(RentalSample.tenant_id == tenant)
                                .order_by(RentalSample.id)))
        assert powers == [100_000, 300_000]


def test_stop_commits_what_was_queued(db: Database, tenant_id: str):
    clock = FrozenClock()
    tenant = _tenant(db, tenant_id, clock)
    rid = _session(db, tenant, clock)
    batcher = SampleBatcher(db, clock, window_ms=200).start()
    futures = [batcher.submit(tenant, rid, [_sample("10")]) for _ in range(5)]
    batcher.stop()
    assert sorted(f.result(0).rental.sample_count for f in futures) == [1, 2, 3, 4, 5]


# -- pacing: a batch starts no sooner than `pace` after the previous one ---------------------


class _Time:
    """A stand-in for the sampler module's `time`: monotonic moves only when slept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _entries(n: int) -> list[_Entry[_Item, Recorded]]:
    """Queued callers with one (empty) sample each: `_gather` only counts them."""
    return [_Entry(_Item("t", f"r{i}", [{}], None), None) for i in range(n)]


def test_pacing_waits_out_the_rest_of_the_pace_then_takes_what_queued(db: Database, monkeypatch):
    fake = _Time()
    monkeypatch.setattr("meterline.rentals.sampler.time", fake)
    batcher = SampleBatcher(db, SystemClock(), window_ms=0, pace_ms=10)  # never started: _gather only
    first = _entries(1)
    assert batcher._gather(first, 1) is False
    assert fake.slept == []  # the first batch has nobody to wait for
    fake.now += 0.004  # the batch took 4 ms; samples keep arriving
    for e in _entries(3):
        batcher._queue.put(e)
    second = _entries(1)
    batcher._gather(second, 1)
    assert fake.slept == [pytest.approx(0.006)]  # the rest of the 10 ms pace
    assert len(second) == 4  # ... and everything queued meanwhile shares the commit


def test_pacing_never_delays_a_batch_after_a_long_commit_or_a_full_queue(db: Database, monkeypatch):
    fake = _Time()
    monkeypatch.setattr("meterline.rentals.sampler.time", fake)
    batcher = SampleBatcher(db, SystemClock(), window_ms=0, pace_ms=10, max_samples=4)
    batcher._gather(_entries(1), 1)
    fake.now += 0.015  # the commit outlasted the pace
    batcher._gather(_entries(1), 1)
    assert fake.slept == []
    for e in _entries(4):  # a full batch is waiting
        batcher._queue.put(e)
    batch = _entries(1)
    batcher._gather(batch, 1)
    assert fake.slept == [] and len(batch) == 4


def test_pace_zero_never_waits(db: Database, monkeypatch):
    fake = _Time()
    monkeypatch.setattr("meterline.rentals.sampler.time", fake)
    batcher = SampleBatcher(db, SystemClock(), window_ms=0, pace_ms=0)
    for _ in range(3):
        batcher._gather(_entries(1), 1)
    assert fake.slept == []


def test_the_server_takes_the_sample_pace_from_its_settings(db: Database) -> None:
    default = Runtime(settings=Settings(database_url=db.url), db=db)
    assert default.samples is not None and default.samples.pace_s == pytest.approx(0.010)
    off = Runtime(settings=Settings(database_url=db.url, sample_pace_ms=0), db=db)
    assert off.samples is not None and off.samples.pace_s == 0
    with pytest.raises(ValidationError):
        Settings(database_url=db.url, sample_pace_ms=-1)


def test_a_batched_sample_stamped_before_the_start_counts_from_the_start(db: Database, tenant_id: str):
    """As `record_sample`: a server whose clock is ten minutes behind the one that started the
    session stamps its sample before the start, and the next sample integrated 10 kW over
    ten minutes before the session existed. It counts (and is stored) from the start."""
    clock = FrozenClock()
    tenant = _tenant(db, tenant_id, clock)
    rid = _session(db, tenant, clock)
    with SampleBatcher(db, FrozenClock(clock.now_ns() - 600 * accrual.NS)) as behind:
        behind.record(tenant, rid, [_sample("10000")])
    clock.advance(1)
    with SampleBatcher(db, clock) as batcher:
        batcher.record(tenant, rid, [_sample("10000")])
    with db.session(write=False) as s:
        rental = rental_service.get(s, tenant, rid)
        stamps = sorted(x.ts for x in rental_service.samples(s, tenant, rid))
    assert rental.energy2_mw_ms == 2 * 10_000_000 * 1000  # one second at 10 kW, doubled
    assert stamps == [rental.started_at, rental.started_at + accrual.NS]
