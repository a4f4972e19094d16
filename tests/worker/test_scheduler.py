"""Scheduled jobs: due-ness by the injected clock, error capture, and one run per due job across workers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import event, text

from meterline.clock import FrozenClock, system_clock
from meterline.config import Settings
from meterline.db.engine import Database
from meterline.ledger.batcher import LedgerBatcher
from meterline.ledger.signing import Signer
from meterline.worker.runner import Worker
from meterline.worker.scheduler import Job, Scheduler


def _name() -> str:
    return f"test.job_{uuid.uuid4().hex[:10]}"


def _row(db: Database, name: str) -> dict:
    with db.engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM scheduled_jobs WHERE name = :n"), {"n": name}).mappings().one()
        return dict(row)


class Counter:
    def __init__(self, fail: bool = False) -> None:
        self.n = 0
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            self.n += 1
        if self.fail:
            raise RuntimeError("boom")
        return 7


def test_due_job_runs_once_per_interval(db, clock):
    name, count = _name(), Counter()
    sched = Scheduler(db, clock, [Job(name, 10, count)])
    assert sched.run_due() == {name: 7}
    assert sched.run_due() == {}  # next_run_at moved 10s ahead
    clock.advance(9)
    assert sched.run_due() == {}
    clock.advance(1)
    assert sched.run_due() == {name: 7}
    assert count.n == 2
    row = _row(db, name)
    assert row["run_count"] == 2 and row["last_error"] is None
    assert row["last_run_at"] == clock.now_ns()
    assert row["next_run_at"] == clock.now_ns() + 10 * 1_000_000_000


def test_force_runs_a_job_that_is_not_due(db, clock):
    name, count = _name(), Counter()
    sched = Scheduler(db, clock, [Job(name, 3600, count)])
    sched.run_due()
    assert sched.run_due() == {}
    assert sched.run_due(force=True) == {name: 7}
    assert count.n == 2


def test_registration_is_idempotent_and_keeps_the_schedule(db, clock):
    name = _name()
    Scheduler(db, clock, [Job(name, 60, Counter())]).run_due()
    due_at = _row(db, name)["next_run_at"]
    again = Scheduler(db, clock, [Job(name, 60, Counter())])
    again.ensure_registered()
    assert _row(db, name)["next_run_at"] == due_at
    assert again.run_due() == {}


def test_failing_job_is_recorded_and_does_not_stop_others(db, clock):
    bad, good = _name(), _name()
    failing, ok = Counter(fail=True), Counter()
    sched = Scheduler(db, clock, [Job(bad, 1, failing), Job(good, 1, ok)])
    assert sched.run_due() == {good: 7}
    row = _row(db, bad)
    assert row["last_error"] == "RuntimeError: boom" and row["run_count"] == 1
    clock.advance(1)
    failing.fail = False
    assert sched.run_due() == {bad: 7, good: 7}
    assert _row(db, bad)["last_error"] is None


def test_duplicate_job_names_are_refused(db, clock):
    with pytest.raises(ValueError):
        Scheduler(db, clock, [Job("x", 1, Counter()), Job("x", 2, Counter())])


@pytest.mark.postgres
def test_two_workers_run_a_due_job_once(postgres_url):
    """Two schedulers on separate connection pools race for the same due job, many rounds."""
    clock = FrozenClock()
    name = _name()
    counter = Counter()
    dbs = [Database(postgres_url), Database(postgres_url)]
    try:
        scheds = [Scheduler(d, clock, [Job(name, 5, counter)]) for d in dbs]
        for s in scheds:
            s.ensure_registered()
        rounds = 25
        barrier = threading.Barrier(2)
        ran: list[list[dict[str, int]]] = [[], []]
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for _ in range(rounds):
                    barrier.wait()
                    ran[i].append(scheds[i].run_due())
                    barrier.wait()
                    if i == 0:
                        clock.advance(5)
                    barrier.wait()
            except BaseException as exc:
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        assert counter.n == rounds
        for r in range(rounds):
            assert sum(name in ran[i][r] for i in range(2)) == 1, r
        assert _row(dbs[0], name)["run_count"] == rounds
    finally:
        for d in dbs:
            d.dispose()


@pytest.fixture
def two_workers_dbs(postgres_url: str) -> Iterator[list[Database]]:
    """Two workers' databases: separate pools, as two processes have."""
    dbs = [Database(postgres_url), Database(postgres_url)]
    yield dbs
    for d in dbs:
        d.dispose()


@pytest.mark.postgres
def test_a_job_whose_worker_died_mid_run_runs_at_the_next_tick_of_another(two_workers_dbs):
    """The claim used to move the schedule an interval ahead: a worker killed mid-run (an hourly
    prune) left the job undone, and unclaimable, for the whole interval."""
    clock = FrozenClock()
    name = _name()
    dying, alive = (Scheduler(d, clock, [Job(name, 3600, Counter())]) for d in two_workers_dbs)
    dying.ensure_registered()
    assert dying.claim_many(dying.jobs) == {name: clock.now_ns()}  # … and it dies before recording
    assert alive.run_due() == {}  # while it lives, its claim holds
    assert dying._leases is not None
    dying._leases.invalidate()  # the process is gone: PostgreSQL ends its session, and its locks
    assert alive.run_due() == {name: 7}  # at once, not an hour later
    row = _row(two_workers_dbs[0], name)
    assert (row["run_count"], row["next_run_at"]) == (1, clock.now_ns() + 3600 * 10**9)


@pytest.mark.postgres
def test_a_run_longer_than_its_interval_is_never_started_twice(two_workers_dbs):
    clock = FrozenClock()
    name = _name()
    release, started = threading.Event(), threading.Event()
    runs: list[str] = []

    def slow() -> int:
        runs.append("slow")
        started.set()
        release.wait(30)
        return 1

    first = Scheduler(two_workers_dbs[0], clock, [Job(name, 1, slow)])
    second = Scheduler(two_workers_dbs[1], clock, [Job(name, 1, Counter())])
    first.ensure_registered()
    running = threading.Thread(target=first.run_due)
    running.start()
    try:
        assert started.wait(30)
        clock.advance(5)  # five intervals later, still running
        assert second.run_due() == {}
    finally:
        release.set()
        running.join(30)
    assert runs == ["slow"] and _row(two_workers_dbs[0], name)["run_count"] == 1
    clock.advance(1)
    assert second.run_due() == {name: 7}  # once it is recorded, the next run is anyone's


@pytest.mark.postgres
def test_a_locked_job_is_skipped_not_waited_for(postgres_url):
    """While another worker holds the job's row (mid-claim), SKIP LOCKED passes it by at once."""
    clock = FrozenClock()
    name = _name()
    counter = Counter()
    db = Database(postgres_url)
    try:
        sched = Scheduler(db, clock, [Job(name, 5, counter)])
        sched.ensure_registered()
        with db.engine.connect() as other, other.begin():
            other.execute(text("SELECT 1 FROM scheduled_jobs WHERE name = :n FOR UPDATE"), {"n": name})
            started = time.monotonic()
            assert sched.run_due() == {}
            assert time.monotonic() - started < 5
        assert sched.run_due() == {name: 7}
        assert counter.n == 1
    finally:
        db.dispose()


def test_worker_loop_runs_jobs_and_survives_failures(db):
    good, bad = _name(), _name()
    ok, failing = Counter(), Counter(fail=True)
    settings = Settings(database_url=db.url)
    with LedgerBatcher(db, system_clock) as batcher:
        worker = Worker(db=db, clock=system_clock, batcher=batcher, settings=settings,
                        signer=Signer.generate(), jobs=[Job(good, 0.05, ok), Job(bad, 0.05, failing)])
        worker.start()
        try:
            deadline = time.monotonic() + 20
            while (ok.n < 3 or failing.n < 3) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert worker.running
        finally:
            worker.stop()
    assert ok.n >= 3 and failing.n >= 3
    assert not worker.running
    assert _row(db, bad)["last_error"] == "RuntimeError: boom"


def _count_commits(db: Database) -> list[int]:
    """Commits on `db`'s engine from now on, each as the committing connection's
    `PRAGMA synchronous` on SQLite (2 = FULL, 1 = NORMAL), else 0."""
    seen: list[int] = []

    def on_commit(conn) -> None:
        if db.is_sqlite:
            seen.append(conn.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0])
        else:
            seen.append(0)

    event.listen(db.engine, "commit", on_commit)
    _listeners.append((db, on_commit))
    return seen


_listeners: list = []


@pytest.fixture(autouse=True)
def _remove_listeners():
    yield
    while _listeners:
        d, fn = _listeners.pop()
        event.remove(d.engine, "commit", fn)


def test_a_tick_claims_all_due_jobs_in_one_transaction_and_records_them_in_one(db, clock):
    """Three due jobs cost two bookkeeping commits, not two each (the single SQLite writer is
    shared with the sample and ledger writers)."""
    names = [_name() for _ in range(3)]
    counters = [Counter() for _ in names]
    sched = Scheduler(db, clock, [Job(n, 5, c) for n, c in zip(names, counters, strict=True)])
    sched.ensure_registered()
    commits = _count_commits(db)
    assert sched.run_due() == dict.fromkeys(names, 7)
    assert len(commits) == 2
    for n in names:
        row = _row(db, n)
        assert row["run_count"] == 1 and row["last_run_at"] == clock.now_ns()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # a per-connection SQLite setting
def test_sqlite_bookkeeping_skips_the_fsync_but_jobs_and_the_pool_keep_full(db, clock):
    """The schedule's own commits run with synchronous=NORMAL; a job's transactions, and every
    connection back in the pool afterwards, are FULL (money rows are never written NORMAL)."""
    inside: list[int] = []

    def job() -> int:
        with db.write_connection() as conn:
            inside.append(conn.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0])
        return 1

    name = _name()
    sched = Scheduler(db, clock, [Job(name, 5, job)])
    sched.ensure_registered()
    commits = _count_commits(db)
    assert sched.run_due() == {name: 1}
    assert commits == [1, 2, 1]  # claim (NORMAL), the job's own (FULL), record (NORMAL)
    assert inside == [2]
    conns = [db.engine.connect() for _ in range(3)]
    try:
        assert all(c.exec_driver_sql("PRAGMA synchronous").scalar() == 2 for c in conns)
    finally:
        for c in conns:
            c.close()
