"""Group commit for the ledger.

Concurrent callers (request handlers, worker jobs, benchmark threads) hand their
transfer batches to one `LedgerBatcher` per process. The shared machinery
(`meterline.db.group_commit`) takes everything queued while the previous commit
was in flight and resolves callers only after the commit; this module says how
a group of batches is applied: grouped by tenant, tenants in a fixed order, each
tenant's batches as separate *segments* of one engine call — so one fsync pays
for many requests, a caller's linked chain never crosses into another's, and an
acknowledged transfer is always a committed one.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from sqlalchemy import Connection

from meterline.clock import Clock
from meterline.db.engine import Database
from meterline.db.group_commit import CommitterStopped, GroupCommitter
from meterline.db.pgpipe import PgPipe
from meterline.db.sqlite_offload import StatementRunner
from meterline.ledger import metrics
from meterline.ledger.engine import WriterCache, engine
from meterline.ledger.types import Segment, TransferIn, TransferResult


class BatcherStopped(CommitterStopped):
    pass


@dataclass(slots=True)
class _Item:
    tenant_id: str
    segment: Segment


class LedgerBatcher(GroupCommitter[_Item, list[TransferResult]]):
    name = "ledger-batcher"
    stopped = BatcherStopped

    def __init__(
        self, db: Database, clock: Clock, *, window_ms: float = 1.0, max_transfers: int = 8000, overlap: bool = False,
        offload: bool = True,
    ) -> None:
        super().__init__(db, window_ms=window_ms, max_size=max_transfers, overlap=overlap)
        self.clock = clock
        # Heads and balances as of this writer's last commit: lets a batch of new transfers
        # skip its reads (the engine's head guard proves the cache current, or fails it).
        self.cache = WriterCache()
        self._pipe: PgPipe | None = None  # PostgreSQL: the open batch's queued statements
        # SQLite: a helper thread for a big batch's INSERT and UPDATE (see the engine's `apply`).
        self._offload = StatementRunner(f"{self.name}-offload") if db.is_sqlite and offload else None

    def start(self) -> LedgerBatcher:
        super().start()
        return self

    def __enter__(self) -> LedgerBatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- submitting ----------------------------------------------------------------------
    def submit(
        self, tenant_id: str, transfers: list[TransferIn], *, system: bool = False
    ) -> Future[list[TransferResult]]:
        return self.submit_item(_Item(tenant_id, Segment(list(transfers), system=system)))

    def post(self, tenant_id: str, transfers: list[TransferIn], *, system: bool = False) -> list[TransferResult]:
        """Blocking submit: returns once the transfers are committed (or rejected)."""
        return self.submit(tenant_id, transfers, system=system).result()

    async def post_async(self, tenant_id: str, transfers: list[TransferIn]) -> list[TransferResult]:
        return await self.submit_item_async(_Item(tenant_id, Segment(list(transfers))))

    # -- applying ------------------------------------------------------------------------
    def size(self, item: _Item) -> int:
        return len(item.segment.transfers)

    def apply(self, conn: Connection, items: list[_Item]) -> list[list[TransferResult] | Exception]:
        self.cache.begin()  # whatever this batch stages lands with its commit or rollback
        by_tenant: dict[str, list[Segment]] = {}
        for item in items:
            by_tenant.setdefault(item.tenant_id, []).append(item.segment)
        # PostgreSQL: every tenant's writes stay queued on one pipe; `finish` sends them with
        # the COMMIT, so a batch the cache covers is one round trip in all (BEGIN included).
        # Statements are prepared: this is the writer's own connection.
        pipe = self._pipe = PgPipe(conn, prepare=True) if not self.db.is_sqlite else None
        # Tenants in a fixed order so two batchers never lock heads in opposite orders.
        # Each tenant's time is read when its turn comes: an earlier tenant may have waited for
        # its head, held by another process, and a hold's expiry is judged at this time.
        for tenant_id in sorted(by_tenant):
            engine.apply(conn, tenant_id, by_tenant[tenant_id], self.clock.now_ns(), self.cache, pipe, self._offload)
        return [item.segment.results for item in items]

    def finish(self, conn: Connection) -> None:
        # The COMMIT is sent only behind the writes: if any of them fails (a guard, a
        # duplicate id), PostgreSQL skips the rest of the pipeline, COMMIT included, and
        # the error raised here rolls the batch back like any other.
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.run(commit=True)

    def pipelines(self) -> bool:
        return not self.db.is_sqlite

    def send(
        self, conn: Connection, items: list[_Item],
    ) -> tuple[list[list[TransferResult] | Exception], Callable[[], object]]:
        """PostgreSQL: the batch's writes and COMMIT go out, and the writer builds the next
        batch on this one's cached outcome while the commit is in flight. Every tenant the
        next batch writes carries a head guard naming the head it was built on — this
        batch's new head where it touched the tenant — so if this batch does not commit, the
        next one cannot either (and it also runs in this one's aborted transaction)."""
        outcomes = self.apply(conn, items)
        pipe, self._pipe = self._pipe, None
        assert pipe is not None
        return outcomes, pipe.send(commit=True).wait

    def committed(self) -> None:
        self.cache.commit()

    def exited(self) -> None:
        if self._offload is not None:  # (the writer was its only user)
            self._offload.close()

    def rolled_back(self) -> bool:
        # A batch built on the cache fails when another writer moved the head or when an
        # id was already stored: rerun it once, reading, as an ordinary batch.
        return self.cache.abort()

    def observe(self, items: list[_Item], seconds: float) -> None:
        metrics.observe_batch(sum(len(i.segment.transfers) for i in items), len(items), seconds)
        # One tally for the whole group: a labelled counter costs microseconds per call.
        metrics.count_results([r for item in items for r in item.segment.results])
