"""Group commit: many callers, one transaction, each caller gets its own results."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.ledger.batcher import BatcherStopped, LedgerBatcher
from meterline.ledger.engine import engine
from meterline.ledger.models import Hold, Transfer
from meterline.ledger.service import ledger_service
from meterline.ledger.types import AccountFlags, Segment, TransferFlags, TransferIn, TransferResult
from meterline.ledger.verify import verify_ledger
from tests.factories import make_account, make_tenant

LINKED = int(TransferFlags.LINKED)
DMNEC = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every engine.apply the batcher makes: (tenant, number of segments)."""
    seen: list[tuple[str, int]] = []
    real = engine.apply

    def recording(conn, tenant_id, segments, now_ns, cache=None, pipe=None, offload=None):  # type: ignore[no-untyped-def]
        seen.append((tenant_id, len(segments)))
        return real(conn, tenant_id, segments, now_ns, cache, pipe, offload)

    monkeypatch.setattr(engine, "apply", recording)
    return seen


def _setup(db: Database, tenant: str, clock: FrozenClock, accounts: dict[str, int]) -> None:
    with db.session() as s:
        make_tenant(s, tenant, clock)
        for acc_id, flags in accounts.items():
            make_account(s, tenant, clock, id=acc_id, flags=flags)


def _balance(db: Database, tenant: str, acc: str) -> tuple[int, int, int, int]:
    with db.session(write=False) as s:
        a = ledger_service.get_account(s, tenant, acc)
        return (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)


def _transfer_ids(db: Database, tenant: str) -> list[str]:
    with db.session(write=False) as s:
        return [t.id for t in ledger_service.list_transfers(s, tenant, limit=100_000).items]


@pytest.fixture
def batcher(db: Database, clock: FrozenClock) -> Iterator[LedgerBatcher]:
    b = LedgerBatcher(db, clock, window_ms=50).start()
    yield b
    b.stop()


def test_concurrent_callers_get_their_own_results(db, tenant_id, clock, calls):
    threads_n, per_thread, funds = 12, 8, 5
    _setup(db, tenant_id, clock, {"src": 0, "m": 0} | {f"w{i}": DMNEC for i in range(threads_n)})
    with LedgerBatcher(db, clock, window_ms=20) as b:
        b.post(tenant_id, [TransferIn(f"fund{i}", "src", f"w{i}", funds) for i in range(threads_n)])
        barrier = threading.Barrier(threads_n)
        results: dict[int, list[list[TransferResult]]] = {}
        errors: list[BaseException] = []

        def caller(i: int) -> None:
            try:
                barrier.wait()
                mine = []
                for j in range(per_thread):
                    # One good transfer, one invalid one, and a resubmission of the good one.
                    batch = [
                        TransferIn(f"c{i}-{j}", f"w{i}", "m", 1),
                        TransferIn(f"bad{i}-{j}", f"w{i}", f"w{i}", 1),
                        TransferIn(f"c{i}-{j}", f"w{i}", "m", 1),
                    ]
                    mine.append(b.post(tenant_id, batch))
                results[i] = mine
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors
    for i in range(threads_n):
        for j, res in enumerate(results[i]):
            assert [r.id for r in res] == [f"c{i}-{j}", f"bad{i}-{j}", f"c{i}-{j}"]
            # Each wallet holds 5: its first five transfers go through, the rest are refused.
            first = "ok" if j < funds else "exceeds_credits"
            second = "exists" if j < funds else "exceeds_credits"
            assert [r.result for r in res] == [first, "accounts_must_be_different", second]
            if j < funds:
                assert res[0].transfer == res[2].transfer
                assert res[0].transfer.debit_account_id == f"w{i}"
        assert _balance(db, tenant_id, f"w{i}") == (0, funds, 0, funds)
    assert _balance(db, tenant_id, "m") == (0, 0, 0, threads_n * funds)
    assert len(_transfer_ids(db, tenant_id)) == threads_n + threads_n * funds
    # The callers really were merged into shared transactions.
    assert max(n for _, n in calls) > 1


def test_linked_chains_never_cross_callers_segments(db, tenant_id, clock, batcher, calls):
    _setup(db, tenant_id, clock, {"a": 0, "b": 0})
    # Caller 1 leaves its chain open; caller 2's unlinked transfer must not close it.
    f1 = batcher.submit(tenant_id, [TransferIn("x1", "a", "b", 1), TransferIn("x2", "a", "b", 2, flags=LINKED)])
    f2 = batcher.submit(tenant_id, [TransferIn("y1", "a", "b", 4)])
    # Caller 3's chain fails; caller 4's transfers are unaffected.
    f3 = batcher.submit(tenant_id, [TransferIn("z1", "a", "b", 8, flags=LINKED), TransferIn("z2", "a", "a", 1)])
    f4 = batcher.submit(tenant_id, [TransferIn("z3", "a", "b", 16)])
    assert [r.result for r in f1.result(10)] == ["ok", "linked_event_chain_open"]
    assert [r.result for r in f2.result(10)] == ["ok"]
    assert [r.result for r in f3.result(10)] == ["linked_event_failed", "accounts_must_be_different"]
    assert [r.result for r in f4.result(10)] == ["ok"]
    assert calls == [(tenant_id, 4)]  # one transaction for all four callers
    assert _balance(db, tenant_id, "a") == (0, 1 + 4 + 16, 0, 0)
    assert _transfer_ids(db, tenant_id) == ["x1", "y1", "z3"]


def test_engine_keeps_chains_inside_their_segment(session, tenant_id, clock):
    make_tenant(session, tenant_id, clock)
    make_account(session, tenant_id, clock, id="a")
    make_account(session, tenant_id, clock, id="b")
    segs = [Segment([TransferIn("x", "a", "b", 1, flags=LINKED)]), Segment([TransferIn("y", "a", "b", 2)])]
    engine.apply(session.connection(), tenant_id, segs, clock.now_ns())
    assert [r.result for r in segs[0].results] == ["linked_event_chain_open"]
    assert [r.result for r in segs[1].results] == ["ok"]
    assert segs[1].results[0].index == 0


def test_a_poisoned_segment_is_retried_alone_and_fails_only_its_caller(db, clock, batcher, calls, monkeypatch):
    tag = f"{time.time_ns():x}"
    # Named so the poisoned tenant is applied last in the group (tenants go in sorted order).
    tenants = [f"p{tag}-ok1", f"p{tag}-zbad", f"p{tag}-ok2"]
    for t in tenants:
        _setup(db, t, clock, {"a": 0, "b": 0})
    good1, bad, good2 = tenants
    recording = engine.apply  # the `calls` fixture's wrapper

    def poisoned(conn, tenant_id, segments, now_ns, cache=None, pipe=None, offload=None):  # type: ignore[no-untyped-def]
        out = recording(conn, tenant_id, segments, now_ns, cache, pipe, offload)  # writes, then the transaction dies
        if tenant_id == bad:
            raise RuntimeError("poisoned segment")
        return out

    monkeypatch.setattr(engine, "apply", poisoned)
    futures = [batcher.submit(t, [TransferIn("t1", "a", "b", 5)]) for t in tenants]
    assert [r.result for r in futures[0].result(10)] == ["ok"]
    assert [r.result for r in futures[2].result(10)] == ["ok"]
    with pytest.raises(RuntimeError, match="poisoned segment"):
        futures[1].result(10)
    # First the group (one transaction, tenants in sorted order), then each segment alone.
    assert calls == [(good1, 1), (good2, 1), (bad, 1), (good1, 1), (bad, 1), (good2, 1)]
    # The good tenants' transfers are committed exactly once; the poisoned one not at all.
    for t in (good1, good2):
        assert _transfer_ids(db, t) == ["t1"]
        assert _balance(db, t, "a") == (0, 5, 0, 0)
    assert _transfer_ids(db, bad) == []
    assert _balance(db, bad, "a") == (0, 0, 0, 0)
    # The batcher keeps serving.
    assert [r.result for r in batcher.post(good1, [TransferIn("t2", "a", "b", 1)])] == ["ok"]


def test_stop_drains_queued_work(db, tenant_id, clock, monkeypatch):
    _setup(db, tenant_id, clock, {"a": 0, "b": 0})
    real = engine.apply
    gate = threading.Event()

    def slow(conn, tenant_id_, segments, now_ns, cache=None, pipe=None, offload=None):  # type: ignore[no-untyped-def]
        gate.wait(10)  # hold the writer so the rest stays queued
        return real(conn, tenant_id_, segments, now_ns, cache, pipe, offload)

    monkeypatch.setattr(engine, "apply", slow)
    b = LedgerBatcher(db, clock, window_ms=0, max_transfers=1).start()
    futures: list[Future[list[TransferResult]]] = [
        b.submit(tenant_id, [TransferIn(f"t{i}", "a", "b", 1)]) for i in range(40)
    ]
    stopper = threading.Thread(target=b.stop, kwargs={"timeout": 30})
    stopper.start()
    time.sleep(0.05)
    assert not all(f.done() for f in futures)
    gate.set()
    stopper.join(30)
    assert all(f.done() for f in futures)
    assert [f.result()[0].result for f in futures] == ["ok"] * 40
    assert _balance(db, tenant_id, "a") == (0, 40, 0, 0)
    assert len(_transfer_ids(db, tenant_id)) == 40


def test_submit_after_stop_raises(db, tenant_id, clock):
    _setup(db, tenant_id, clock, {"a": 0, "b": 0})
    b = LedgerBatcher(db, clock)
    with pytest.raises(BatcherStopped):
        b.submit(tenant_id, [TransferIn("t0", "a", "b", 1)])  # never started
    b.start()
    assert [r.result for r in b.post(tenant_id, [TransferIn("t1", "a", "b", 1)])] == ["ok"]
    b.stop()
    b.stop()  # idempotent
    with pytest.raises(BatcherStopped):
        b.submit(tenant_id, [TransferIn("t2", "a", "b", 1)])
    with pytest.raises(BatcherStopped):
        b.post(tenant_id, [TransferIn("t3", "a", "b", 1)])
    assert _transfer_ids(db, tenant_id) == ["t1"]


def test_post_async(db, tenant_id, clock, batcher):
    _setup(db, tenant_id, clock, {"a": 0, "b": 0})

    async def both() -> list[list[TransferResult]]:
        return await asyncio.gather(
            batcher.post_async(tenant_id, [TransferIn("t1", "a", "b", 1)]),
            batcher.post_async(tenant_id, [TransferIn("t2", "a", "b", 2)]),
        )

    r1, r2 = asyncio.run(both())
    assert (r1[0].result, r2[0].result) == ("ok", "ok")
    assert _balance(db, tenant_id, "b") == (0, 0, 0, 3)


def test_system_segments_may_void_expired_holds(db, tenant_id, clock, batcher):
    _setup(db, tenant_id, clock, {"a": 0, "b": 0})
    pending = int(TransferFlags.PENDING)
    void = int(TransferFlags.VOID_PENDING)
    assert batcher.post(tenant_id, [TransferIn("p", "a", "b", 5, flags=pending, timeout_s=1)])[0].result == "ok"
    clock.advance(1)
    expire = TransferIn("expire:p", pending_id="p", flags=void, code="expired")
    assert batcher.post(tenant_id, [expire])[0].result == "pending_transfer_expired"
    assert batcher.post(tenant_id, [expire], system=True)[0].result == "ok"
    assert _balance(db, tenant_id, "a") == (0, 0, 0, 0)


def test_a_cancelled_caller_does_not_stop_the_batcher(db, tenant_id, clock, monkeypatch):
    # post_async's asyncio.wrap_future cancels the batcher's future when the awaiting request
    # is cancelled (client gone, timeout) — an everyday event for an HTTP server.
    _setup(db, tenant_id, clock, {"a": 0, "b": 0})
    real = engine.apply
    gate = threading.Event()

    def held(conn, tenant_id_, segments, now_ns, cache=None, pipe=None, offload=None):  # type: ignore[no-untyped-def]
        gate.wait(10)
        return real(conn, tenant_id_, segments, now_ns, cache, pipe, offload)

    monkeypatch.setattr(engine, "apply", held)
    b = LedgerBatcher(db, clock, window_ms=0).start()
    try:
        first = b.submit(tenant_id, [TransferIn("t1", "a", "b", 1)])
        second = b.submit(tenant_id, [TransferIn("t2", "a", "b", 1)])
        second.cancel()
        gate.set()
        assert first.result(10)[0].result == "ok"
        third = b.submit(tenant_id, [TransferIn("t3", "a", "b", 1)])
        assert third.result(2)[0].result == "ok"
        # The cancelled caller's transfer was never applied.
        with db.session(write=False) as s:
            assert s.get(Transfer, (tenant_id, "t2")) is None
    finally:
        gate.set()
        b.stop(timeout=5)


# -- the writer's cache and the adaptive window ---------------------------------------------


def _no_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every read the engine makes (the cached path makes none)."""
    reads: list[str] = []
    real = engine._load

    def loading(conn, tenant_id, *args):  # type: ignore[no-untyped-def]
        reads.append(tenant_id)
        return real(conn, tenant_id, *args)

    monkeypatch.setattr(engine, "_load", loading)
    return reads


def test_a_batch_over_cached_accounts_writes_without_reading(db, tenant_id, clock, batcher, monkeypatch):
    _setup(db, tenant_id, clock, {"a": 0, "b": 0})
    assert batcher.post(tenant_id, [TransferIn("t1", "a", "b", 5)])[0].result == "ok"
    reads = _no_reads(monkeypatch)
    res = batcher.post(tenant_id, [TransferIn("t2", "b", "a", 2), TransferIn("t3", "a", "b", 1)])
    assert [r.result for r in res] == ["ok", "ok"]
    assert reads == []
    assert [r.transfer.seq for r in res] == [2, 3]
    assert _balance(db, tenant_id, "a") == (0, 6, 0, 2)
    # A resubmission is stored already: the cached attempt fails on the primary key and
    # the batch is decided again, reading — the original comes back as `exists`.
    again = batcher.post(tenant_id, [TransferIn("t2", "b", "a", 2), TransferIn("t4", "a", "b", 1)])
    assert [r.result for r in again] == ["exists", "ok"]
    assert again[0].transfer == res[0].transfer
    assert reads == [tenant_id]
    assert _balance(db, tenant_id, "a") == (0, 7, 0, 2)
    # An account the cache has not seen yet is read on its own; the batch stays on the cache.
    with db.session() as s:
        make_account(s, tenant_id, clock, id="c")
    assert batcher.post(tenant_id, [TransferIn("t5", "a", "c", 3)])[0].result == "ok"
    assert reads == [tenant_id]
    assert _balance(db, tenant_id, "c") == (0, 0, 0, 3)


def test_a_refusal_on_cached_balances_is_decided_again_by_reading(db, tenant_id, clock, batcher, monkeypatch):
    _setup(db, tenant_id, clock, {"src": 0, "w": DMNEC, "m": 0})
    assert batcher.post(tenant_id, [TransferIn("fund", "src", "w", 5)])[0].result == "ok"
    reads = _no_reads(monkeypatch)
    # Omitted fields: only the stored transfer can say this is the same one.
    assert batcher.post(tenant_id, [TransferIn("fund", None, None, None)])[0].result == "exists"
    assert reads == [tenant_id]
    assert batcher.post(tenant_id, [TransferIn("big", "w", "m", 6)])[0].result == "exceeds_credits"


def test_a_cached_batch_refused_part_way_leaves_the_cache_at_the_committed_balances(
    db, tenant_id, clock, batcher, monkeypatch
):
    # The cached path changes the cached balances in place; a batch it cannot finish (here
    # the second spend is refused) is decided again by reading, and what the next batches
    # see must be exactly what committed — s1 counted once, never twice or not at all.
    _setup(db, tenant_id, clock, {"src": 0, "w": DMNEC, "m": 0})
    assert batcher.post(tenant_id, [TransferIn("fund", "src", "w", 5)])[0].result == "ok"
    reads = _no_reads(monkeypatch)
    res = batcher.post(tenant_id, [TransferIn("s1", "w", "m", 3), TransferIn("s2", "w", "m", 3)])
    assert [r.result for r in res] == ["ok", "exceeds_credits"]
    assert reads == [tenant_id]
    assert _balance(db, tenant_id, "w") == (0, 3, 0, 5)
    assert batcher.post(tenant_id, [TransferIn("s3", "w", "m", 2)])[0].result == "ok"
    assert batcher.post(tenant_id, [TransferIn("s4", "w", "m", 1)])[0].result == "exceeds_credits"
    assert _balance(db, tenant_id, "w") == (0, 5, 0, 5)
    assert _balance(db, tenant_id, "m") == (0, 0, 0, 5)


def test_another_writer_moving_the_head_invalidates_the_cache(db, tenant_id, clock, batcher, monkeypatch):
    _setup(db, tenant_id, clock, {"src": 0, "w": DMNEC, "m": 0})
    assert batcher.post(tenant_id, [TransferIn("fund", "src", "w", 5)])[0].result == "ok"
    # Another process (here: a request transaction) spends the wallet behind the batcher's back.
    with db.session() as s:
        assert ledger_service.post(s, tenant_id, [TransferIn("elsewhere", "w", "m", 4)], clock)[0].result == "ok"
    reads = _no_reads(monkeypatch)
    # The cache still says 5 available: the optimistic batch accepts, its head guard fails,
    # and the rerun reads the real balance (1) and refuses.
    assert batcher.post(tenant_id, [TransferIn("spend", "w", "m", 3)])[0].result == "exceeds_credits"
    assert reads == [tenant_id]
    assert batcher.post(tenant_id, [TransferIn("spend2", "w", "m", 1)])[0].result == "ok"
    assert _balance(db, tenant_id, "w") == (0, 5, 0, 5)
    assert _transfer_ids(db, tenant_id) == ["fund", "elsewhere", "spend2"]


def test_one_caller_posting_in_turn_does_not_wait_for_the_window(db, tenant_id, clock):
    _setup(db, tenant_id, clock, {"a": 0, "b": 0})
    with LedgerBatcher(db, clock, window_ms=300) as b:
        b.post(tenant_id, [TransferIn("t0", "a", "b", 1)])  # no history yet: waits the window
        started = time.monotonic()
        for i in range(1, 6):
            assert b.post(tenant_id, [TransferIn(f"t{i}", "a", "b", 1)])[0].result == "ok"
        assert time.monotonic() - started < 5 * 0.3 / 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # a per-connection SQLite setting
def test_the_sqlite_writer_keeps_a_larger_page_cache_and_gives_it_back(db, tenant_id, clock):
    from meterline.db.engine import WRITER_CACHE_KIB

    _setup(db, tenant_id, clock, {"a": 0, "b": 0})
    b = LedgerBatcher(db, clock, window_ms=0).start()
    b.post(tenant_id, [TransferIn("t1", "a", "b", 1)])
    conn = b._conn
    assert conn is not None
    raw = conn.connection.dbapi_connection
    assert raw.execute("PRAGMA cache_size").fetchone()[0] == -WRITER_CACHE_KIB
    b.stop()
    assert raw.execute("PRAGMA cache_size").fetchone()[0] == -2000  # back in the pool at the default


# -- PostgreSQL: the writes and the COMMIT in one round trip ----------------------------------


def _pipe_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Every pipeline the engine and batcher send: (statements queued, carries the COMMIT)."""
    from meterline.db.pgpipe import PgPipe

    runs: list[tuple[int, bool]] = []
    real = PgPipe.send  # `run` is `send` and a wait; the batcher sends its commit and waits later

    def counting(self, *, commit=False):  # type: ignore[no-untyped-def]
        runs.append((self.pending, commit))
        return real(self, commit=commit)

    monkeypatch.setattr(PgPipe, "send", counting)
    return runs


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_cached_batch_is_one_round_trip_with_its_commit(db, tenant_id, clock, batcher, monkeypatch):
    _setup(db, tenant_id, clock, {"a": 0, "b": 0})
    assert batcher.post(tenant_id, [TransferIn("t0", "a", "b", 1)])[0].result == "ok"  # creates the head
    batcher.cache.clear()  # (the writer is idle between posts)
    runs = _pipe_runs(monkeypatch)
    assert batcher.post(tenant_id, [TransferIn("t1", "a", "b", 4)])[0].result == "ok"
    # Nothing cached: the reads (head lock, ids, accounts), then the writes with the COMMIT.
    assert runs == [(3, False), (3, True)]
    runs.clear()
    res = batcher.post(tenant_id, [TransferIn("t2", "b", "a", 2), TransferIn("t3", "a", "b", 1)])
    assert [r.result for r in res] == ["ok", "ok"]
    # Head (guarded), transfers, accounts (guarded) and COMMIT: one pipeline, one round trip.
    assert runs == [(3, True)]
    assert _balance(db, tenant_id, "a") == (0, 6, 0, 2)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_failing_guard_stops_the_commit_sent_behind_it(db, tenant_id, clock, batcher, monkeypatch):
    _setup(db, tenant_id, clock, {"src": 0, "w": DMNEC, "m": 0})
    assert batcher.post(tenant_id, [TransferIn("fund", "src", "w", 5)])[0].result == "ok"
    with db.session() as s:  # another writer moves the head behind the batcher's back
        assert ledger_service.post(s, tenant_id, [TransferIn("elsewhere", "w", "m", 4)], clock)[0].result == "ok"
    runs = _pipe_runs(monkeypatch)
    # The optimistic attempt went out with its COMMIT; the head guard failed it, so the
    # COMMIT never ran; the rerun read the real balance and refused.
    assert batcher.post(tenant_id, [TransferIn("spend", "w", "src", 3)])[0].result == "exceeds_credits"
    assert runs[0] == (3, True)  # head, transfer, accounts and the COMMIT: all cached, no read
    assert len(runs) > 1
    assert _transfer_ids(db, tenant_id) == ["fund", "elsewhere"]
    assert _balance(db, tenant_id, "w") == (0, 4, 0, 5)
    # A resubmitted id fails the primary key inside the pipeline the same way: `exists`.
    assert batcher.post(tenant_id, [TransferIn("fund", "src", "w", 5)])[0].result == "exists"


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_the_row_count_guards_fail_their_statement(db, tenant_id, clock):
    """The guards the COMMIT relies on: a write touching the wrong number of rows fails."""
    import psycopg

    from meterline.db.pgpipe import PgPipe, int_array, integer, text, text_array
    from meterline.ledger.engine import LedgerEngine, _pg_write_accounts

    _setup(db, tenant_id, clock, {"a": 0})
    with db.writer_connection() as conn:
        pipe = PgPipe(conn)
        pipe.add(LedgerEngine._PG_ACCOUNT_WRITE, [
            text_array(["a", "gone"]), int_array([0, 0]), int_array([7, 7]), int_array([0, 0]),
            int_array([0, 0]), text(tenant_id), integer(2),
        ])
        with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="ledger guard: 1 accounts updated"):
            pipe.run(commit=True)
        conn.connection.dbapi_connection.rollback()
        # The same guard on the scalar VALUES form small batches use.
        pipe.add(_pg_write_accounts(2), [b"a", b"0", b"7", b"0", b"0", b"gone", b"0", b"7", b"0", b"0",
                                         text(tenant_id)])
        with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="ledger guard: 1 accounts updated"):
            pipe.run(commit=True)
        conn.connection.dbapi_connection.rollback()
        pipe.add(LedgerEngine._PG_HEAD_WRITE, [
            integer(1), text("0" * 64), integer(0), text("f" * 64), integer(1), text(tenant_id + "-none"),
        ])
        with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="ledger guard: 0 ledger heads"):
            pipe.run(commit=True)
        conn.connection.dbapi_connection.rollback()
    assert _balance(db, tenant_id, "a") == (0, 0, 0, 0)


# -- PostgreSQL: the next batch sent while the previous commit is in flight -------------------


def _two_in_flight(b: LedgerBatcher, first: tuple[str, list[TransferIn]], second: tuple[str, list[TransferIn]]
                   ) -> tuple[list[TransferResult], list[TransferResult]]:
    """Drive the writer's pipelined loop on this thread: `first` goes out alone, `second` is
    gathered and sent behind it before `first`'s commit is read."""
    b._running = True  # queue without the writer thread: this thread is the writer
    fa = b.submit(*first)
    fb = b.submit(*second)
    entry = b._queue.get_nowait()
    assert entry is not None
    b._expect = 2  # two callers, split in two groups: the first batch takes one, the other goes behind it
    b._splitter.split = True
    assert b._fly([entry]) is False
    b._running = False
    b._close_connection()
    return fa.result(timeout=0), fb.result(timeout=0)


def _sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool, bool]]:
    """Every pipeline sent: (statements, carries a COMMIT, an earlier one was still unread)."""
    from meterline.db.pgpipe import PgPipe

    sends: list[tuple[int, bool, bool]] = []
    real = PgPipe.send

    def recording(self, *, commit=False):  # type: ignore[no-untyped-def]
        sends.append((self.pending, commit, bool(self._session.unread)))
        return real(self, commit=commit)

    monkeypatch.setattr(PgPipe, "send", recording)
    return sends


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_batch_sent_behind_an_unread_commit_is_built_on_it(db, tenant_id, clock, monkeypatch):
    from meterline.ledger.verify import verify_ledger

    _setup(db, tenant_id, clock, {"a": 0, "b": 0})
    b = LedgerBatcher(db, clock, window_ms=50)
    _two_in_flight(b, (tenant_id, [TransferIn("t0", "a", "b", 1)]), (tenant_id, [TransferIn("t00", "b", "a", 1)]))
    reads = _no_reads(monkeypatch)
    sends = _sends(monkeypatch)
    r1, r2 = _two_in_flight(b, (tenant_id, [TransferIn("t1", "a", "b", 5)]),
                            (tenant_id, [TransferIn("t2", "b", "a", 2), TransferIn("t3", "a", "b", 1)]))
    assert [r.result for r in r1 + r2] == ["ok", "ok", "ok"]
    # Both went out from the cache, the second while the first commit was still unread; its
    # head guard names the head the first one left.
    assert reads == []
    assert sends == [(3, True, False), (3, True, True)]
    assert [r.transfer.seq for r in r1 + r2] == [3, 4, 5]
    assert r2[0].transfer.hash != r1[0].transfer.hash
    assert _balance(db, tenant_id, "a") == (0, 7, 0, 3)
    assert verify_ledger(db, tenant_id).ok


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("same_tenant", [True, False])
def test_when_the_first_commit_in_flight_fails_the_one_behind_it_runs_again(
    db, tenant_id, clock, monkeypatch, same_tenant
):
    from meterline.ledger.verify import verify_ledger

    other = tenant_id + "-2"
    _setup(db, tenant_id, clock, {"src": 0, "w": DMNEC, "m": 0})
    _setup(db, other, clock, {"x": 0, "y": 0})
    b = LedgerBatcher(db, clock, window_ms=50)
    _two_in_flight(b, (tenant_id, [TransferIn("fund", "src", "w", 5), TransferIn("seed", "m", "src", 1)]),
                   (other, [TransferIn("o1", "x", "y", 1)]))
    with db.session() as s:  # another writer spends the wallet behind the batcher's back
        assert ledger_service.post(s, tenant_id, [TransferIn("elsewhere", "w", "m", 4)], clock)[0].result == "ok"
    reads = _no_reads(monkeypatch)
    sends = _sends(monkeypatch)
    second = (tenant_id, [TransferIn("after", "src", "m", 2)]) if same_tenant else (other, [TransferIn("o2", "y", "x", 3)])
    # The cache still says 5 available: the first batch accepts the spend and goes out; the
    # second is built on it and sent behind it. The first's head guard fails, so its COMMIT
    # is skipped; the second ran in that aborted transaction (whatever its tenant) and fails
    # too. Both run again, in order, reading: the spend is refused, the second commits once.
    r1, r2 = _two_in_flight(b, (tenant_id, [TransferIn("spend", "w", "m", 3)]), second)
    assert sends[:2] == [(3, True, False), (3, True, True)]
    assert r1[0].result == "exceeds_credits"
    assert r2[0].result == "ok"
    # The first reran reading; the second reran on what that rerun committed and cached.
    assert reads == ([tenant_id] if same_tenant else [tenant_id, other])
    assert _transfer_ids(db, tenant_id) == ["fund", "seed", "elsewhere"] + (["after"] if same_tenant else [])
    assert _balance(db, tenant_id, "w") == (0, 4, 0, 5)
    if same_tenant:
        assert _balance(db, tenant_id, "m") == (0, 1, 0, 6)
        assert r2[0].transfer.seq == 4
    else:
        assert _transfer_ids(db, other) == ["o1", "o2"]
        assert _balance(db, other, "x") == (0, 1, 0, 3)
    # Nothing uncommitted stayed in the cache: the next batches see exactly what committed.
    b.start()
    assert b.post(tenant_id, [TransferIn("s2", "w", "m", 1)])[0].result == "ok"
    assert b.post(tenant_id, [TransferIn("s3", "w", "m", 1)])[0].result == "exceeds_credits"
    b.stop()
    assert _balance(db, tenant_id, "w") == (0, 5, 0, 5)
    assert verify_ledger(db, tenant_id).ok and verify_ledger(db, other).ok


def test_the_writer_splits_its_callers_only_while_splitting_answers_more(monkeypatch):
    from meterline.db import group_commit

    now = [0.0]
    monkeypatch.setattr(group_commit.time, "monotonic", lambda: now[0])
    s = group_commit._Splitter()

    def period(rate: float) -> None:
        now[0] += s.period_s
        s.landed(int(rate * s.period_s))

    assert s.split is False
    for _ in range(s.first_probe - 1):
        period(1000)
    assert s.split is False
    period(1000)  # the first probe comes early: the next period splits
    assert s.split is True
    period(800)  # the probe lost: back
    assert s.split is False
    for _ in range(s.probe_every - 1):  # (the probe counted as a period)
        period(1000)
    assert s.split is True
    period(1050)  # won, but by less than the margin: one period's noise, not a verdict
    assert s.split is False
    for _ in range(s.probe_every - 1):
        period(1000)
    assert s.split is True
    period(1500)  # the probe won: kept
    assert s.split is True
    now[0] += 60  # idle for a minute: that period says nothing
    s.landed(1)
    assert s.split is True


@pytest.mark.parametrize("resolve", [TransferFlags.POST_PENDING, TransferFlags.VOID_PENDING])
def test_a_hold_created_and_resolved_in_one_commit_is_stored_resolved(db, tenant_id, clock, batcher, resolve):
    """Side by side in one batch, or in two callers' segments of one group commit: the hold
    row is inserted already resolved, with who resolved it, when, and for how much (on
    PostgreSQL these three went in as NULL, and `ledger verify` failed)."""
    _setup(db, tenant_id, clock, {"a": 0, "b": 0})
    pending = TransferIn("h1", "a", "b", 500, "USD", flags=int(TransferFlags.PENDING), timeout_s=60)
    amount = 300 if resolve == TransferFlags.POST_PENDING else None
    post = TransferIn("r1", None, None, amount, pending_id="h1", flags=int(resolve))
    assert [r.result for r in batcher.post(tenant_id, [pending, post])] == ["ok", "ok"]
    # The same across two callers' segments of one group commit.
    pending2 = TransferIn("h2", "a", "b", 500, "USD", flags=int(TransferFlags.PENDING), timeout_s=60)
    post2 = TransferIn("r2", None, None, amount, pending_id="h2", flags=int(resolve))
    first, second = batcher.submit(tenant_id, [pending2]), batcher.submit(tenant_id, [post2])
    assert [first.result()[0].result, second.result()[0].result] == ["ok", "ok"]
    with db.session(write=False) as s:
        for hold_id, resolver in (("h1", "r1"), ("h2", "r2")):
            hold = s.get(Hold, (tenant_id, hold_id))
            assert hold is not None
            assert (hold.state, hold.resolved_by, hold.resolved_at is not None) == (
                "posted" if resolve == TransferFlags.POST_PENDING else "voided", resolver, True)
            assert hold.posted_amount == (300 if resolve == TransferFlags.POST_PENDING else None)
    assert verify_ledger(db, tenant_id).ok
