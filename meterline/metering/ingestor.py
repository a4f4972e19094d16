"""Group commit for usage batches (the HTTP path).

Request handlers hand their batch to one `UsageIngestor` per database. Its writer
thread takes everything queued while the previous commit was in flight, applies it
in ONE transaction (each batch through `ingest.apply`, in arrival order) and only
then resolves each caller's future — an acknowledged event is a committed one. On
SQLite this replaces N writers polling for the lock with one that never waits; on
both backends one fsync pays for many requests. If a combined transaction fails,
each batch is retried alone so one poisoned request cannot fail its neighbours.
On PostgreSQL the ingestors of several API processes take turns per tenant (an
advisory lock), so their groups never deadlock on each other's rollup rows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from sqlalchemy import Connection

from meterline.db import advisory
from meterline.db.engine import Database
from meterline.db.group_commit import CommitterStopped, GroupCommitter
from meterline.metering import ingest
from meterline.metering.ingest import IngestResult, UsageEventIn, Window

log = logging.getLogger(__name__)


class IngestorStopped(CommitterStopped):
    pass


@dataclass(slots=True)
class _Item:
    tenant_id: str
    licensee: str
    device: str
    events: Sequence[UsageEventIn]
    window: Window


class UsageIngestor(GroupCommitter[_Item, IngestResult]):
    name = "usage-ingestor"
    stopped = IngestorStopped

    def __init__(self, db: Database, *, max_events: int = 20_000) -> None:
        super().__init__(db, window_ms=0.0, max_size=max_events)

    def start(self) -> UsageIngestor:
        super().start()
        return self

    def submit(self, tenant_id: str, licensee: str, device: str, events: Sequence[UsageEventIn],
               window: Window) -> Future[IngestResult]:
        return self.submit_item(_Item(tenant_id, licensee, device, events, window))

    async def ingest_async(self, tenant_id: str, licensee: str, device: str, events: Sequence[UsageEventIn],
                           window: Window) -> IngestResult:
        return await self.submit_item_async(_Item(tenant_id, licensee, device, events, window))

    def size(self, item: _Item) -> int:
        return len(item.events)

    def apply(self, conn: Connection, items: list[_Item]) -> list[IngestResult | Exception]:
        if not self.db.is_sqlite:
            # One ingesting transaction per tenant at a time, across API processes. Each batch
            # locks its event ids and rollup rows in sorted order, but a group of several
            # batches does not, and two processes' groups deadlocked on them (a 500 once the
            # retries met the other group again). Taken in tenant order, these locks cannot.
            for tenant_id in sorted({i.tenant_id for i in items}):
                advisory.xact_lock(conn, advisory.USAGE, tenant_id)
        return [ingest.apply(conn, i.tenant_id, i.licensee, i.device, i.events, i.window) for i in items]


_ingestors: dict[int, UsageIngestor] = {}
_ingestors_lock = threading.Lock()


def ingestor_for(db: Database) -> UsageIngestor:
    """The process's running ingestor for `db`, started on first use.

    Kept per database object so every app built around one database shares one writer.
    """
    with _ingestors_lock:
        ing = _ingestors.get(id(db))
        if ing is None or ing.db is not db or not ing.running:
            ing = _ingestors[id(db)] = UsageIngestor(db).start()
        return ing
