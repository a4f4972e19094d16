"""Group commit for usage batches (the HTTP path).

Request handlers hand their batch to one `UsageIngestor` per database. Its writer
thread takes everything queued while the previous commit was in flight, applies it
in ONE transaction (each batch through `ingest.apply`, in arrival order) and only
then resolves each caller's future — an acknowledged event is a committed one. On
SQLite this replaces N writers polling for the lock with one that never waits; on
both backends one fsync pays for many requests. If a combined transaction fails,
each batch is retried alone so one poisoned request cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy import Connection

from meterline.db.engine import WRITE, Database
from meterline.metering import ingest
from meterline.metering.ingest import IngestResult, UsageEventIn, Window

log = logging.getLogger(__name__)


class IngestorStopped(RuntimeError):
    pass


@dataclass(slots=True)
class _Item:
    tenant_id: str
    licensee: str
    device: str
    events: Sequence[UsageEventIn]
    window: Window
    future: Future[IngestResult] = field(default_factory=Future)


class UsageIngestor:
    def __init__(self, db: Database, *, max_events: int = 20_000) -> None:
        self.db = db
        self.max_events = max_events
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._running = False
        self._conn: Connection | None = None

    def start(self) -> UsageIngestor:
        with self._lock:
            if not self._running:
                self._running = True
                self._thread = threading.Thread(target=self._run, name="usage-ingestor", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            if not self._running:
                return
            self._running = False
            self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, tenant_id: str, licensee: str, device: str, events: Sequence[UsageEventIn],
               window: Window) -> Future[IngestResult]:
        if not self._running:
            raise IngestorStopped("the usage ingestor is not running")
        item = _Item(tenant_id, licensee, device, events, window)
        self._queue.put(item)
        return item.future

    async def ingest_async(self, tenant_id: str, licensee: str, device: str, events: Sequence[UsageEventIn],
                           window: Window) -> IngestResult:
        # Shielded: a caller that goes away must not cancel a batch that may already be committing.
        return await asyncio.shield(asyncio.wrap_future(self.submit(tenant_id, licensee, device, events, window)))

    # -- writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            items = [first]
            count = len(first.events)
            stop = False
            while count < self.max_events:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
                count += len(nxt.events)
            self._commit([i for i in items if i.future.set_running_or_notify_cancel()])
            if stop:
                break
        # Drain what was queued before stop() so no caller waits forever.
        leftovers: list[_Item] = []
        while True:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is not None and nxt.future.set_running_or_notify_cancel():
                leftovers.append(nxt)
        if leftovers:
            self._commit(leftovers)
        self._close()

    def _commit(self, items: list[_Item]) -> None:
        if not items:
            return
        try:
            results = self._apply(items)
        except Exception as exc:
            if len(items) == 1:
                log.exception("usage batch failed")
                items[0].future.set_exception(exc)
                return
            log.warning("group commit of %d usage batches failed (%s); retrying one by one", len(items), exc)
            for item in items:
                self._commit([item])
            return
        for item, result in zip(items, results, strict=True):
            item.future.set_result(result)

    def _apply(self, items: list[_Item]) -> list[IngestResult]:
        conn = self._connection()
        try:
            with conn.begin():
                return [ingest.apply(conn, i.tenant_id, i.licensee, i.device, i.events, i.window) for i in items]
        except BaseException:
            self._close()  # the connection may be broken; the next batch gets a fresh one
            raise

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self.db.engine.connect()
            self._conn = conn.execution_options(**WRITE) if self.db.is_sqlite else conn
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.warning("closing the usage ingestor's connection failed", exc_info=True)
            self._conn = None


_ingestors: dict[int, UsageIngestor] = {}
_ingestors_lock = threading.Lock()


def ingestor_for(db: Database) -> UsageIngestor:
    """The process's running ingestor for `db`, started on first use.

    Kept per database object so every app built around one database shares one writer.
    """
    with _ingestors_lock:
        ing = _ingestors.get(id(db))
        if ing is None or ing.db is not db or not ing._running:
            ing = _ingestors[id(db)] = UsageIngestor(db).start()
        return ing
