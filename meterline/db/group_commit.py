"""Group commit: many concurrent callers, one write transaction, one fsync.

A `GroupCommitter` owns a writer thread and its own database connection.
Callers `submit` work items and get a future. The writer takes everything
that queued while the previous commit was in flight (plus up to `window_ms`
more while the batch is still small), hands the batch to the subclass's
`apply` inside ONE transaction, and resolves each caller's future only after
the commit — an acknowledged item is always a committed one. On SQLite this
replaces N writers queueing for the lock with one that never waits; on both
backends one fsync pays for many requests.

The rules every committer shares live here, once:

- a caller that cancelled while queued is dropped (its work is never applied);
  the others are marked running, so a late cancel cannot race the result;
- `apply` returns one outcome per item; an exception outcome fails only that
  caller (a refused request never fails its neighbours);
- if the combined transaction fails and the subclass says its assumptions may
  have been stale (`rolled_back` returns True), or PostgreSQL aborted it to break a
  deadlock with another process's transaction, the whole batch runs once more;
  if it fails otherwise, each item is retried alone, so one poisoned request
  cannot fail the others;
- after any failure the next batch starts on a fresh connection;
- `stop()` commits whatever was already queued, then closes the connection.

The window is adaptive: the writer expects as many items as its last batch
held plus those that queued while that batch committed (the callers it just
answered tend to come straight back), and stops waiting once they are in, so a
steady set of callers rides every commit together without paying the window,
and one caller posting big batches never waits at all. With no history (the
first batch, or after a failure) it waits the full window.

A subclass whose database lets it send a commit and carry on (PostgreSQL's pipeline mode)
may also implement `pipelines` and `send`: the writer then builds and sends the next batch
while the previous commit is in flight, so its own work, the callers' and the database's
overlap instead of taking turns. Callers are still answered only after their own commit;
if a batch fails, the one sent behind it is collected and both run again, in order.

Subclasses implement `apply` (and `size`, when items carry many units).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Connection

from meterline.db.engine import WRITE, Database, tune_sqlite_writer

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class CommitterStopped(RuntimeError):
    pass


# PostgreSQL aborted the transaction to resolve a conflict with another one (deadlock_detected,
# serialization_failure): the same work run again succeeds. Several API processes upserting
# the same rows (usage rollups, say) in different orders meet this, and a caller should not.
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})


def _transient(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None) or exc  # (SQLAlchemy wraps the driver's error; the pipe does not)
    return getattr(orig, "sqlstate", None) in _TRANSIENT_SQLSTATES


@dataclass(slots=True)
class _Entry(Generic[T, R]):
    """One submitted item. A thread caller waits on `future`; an event-loop caller on
    `waiter`, which the writer resolves with one `call_soon_threadsafe` per batch and loop
    (a concurrent Future wrapped for asyncio costs a wakeup and several callbacks per item)."""

    item: T
    future: Future[R] | None
    loop: asyncio.AbstractEventLoop | None = None
    waiter: asyncio.Future[R] | None = None

    def claim(self) -> bool:
        if self.future is not None:
            return self.future.set_running_or_notify_cancel()
        return True  # an event-loop caller's item, once queued, is applied even if it stops waiting


def _resolve(outcomes: list[tuple[asyncio.Future[R], R | BaseException]]) -> None:
    """On the caller's loop: hand each waiter its outcome (one gone waiter is skipped)."""
    for waiter, outcome in outcomes:
        if waiter.done():
            continue
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)


@dataclass(slots=True)
class _Flight(Generic[T, R]):
    """A batch whose commit was sent and not yet answered (or whose sending failed)."""

    entries: list[_Entry[T, R]]
    started: float
    outcomes: list[R | Exception] | None = None
    wait: Callable[[], object] | None = None
    error: Exception | None = None

    def land(self) -> None:
        """Wait for the commit; raise its failure."""
        if self.error is not None:
            raise self.error
        assert self.wait is not None
        self.wait()


class _Splitter:
    """Whether the pipelined writer splits its callers into two groups and keeps a batch in
    flight while it sends the next — decided by measuring.

    Blocking callers come back as soon as they are answered; if every batch takes all of
    them, each batch waits for the previous one to be answered and nothing overlaps. Sending
    as soon as half of them are in lets one group's commit overlap the other group's next
    requests — but it halves the batches, and a batch's fixed cost (statements, round trip,
    fsync, wakeups) is most of a small group commit's CPU. With cores to spare the overlap
    wins; on a machine whose cores are busy it only adds CPU (8 single-transfer clients on
    PostgreSQL under load 5: 1.0-1.3k/s split vs 1.5-2.0k/s not). So every few periods the
    writer runs one period the other way and keeps whichever answered more callers per second.

    `GroupCommitter(overlap=True)` turns it on; the ledger's batcher in `serve` and `worker`
    has it on unless `METERLINE_LEDGER_OVERLAP=false`. Measured on the 2-core machine, 8
    single-transfer clients on PostgreSQL, A/B x2 with the machine otherwise quiet (load
    1.5-2.4): probing 4.5k/5.6k (spread) and 5.6k/7.6k (hot) per second vs never 4.1k/3.6k
    and 4.3k/5.5k. Under other processes' load (3-9) probing lost (2.0-2.4k vs 2.3-3.7k/s):
    its losing periods and noisy verdicts then cost more than the overlap wins.

    Probing costs what its periods in the losing way cost, and a wrong verdict (one period
    is a noisy sample) costs until the next probe: with a probe every 8 periods and any win
    kept, it answered 5-8 % fewer callers than splitting always on a quiet machine (6.5k/6.1k
    vs 6.9k/6.7k per second spread, 7.0k/6.9k vs 7.7k/6.9k hot; session 6). So a probe comes
    every 16 periods, the first after 2, and must win by `margin` to switch.
    """

    period_s = 0.25
    probe_every = 16  # periods
    first_probe = 2  # the first probe comes early, then one every `probe_every` periods
    # A probe must beat the period before it by this much to switch: one period's rate is
    # noisy, and a wrong switch costs until the next probe.
    margin = 0.10

    def __init__(self, probe: bool = True) -> None:
        self.split = False
        self.probe = probe  # False: never split
        self._started = time.monotonic()
        self._count = 0
        self._periods = 0
        self._before: float | None = None  # while probing: the rate of the period before

    def landed(self, n: int) -> None:
        if not self.probe:
            return
        self._count += n
        now = time.monotonic()
        elapsed = now - self._started
        if elapsed < self.period_s:
            return
        rate = self._count / elapsed
        self._started, self._count = now, 0
        if elapsed > 4 * self.period_s:  # the writer was idle: this period measured nothing
            if self._before is not None:
                self.split, self._before = not self.split, None
            return
        self._periods += 1
        if self._before is not None:  # a probe period just ended: keep the winner
            if rate <= self._before * (1 + self.margin):
                self.split = not self.split
            self._before = None
        elif self._periods % self.probe_every == self.first_probe:
            self._before = rate
            self.split = not self.split


class GroupCommitter(ABC, Generic[T, R]):
    name = "group-commit"
    stopped: type[CommitterStopped] = CommitterStopped

    def __init__(self, db: Database, *, window_ms: float = 0.0, max_size: int = 8000, overlap: bool = False) -> None:
        self.db = db
        self.window_s = window_ms / 1000
        self.max_size = max_size
        self._queue: queue.SimpleQueue[_Entry[T, R] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._running = False
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._expect: int | None = None  # items the next batch waits for (None: the window)
        self._splitter = _Splitter(probe=overlap)  # (only with `pipelines`)

    # -- what a subclass provides ---------------------------------------------------
    @abstractmethod
    def apply(self, conn: Connection, items: list[T]) -> list[R | Exception]:
        """Apply `items` in arrival order inside the open transaction; one outcome each."""

    def size(self, item: T) -> int:
        """How much of the batch cap one item uses."""
        return 1

    def finish(self, conn: Connection) -> None:
        """Called last inside the transaction, after `apply`. A subclass may end the
        transaction here itself (on PostgreSQL: its queued writes and COMMIT sent in one
        round trip); the commit that follows then has nothing left to do."""

    def pipelines(self) -> bool:
        """Whether `send` is implemented: batches are sent without waiting for their commit."""
        return False

    def send(self, conn: Connection, items: list[T]) -> tuple[list[R | Exception], Callable[[], object]]:
        """Apply `items` (as `apply` does, in a transaction of their own) and send them with
        their COMMIT without waiting for it; return the outcomes and a function that waits
        for the commit and raises if it failed. The next batch may be sent on `conn` before
        that function is called, built on this batch's outcome as if it had committed: the
        subclass must make it fail (at the database) if this one does not commit. Only
        called when `pipelines()` says so."""
        raise TypeError(f"{type(self).__name__} sends no pipelines: pipelines() is False")

    def observe(self, items: list[T], seconds: float) -> None:
        """Called after each successful commit, once its callers are answered (metrics)."""

    def committed(self) -> None:
        """Called right after each successful commit, before any caller is answered."""

    def rolled_back(self) -> bool:
        """Called after a batch's transaction failed. Return True if the batch may have
        failed only on the subclass's own stale assumptions, to run it once more whole."""
        return False

    def exited(self) -> None:
        """Called last on the writer thread as it stops, after its final commit."""

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> GroupCommitter[T, R]:
        with self._lock:
            if not self._running:
                self._running = True
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
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

    @property
    def running(self) -> bool:
        return self._running

    # -- submitting -------------------------------------------------------------------
    def submit_item(self, item: T) -> Future[R]:
        if not self._running:
            raise self.stopped(f"the {self.name} writer is not running")
        future: Future[R] = Future()
        self._queue.put(_Entry(item, future))
        return future

    async def submit_item_async(self, item: T) -> R:
        """Submit from the event loop. A request cancelled mid-flight (client gone) stops
        waiting, but its item — already queued — is still applied and committed (a retry
        then answers as for a duplicate); nothing the writer does depends on the waiter."""
        if not self._running:
            raise self.stopped(f"the {self.name} writer is not running")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[R] = loop.create_future()
        self._queue.put(_Entry(item, None, loop, waiter))
        return await waiter

    # -- the writer thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            entries = [first]
            if self.pipelines():
                stop_after = self._fly(entries)
            else:
                stop_after = self._gather(entries, self.size(first.item))
                self._commit(self._claim(entries))
            if stop_after:
                break
        self._drain_on_stop()
        self._close_connection()
        self.exited()

    def _gather(self, entries: list[_Entry[T, R]], count: int) -> bool:
        """Take what is queued; if the batch is still small, wait up to the window for more.

        Returns True when the stop sentinel was seen.
        """
        return self._take(entries, count, self._expect)

    def _take(self, entries: list[_Entry[T, R]], count: int, expect: int | None, *, cap: int | None = None) -> bool:
        """`_gather` with its target given: until `expect` items are in (None: for the
        window), wait up to the window for more; take no more than `cap` items."""
        deadline = time.monotonic() + self.window_s
        while count < self.max_size and (cap is None or len(entries) < cap):
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                if expect is not None and len(entries) >= expect:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if nxt is None:
                return True
            entries.append(nxt)
            count += self.size(nxt.item)
        return False

    def _drain_on_stop(self) -> None:
        leftovers: list[_Entry[T, R]] = []
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
    def _claim(entries: list[_Entry[T, R]]) -> list[_Entry[T, R]]:
        return [e for e in entries if e.claim()]

    @staticmethod
    def _settle(entries: list[_Entry[T, R]], outcomes: list[R | Exception]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[R], R | BaseException]]] = {}
        for entry, outcome in zip(entries, outcomes, strict=True):
            if entry.future is not None:
                if isinstance(outcome, Exception):
                    entry.future.set_exception(outcome)
                else:
                    entry.future.set_result(outcome)
            else:
                assert entry.loop is not None and entry.waiter is not None
                by_loop.setdefault(entry.loop, []).append((entry.waiter, outcome))
        for loop, pairs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, pairs)
            except RuntimeError:  # that loop has closed: nobody is waiting any more
                pass

    def _commit(self, entries: list[_Entry[T, R]], *, again: bool = False) -> None:
        if not entries:
            return
        started = time.perf_counter()
        items = [e.item for e in entries]
        try:
            outcomes = self._apply(items)
        except Exception as exc:
            self._retry(entries, exc, self.rolled_back(), again)
            return
        self.committed()
        self._answered(entries, outcomes, started)

    def _answered(self, entries: list[_Entry[T, R]], outcomes: list[R | Exception], started: float,
                  in_flight: int = 0) -> None:
        elapsed = time.perf_counter() - started
        # Who answers next: the callers about to be answered, plus those already queued.
        self._expect = len(entries) + self._queue.qsize() + in_flight
        # Answer first, count after: the callers prepare their next items while the writer
        # does its bookkeeping, instead of after it.
        self._settle(entries, outcomes)
        self.observe([e.item for e in entries], elapsed)

    def _retry(self, entries: list[_Entry[T, R]], exc: Exception, stale: bool, again: bool) -> None:
        """A batch failed (and rolled back): run it once more whole if it may have failed only
        on stale assumptions or was a deadlock's victim, else each item alone (and an item
        alone once more after a deadlock)."""
        self._expect = None
        transient = _transient(exc)
        if (stale or transient) and not again:
            log.info("%s: batch of %d items failed on %s (%s); running it again", self.name, len(entries),
                     "a deadlock" if transient else "stale assumptions", exc)
            if transient:  # let the other transaction finish before meeting it again
                time.sleep(random.uniform(0.001, 0.005))
            self._commit(entries, again=True)
            return
        if len(entries) == 1:
            log.exception("%s: batch failed", self.name, exc_info=exc)
            self._settle(entries, [exc])
            return
        log.warning("%s: group commit of %d items failed (%s); retrying one by one",
                    self.name, len(entries), exc)
        for entry in entries:
            self._commit([entry])

    # -- pipelined: the next batch goes out while the previous commit is in flight --------
    def _fly(self, entries: list[_Entry[T, R]]) -> bool:
        """Commit batches keeping up to two on the connection: send one, gather and send the
        next while its commit is in flight, then answer the first. Returns when the queue runs
        dry with nothing in flight (True if the stop sentinel was seen).

        Only when `_Splitter` finds that it pays: the first batch then takes half the callers
        expected and the rest go in the next, behind it, so that two groups take turns.
        Otherwise each batch waits for the callers expected, as `_gather` does, and is
        answered before the next is sent.
        """
        overlap = self._splitter.split
        expect = self._expect
        cap = None
        if expect is not None and overlap:
            expect = cap = (expect + 1) // 2
        stop = self._take(entries, self.size(entries[0].item), expect, cap=cap)
        flight: _Flight[T, R] | None = None
        while True:
            entries = self._claim(entries)
            nxt = self._launch(entries) if entries else None
            if flight is not None and self._land(flight, nxt):
                nxt = None  # it failed with `flight` and has been run again already
            if nxt is not None and nxt.error is not None:
                self._failed(nxt, nxt.error)
                nxt = None
            flight = nxt
            # (Re-read: under steady load this loop never runs dry, and the splitter's probes
            # and verdicts must take effect.)
            if flight is None or stop or not self._splitter.split:
                if flight is not None:
                    self._land(flight, None)
                return stop
            entries = []
            expect = None if self._expect is None else max(0, self._expect - len(flight.entries))
            stop = self._take(entries, 0, expect)
            if not entries:
                self._land(flight, None)
                return stop

    def _launch(self, entries: list[_Entry[T, R]]) -> _Flight[T, R]:
        flight: _Flight[T, R] = _Flight(entries, time.perf_counter())
        try:
            flight.outcomes, flight.wait = self.send(self._connection(), [e.item for e in entries])
        except Exception as exc:
            flight.error = exc
        return flight

    def _land(self, flight: _Flight[T, R], nxt: _Flight[T, R] | None) -> bool:
        """Wait for `flight`'s commit and answer its callers. Returns True if `nxt` (sent
        behind it) was dealt with here too: when `flight` fails, `nxt` was built on its
        outcome and ran in its aborted transaction, so it is collected and both run again, in
        order — `flight`'s callers first."""
        try:
            flight.land()
        except Exception as exc:
            if nxt is None:
                self._failed(flight, exc)
                return False
            stale = self.rolled_back()
            try:
                nxt.land()
            except Exception as nxt_exc:
                self.rolled_back()
                nxt_error: Exception | None = nxt_exc
            else:
                self.committed()  # (`flight` failed after all — its COMMIT, not a statement)
                nxt_error = None
            self._close_connection()
            self._retry(flight.entries, exc, stale, False)
            if nxt_error is None:
                assert nxt.outcomes is not None
                self._answered(nxt.entries, nxt.outcomes, nxt.started)
            else:
                log.info("%s: batch of %d items sent behind a failed one; running it again",
                         self.name, len(nxt.entries))
                self._commit(nxt.entries)
            return True
        self.committed()
        assert flight.outcomes is not None
        self._answered(flight.entries, flight.outcomes, flight.started, len(nxt.entries) if nxt else 0)
        self._splitter.landed(len(flight.entries))
        return False

    def _failed(self, flight: _Flight[T, R], exc: Exception) -> None:
        """A batch failed with nothing sent behind it: roll back (a fresh connection) and retry."""
        stale = self.rolled_back()
        self._close_connection()
        self._retry(flight.entries, exc, stale, False)

    def _apply(self, items: list[T]) -> list[R | Exception]:
        conn = self._connection()
        try:
            with conn.begin():
                outcomes = self.apply(conn, items)
                self.finish(conn)
                return outcomes
        except BaseException:
            # The connection may be broken: the next batch starts on a fresh one.
            self._close_connection()
            raise

    def _connection(self) -> Connection:
        """The writer's own connection, kept across batches: a pool checkout per batch costs
        a pre-ping round trip on PostgreSQL, a large share of a small group commit. (On
        PostgreSQL it is not a pool connection at all: see `Database.writer_connection`.)"""
        if self._conn is None:
            conn = self.db.writer_connection()
            if self.db.is_sqlite:
                tune_sqlite_writer(conn)
                conn = conn.execution_options(**WRITE)
            self._conn = conn
        return self._conn

    def _close_connection(self) -> None:
        if self._conn is not None:
            try:
                try:
                    if self.db.is_sqlite:
                        tune_sqlite_writer(self._conn, writer=False)
                finally:
                    self._conn.close()
            except Exception:
                log.warning("%s: closing the writer connection failed", self.name, exc_info=True)
            self._conn = None
