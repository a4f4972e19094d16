"""An account's transfer history: `list_transfers(account_id=…)` and its cursor pages.

On SQLite the history is kept in appended runs plus an un-indexed tail (`AccountHistory`);
these tests shrink the run size so a few transfers already span several runs and the tail,
and compare every page with the plain answer: the account's transfers in seq order. On
PostgreSQL (the `transfers` indexes) the same tests must give the same pages.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.ledger.engine import LedgerEngine
from meterline.ledger.models import AccountHistory, HistoryRun, Transfer
from meterline.ledger.service import ledger_service
from meterline.ledger.types import TransferFlags, TransferIn
from meterline.ledger.verify import verify_ledger
from tests.factories import make_account, make_tenant

ACCOUNTS = ("a", "b", "c", "d")


@pytest.fixture
def small_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LedgerEngine, "HISTORY_RUN", 3)


def _setup(s: Session, tenant: str, clock: FrozenClock) -> None:
    make_tenant(s, tenant, clock)
    for acc in (*ACCOUNTS, "idle"):
        make_account(s, tenant, clock, id=acc)


def _expected(s: Session, tenant: str, account: str, reference: str | None = None) -> list[int]:
    rows = s.scalars(select(Transfer).where(Transfer.tenant_id == tenant).order_by(Transfer.seq))
    return [t.seq for t in rows if account in (t.debit_account_id, t.credit_account_id)
            and (reference is None or t.reference == reference)]


def _paged(s: Session, tenant: str, account: str, limit: int, reference: str | None = None) -> list[int]:
    """Every page in turn; checks that each cursor is the page's last seq."""
    out: list[int] = []
    after: int | None = None
    while True:
        page = ledger_service.list_transfers(s, tenant, account_id=account, reference=reference,
                                             after_seq=after, limit=limit)
        seqs = [t.seq for t in page.items]
        assert len(seqs) <= limit
        out.extend(seqs)
        if page.next_cursor is None:
            return out
        assert len(seqs) == limit and page.next_cursor == str(seqs[-1])
        after = int(page.next_cursor)


def _check_all(s: Session, tenant: str) -> None:
    for acc in (*ACCOUNTS, "idle"):
        expected = _expected(s, tenant, acc)
        for limit in (1, 2, 5, 1000):
            assert _paged(s, tenant, acc, limit) == expected, (acc, limit)
        # A cursor anywhere (also between an account's transfers and past the end).
        for after in range(0, (max(expected) if expected else 0) + 2):
            page = ledger_service.list_transfers(s, tenant, account_id=acc, after_seq=after, limit=3)
            assert [t.seq for t in page.items] == [q for q in expected if q > after][:3]


def test_history_spans_runs_and_the_tail(session, tenant_id, clock, small_runs):
    _setup(session, tenant_id, clock)
    n = 0
    for size in (1, 2, 5, 1, 7, 3, 1):  # crosses the run size inside and at batch edges
        batch = []
        for _ in range(size):
            n += 1
            dr, cr = ACCOUNTS[n % 4], ACCOUNTS[(n * 3 + 1) % 4]
            if dr == cr:
                cr = ACCOUNTS[(n + 1) % 4]
            batch.append(TransferIn(f"t{n}", dr, cr, n, reference="r" if n % 3 == 0 else None))
        assert all(r.ok for r in ledger_service.post(session, tenant_id, batch, clock))
        _check_all(session, tenant_id)
    for acc in ACCOUNTS:
        assert _paged(session, tenant_id, acc, 2, reference="r") == _expected(session, tenant_id, acc, "r")
    if session.get_bind().dialect.name == "sqlite":
        runs = list(session.scalars(select(HistoryRun.last_seq).where(HistoryRun.tenant_id == tenant_id)
                                    .order_by(HistoryRun.last_seq)))
        assert runs == [3, 8, 9, 16, 19]  # each batch that crossed a multiple of 3
        entries = session.scalar(select(AccountHistory.seq).where(AccountHistory.tenant_id == tenant_id)
                                 .order_by(AccountHistory.seq.desc()).limit(1))
        assert entries == 19  # the last batch (seq 20) is the tail


def test_pending_post_and_void_are_in_both_accounts_history(session, tenant_id, clock, small_runs):
    _setup(session, tenant_id, clock)
    pending, post, void = (int(TransferFlags.PENDING), int(TransferFlags.POST_PENDING),
                           int(TransferFlags.VOID_PENDING))
    results = ledger_service.post(session, tenant_id, [
        TransferIn("h1", "a", "b", 10, flags=pending), TransferIn("h2", "c", "a", 5, flags=pending),
        TransferIn("x", "b", "d", 1),
    ], clock)
    assert all(r.ok for r in results)
    results = ledger_service.post(session, tenant_id, [
        TransferIn("p1", pending_id="h1", flags=post), TransferIn("v2", pending_id="h2", flags=void),
    ], clock)
    assert all(r.ok for r in results)
    _check_all(session, tenant_id)
    assert _paged(session, tenant_id, "a", 10) == [1, 2, 4, 5]


def test_verify_finds_a_history_entry_missing_or_extra(sqlite_url: str, clock, small_runs):
    """SQLite only: PostgreSQL keeps no history runs (its indexes list an account's transfers)."""
    db = Database(sqlite_url)
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    with db.session() as s:
        _setup(s, tenant, clock)
        ledger_service.post(s, tenant, [TransferIn(f"t{i}", "a", "b", 1) for i in range(4)], clock)
    assert verify_ledger(db, tenant).ok
    with db.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM account_history WHERE tenant_id = ? AND account_id = 'a' AND seq = 2",
                             (tenant,))
        conn.exec_driver_sql("INSERT INTO account_history VALUES (?, 4, 'c', 3)", (tenant,))
    report = verify_ledger(db, tenant)
    db.dispose()
    assert {p.check for p in report.problems} == {"account_history_missing", "account_history_extra"}


def _transfer_batches() -> Any:
    pair = st.sampled_from([(d, c) for d in ACCOUNTS for c in ACCOUNTS if d != c])
    return st.lists(st.lists(pair, min_size=1, max_size=9), min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=_transfer_batches(), run=st.integers(1, 12), limit=st.integers(1, 6))
def test_history_pages_match_the_transfers_in_seq_order(db, batches, run, limit):
    """Any batches, any run size: every account's pages are its transfers in seq order."""
    clock = FrozenClock()
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    old = LedgerEngine.HISTORY_RUN
    LedgerEngine.HISTORY_RUN = run
    try:
        with db.session() as s:
            _setup(s, tenant, clock)
        n = 0
        for batch in batches:
            with db.session() as s:
                ts = []
                for dr, cr in batch:
                    n += 1
                    ts.append(TransferIn(f"t{n}", dr, cr, 1))
                assert all(r.ok for r in ledger_service.post(s, tenant, ts, clock))
        with db.session(write=False) as s:
            for acc in (*ACCOUNTS, "idle"):
                assert _paged(s, tenant, acc, limit) == _expected(s, tenant, acc)
        assert verify_ledger(db, tenant).ok
    finally:
        LedgerEngine.HISTORY_RUN = old
