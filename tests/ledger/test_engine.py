"""The posting rules, result code by result code.

Every rule test runs four ways: on SQLite and PostgreSQL, and through both
posting paths — `ledger_service.post` inside the caller's (rolled-back)
transaction, and the `LedgerBatcher` with real commits for a fresh tenant. After
each money movement the four balances of every account involved are asserted
exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.ledger.batcher import LedgerBatcher
from meterline.ledger.chain import GENESIS_HASH, chain_hash
from meterline.ledger.engine import engine
from meterline.ledger.models import Hold, LedgerHead, Transfer
from meterline.ledger.service import ledger_service
from meterline.ledger.types import (
    AccountBalance,
    AccountFlags,
    Segment,
    TransferFlags,
    TransferIn,
    TransferResult,
)
from meterline.money import MAX_AMOUNT
from tests.factories import make_account, make_tenant

PENDING = int(TransferFlags.PENDING)
POST = int(TransferFlags.POST_PENDING)
VOID = int(TransferFlags.VOID_PENDING)
LINKED = int(TransferFlags.LINKED)
DMNEC = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
CMNED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
SECOND = 1_000_000_000


def bal(dp: int = 0, dpo: int = 0, cp: int = 0, cpo: int = 0) -> AccountBalance:
    return AccountBalance(debits_pending=dp, debits_posted=dpo, credits_pending=cp, credits_posted=cpo)


def T(id: str, dr: str | None = None, cr: str | None = None, amount: int | None = None, **kw: Any) -> TransferIn:
    return TransferIn(id, dr, cr, amount, **kw)


class Ledger:
    """One tenant's ledger, posted to in the caller's transaction or through the batcher."""

    def __init__(self, db: Database, tenant: str, clock: FrozenClock, *,
                 session: Session | None = None, batcher: LedgerBatcher | None = None) -> None:
        self.db = db
        self.tenant = tenant
        self.clock = clock
        self.session = session
        self.batcher = batcher
        with self._session() as s:
            make_tenant(s, tenant, clock)

    def for_tenant(self, tenant: str) -> Ledger:
        return Ledger(self.db, tenant, self.clock, session=self.session, batcher=self.batcher)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        if self.session is not None:
            # ledger_service.post writes with driver-level SQL, so ORM objects already in
            # the session are stale afterwards (see test_post_refreshes_accounts_loaded_in_the_session).
            self.session.expire_all()
            yield self.session
        else:
            with self.db.session() as s:
                yield s

    def account(self, id: str, *, asset: str = "USD", flags: int = 0) -> str:
        with self._session() as s:
            make_account(s, self.tenant, self.clock, id=id, asset=asset, flags=flags)
        return id

    def post(self, *transfers: TransferIn, system: bool = False) -> list[TransferResult]:
        batch = list(transfers)
        if self.batcher is not None:
            results = self.batcher.post(self.tenant, batch, system=system)
        elif system:
            seg = Segment(batch, system=True)
            engine.apply(self.session.connection(), self.tenant, [seg], self.clock.now_ns())  # type: ignore[union-attr]
            results = seg.results
        else:
            results = ledger_service.post(self.session, self.tenant, batch, self.clock)  # type: ignore[arg-type]
        assert [r.id for r in results] == [t.id for t in batch]
        assert [r.index for r in results] == list(range(len(batch)))
        for r in results:
            assert (r.transfer is not None) == r.ok, r
        return results

    def codes(self, *transfers: TransferIn, system: bool = False) -> list[str]:
        return [r.result for r in self.post(*transfers, system=system)]

    def code(self, transfer: TransferIn, *, system: bool = False) -> str:
        return self.codes(transfer, system=system)[0]

    def balance(self, account_id: str) -> AccountBalance:
        with self._session() as s:
            a = ledger_service.get_account(s, self.tenant, account_id)
            return bal(a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)

    def transfers(self) -> list[dict[str, Any]]:
        with self._session() as s:
            rows = s.scalars(select(Transfer).where(Transfer.tenant_id == self.tenant).order_by(Transfer.seq))
            return [_row(t) for t in rows]

    def transfer_ids(self) -> list[str]:
        return [t["id"] for t in self.transfers()]

    def hold(self, transfer_id: str) -> dict[str, Any] | None:
        with self._session() as s:
            h = s.get(Hold, (self.tenant, transfer_id))
            if h is None:
                return None
            return {"state": h.state, "amount": h.amount, "posted_amount": h.posted_amount,
                    "resolved_by": h.resolved_by, "expires_at": h.expires_at}

    def head(self) -> tuple[int, str, int] | None:
        with self._session() as s:
            h = s.get(LedgerHead, self.tenant)
            return None if h is None else (h.last_seq, h.last_hash, h.last_timestamp)


def _row(t: Transfer) -> dict[str, Any]:
    return {
        "tenant_id": t.tenant_id, "id": t.id, "seq": t.seq, "debit_account_id": t.debit_account_id,
        "credit_account_id": t.credit_account_id, "amount": t.amount, "asset": t.asset,
        "pending_id": t.pending_id, "flags": t.flags, "timeout_s": t.timeout_s, "code": t.code,
        "reference": t.reference, "metadata": t.metadata_, "timestamp": t.timestamp, "hash": t.hash,
    }


@pytest.fixture(params=["txn", "batcher"])
def ledger(request: pytest.FixtureRequest, db: Database, tenant_id: str, clock: FrozenClock) -> Iterator[Ledger]:
    if request.param == "txn":
        yield Ledger(db, tenant_id, clock, session=request.getfixturevalue("session"))
        return
    with LedgerBatcher(db, clock, window_ms=0.5) as batcher:
        yield Ledger(db, tenant_id, clock, batcher=batcher)


@pytest.fixture
def funded(ledger: Ledger) -> Ledger:
    """`src` (no limits) has paid 1000 into wallet `w` (may not go below zero); `m` is a merchant."""
    ledger.account("src")
    ledger.account("w", flags=DMNEC)
    ledger.account("m")
    assert ledger.codes(T("fund", "src", "w", 1000)) == ["ok"]
    return ledger


# -- ok and exists -------------------------------------------------------------------------


def test_transfer_moves_posted_balances_and_is_stored(ledger):
    ledger.account("a")
    ledger.account("b")
    [res] = ledger.post(T("t1", "a", "b", 250, asset="USD", code="topup", reference="ref-1",
                          metadata={"order": "o-1", "n": 2}))
    assert res.result == "ok" and res.ok
    assert ledger.balance("a") == bal(dpo=250)
    assert ledger.balance("b") == bal(cpo=250)
    stored = res.transfer
    assert stored is not None
    assert (stored.id, stored.debit_account_id, stored.credit_account_id, stored.amount, stored.asset) == (
        "t1", "a", "b", 250, "USD")
    assert (stored.code, stored.reference, stored.metadata, stored.seq) == ("topup", "ref-1", {"order": "o-1", "n": 2}, 1)
    assert stored.timestamp == ledger.clock.now_ns()
    [row] = ledger.transfers()
    assert row == stored.as_row()
    assert row["hash"] == chain_hash(GENESIS_HASH, row)


def test_asset_may_be_omitted_and_is_taken_from_the_accounts(ledger):
    ledger.account("a", asset="SOL")
    ledger.account("b", asset="SOL")
    [res] = ledger.post(T("t1", "a", "b", 7))
    assert res.result == "ok" and res.transfer.asset == "SOL"
    assert ledger.balance("a") == bal(dpo=7)
    assert ledger.balance("b") == bal(cpo=7)


def test_identical_resubmission_returns_the_original_as_exists(funded):
    [first] = funded.post(T("t1", "w", "m", 10, code="c", reference="r", metadata={"k": "v"}))
    assert first.result == "ok"
    funded.clock.advance(5)
    [again] = funded.post(T("t1", "w", "m", 10, code="c", reference="r", metadata={"k": "v"}))
    assert again.result == "exists" and again.ok
    assert again.transfer == first.transfer  # same seq, timestamp and hash: nothing new written
    # Fields left out of the resubmission are not compared.
    assert funded.code(T("t1", None, None, None, code="c", reference="r", metadata={"k": "v"})) == "exists"
    assert funded.balance("w") == bal(dpo=10, cpo=1000)
    assert funded.balance("m") == bal(cpo=10)
    assert funded.transfer_ids() == ["fund", "t1"]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"flags": PENDING}, "exists_with_different_flags"),
        ({"pending_id": "fund"}, "exists_with_different_pending_id"),
        ({"dr": "src"}, "exists_with_different_debit_account_id"),
        ({"cr": "src"}, "exists_with_different_credit_account_id"),
        ({"amount": 11}, "exists_with_different_amount"),
        ({"asset": "SOL"}, "exists_with_different_asset"),
        ({"timeout_s": 5}, "exists_with_different_timeout"),
        ({"code": "other"}, "exists_with_different_code"),
        ({"reference": "other"}, "idempotency_conflict"),
        ({"reference": None}, "idempotency_conflict"),
        ({"metadata": {"k": "other"}}, "idempotency_conflict"),
        ({"metadata": None}, "idempotency_conflict"),
    ],
)
def test_resubmission_with_different_fields_is_rejected(funded, change, code):
    original = {"dr": "w", "cr": "m", "amount": 10, "asset": "USD", "code": "c", "reference": "r",
                "metadata": {"k": "v"}}
    assert funded.codes(T("t1", **original)) == ["ok"]
    assert funded.codes(T("t1", **(original | change))) == [code]
    assert funded.balance("w") == bal(dpo=10, cpo=1000)
    assert funded.balance("m") == bal(cpo=10)
    assert funded.balance("src") == bal(dpo=1000)
    assert funded.transfer_ids() == ["fund", "t1"]


def test_resubmitted_pending_with_a_different_timeout_is_rejected(funded):
    assert funded.code(T("p1", "w", "m", 10, flags=PENDING, timeout_s=30)) == "ok"
    assert funded.code(T("p1", "w", "m", 10, flags=PENDING, timeout_s=60)) == "exists_with_different_timeout"
    assert funded.code(T("p1", "w", "m", 10, flags=PENDING, timeout_s=30)) == "exists"
    assert funded.balance("w") == bal(dp=10, cpo=1000)


def test_a_failed_transfer_is_not_stored_and_its_id_can_be_reused(funded):
    assert funded.code(T("t1", "w", "m", 5000)) == "exceeds_credits"
    assert funded.code(T("t1", "w", "m", 50)) == "ok"
    assert funded.balance("w") == bal(dpo=50, cpo=1000)
    assert funded.transfer_ids() == ["fund", "t1"]


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transfer", "code"),
    [
        (T("", "w", "m", 1), "id_must_not_be_empty"),
        (T("x" * 129, "w", "m", 1), "id_too_long"),
        (T("t", "w", "m", 1, flags=PENDING | POST), "flags_are_mutually_exclusive"),
        (T("t", "w", "m", 1, flags=POST | VOID), "flags_are_mutually_exclusive"),
        (T("t", "w", "m", 1, flags=16), "reserved_flag"),
        (T("t", "w", "m", 1, flags=PENDING, timeout_s=-1), "timeout_must_not_be_negative"),
        (T("t", "w", "m", 1, code="c" * 65), "code_too_long"),
        (T("t", "w", "m", 1, reference="r" * 129), "reference_too_long"),
        (T("t", "w", "m", 1, pending_id="fund"), "pending_id_must_be_empty"),
        (T("t", "w", "m", 1, timeout_s=10), "timeout_reserved_for_pending_transfer"),
        (T("t", "w", "m", 1, flags=PENDING, timeout_s=2**31), "overflows_timeout"),
        (T("t", "w", "m", 1, flags=PENDING, timeout_s=2**62), "overflows_timeout"),
        (T("t", None, "m", 1), "debit_account_id_must_not_be_empty"),
        (T("t", "w", None, 1), "credit_account_id_must_not_be_empty"),
        (T("t", "w", "w", 1), "accounts_must_be_different"),
        (T("t", "w", "m", 0), "amount_must_not_be_zero"),
        (T("t", "w", "m", None), "amount_must_not_be_zero"),
        (T("t", "w", "m", 0, flags=PENDING), "amount_must_not_be_zero"),
        (T("t", "w", "m", -5), "amount_must_be_positive"),
        (T("t", "nope", "m", 1), "debit_account_not_found"),
        (T("t", "w", "nope", 1), "credit_account_not_found"),
        (T("t", "w", "sol", 1), "asset_mismatch"),
        (T("t", "w", "m", 1, asset="SOL"), "asset_mismatch"),
        (T("t", "w", "m", 1001), "exceeds_credits"),
        (T("t", "w", "m", 1001, flags=PENDING), "exceeds_credits"),
        (T("t", "w", "m", MAX_AMOUNT + 1), "overflows_debits"),
        (T("t", "m", "cap", 1), "exceeds_debits"),
        (T("t", None, None, None, flags=POST), "pending_id_must_not_be_empty"),
        (T("t", None, None, None, flags=VOID), "pending_id_must_not_be_empty"),
        (T("t", None, None, None, flags=POST, pending_id="t"), "pending_id_must_be_different"),
        (T("t", None, None, None, flags=POST, pending_id="nope"), "pending_transfer_not_found"),
        (T("t", None, None, None, flags=VOID, pending_id="nope"), "pending_transfer_not_found"),
        (T("t", None, None, None, flags=POST, pending_id="fund"), "pending_transfer_not_pending"),
        (T("t", None, None, None, flags=VOID, pending_id="fund"), "pending_transfer_not_pending"),
    ],
)
def test_invalid_transfer_is_rejected_and_changes_nothing(funded, transfer, code):
    funded.account("sol", asset="SOL")
    funded.account("cap", flags=CMNED)
    before = {a: funded.balance(a) for a in ("src", "w", "m", "sol", "cap")}
    head = funded.head()
    assert funded.codes(transfer) == [code]
    assert {a: funded.balance(a) for a in before} == before
    assert funded.transfer_ids() == ["fund"]
    assert funded.head() == head


def test_cross_asset_accounts_never_move_money(ledger):
    ledger.account("usd")
    ledger.account("sol", asset="SOL")
    assert ledger.codes(T("t1", "usd", "sol", 1), T("t2", "sol", "usd", 1)) == ["asset_mismatch"] * 2
    assert ledger.balance("usd") == bal() and ledger.balance("sol") == bal()


# -- balance limits -----------------------------------------------------------------------


def test_debits_must_not_exceed_credits(funded):
    assert funded.code(T("t1", "w", "m", 1001)) == "exceeds_credits"
    assert funded.code(T("t2", "w", "m", 600)) == "ok"
    assert funded.code(T("t3", "w", "m", 401)) == "exceeds_credits"
    assert funded.code(T("t4", "w", "m", 400)) == "ok"  # exactly to zero is allowed
    assert funded.code(T("t5", "w", "m", 1)) == "exceeds_credits"
    assert funded.balance("w") == bal(dpo=1000, cpo=1000)
    assert funded.balance("m") == bal(cpo=1000)


def test_holds_count_against_the_limit(funded):
    assert funded.code(T("p1", "w", "m", 700, flags=PENDING)) == "ok"
    assert funded.balance("w") == bal(dp=700, cpo=1000)
    assert funded.code(T("t1", "w", "m", 301)) == "exceeds_credits"
    assert funded.code(T("p2", "w", "m", 301, flags=PENDING)) == "exceeds_credits"
    assert funded.code(T("t2", "w", "m", 300)) == "ok"
    assert funded.balance("w") == bal(dp=700, dpo=300, cpo=1000)
    # Voiding the hold frees the reserved funds again.
    assert funded.code(T("v1", pending_id="p1", flags=VOID)) == "ok"
    assert funded.balance("w") == bal(dpo=300, cpo=1000)
    assert funded.code(T("t3", "w", "m", 700)) == "ok"
    assert funded.balance("w") == bal(dpo=1000, cpo=1000)
    assert funded.balance("m") == bal(cpo=1000)


def test_incoming_pending_credit_is_not_spendable(funded):
    funded.account("w2", flags=DMNEC)
    assert funded.code(T("p1", "src", "w2", 100, flags=PENDING)) == "ok"
    assert funded.balance("w2") == bal(cp=100)
    assert funded.code(T("t1", "w2", "m", 1)) == "exceeds_credits"
    assert funded.code(T("post", pending_id="p1", flags=POST)) == "ok"
    assert funded.code(T("t2", "w2", "m", 100)) == "ok"
    assert funded.balance("w2") == bal(dpo=100, cpo=100)


def test_credits_must_not_exceed_debits(ledger):
    ledger.account("cap", flags=CMNED)  # e.g. a liability that may only be repaid
    ledger.account("x")
    assert ledger.code(T("t1", "x", "cap", 1)) == "exceeds_debits"
    assert ledger.code(T("t2", "cap", "x", 50)) == "ok"
    assert ledger.code(T("t3", "x", "cap", 51)) == "exceeds_debits"
    assert ledger.code(T("p1", "x", "cap", 30, flags=PENDING)) == "ok"
    assert ledger.code(T("t4", "x", "cap", 21)) == "exceeds_debits"
    assert ledger.code(T("t5", "x", "cap", 20)) == "ok"
    assert ledger.balance("cap") == bal(dpo=50, cp=30, cpo=20)
    assert ledger.balance("x") == bal(dp=30, dpo=20, cpo=50)


def test_account_with_both_limits_stays_at_zero(ledger):
    ledger.account("both", flags=DMNEC | CMNED)
    ledger.account("x")
    assert ledger.codes(T("t1", "x", "both", 1), T("t2", "both", "x", 1)) == ["exceeds_debits", "exceeds_credits"]
    assert ledger.balance("both") == bal()


# -- overflow -----------------------------------------------------------------------------


def test_overflows_are_rejected_never_wrapped(ledger):
    for a in ("x", "y", "z", "p", "q"):
        ledger.account(a)
    assert ledger.code(T("big", "x", "y", MAX_AMOUNT)) == "ok"
    assert ledger.balance("x") == bal(dpo=MAX_AMOUNT)
    assert ledger.balance("y") == bal(cpo=MAX_AMOUNT)
    assert ledger.code(T("t1", "x", "z", 1)) == "overflows_debits"
    assert ledger.code(T("t2", "z", "y", 1)) == "overflows_credits"
    assert ledger.code(T("t3", "x", "z", 1, flags=PENDING)) == "overflows_debits"
    assert ledger.code(T("t4", "z", "y", 1, flags=PENDING)) == "overflows_credits"
    # Pending + posted together must fit as well.
    assert ledger.code(T("hold", "p", "q", MAX_AMOUNT - 10, flags=PENDING)) == "ok"
    assert ledger.code(T("t5", "p", "z", 11)) == "overflows_debits"
    assert ledger.code(T("t6", "z", "q", 11)) == "overflows_credits"
    assert ledger.code(T("t7", "p", "z", 10)) == "ok"
    assert ledger.code(T("t8", "z", "q", 10)) == "ok"
    assert ledger.code(T("post", pending_id="hold", flags=POST)) == "ok"
    assert ledger.balance("x") == bal(dpo=MAX_AMOUNT)
    assert ledger.balance("y") == bal(cpo=MAX_AMOUNT)
    assert ledger.balance("z") == bal(dpo=10, cpo=10)
    assert ledger.balance("p") == bal(dpo=MAX_AMOUNT)
    assert ledger.balance("q") == bal(cpo=MAX_AMOUNT)


# -- two-phase transfers ------------------------------------------------------------------


def test_pending_then_post_in_full(funded):
    assert funded.code(T("p1", "w", "m", 300, flags=PENDING)) == "ok"
    assert funded.balance("w") == bal(dp=300, cpo=1000)
    assert funded.balance("m") == bal(cp=300)
    assert funded.hold("p1")["state"] == "pending"
    [res] = funded.post(T("c1", pending_id="p1", flags=POST))
    assert res.result == "ok"
    t = res.transfer
    assert (t.debit_account_id, t.credit_account_id, t.amount, t.asset, t.pending_id) == ("w", "m", 300, "USD", "p1")
    assert funded.balance("w") == bal(dpo=300, cpo=1000)
    assert funded.balance("m") == bal(cpo=300)
    assert funded.hold("p1") | {"expires_at": None} == {
        "state": "posted", "amount": 300, "posted_amount": 300, "resolved_by": "c1", "expires_at": None}


def test_partial_post_releases_the_rest(funded):
    assert funded.code(T("p1", "w", "m", 300, flags=PENDING)) == "ok"
    [res] = funded.post(T("c1", "w", "m", 120, flags=POST, pending_id="p1", asset="USD"))
    assert res.result == "ok" and res.transfer.amount == 120
    assert funded.balance("w") == bal(dpo=120, cpo=1000)
    assert funded.balance("m") == bal(cpo=120)
    assert funded.hold("p1")["state"] == "posted" and funded.hold("p1")["posted_amount"] == 120
    # The released 180 is spendable again.
    assert funded.code(T("t1", "w", "m", 880)) == "ok"
    assert funded.balance("w") == bal(dpo=1000, cpo=1000)


def test_void_releases_everything(funded):
    assert funded.code(T("p1", "w", "m", 300, flags=PENDING)) == "ok"
    [res] = funded.post(T("v1", pending_id="p1", flags=VOID, amount=300))
    assert res.result == "ok" and res.transfer.amount == 300
    assert funded.balance("w") == bal(cpo=1000)
    assert funded.balance("m") == bal()
    assert funded.hold("p1")["state"] == "voided" and funded.hold("p1")["resolved_by"] == "v1"


def test_pending_resolution_errors(funded):
    funded.account("other")
    assert funded.codes(
        T("p1", "w", "m", 300, flags=PENDING),
        T("p2", "w", "m", 100, flags=PENDING),
    ) == ["ok", "ok"]
    assert funded.codes(
        T("c1", pending_id="p1", flags=POST, amount=301),
        T("c2", pending_id="p1", flags=POST, amount=0),
        T("c3", pending_id="p1", flags=POST, amount=-1),
        T("c4", pending_id="p1", flags=VOID, amount=299),
        T("c5", "other", None, pending_id="p1", flags=POST),
        T("c6", None, "other", pending_id="p1", flags=POST),
        T("c7", pending_id="p1", flags=POST, asset="SOL"),
        T("c8", pending_id="p1", flags=POST, timeout_s=5),
    ) == [
        "exceeds_pending_transfer_amount",
        "amount_must_not_be_zero",
        "amount_must_be_positive",
        "pending_transfer_has_different_amount",
        "pending_transfer_has_different_debit_account_id",
        "pending_transfer_has_different_credit_account_id",
        "asset_mismatch",
        "timeout_reserved_for_pending_transfer",
    ]
    assert funded.balance("w") == bal(dp=400, cpo=1000)
    assert funded.codes(T("c9", pending_id="p1", flags=POST, amount=300),
                        T("v9", pending_id="p2", flags=VOID)) == ["ok", "ok"]
    assert funded.codes(
        T("c10", pending_id="p1", flags=POST),
        T("c11", pending_id="p1", flags=VOID),
        T("c12", pending_id="p2", flags=POST),
        T("c13", pending_id="p2", flags=VOID),
    ) == [
        "pending_transfer_already_posted",
        "pending_transfer_already_posted",
        "pending_transfer_already_voided",
        "pending_transfer_already_voided",
    ]
    assert funded.balance("w") == bal(dpo=300, cpo=1000)
    assert funded.balance("m") == bal(cpo=300)
    assert funded.hold("p1")["resolved_by"] == "c9" and funded.hold("p2")["resolved_by"] == "v9"


def test_pending_created_and_resolved_in_one_batch(funded):
    assert funded.codes(
        T("p1", "w", "m", 300, flags=PENDING),
        T("c1", pending_id="p1", flags=POST, amount=200),
        T("c2", pending_id="p1", flags=VOID),
        T("p2", "w", "m", 50, flags=PENDING),
        T("v2", pending_id="p2", flags=VOID),
    ) == ["ok", "ok", "pending_transfer_already_posted", "ok", "ok"]
    assert funded.balance("w") == bal(dpo=200, cpo=1000)
    assert funded.balance("m") == bal(cpo=200)
    assert funded.hold("p1")["state"] == "posted" and funded.hold("p2")["state"] == "voided"


def _stamp(ledger: Ledger, transfer_id: str) -> int:
    return next(t["timestamp"] for t in ledger.transfers() if t["id"] == transfer_id)


def test_post_before_expiry_succeeds(funded):
    assert funded.code(T("p1", "w", "m", 300, flags=PENDING, timeout_s=10)) == "ok"
    expires_at = funded.hold("p1")["expires_at"]
    assert expires_at == _stamp(funded, "p1") + 10 * SECOND  # from the hold's own ledger time
    funded.clock.set(expires_at - 1)
    assert funded.code(T("c1", pending_id="p1", flags=POST)) == "ok"
    assert funded.balance("w") == bal(dpo=300, cpo=1000)


@pytest.mark.parametrize("late_ns", [0, 1, 3600 * SECOND])
def test_post_or_void_at_or_after_expiry_fails_even_before_the_sweeper(funded, late_ns):
    assert funded.code(T("p1", "w", "m", 300, flags=PENDING, timeout_s=10)) == "ok"
    funded.clock.set(funded.hold("p1")["expires_at"] + late_ns)
    assert funded.codes(T("c1", pending_id="p1", flags=POST),
                        T("v1", pending_id="p1", flags=VOID)) == ["pending_transfer_expired"] * 2
    # Still reserved until the sweeper releases it.
    assert funded.balance("w") == bal(dp=300, cpo=1000)
    assert funded.hold("p1")["state"] == "pending"
    with funded._session() as s:
        due = [h.transfer_id for h in ledger_service.expired_holds(s, funded.clock.now_ns())
               if h.tenant_id == funded.tenant]
    assert due == ["p1"]
    # The sweeper's system void, exactly as the worker submits it.
    sweep = T("expire:p1", pending_id="p1", flags=VOID, code="expired")
    assert funded.code(sweep, system=True) == "ok"
    assert funded.hold("p1")["state"] == "expired"
    assert funded.balance("w") == bal(cpo=1000)
    assert funded.balance("m") == bal()
    assert funded.codes(T("c2", pending_id="p1", flags=POST),
                        T("v2", pending_id="p1", flags=VOID)) == ["pending_transfer_expired"] * 2
    assert funded.code(sweep, system=True) == "exists"
    assert funded.balance("w") == bal(cpo=1000)


def test_a_post_whose_own_timestamp_reaches_the_expiry_is_refused(funded):
    """Expiry is judged at the transfer's own ledger timestamp: the batch's accepted
    transfers are stamped now, now + 1 ns, …, so the second one here lands on the expiry."""
    assert funded.code(T("p1", "w", "m", 300, flags=PENDING, timeout_s=10)) == "ok"
    expires_at = funded.hold("p1")["expires_at"]
    funded.clock.set(expires_at - 1)
    assert funded.codes(T("x1", "src", "m", 1), T("c1", pending_id="p1", flags=POST)) == [
        "ok", "pending_transfer_expired"]
    assert funded.hold("p1")["state"] == "pending"


def test_a_post_is_judged_at_the_ledgers_time_when_another_writer_committed_later(funded):
    """A batch whose clock reading is behind the head (another process committed later
    times while it waited for the head) takes the head's time: a post it would have
    judged early is late by the ledger's clock, and is refused."""
    assert funded.code(T("p1", "w", "m", 300, flags=PENDING, timeout_s=10)) == "ok"
    expires_at = funded.hold("p1")["expires_at"]
    stale = funded.clock.now_ns()
    funded.clock.set(expires_at + SECOND)
    assert funded.code(T("x1", "src", "m", 1)) == "ok"  # another writer, later
    funded.clock.set(stale)  # this batch read the clock before that writer committed
    assert funded.code(T("c1", pending_id="p1", flags=POST)) == "pending_transfer_expired"
    assert [t["timestamp"] for t in funded.transfers()] == sorted(t["timestamp"] for t in funded.transfers())


def test_a_holds_times_are_its_transfers_ledger_times(funded):
    assert funded.code(T("p1", "w", "m", 300, flags=PENDING, timeout_s=10)) == "ok"
    funded.clock.advance(3)
    assert funded.codes(T("x1", "src", "m", 1), T("c1", pending_id="p1", flags=POST)) == ["ok", "ok"]
    stamps = {t["id"]: t["timestamp"] for t in funded.transfers()}
    with funded._session() as s:
        h = s.get(Hold, (funded.tenant, "p1"))
        assert (h.created_at, h.expires_at, h.resolved_at) == (stamps["p1"], stamps["p1"] + 10 * SECOND,
                                                                stamps["c1"])


def test_a_timeout_too_large_to_store_fails_only_its_transfer(funded):
    assert funded.codes(
        T("p1", "w", "m", 1, flags=PENDING, timeout_s=2**40),
        T("p2", "w", "m", 2, flags=PENDING, timeout_s=2**31 - 1),  # the largest that fits
        T("t1", "w", "m", 3),
    ) == ["overflows_timeout", "ok", "ok"]
    assert funded.hold("p2")["expires_at"] == _stamp(funded, "p2") + (2**31 - 1) * SECOND
    assert funded.balance("w") == bal(dp=2, dpo=3, cpo=1000)


def test_pending_without_timeout_never_expires(funded):
    assert funded.code(T("p1", "w", "m", 300, flags=PENDING)) == "ok"
    assert funded.hold("p1")["expires_at"] is None
    funded.clock.advance(10 * 365 * 86400)
    assert funded.code(T("c1", pending_id="p1", flags=POST)) == "ok"


def test_a_system_void_that_is_not_an_expiry_is_a_void(funded):
    assert funded.code(T("p1", "w", "m", 300, flags=PENDING, timeout_s=10)) == "ok"
    assert funded.code(T("v1", pending_id="p1", flags=VOID, code="cancelled"), system=True) == "ok"
    assert funded.hold("p1")["state"] == "voided"
    assert funded.balance("w") == bal(cpo=1000)


# -- linked chains ------------------------------------------------------------------------


def test_linked_chain_succeeds_as_a_whole(funded):
    funded.account("fee")
    assert funded.codes(
        T("a", "w", "m", 90, flags=LINKED),
        T("b", "w", "fee", 10),
    ) == ["ok", "ok"]
    assert funded.balance("w") == bal(dpo=100, cpo=1000)
    assert funded.balance("m") == bal(cpo=90)
    assert funded.balance("fee") == bal(cpo=10)


def test_linked_chain_is_all_or_nothing(funded):
    funded.account("fee")
    assert funded.codes(
        T("before", "w", "m", 1),
        T("a", "w", "m", 500, flags=LINKED),
        T("b", "w", "fee", 400, flags=LINKED),
        T("c", "w", "fee", 200, flags=LINKED),  # 500 + 400 + 200 > 999 left: the chain fails here
        T("d", "w", "m", 1),
        T("after", "w", "m", 2),
    ) == ["ok", "linked_event_failed", "linked_event_failed", "exceeds_credits", "linked_event_failed", "ok"]
    assert funded.balance("w") == bal(dpo=3, cpo=1000)
    assert funded.balance("m") == bal(cpo=3)
    assert funded.balance("fee") == bal()
    assert funded.transfer_ids() == ["fund", "before", "after"]
    # The failed members' ids were never stored, so they can be used again.
    assert funded.code(T("a", "w", "m", 5)) == "ok"


def test_failed_chain_rolls_back_holds_it_created_and_resolved(funded):
    assert funded.code(T("old", "w", "m", 100, flags=PENDING)) == "ok"
    assert funded.codes(
        T("p1", "w", "m", 200, flags=PENDING | LINKED),
        T("c1", pending_id="p1", flags=POST | LINKED, amount=50),
        T("v-old", pending_id="old", flags=VOID | LINKED),
        T("bad", "w", "w", 1),
    ) == ["linked_event_failed"] * 3 + ["accounts_must_be_different"]
    assert funded.hold("p1") is None
    assert funded.hold("old")["state"] == "pending"
    assert funded.balance("w") == bal(dp=100, cpo=1000)
    assert funded.balance("m") == bal(cp=100)
    assert funded.codes(T("c2", pending_id="p1", flags=POST), T("c3", pending_id="old", flags=POST)) == [
        "pending_transfer_not_found", "ok"]
    assert funded.balance("w") == bal(dpo=100, cpo=1000)


def test_chain_fails_when_its_first_member_fails(funded):
    assert funded.codes(
        T("a", "w", "nope", 1, flags=LINKED),
        T("b", "w", "m", 1),
    ) == ["credit_account_not_found", "linked_event_failed"]
    assert funded.balance("w") == bal(cpo=1000)


def test_open_chain_at_the_end_of_a_batch_fails(funded):
    assert funded.codes(
        T("x", "w", "m", 1),
        T("a", "w", "m", 10, flags=LINKED),
        T("b", "w", "m", 20, flags=LINKED),
    ) == ["ok", "linked_event_failed", "linked_event_chain_open"]
    assert funded.codes(T("c", "w", "m", 5, flags=LINKED)) == ["linked_event_chain_open"]
    assert funded.balance("w") == bal(dpo=1, cpo=1000)
    assert funded.balance("m") == bal(cpo=1)
    assert funded.transfer_ids() == ["fund", "x"]


def test_chain_of_resubmissions_reports_exists(funded):
    batch = [T("a", "w", "m", 10, flags=LINKED), T("b", "w", "m", 20)]
    assert funded.codes(*batch) == ["ok", "ok"]
    assert funded.codes(*batch) == ["exists", "exists"]
    # A resubmitted chain with one changed member fails as a whole.
    assert funded.codes(T("a", "w", "m", 10, flags=LINKED), T("b", "w", "m", 21)) == [
        "linked_event_failed", "exists_with_different_amount"]
    assert funded.balance("w") == bal(dpo=30, cpo=1000)


def test_one_bad_transfer_does_not_fail_its_unlinked_neighbours(funded):
    assert funded.codes(
        T("a", "w", "m", 10),
        T("b", "w", "nope", 10),
        T("c", "w", "m", 2000),
        T("d", "w", "m", 20),
        T("e", "w", "m", 0),
        T("f", pending_id="nope", flags=POST),
        T("g", "w", "m", 30),
    ) == ["ok", "credit_account_not_found", "exceeds_credits", "ok", "amount_must_not_be_zero",
          "pending_transfer_not_found", "ok"]
    assert funded.balance("w") == bal(dpo=60, cpo=1000)
    assert funded.balance("m") == bal(cpo=60)


# -- duplicates inside one batch ----------------------------------------------------------


def test_duplicate_ids_inside_one_batch(funded):
    res = funded.post(
        T("a", "w", "m", 10),
        T("a", "w", "m", 10),
        T("a", "w", "m", 11),
        T("b", "w", "nope", 1),
        T("b", "w", "m", 5),
        T("b", "w", "m", 5),
    )
    assert [r.result for r in res] == ["ok", "exists", "exists_with_different_amount",
                                       "credit_account_not_found", "ok", "exists"]
    assert res[1].transfer == res[0].transfer and res[1].transfer.seq > 0
    assert res[5].transfer == res[4].transfer
    assert funded.balance("w") == bal(dpo=15, cpo=1000)
    assert funded.transfer_ids() == ["fund", "a", "b"]


def test_duplicate_of_a_rolled_back_chain_member_is_applied_fresh(funded):
    assert funded.codes(
        T("a", "w", "m", 10, flags=LINKED),
        T("bad", "w", "nope", 1),
        T("a", "w", "m", 10),
    ) == ["linked_event_failed", "credit_account_not_found", "ok"]
    assert funded.balance("w") == bal(dpo=10, cpo=1000)


# -- ordering and tamper evidence ---------------------------------------------------------


def test_seq_is_gap_free_and_timestamps_strictly_increase(funded):
    clock = funded.clock
    funded.post(T("a", "w", "m", 1), T("bad", "w", "w", 1), T("b", "w", "m", 1))
    funded.post(T("c", "w", "m", 1))  # the clock has not moved
    clock.advance(ns=-5 * SECOND)  # nor does a clock stepping back reorder the ledger
    funded.post(T("d", "w", "m", 1), T("a", "w", "m", 1))
    clock.advance(60)
    funded.post(T("e", "w", "m", 1))
    rows = funded.transfers()
    assert [r["id"] for r in rows] == ["fund", "a", "b", "c", "d", "e"]
    assert [r["seq"] for r in rows] == list(range(1, 7))
    stamps = [r["timestamp"] for r in rows]
    assert all(x < y for x, y in itertools.pairwise(stamps))
    assert stamps[-1] == clock.now_ns()
    seq, last_hash, last_ts = funded.head()
    assert (seq, last_hash, last_ts) == (6, rows[-1]["hash"], stamps[-1])


def test_hash_chain_recomputes(funded):
    funded.post(T("p", "w", "m", 30, flags=PENDING, timeout_s=5, metadata={"z": [1, 2], "a": "é"}),
                T("q", "w", "m", 7, reference="ref", code="code"))
    funded.post(T("c", pending_id="p", flags=POST, amount=10))
    rows = funded.transfers()
    prev = GENESIS_HASH
    for row in rows:
        assert row["hash"] == chain_hash(prev, row), row["id"]
        prev = row["hash"]
    assert funded.head()[1] == prev
    # Any change to a stored field breaks the chain.
    tampered = dict(rows[1], amount=rows[1]["amount"] + 1)
    assert chain_hash(rows[0]["hash"], tampered) != rows[1]["hash"]


# -- tenants ------------------------------------------------------------------------------


def test_tenants_never_see_each_others_accounts_or_transfers(funded):
    other = funded.for_tenant(funded.tenant + "-b")
    other.account("mine")
    other.account("m")  # same id as the first tenant's merchant: a different account
    assert other.codes(
        T("x1", "w", "mine", 1),
        T("x2", "mine", "w", 1),
        T("x3", pending_id="fund", flags=POST),
    ) == ["debit_account_not_found", "credit_account_not_found", "pending_transfer_not_found"]
    # The first tenant's transfer ids mean nothing to the second tenant.
    assert other.code(T("fund", "mine", "m", 3)) == "ok"
    assert other.balance("m") == bal(cpo=3)
    assert funded.balance("m") == bal()
    assert funded.balance("w") == bal(cpo=1000)
    assert [t["seq"] for t in other.transfers()] == [1]
    assert funded.code(T("fund", "src", "w", 1000)) == "exists"
    assert funded.code(T("p1", "w", "m", 5, flags=PENDING)) == "ok"
    assert other.code(T("c1", pending_id="p1", flags=POST)) == "pending_transfer_not_found"
    assert funded.balance("w") == bal(dp=5, cpo=1000)


# -- the in-transaction path ---------------------------------------------------------------


def test_post_is_undone_with_the_callers_transaction(db, tenant_id, clock):
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        make_account(s, tenant_id, clock, id="a")
        make_account(s, tenant_id, clock, id="b")
    with pytest.raises(RuntimeError), db.session() as s:
        assert ledger_service.post(s, tenant_id, [T("t1", "a", "b", 5)], clock)[0].result == "ok"
        raise RuntimeError("the domain operation failed after posting")
    with db.session() as s:
        assert ledger_service.post(s, tenant_id, [T("t2", "a", "b", 7)], clock)[0].result == "ok"
    with db.session(write=False) as s:
        assert ledger_service.get_account(s, tenant_id, "a").debits_posted == 7
        assert [t.id for t in ledger_service.list_transfers(s, tenant_id).items] == ["t2"]
        assert ledger_service.list_transfers(s, tenant_id).items[0].seq == 1


def test_post_refreshes_accounts_loaded_in_the_session(session, tenant_id, clock):
    make_tenant(session, tenant_id, clock)
    make_account(session, tenant_id, clock, id="a")
    make_account(session, tenant_id, clock, id="b")
    # A domain service holds the wallet it loaded, posts, then reads the balance.
    wallet = ledger_service.get_account(session, tenant_id, "a")
    assert wallet.debits_posted == 0
    assert ledger_service.post(session, tenant_id, [T("t1", "a", "b", 5)], clock)[0].result == "ok"
    assert ledger_service.get_account(session, tenant_id, "a").debits_posted == 5
    assert wallet.debits_posted == 5
