"""`verify_ledger` on a healthy ledger, and on ledgers tampered with directly in SQL.

Tamper tests change rows inside a transaction that is rolled back afterwards,
verifying through that same connection, so the shared test database stays clean.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Connection, text

from meterline.clock import FrozenClock
from meterline.db.engine import WRITE, Database
from meterline.ledger import chain
from meterline.ledger.batcher import LedgerBatcher
from meterline.ledger.blocks import block_service
from meterline.ledger.service import ledger_service
from meterline.ledger.signing import Signer
from meterline.ledger.types import TransferFlags, TransferIn
from meterline.ledger.verify import Problem, VerifyReport, verify_ledger
from tests.factories import make_account, make_tenant, make_wallet

PENDING, POST, VOID = TransferFlags.PENDING, TransferFlags.POST_PENDING, TransferFlags.VOID_PENDING


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def ledger(db: Database, tenant_id: str, clock: FrozenClock, signer: Signer) -> str:
    """A tenant whose ledger has every kind of transfer, two assets and sealed blocks.

    seq: 1 fund 10000 · 2 spend 300 · 3 hold 1000 · 4 post 600 of it · 5 hold 200 · 6 void it
         7 hold 50 (timeout 10s) · 8 expire it · 9 hold 400 (still open) · 10 USDC 70
    """
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        make_account(s, tenant_id, clock, id="treasury", kind="treasury")
        make_account(s, tenant_id, clock, id="escrow", kind="escrow")
        make_account(s, tenant_id, clock, id="revenue", kind="platform_revenue")
        make_wallet(s, tenant_id, clock, id="wallet")
        make_account(s, tenant_id, clock, id="usdc_a", kind="treasury", asset="USDC")
        make_account(s, tenant_id, clock, id="usdc_b", kind="customer_wallet", asset="USDC")
    steps = [
        TransferIn(id="fund", debit_account_id="treasury", credit_account_id="wallet", amount=10_000),
        TransferIn(id="spend", debit_account_id="wallet", credit_account_id="revenue", amount=300,
                   metadata={"b": 1, "a": [1, 2], "note": "héllo"}, reference="ref-1", code="usage"),
        TransferIn(id="h1", debit_account_id="wallet", credit_account_id="escrow", amount=1000,
                   flags=PENDING),
        TransferIn(id="p1", pending_id="h1", amount=600, flags=POST),
        TransferIn(id="h2", debit_account_id="wallet", credit_account_id="escrow", amount=200,
                   flags=PENDING),
        TransferIn(id="v2", pending_id="h2", flags=VOID),
        TransferIn(id="h3", debit_account_id="wallet", credit_account_id="escrow", amount=50,
                   flags=PENDING, timeout_s=10),
    ]
    for t in steps:
        _post(db, tenant_id, clock, t)
    clock.advance(11)
    with LedgerBatcher(db, clock) as batcher:
        res = batcher.post(tenant_id, [TransferIn(id="expire:h3", pending_id="h3", flags=VOID,
                                                  code="expired")], system=True)
    assert res[0].result == "ok"
    _post(db, tenant_id, clock, TransferIn(id="h4", debit_account_id="wallet", credit_account_id="escrow",
                                           amount=400, flags=PENDING))
    _post(db, tenant_id, clock, TransferIn(id="usdc", debit_account_id="usdc_a", credit_account_id="usdc_b",
                                           amount=70, asset="USDC"))
    assert block_service.seal_all(db, signer, clock.now_ns(), 4, tenant_id=tenant_id) == 3
    return tenant_id


def _post(db: Database, tenant_id: str, clock: FrozenClock, t: TransferIn) -> None:
    clock.advance(ns=1000)
    with db.session() as s:
        (res,) = ledger_service.post(s, tenant_id, [t], clock)
    assert res.result == "ok", (t.id, res.result)


@contextmanager
def tampered(db: Database, *statements: str, **params: object) -> Iterator[Connection]:
    """Apply SQL tampering in a transaction that is always rolled back."""
    with db.engine.connect() as conn:
        if db.is_sqlite:
            conn = conn.execution_options(**WRITE)
        tx = conn.begin()
        try:
            for sql in statements:
                conn.execute(text(sql), params)
            yield conn
        finally:
            tx.rollback()


def _checks(report: VerifyReport) -> set[str]:
    return {p.check for p in report.problems}


def _find(report: VerifyReport, check: str, **where: object) -> Problem:
    for p in report.problems:
        if p.check == check and all(getattr(p, k) == v for k, v in where.items()):
            return p
    raise AssertionError(f"no {check} {where} in {[str(p) for p in report.problems]}")


# -- a healthy ledger ----------------------------------------------------------------------


def test_healthy_ledger_verifies(db, ledger, signer):
    report = verify_ledger(db, ledger, trusted_public_keys=[signer.public_key_hex])
    assert report.ok, [str(p) for p in report.problems]
    assert (report.tenants, report.accounts, report.transfers, report.holds, report.blocks) == (1, 6, 10, 4, 3)
    assert report.summary().startswith("ledger OK: 1 tenants, 6 accounts, 10 transfers")


def test_verify_through_a_session_and_a_fresh_tenant(db, ledger, tenant_id, clock):
    with db.session(write=False) as s:
        assert verify_ledger(s, ledger).ok
    empty = tenant_id + "-empty"
    with db.session() as s:
        make_tenant(s, empty, clock)
        make_account(s, empty, clock, id="a")
    report = verify_ledger(db, empty)
    assert report.ok and report.transfers == 0 and report.accounts == 1


def test_unsealed_tail_is_fine(db, ledger, clock):
    _post(db, ledger, clock, TransferIn(id="late", debit_account_id="treasury", credit_account_id="wallet",
                                        amount=5))
    assert verify_ledger(db, ledger).ok


def test_untrusted_signer_is_reported(db, ledger):
    report = verify_ledger(db, ledger, trusted_public_keys=[Signer.generate().public_key_hex])
    assert _checks(report) == {"block_untrusted_key"}
    assert len(report.problems) == 3


# -- tampering -------------------------------------------------------------------------------


def test_tampered_amount(db, ledger):
    with tampered(db, "UPDATE transfers SET amount = 301 WHERE tenant_id = :t AND id = 'spend'", t=ledger) as c:
        report = verify_ledger(c, ledger)
    assert not report.ok
    p = _find(report, "hash_mismatch", seq=2)
    assert "spend" in p.detail and p.expected != p.found
    # the two accounts' balances no longer match their transfers
    p = _find(report, "account_balance", account_id="wallet")
    assert (p.expected, p.found) == (300 + 600 + 1, 300 + 600)  # debits_posted: spend + post
    _find(report, "account_balance", account_id="revenue", expected=301, found=300)
    # the chain resumes from the stored hash: only seq 2 is reported, not 2..10
    assert [p.seq for p in report.problems if p.check == "hash_mismatch"] == [2]
    assert _checks(report) == {"hash_mismatch", "account_balance"}


def test_tampered_balance(db, ledger):
    with tampered(db, "UPDATE accounts SET credits_posted = credits_posted + 5 "
                      "WHERE tenant_id = :t AND id = 'revenue'", t=ledger) as c:
        report = verify_ledger(c, ledger)
    _find(report, "account_balance", account_id="revenue", expected=300, found=305)
    p = _find(report, "asset_posted_unbalanced")
    assert "USD" in p.detail and (p.expected, p.found) == (10_000 + 300 + 600 + 5, 10_000 + 300 + 600)
    assert _checks(report) == {"account_balance", "asset_posted_unbalanced"}


def test_tampered_pending_balance(db, ledger):
    with tampered(db, "UPDATE accounts SET debits_pending = 0 WHERE tenant_id = :t AND id = 'wallet'",
                  t=ledger) as c:
        report = verify_ledger(c, ledger)
    _find(report, "account_balance", account_id="wallet", expected=400, found=0)
    _find(report, "asset_pending_unbalanced", expected=400, found=0)


def test_tampered_hash(db, ledger):
    fake = "ab" * 32
    with tampered(db, "UPDATE transfers SET hash = :h WHERE tenant_id = :t AND seq = 5", t=ledger, h=fake) as c:
        report = verify_ledger(c, ledger)
    p = _find(report, "hash_mismatch", seq=5)
    assert p.found == fake
    # seq 6 was chained from the genuine hash, so it no longer follows the stored one
    _find(report, "hash_mismatch", seq=6)
    # and block 2 (seq 5..8) no longer has its Merkle root
    _find(report, "block_merkle_root")


def test_tampered_last_hash_breaks_head_and_block(db, ledger):
    with tampered(db, "UPDATE transfers SET hash = :h WHERE tenant_id = :t AND seq = 10",
                  t=ledger, h="cd" * 32) as c:
        report = verify_ledger(c, ledger)
    _find(report, "hash_mismatch", seq=10)
    _find(report, "head_mismatch")
    _find(report, "block_last_transfer", seq=10)


def test_tampered_block_signature(db, ledger):
    # A well-formed signature, but over different bytes.
    forged = Signer.generate().sign(b"something else")
    with tampered(db, "UPDATE ledger_blocks SET signature = :s WHERE tenant_id = :t AND height = 2",
                  t=ledger, s=forged) as c:
        report = verify_ledger(c, ledger)
    p = _find(report, "block_signature")
    assert "block 2" in p.detail
    assert _checks(report) == {"block_signature"}


def test_resigned_block_is_caught_by_trusted_key(db, ledger, signer):
    # An attacker rewrites block 1's root and re-signs with their own key: the header
    # and signature verify, but the root no longer matches the transfers and the key
    # is not the platform's.
    mallory = Signer.generate()
    with db.session(write=False) as s:
        b = block_service.get(s, ledger, 1)
        header = {c.name: getattr(b, c.name) for c in b.__table__.columns}
    header["merkle_root"] = "ee" * 32
    digest = chain.block_hash(header)
    with tampered(
        db,
        "UPDATE ledger_blocks SET merkle_root = :r, block_hash = :h, signature = :s, public_key = :k "
        "WHERE tenant_id = :t AND height = 1",
        t=ledger, r=header["merkle_root"], h=digest, s=mallory.sign(bytes.fromhex(digest)),
        k=mallory.public_key_hex,
    ) as c:
        report = verify_ledger(c, ledger, trusted_public_keys=[signer.public_key_hex])
    _find(report, "block_merkle_root", found="ee" * 32)
    _find(report, "block_untrusted_key", found=mallory.public_key_hex)
    _find(report, "block_prev_link")  # block 2 still points at the genuine block 1
    assert "block_signature" not in _checks(report)


def test_tampered_block_root_without_resigning(db, ledger):
    with tampered(db, "UPDATE ledger_blocks SET merkle_root = :r WHERE tenant_id = :t AND height = 3",
                  t=ledger, r="00" * 32) as c:
        report = verify_ledger(c, ledger)
    assert {"block_hash", "block_merkle_root"} <= _checks(report)


def test_deleted_transfer_leaves_a_gap(db, ledger):
    with tampered(db, "DELETE FROM transfers WHERE tenant_id = :t AND seq = 2", t=ledger) as c:
        report = verify_ledger(c, ledger)
    _find(report, "seq_gap", seq=3, expected=2, found=3)
    _find(report, "hash_mismatch", seq=3)
    _find(report, "block_transfers")
    _find(report, "account_balance", account_id="revenue", expected=0, found=300)


def test_tampered_timestamp(db, ledger):
    with tampered(db, "UPDATE transfers SET timestamp = 1 WHERE tenant_id = :t AND seq = 4", t=ledger) as c:
        report = verify_ledger(c, ledger)
    _find(report, "timestamp_order", seq=4, found=1)
    _find(report, "hash_mismatch", seq=4)


def test_tampered_hold_state(db, ledger):
    # Marking the open hold 'voided' behind the ledger's back.
    with tampered(db, "UPDATE holds SET state = 'voided' WHERE tenant_id = :t AND transfer_id = 'h4'",
                  t=ledger) as c:
        report = verify_ledger(c, ledger)
    _find(report, "account_balance", account_id="wallet", expected=0, found=400)
    _find(report, "hold_resolution")


def test_tampered_post_amount_vs_hold(db, ledger):
    with tampered(db, "UPDATE holds SET posted_amount = 500 WHERE tenant_id = :t AND transfer_id = 'h1'",
                  t=ledger) as c:
        report = verify_ledger(c, ledger)
    p = _find(report, "hold_resolution", seq=4)
    assert "h1" in p.detail


def test_a_hold_posted_at_or_after_its_expiry_is_reported(db, ledger):
    # h1 had no timeout; give it one that ended before p1 posted it (as a batch that judged
    # the expiry by a stale clock once did).
    with tampered(db, "UPDATE holds SET expires_at = (SELECT timestamp FROM transfers "
                      "WHERE tenant_id = :t AND id = 'p1') WHERE tenant_id = :t AND transfer_id = 'h1'",
                  t=ledger) as c:
        report = verify_ledger(c, ledger)
    assert _checks(report) == {"hold_resolved_after_expiry"}
    assert "h1" in _find(report, "hold_resolved_after_expiry", seq=4).detail


def test_missing_and_orphaned_holds(db, ledger):
    with tampered(
        db,
        "DELETE FROM holds WHERE tenant_id = :t AND transfer_id = 'h2'",
        "INSERT INTO holds (tenant_id, transfer_id, debit_account_id, credit_account_id, amount, asset, "
        "state, created_at) VALUES (:t, 'ghost', 'wallet', 'escrow', 1, 'USD', 'voided', 0)",
        t=ledger,
    ) as c:
        report = verify_ledger(c, ledger)
    _find(report, "hold_missing", seq=5)
    _find(report, "hold_orphaned")
    _find(report, "hold_resolution", seq=6)  # v2 resolves a hold that is gone


def test_tampered_head(db, ledger):
    with tampered(db, "UPDATE ledger_heads SET last_seq = 9 WHERE tenant_id = :t", t=ledger) as c:
        report = verify_ledger(c, ledger)
    p = _find(report, "head_mismatch")
    assert p.found[0] == 9 and p.expected[0] == 10


def test_transfer_account_in_wrong_asset(db, ledger):
    with tampered(db, "UPDATE transfers SET asset = 'USDC' WHERE tenant_id = :t AND id = 'fund'", t=ledger) as c:
        report = verify_ledger(c, ledger)
    _find(report, "transfer_asset_mismatch", account_id="treasury", expected="USD", found="USDC")


def test_other_tenants_are_not_reported(db, ledger, tenant_id, clock):
    other = tenant_id + "-o"
    with db.session() as s:
        make_tenant(s, other, clock)
        make_account(s, other, clock, id="x")
    with tampered(db, "UPDATE accounts SET credits_posted = 7 WHERE tenant_id = :t AND id = 'wallet'",
                  t=ledger) as c:
        assert verify_ledger(c, other).ok
        assert not verify_ledger(c, ledger).ok


def test_problem_lines_and_truncation(db, ledger):
    with tampered(db, "UPDATE transfers SET code = 'x' WHERE tenant_id = :t", t=ledger) as c:
        report = verify_ledger(c, ledger, max_problems=3)
    assert len(report.problems) == 3 and report.omitted > 0 and not report.ok
    _find(report, "hold_resolution", seq=8)  # the expiry no longer carries code 'expired'
    line = str(_find(report, "hash_mismatch", seq=1))
    assert line.startswith(f"[hash_mismatch] tenant={ledger} seq=1:") and "expected" in line
    assert report.summary().startswith(f"ledger FAILED: {report.problem_count} problems")
