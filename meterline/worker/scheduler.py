"""Periodic jobs, stored in `scheduled_jobs`, claimed so that N workers run each due job once.

Claiming due jobs is one short transaction per tick, for all of them: lock each
job's row (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so a worker never waits
behind another's claim; SQLite has one writer, taken with ``BEGIN IMMEDIATE``)
and re-check that it is due, then commit. Only then do the jobs run, outside
that transaction: a job opens its own (the ledger batcher, a sealing
connection), and on SQLite holding the claim open would deadlock against them.

While a job runs, its claim must hold, and it must not outlive its worker. On
PostgreSQL a worker takes a session advisory lock per job it claims
(`db/advisory.py`), on a connection of its own, and keeps it until the outcome
is recorded: another worker skips a job whose lock is held — a run longer than
its interval is never started twice — and a worker that dies releases its locks
with its connection, so the next tick of any worker runs the job at once
(``next_run_at`` moves on only when a run is recorded). On SQLite (one worker)
the claim itself moves ``next_run_at`` one interval ahead. Jobs are written as
idempotent sweeps either way.

The outcomes (last_run_at, run_count, last_error, the next run) are recorded in
a second short transaction, again one per tick. An exception in a job is logged
and stored; it never escapes.

Why one claim and one record per tick, and why on SQLite they skip the fsync:
`meterline serve --dev` runs this worker next to the sample and ledger writers,
and SQLite has ONE writer. The sweeps are due every second; claiming and
recording each job in its own transaction, each ending in an fsync, took the
write lock 7-9 times a second for milliseconds at a time, and a sample batch that
found the lock taken slept in SQLite's busy handler (1, 2, 5, 10 ms ...) on top —
tail latency for every device posting then. Now a tick takes the lock twice, and
each time only for microseconds: the bookkeeping commits with
``synchronous=NORMAL`` (in WAL mode: no fsync at commit; the next FULL commit by
any connection — a sample batch, a transfer — makes it durable with its own
fsync). What a power loss can cost is the schedule's own rows going back a tick:
a sweep runs once more (they are idempotent) or a run goes uncounted. No money
row is ever written this way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection, text

from meterline.clock import Clock
from meterline.db import advisory
from meterline.db.engine import WRITE, Database

log = logging.getLogger(__name__)

_MAX_ERROR = 4000


@dataclass(frozen=True, slots=True)
class Job:
    """A periodic job: `run()` does one pass and returns how many items it handled."""

    name: str
    interval_s: float
    run: Callable[[], int]


class Scheduler:
    def __init__(self, db: Database, clock: Clock, jobs: Sequence[Job]) -> None:
        names = [j.name for j in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate job names: {names}")
        self.db = db
        self.clock = clock
        self.jobs = list(jobs)
        self._registered = False
        self._leases: Connection | None = None  # PostgreSQL: holds the locks of the jobs we run
        self._held: set[str] = set()

    def _lease_connection(self) -> Connection | None:
        """PostgreSQL: the connection whose session holds this worker's job locks (module doc)."""
        if self.db.is_sqlite:
            return None
        if self._leases is None or self._leases.closed or self._leases.invalidated:
            self._held.clear()  # a new session holds none of the old one's locks
            self._leases = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._leases

    def _release(self, names: Sequence[str]) -> None:
        leases = self._leases
        for name in names:
            if name in self._held:
                self._held.discard(name)
                if leases is not None and not leases.closed:
                    try:
                        advisory.unlock(leases, advisory.JOB, name)
                    except Exception:  # the session is gone, and its locks with it
                        log.warning("could not release the lock of job %s", name, exc_info=True)

    def close(self) -> None:
        """Release every job lock (closing the session releases them all)."""
        self._held.clear()
        if self._leases is not None:
            self._leases.close()
            self._leases = None

    @contextmanager
    def _bookkeeping(self) -> Iterator[Connection]:
        """One write transaction on the schedule's own rows; on SQLite it commits without an
        fsync (module doc). The connection's durability setting is put back before it returns
        to the pool; if that fails, the connection is discarded rather than pooled."""
        with self.db.engine.connect() as conn:
            if not self.db.is_sqlite:
                with conn.begin():
                    yield conn
                return
            raw = conn.connection.dbapi_connection
            assert raw is not None
            level = raw.execute("PRAGMA synchronous").fetchone()[0]
            raw.execute("PRAGMA synchronous=NORMAL")
            try:
                conn = conn.execution_options(**WRITE)
                with conn.begin():
                    yield conn
            finally:
                try:
                    raw.execute(f"PRAGMA synchronous={int(level)}")
                except Exception:
                    conn.invalidate()
                    raise

    def ensure_registered(self) -> None:
        """Insert a row for each job not yet in the table, due at once (insert-or-ignore)."""
        now = self.clock.now_ns()
        pg = self.db.engine.dialect.name == "postgresql"
        head = "INSERT INTO" if pg else "INSERT OR IGNORE INTO"
        tail = " ON CONFLICT (name) DO NOTHING" if pg else ""
        with self._bookkeeping() as conn:
            for job in self.jobs:
                conn.execute(
                    text(f"{head} scheduled_jobs (name, next_run_at, run_count) VALUES (:n, :at, 0){tail}"),
                    {"n": job.name, "at": now},
                )
        self._registered = True

    def claim(self, job: Job, *, force: bool = False) -> int | None:
        """Claim `job` if it is due (or `force`) and no other worker holds it.

        Returns the claim time (ns), or None when the job is not ours to run now.
        """
        return self.claim_many([job], force=force).get(job.name)

    def claim_many(self, jobs: Sequence[Job], *, force: bool = False) -> dict[str, int]:
        """Claim each of `jobs` that is due (every one with `force`) and held by no other
        worker, in one transaction. Returns {name: claim time (ns)} of those claimed."""
        now = self.clock.now_ns()
        claimed: dict[str, int] = {}
        leases = self._lease_connection()
        locked: list[str] = []
        try:
            with self._bookkeeping() as conn:
                for job in jobs:
                    if leases is not None:
                        if job.name in self._held or not advisory.try_lock(leases, advisory.JOB, job.name):
                            continue  # running here already, or in another worker
                        self._held.add(job.name)
                        locked.append(job.name)
                    row = self._lock(conn, job.name)
                    if row is None or (not force and row > now):
                        continue
                    if leases is None:  # SQLite: the claim itself moves the schedule on
                        conn.execute(
                            text("UPDATE scheduled_jobs SET next_run_at = :next WHERE name = :n"),
                            {"next": now + int(job.interval_s * 1_000_000_000), "n": job.name},
                        )
                    claimed[job.name] = now
        except BaseException:
            self._release(locked)
            raise
        self._release([n for n in locked if n not in claimed])
        return claimed

    @staticmethod
    def _lock(conn: Connection, name: str) -> int | None:
        q = "SELECT next_run_at FROM scheduled_jobs WHERE name = :n"
        if conn.dialect.name == "postgresql":
            # Another worker mid-claim holds the row: skip it rather than queue behind it.
            q += " FOR UPDATE SKIP LOCKED"
        value = conn.execute(text(q), {"n": name}).scalar_one_or_none()
        return None if value is None else int(value)

    def run_job(self, job: Job, *, force: bool = False) -> int | None:
        """Claim and run one job. Returns its count, or None if it was not claimed or failed."""
        return self._run_claimed([job], self.claim_many([job], force=force)).get(job.name)

    def _run_claimed(self, jobs: Sequence[Job], claimed: dict[str, int]) -> dict[str, int]:
        """Run the claimed ones of `jobs` in order, then record every outcome in one transaction."""
        done: dict[str, int] = {}
        outcomes: list[tuple[str, int, int, str | None]] = []
        try:
            for job in jobs:
                started = claimed.get(job.name)
                if started is None:
                    continue
                error: str | None = None
                try:
                    done[job.name] = int(job.run())
                except Exception as exc:
                    log.exception("job %s failed", job.name)
                    error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]
                outcomes.append((job.name, started, started + int(job.interval_s * 1_000_000_000), error))
            self._record(outcomes)
        finally:
            self._release(list(claimed))
        return done

    def _record(self, outcomes: list[tuple[str, int, int, str | None]]) -> None:
        if not outcomes:
            return
        try:
            with self._bookkeeping() as conn:
                conn.execute(
                    text("UPDATE scheduled_jobs SET last_run_at = :at, last_error = :err, "
                         "run_count = run_count + 1, next_run_at = :next WHERE name = :n"),
                    [{"at": started, "next": nxt, "err": error, "n": name} for name, started, nxt, error in outcomes],
                )
        except Exception:
            # Unrecorded, the job stays due: it runs again next tick (jobs are idempotent sweeps).
            log.exception("could not record the outcome of jobs %s", ", ".join(o[0] for o in outcomes))

    def run_due(self, *, force: bool = False) -> dict[str, int]:
        """Run every job that is due (every job with `force`) once: {name: count} of those that ran OK."""
        if not self._registered:
            self.ensure_registered()
        if force:
            due = self.jobs
        else:
            names = self._due_names()
            due = [j for j in self.jobs if j.name in names]
        if not due:
            return {}
        try:
            claimed = self.claim_many(due, force=force)
        except Exception:  # claiming itself failed (database unavailable, …)
            log.exception("could not claim jobs %s", ", ".join(j.name for j in due))
            return {}
        return self._run_claimed(due, claimed)

    def _due_names(self) -> set[str]:
        """Which of our jobs look due, read without a lock or a write transaction.

        Only those are then claimed (and re-checked under the lock), so an idle tick
        never takes SQLite's single writer away from the ledger batcher.
        """
        now = self.clock.now_ns()
        names = {j.name for j in self.jobs}
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT name FROM scheduled_jobs WHERE next_run_at <= :now"), {"now": now}
            )
            return {r[0] for r in rows if r[0] in names}
