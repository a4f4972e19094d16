"""The licensing jobs are registered with the worker and run through it."""

from __future__ import annotations

from meterline.clock import FrozenClock
from meterline.config import Settings
from meterline.db.engine import Database
from meterline.ledger.batcher import LedgerBatcher
from meterline.ledger.signing import Signer
from meterline.licensing import tasks
from meterline.licensing.runtime import shared_runtime
from meterline.licensing.service import licensing_service
from meterline.worker.runner import Worker
from tests.factories import make_license, make_licensing_catalogue


def test_worker_runs_the_licensing_jobs(db: Database, clock: FrozenClock, tenant_id: str) -> None:
    settings = Settings(database_url=db.url, device_dead_after_s=60)
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
        lic = make_license(s, tenant_id, clock)
        licensing_service.heartbeat(s, tenant_id, lic, "dev-1", software_version="1", cameras=[],
                                    now_ns=clock.now_ns())
    worker = Worker(db=db, clock=clock, batcher=LedgerBatcher(db, clock), settings=settings,
                    signer=Signer.generate())
    names = {j.name for j in worker.scheduler.jobs}
    assert {tasks.CULL_DEAD_DEVICES, tasks.FLUSH_AUDIT, tasks.PRUNE_AUDIT} <= names
    clock.advance(61)
    shared_runtime(db, settings)  # the runtime the API process would share with its in-process worker
    done = worker.run_once(force=True)
    assert done[tasks.CULL_DEAD_DEVICES] >= 1
    assert tasks.FLUSH_AUDIT in done and tasks.PRUNE_AUDIT in done
    with db.session(write=False) as s:
        assert [d.state for d in licensing_service.list_devices(s, tenant_id, lic)] == ["dead"]
