"""Dedup under concurrent duplicate batches: every id counted exactly once (real commits)."""

from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy import text

from meterline.db.engine import WRITE, Database
from meterline.metering.ingest import HOUR_NS, UsageEventIn, Window
from meterline.metering.ingestor import UsageIngestor
from meterline.metering.service import metering_service
from tests.conftest import PG_URL
from tests.factories import make_tenant
from tests.threads import run_concurrently

THREADS = 8
IDS = 600


def _setup(db: Database, tenant_id: str, clock) -> int:
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        metering_service.seed_demo(s, tenant_id, clock.now_ns())
    now = clock.now_ns()
    return now - now % HOUR_NS


def _totals(db: Database, tenant_id: str) -> tuple[int, int, int]:
    with db.engine.connect() as conn:
        ids = conn.execute(text("SELECT COUNT(*) FROM usage_event_ids WHERE tenant_id = :t"), {"t": tenant_id}).scalar()
        raw = conn.execute(text("SELECT COUNT(*) FROM usage_events WHERE tenant_id = :t"), {"t": tenant_id}).scalar()
        rolled = conn.execute(text("SELECT SUM(event_count) FROM usage_rollups WHERE tenant_id = :t"),
                              {"t": tenant_id}).scalar()
    return int(ids or 0), int(raw or 0), int(rolled or 0)


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="METERLINE_TEST_POSTGRES_URL not set")
def test_concurrent_duplicate_batches_on_postgres(postgres_url, clock, tenant_id):
    db = Database(postgres_url, pool_size=THREADS)
    try:
        t0 = _setup(db, tenant_id, clock)
        accepted = [0] * THREADS
        duplicates = [0] * THREADS
        barrier = threading.Barrier(THREADS)

        def worker(w: int) -> None:
            rng = random.Random(w)
            barrier.wait()
            for _round in range(4):
                # every thread sends overlapping batches of the same ids, shuffled
                ids = rng.sample(range(IDS), 300)
                events = [UsageEventIn(f"e{i}", f"cam-{i % 7}", "frames_processed", 1, t0 + i) for i in ids]
                with db.write_connection() as conn:
                    r = metering_service.ingest(conn, tenant_id, "lic", f"dev-{w}", events, clock.now_ns())
                accepted[w] += r.accepted
                duplicates[w] += r.duplicates

        run_concurrently(worker, THREADS)
        ids, raw, rolled = _totals(db, tenant_id)
        assert sum(accepted) == ids == raw == rolled
        assert sum(accepted) + sum(duplicates) == THREADS * 4 * 300
        assert ids <= IDS
    finally:
        db.dispose()


def test_group_commit_ingestor_dedups_concurrent_callers(db, clock, tenant_id):
    t0 = _setup(db, tenant_id, clock)
    ing = UsageIngestor(db).start()
    try:
        window = Window(clock.now_ns(), 3600, 300)
        futures = [ing.submit(tenant_id, "lic", "dev", [UsageEventIn(f"e{i}", "cam", "frames_processed", 2, t0)
                                                         for i in range(k, k + 100)], window)
                   for k in range(0, 500, 50)]  # each id sent twice across batches
        results = [f.result(timeout=30) for f in futures]
    finally:
        ing.stop()
    assert sum(r.accepted for r in results) == 550
    assert sum(r.duplicates for r in results) == 450
    assert _totals(db, tenant_id) == (550, 550, 550)


def test_failed_group_commit_retries_each_batch_alone(db, clock, tenant_id, monkeypatch):
    t0 = _setup(db, tenant_id, clock)
    from meterline.metering import ingestor as ingestor_mod

    real = ingestor_mod.ingest.apply

    def poisoned(conn, tenant, licensee, device, events, window):
        if device == "poison":
            raise RuntimeError("poisoned batch")
        return real(conn, tenant, licensee, device, events, window)

    monkeypatch.setattr(ingestor_mod.ingest, "apply", poisoned)
    ing = UsageIngestor(db)
    window = Window(clock.now_ns(), 3600, 300)
    # queue before starting so both land in one group commit
    ing._running = True
    good = ing.submit(tenant_id, "lic", "good", [UsageEventIn("g1", "cam", "frames_processed", 1, t0)], window)
    bad = ing.submit(tenant_id, "lic", "poison", [UsageEventIn("p1", "cam", "frames_processed", 1, t0)], window)
    ing._running = False
    ing.start()
    try:
        assert good.result(timeout=30).accepted == 1
        with pytest.raises(RuntimeError):
            bad.result(timeout=30)
    finally:
        ing.stop()
    monkeypatch.undo()
    with db.write_connection() as conn:
        if db.is_sqlite:
            conn = conn.execution_options(**WRITE)
        r = metering_service.ingest(conn, tenant_id, "lic", "x", [UsageEventIn("p1", "cam", "frames_processed", 1, t0)],
                                    clock.now_ns())
    assert r.accepted == 1  # the failed batch left its id unclaimed


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="METERLINE_TEST_POSTGRES_URL not set")
def test_ingestors_of_several_processes_never_deadlock(postgres_url, clock, tenant_id):
    """Each API process has its own ingestor. Their group commits hold several batches, each
    locking its ids and rollup rows in its own sorted order; two groups then deadlocked, and
    a batch that met the other group again on its retry answered 500."""
    ingestors = [UsageIngestor(Database(postgres_url)).start() for _ in range(3)]
    db = ingestors[0].db
    try:
        t0 = _setup(db, tenant_id, clock)
        window = Window(clock.now_ns(), 7 * 24 * 3600, 300)

        accepted = [0] * 12

        def client(w: int) -> None:
            rng = random.Random(w)
            ing = ingestors[w % len(ingestors)]
            futures = []
            for _ in range(40):
                ids = rng.sample(range(2000), rng.randint(3, 200))
                events = [UsageEventIn(f"e{i}", f"cam-{i % 2}", "frames_processed", 1, t0 - (i % 3) * HOUR_NS)
                          for i in ids]
                futures.append(ing.submit(tenant_id, "lic", f"dev-{w}", events, window))
            accepted[w] = sum(f.result(timeout=120).accepted for f in futures)  # raises what a caller got

        run_concurrently(client, 12)
        ids, raw, rolled = _totals(db, tenant_id)
        assert sum(accepted) == ids == raw == rolled
    finally:
        for ing in ingestors:
            ing.stop()
            ing.db.dispose()
