"""The transfer INSERT binds only the columns some row needs (NULL columns are literals on
SQLite): whatever mix of NULL and set nullable columns a batch has, every row is stored
exactly as accepted."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from meterline.clock import FrozenClock
from meterline.db import sqlite_offload
from meterline.db.engine import Database
from meterline.db.sqlite_offload import StatementRunner
from meterline.ledger import engine as engine_module
from meterline.ledger.batcher import LedgerBatcher
from meterline.ledger.models import Account, Transfer
from meterline.ledger.service import ledger_service
from meterline.ledger.types import Segment, TransferFlags, TransferIn
from meterline.ledger.verify import verify_ledger
from tests.factories import make_account, make_tenant

PENDING, POST, VOID = int(TransferFlags.PENDING), int(TransferFlags.POST_PENDING), int(TransferFlags.VOID_PENDING)


@pytest.mark.parametrize("batch", [
    [TransferIn("p1", "a", "b", 1), TransferIn("p2", "b", "a", 2)],
    [TransferIn("r1", "a", "b", 1), TransferIn("r2", "a", "b", 2, reference="ref", metadata={"k": "v"})],
    [TransferIn("m1", "a", "b", 3, metadata={"n": 1}), TransferIn("m2", "a", "b", 4, metadata={"n": 2}, code="c")],
    # Quotes, backslashes, braces and commas are data (PostgreSQL binds them as scalars or array elements).
    [TransferIn('q"1', "a", "b", 1, reference='r"{x,\\y}', metadata={"é": '"\\', "l": [1, 2]})],
    [TransferIn("h1", "a", "b", 5, flags=PENDING, timeout_s=60), TransferIn("h2", pending_id="h1", flags=POST),
     TransferIn("x", "b", "a", 1)],
])
def test_every_mix_of_null_and_set_columns_is_stored_as_accepted(session, tenant_id, clock, batch):
    make_tenant(session, tenant_id, clock)
    for acc in ("a", "b"):
        make_account(session, tenant_id, clock, id=acc)
    results = ledger_service.post(session, tenant_id, batch, clock)
    assert all(r.result == "ok" for r in results)
    stored = {t.id: t for t in session.scalars(select(Transfer).where(Transfer.tenant_id == tenant_id))}
    for r in results:
        assert r.transfer is not None
        row = stored[r.id]
        assert (row.pending_id, row.reference, row.metadata_, row.code, row.amount, row.seq, row.hash) == (
            r.transfer.pending_id, r.transfer.reference, r.transfer.metadata, r.transfer.code,
            r.transfer.amount, r.transfer.seq, r.transfer.hash)


# -- a big batch's writes on the helper thread (`meterline.db.sqlite_offload`) ----------------


def _big_batches(prefix: str) -> list[list[TransferIn]]:
    """Two batches over the offload threshold (700 rows: one statement padded to 768, or three
    when a statement takes at most 256), every mix of NULL and set nullable columns, holds,
    and the second batch posting and voiding some of the first one's."""
    first = []
    for i in range(700):
        dr, cr = f"a{i % 37}", f"a{(i * 7 + 1) % 37 if (i * 7 + 1) % 37 != i % 37 else (i + 1) % 37}"
        extra: dict[str, Any] = {}
        if i % 5 == 1:
            extra = {"reference": f"ref-{i}", "code": "c"}
        elif i % 5 == 2:
            extra = {"metadata": {"n": i}}
        elif i % 5 == 3:
            extra = {"flags": PENDING, "timeout_s": 60}
        first.append(TransferIn(f"{prefix}{i}", dr, cr, 1 + i % 13, **extra))
    held = [t.id for t in first if t.flags == PENDING]
    second = [TransferIn(f"{prefix}p{i}", pending_id=h, flags=POST if i % 2 else VOID) for i, h in enumerate(held)]
    second += [TransferIn(f"{prefix}x{i}", f"a{i % 37}", f"a{(i + 5) % 37}", 2) for i in range(200)]
    return [first, second]


def _stored(db: Database, tenant: str, prefix: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with db.session(write=False) as s:
        transfers = sorted(
            (t.id.removeprefix(prefix), t.seq, t.debit_account_id, t.credit_account_id, t.amount, t.asset,
             (t.pending_id or "").removeprefix(prefix), t.flags, t.timeout_s, t.code, t.reference, t.metadata_)
            for t in s.scalars(select(Transfer).where(Transfer.tenant_id == tenant)))
        accounts = sorted((a.id, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
                          for a in s.scalars(select(Account).where(Account.tenant_id == tenant)))
        return transfers, accounts


def _two_ledgers(db: Database, clock: FrozenClock, *tenants: str) -> None:
    with db.session() as s:
        for tenant in tenants:
            make_tenant(s, tenant, clock)
            for i in range(37):
                make_account(s, tenant, clock, id=f"a{i}")


@pytest.mark.parametrize("top", [2048, 256], ids=["one-statement", "several-statements"])
def test_a_big_batch_written_on_the_helper_thread_is_stored_as_one_written_inline(sqlite_url, clock, monkeypatch, top):
    monkeypatch.setattr(sqlite_offload, "_TOP", top)
    db = Database(sqlite_url)
    inline, helper = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    _two_ledgers(db, clock, inline, helper)
    outcomes = {}
    for tenant, offload in ((inline, False), (helper, True)):
        with LedgerBatcher(db, clock, offload=offload) as b:
            assert (b._offload is not None) is offload
            outcomes[tenant] = [[r.result for r in b.post(tenant, batch)] for batch in _big_batches("x")]
        if offload:  # the writer closed its helper as it stopped
            assert b._offload is not None and b._offload._thread is None
    assert outcomes[helper] == outcomes[inline]
    assert all(r == "ok" for batch in outcomes[helper] for r in batch)
    assert _stored(db, helper, "x") == _stored(db, inline, "x")
    assert verify_ledger(db, helper).ok and verify_ledger(db, inline).ok
    db.dispose()


def test_an_id_stored_earlier_fails_the_helpers_insert_and_the_rerun_answers_exists(sqlite_url, clock):
    db = Database(sqlite_url)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    _two_ledgers(db, clock, tenant)
    first = [TransferIn(f"d{i}", f"a{i % 37}", f"a{(i + 1) % 37}", 3) for i in range(200)]
    # Built on the writer's cache (no reads), the batch cannot know d150 is stored: the
    # primary key refuses it on the helper thread, the batch rolls back and runs again reading.
    again = [TransferIn(f"e{i}", f"a{i % 37}", f"a{(i + 2) % 37}", 1) for i in range(199)]
    again.insert(100, first[150])
    with LedgerBatcher(db, clock) as b:
        assert all(r.result == "ok" for r in b.post(tenant, first))
        results = b.post(tenant, again)
    assert [r.result for r in results] == ["ok"] * 100 + ["exists"] + ["ok"] * 99
    assert results[100].transfer is not None and results[100].transfer.seq == 151
    transfers, accounts = _stored(db, tenant, "")
    assert len(transfers) == 399
    assert sum(a[2] for a in accounts) == sum(a[4] for a in accounts) == 200 * 3 + 199
    assert verify_ledger(db, tenant).ok
    db.dispose()


def test_a_failure_after_the_handover_waits_for_the_helper_and_rolls_everything_back(sqlite_url, clock, monkeypatch):
    db = Database(sqlite_url)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    _two_ledgers(db, clock, tenant)
    before = _stored(db, tenant, "")
    runner = StatementRunner()
    handed: list[str] = []
    real_run = runner.run

    def run(raw: Any, statement: str, params: Any, hand_over: bool = False) -> None:
        handed.append(statement.split()[0])
        real_run(raw, statement, params, hand_over=hand_over)

    def seal_fails(prev_hash: str, rows: list[list[Any]]) -> str:
        raise RuntimeError("the chain could not be hashed")

    monkeypatch.setattr(runner, "run", run)
    monkeypatch.setattr(engine_module, "seal", seal_fails)
    batch = [TransferIn(f"f{i}", f"a{i % 37}", f"a{(i + 3) % 37}", 4) for i in range(300)]
    with pytest.raises(RuntimeError, match="hashed"), db.session() as s:
        engine_module.engine.apply(s.connection(), tenant, [Segment(batch)], clock.now_ns(), offload=runner)
    assert handed and set(handed) == {"WITH"}  # the accounts UPDATE had been handed over
    assert runner._pending == 0  # ... and was waited for before the rollback
    assert _stored(db, tenant, "") == before
    runner.close()
    db.dispose()
