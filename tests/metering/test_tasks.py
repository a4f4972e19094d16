"""The metering.prune job: partitions ahead on PostgreSQL, raw events past retention gone."""

from __future__ import annotations

from sqlalchemy import text

from meterline.metering import partitions
from meterline.metering import tasks as metering_tasks
from meterline.metering.ingest import UsageEventIn
from meterline.metering.service import metering_service
from tests.factories import make_tenant

DAY = 24 * 3600 * 1_000_000_000


def test_prune_job(db, clock, tenant_id):
    """Retention drops raw events before the cutoff. On PostgreSQL it drops whole monthly
    partitions, so the old event and the kept one sit in different months here, with the
    cutoff between them (an event in a month that straddles the cutoff stays until the
    month is wholly past)."""
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        metering_service.seed_demo(s, tenant_id, clock.now_ns())
        now = clock.now_ns()
        r = metering_service.ingest(s, tenant_id, "", "d", [UsageEventIn("old", "cam", "detections", 1, now)], now)
        assert r.accepted == 1
    clock.advance(60 * 24 * 3600)  # two months on: a different calendar month
    with db.session() as s:
        now = clock.now_ns()
        r = metering_service.ingest(s, tenant_id, "", "d", [UsageEventIn("new", "cam", "detections", 1, now)], now)
        assert r.accepted == 1
    clock.advance(40 * 24 * 3600)
    # cutoff = 60 days before now: past the old event's whole month, before the new event.
    metering_tasks.prune(db, clock, retention_days=60)
    with db.engine.connect() as conn:
        left = {r[0] for r in conn.execute(text("SELECT event_id FROM usage_events WHERE tenant_id = :t"),
                                           {"t": tenant_id})}
        if not db.is_sqlite:
            names = set(partitions.existing(conn))
            for offset in (0, 1):
                assert partitions.partition_name(partitions.month_start_ns(clock.now_ns(), offset)) in names
    assert left == {"new"}


def test_job_is_scheduled(db, clock):
    from meterline.config import Settings
    from meterline.worker.tasks import JobContext, default_jobs, make_dispatcher

    ctx = JobContext(db=db, clock=clock, batcher=None, settings=Settings(), signer=None,  # type: ignore[arg-type]
                     events=make_dispatcher(db, clock, Settings()))
    assert metering_tasks.PRUNE in {job.name for job in default_jobs(ctx)}
