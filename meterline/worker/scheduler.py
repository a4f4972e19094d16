"""Periodic jobs, stored in `scheduled_jobs`, claimed so that N workers run each due job once.

Claiming a due job is one short transaction: lock its row (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so a worker never waits behind another's claim; SQLite
has one writer, taken with ``BEGIN IMMEDIATE``), re-check that it is due, move
``next_run_at`` one interval ahead, commit. Only then does the job run, outside
that transaction: the job opens its own (the ledger batcher, a sealing
connection), and on SQLite holding the claim open would deadlock against them.
A worker that dies mid-job loses that one run; the next interval picks it up, so
jobs are written as idempotent sweeps.

The outcome (last_run_at, run_count, last_error) is recorded in a second short
transaction. An exception in a job is logged and stored; it never escapes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, text

from meterline.clock import Clock
from meterline.db.engine import Database

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

    def ensure_registered(self) -> None:
        """Insert a row for each job not yet in the table, due at once (insert-or-ignore)."""
        now = self.clock.now_ns()
        pg = self.db.engine.dialect.name == "postgresql"
        head = "INSERT INTO" if pg else "INSERT OR IGNORE INTO"
        tail = " ON CONFLICT (name) DO NOTHING" if pg else ""
        with self.db.write_connection() as conn:
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
        now = self.clock.now_ns()
        with self.db.write_connection() as conn:
            row = self._lock(conn, job.name)
            if row is None or (not force and row > now):
                return None
            conn.execute(
                text("UPDATE scheduled_jobs SET next_run_at = :next WHERE name = :n"),
                {"next": now + int(job.interval_s * 1_000_000_000), "n": job.name},
            )
        return now

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
        started = self.claim(job, force=force)
        if started is None:
            return None
        error: str | None = None
        count: int | None = None
        try:
            count = int(job.run())
        except Exception as exc:
            log.exception("job %s failed", job.name)
            error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]
        self._record(job.name, started, error)
        return count

    def _record(self, name: str, started: int, error: str | None) -> None:
        try:
            with self.db.write_connection() as conn:
                conn.execute(
                    text("UPDATE scheduled_jobs SET last_run_at = :at, last_error = :err, "
                         "run_count = run_count + 1 WHERE name = :n"),
                    {"at": started, "err": error, "n": name},
                )
        except Exception:
            log.exception("could not record the outcome of job %s", name)

    def run_due(self, *, force: bool = False) -> dict[str, int]:
        """Run every job that is due (every job with `force`) once: {name: count} of those that ran OK."""
        if not self._registered:
            self.ensure_registered()
        done: dict[str, int] = {}
        due = None if force else self._due_names()
        for job in self.jobs:
            if due is not None and job.name not in due:
                continue
            try:
                count = self.run_job(job, force=force)
            except Exception:  # claiming itself failed (database unavailable, …)
                log.exception("could not claim job %s", job.name)
                continue
            if count is not None:
                done[job.name] = count
        return done

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
