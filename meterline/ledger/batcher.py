"""Group commit for the ledger.

Concurrent callers (request handlers, worker jobs, benchmark threads) hand their
transfer batches to one `LedgerBatcher`. Its writer thread takes everything that
has queued up while the previous commit was in flight (plus up to
`window_ms` more if the batch is still small), applies it in ONE database
transaction, and only then resolves each caller's future. One fsync pays for
many requests, which is what lets single-transfer calls reach thousands per
second; an acknowledged transfer is always a committed one.

A caller's segment never shares a linked chain with another's. If the combined
transaction fails for an unexpected reason, each segment is retried alone so a
poisoned request cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy import Connection

from meterline.clock import Clock
from meterline.db.engine import WRITE, Database
from meterline.ledger import metrics
from meterline.ledger.engine import engine
from meterline.ledger.types import Segment, TransferIn, TransferResult

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Item:
    tenant_id: str
    segment: Segment
    future: Future[list[TransferResult]] = field(default_factory=Future)


class BatcherStopped(RuntimeError):
    pass


class LedgerBatcher:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        window_ms: float = 1.0,
        max_transfers: int = 8000,
    ) -> None:
        self.db = db
        self.clock = clock
        self.window_s = window_ms / 1000
        self.max_transfers = max_transfers
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._running = False
        self._lock = threading.Lock()
        self._conn: Connection | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> LedgerBatcher:
        with self._lock:
            if not self._running:
                self._running = True
                self._thread = threading.Thread(target=self._run, name="ledger-batcher", daemon=True)
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

    def __enter__(self) -> LedgerBatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- submitting ----------------------------------------------------------------------
    def submit(
        self, tenant_id: str, transfers: list[TransferIn], *, system: bool = False
    ) -> Future[list[TransferResult]]:
        if not self._running:
            raise BatcherStopped("ledger batcher is not running")
        item = _Item(tenant_id, Segment(list(transfers), system=system))
        self._queue.put(item)
        return item.future

    def post(self, tenant_id: str, transfers: list[TransferIn], *, system: bool = False) -> list[TransferResult]:
        """Blocking submit: returns once the transfers are committed (or rejected)."""
        return self.submit(tenant_id, transfers, system=system).result()

    async def post_async(self, tenant_id: str, transfers: list[TransferIn]) -> list[TransferResult]:
        return await asyncio.wrap_future(self.submit(tenant_id, transfers))

    # -- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._drain_on_stop()
                self._close_connection()
                return
            items = [first]
            count = len(first.segment.transfers)
            stop_after = self._gather(items, count)
            self._commit(self._claim(items))
            if stop_after:
                self._drain_on_stop()
                self._close_connection()
                return

    def _gather(self, items: list[_Item], count: int) -> bool:
        """Take what is queued; if the batch is small, wait up to the window for more."""
        deadline = time.monotonic() + self.window_s
        while count < self.max_transfers:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if nxt is None:
                return True
            items.append(nxt)
            count += len(nxt.segment.transfers)
        return False

    def _drain_on_stop(self) -> None:
        leftovers: list[_Item] = []
        while True:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is not None:
                leftovers.append(nxt)
        if leftovers:
            self._commit(self._claim(leftovers))

    @staticmethod
    def _claim(items: list[_Item]) -> list[_Item]:
        """Drop callers that cancelled while queued (their transfers are never applied) and
        mark the rest running, so a late cancel can no longer race the result."""
        return [item for item in items if item.future.set_running_or_notify_cancel()]

    def _commit(self, items: list[_Item]) -> None:
        if not items:
            return
        started = time.perf_counter()
        try:
            self._apply(items)
        except Exception as exc:
            if len(items) == 1:
                log.exception("ledger batch failed")
                items[0].future.set_exception(exc)
                return
            log.warning("group commit of %d segments failed (%s); retrying one by one", len(items), exc)
            for item in items:
                self._commit([item])
            return
        n = sum(len(i.segment.transfers) for i in items)
        metrics.observe_batch(n, len(items), time.perf_counter() - started)
        for item in items:
            metrics.count_results(item.segment.results)
            item.future.set_result(item.segment.results)

    def _apply(self, items: list[_Item]) -> None:
        by_tenant: dict[str, list[Segment]] = {}
        for item in items:
            by_tenant.setdefault(item.tenant_id, []).append(item.segment)
        now = self.clock.now_ns()
        conn = self._writer_connection()
        try:
            with conn.begin():
                # Tenants in a fixed order so two batchers never lock heads in opposite orders.
                for tenant_id in sorted(by_tenant):
                    engine.apply(conn, tenant_id, by_tenant[tenant_id], now)
        except BaseException:
            # After any failure start the next batch on a fresh connection: this one may be broken.
            self._close_connection()
            raise

    def _writer_connection(self) -> Connection:
        """The writer thread's own connection, kept across batches.

        Checking one out of the pool per batch costs a pre-ping round trip on
        PostgreSQL — at group-commit rates that is a large share of each batch.
        """
        if self._conn is None:
            conn = self.db.engine.connect()
            self._conn = conn.execution_options(**WRITE) if self.db.is_sqlite else conn
        return self._conn

    def _close_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.warning("closing the batcher's connection failed", exc_info=True)
            self._conn = None
