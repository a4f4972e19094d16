"""Eight processes post at once — to one hot account and across many — and nothing is lost.

Each process has its own engine, its own LedgerBatcher and its own connections,
exactly like N API processes sharing one PostgreSQL (on SQLite the same test
proves BEGIN IMMEDIATE + busy timeout serialise writer processes without
SQLITE_BUSY failures). Afterwards every
acknowledged transfer exists exactly once, balances equal the sums of
transfers, and the per-tenant hash chain is gap-free.
"""

from __future__ import annotations

import multiprocessing as mp
import random

import pytest
from sqlalchemy import text

from meterline.clock import SystemClock
from meterline.db.engine import Database
from meterline.ledger.batcher import LedgerBatcher
from meterline.ledger.types import AccountFlags, TransferIn
from tests.factories import make_account, make_tenant

PROCESSES = 8
PER_PROCESS = 150
ACCOUNTS = 40


def _client(url: str, tenant: str, worker: int, mode: str, out: mp.Queue) -> None:
    db = Database(url, pool_size=2)
    batcher = LedgerBatcher(db, SystemClock()).start()
    rng = random.Random(worker)
    acked: list[tuple[str, int]] = []
    try:
        for i in range(PER_PROCESS):
            if mode == "hot":
                debit, credit = "hot", f"a{rng.randrange(ACCOUNTS)}"
            else:
                d, c = rng.sample(range(ACCOUNTS), 2)
                debit, credit = f"a{d}", f"a{c}"
            amount = rng.randint(1, 1000)
            tid = f"{mode}-{worker}-{i}"
            # Mix of single calls and small batches, as concurrent requests would be.
            result = batcher.post(tenant, [TransferIn(tid, debit, credit, amount, "USD")])[0]
            if result.result == "ok":
                acked.append((tid, amount))
            else:
                out.put(("error", tid, result.result))
    finally:
        batcher.stop()
        db.dispose()
    out.put(("acked", worker, acked))


def _run(url: str, tenant: str, mode: str) -> list[tuple[str, int]]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(url, tenant, w, mode, out)) for w in range(PROCESSES)]
    for p in procs:
        p.start()
    acked: list[tuple[str, int]] = []
    errors = []
    for _ in range(PROCESSES):
        msg = out.get(timeout=120)
        while msg[0] == "error":
            errors.append(msg)
            msg = out.get(timeout=120)
        acked.extend(msg[2])
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert errors == []
    return acked


@pytest.mark.parametrize("mode", ["hot", "spread"])
def test_eight_processes_lose_nothing(db, tenant_id, mode):
    clock = SystemClock()
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        make_account(s, tenant_id, clock, id="hot", kind="treasury")
        for i in range(ACCOUNTS):
            make_account(s, tenant_id, clock, id=f"a{i}")
    acked = _run(db.url, tenant_id, mode)
    assert len(acked) == PROCESSES * PER_PROCESS

    with db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, amount, seq FROM transfers WHERE tenant_id = :t"), {"t": tenant_id}
        ).all()
        stored = {r[0]: r[1] for r in rows}
        assert len(rows) == len(stored) == len(acked)  # exactly once each
        assert all(stored[tid] == amount for tid, amount in acked)
        assert sorted(r[2] for r in rows) == list(range(1, len(rows) + 1))  # gap-free seq
        sums = conn.execute(
            text(
                "SELECT SUM(debits_posted), SUM(credits_posted), SUM(debits_pending), SUM(credits_pending) "
                "FROM accounts WHERE tenant_id = :t"
            ),
            {"t": tenant_id},
        ).one()
        mismatched = conn.execute(
            text(
                """
                SELECT a.id, a.debits_posted, d.s, a.credits_posted, c.s FROM accounts a
                LEFT JOIN (SELECT debit_account_id AS id, SUM(amount) AS s FROM transfers
                           WHERE tenant_id = :t GROUP BY debit_account_id) d ON d.id = a.id
                LEFT JOIN (SELECT credit_account_id AS id, SUM(amount) AS s FROM transfers
                           WHERE tenant_id = :t GROUP BY credit_account_id) c ON c.id = a.id
                WHERE a.tenant_id = :t
                  AND (a.debits_posted <> COALESCE(d.s, 0) OR a.credits_posted <> COALESCE(c.s, 0))
                """
            ),
            {"t": tenant_id},
        ).all()
        assert mismatched == []
        assert sums[0] == sums[1] == sum(a for _, a in acked)
        assert sums[2] == sums[3] == 0


def test_hot_wallet_never_overdraws_under_concurrency(db, tenant_id):
    """Many processes race to spend one wallet with a balance limit: exactly the funded amount moves."""
    clock = SystemClock()
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        make_account(s, tenant_id, clock, id="funding", kind="external")
        make_account(s, tenant_id, clock, id="hot", flags=int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS))
        for i in range(ACCOUNTS):
            make_account(s, tenant_id, clock, id=f"a{i}")
    batcher = LedgerBatcher(db, clock).start()
    assert batcher.post(tenant_id, [TransferIn("fund", "funding", "hot", 50_000, "USD")])[0].result == "ok"
    batcher.stop()

    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(db.url, tenant_id, w, "hot", out)) for w in range(4)]
    for p in procs:
        p.start()
    refused = 0
    done = 0
    while done < 4:
        msg = out.get(timeout=120)
        if msg[0] == "error":
            assert msg[2] == "exceeds_credits"
            refused += 1
        else:
            done += 1
    for p in procs:
        p.join(timeout=60)
    assert refused > 0
    with db.engine.connect() as conn:
        dpo, cpo = conn.execute(
            text("SELECT debits_posted, credits_posted FROM accounts WHERE tenant_id = :t AND id = 'hot'"),
            {"t": tenant_id},
        ).one()
    assert cpo == 50_000
    assert dpo <= cpo


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_tenants_first_batches_created_together_both_count(db, tenant_id, monkeypatch):
    """Two writers find no head: the one that loses the race to create it must not build
    on the balances it read before the winner committed."""
    from meterline.db.pgpipe import PgPipe
    from meterline.ledger.service import ledger_service

    clock = SystemClock()
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        make_account(s, tenant_id, clock, id="a")
        make_account(s, tenant_id, clock, id="b")
    real = PgPipe.run
    armed = [True]

    def run(self, *, commit=False):  # type: ignore[no-untyped-def]
        out = real(self, commit=commit)
        if armed[0]:  # the loser has read (no head, no lock yet): the winner commits now
            armed[0] = False
            with db.session() as other:
                assert ledger_service.post(other, tenant_id, [TransferIn("first", "a", "b", 5)], clock)[0].result == "ok"
        return out

    monkeypatch.setattr(PgPipe, "run", run)
    with db.session() as s:
        [res] = ledger_service.post(s, tenant_id, [TransferIn("second", "a", "b", 3)], clock)
    assert res.result == "ok" and res.transfer is not None and res.transfer.seq == 2
    assert not armed[0]
    with db.session(write=False) as s:
        a = ledger_service.get_account(s, tenant_id, "a")
        assert (a.debits_posted, a.credits_posted) == (8, 0)
