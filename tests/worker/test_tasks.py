"""The ledger jobs: hold expiry and block sealing, driven by a FrozenClock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meterline.clock import FrozenClock
from meterline.config import Settings
from meterline.db.engine import Database
from meterline.ledger.batcher import LedgerBatcher
from meterline.ledger.blocks import block_header, block_service, verify_proof_offline
from meterline.ledger.models import Account, Hold
from meterline.ledger.service import ledger_service
from meterline.ledger.signing import Signer
from meterline.ledger.types import TransferFlags, TransferIn
from meterline.ledger.verify import verify_ledger
from meterline.worker.runner import Worker
from meterline.worker.tasks import (
    EXPIRE_HOLDS,
    SEAL_BLOCKS,
    JobContext,
    expire_holds,
    expiry_transfer_id,
    make_dispatcher,
    seal_blocks,
)
from tests.factories import make_account, make_tenant, make_wallet

PENDING, POST, VOID = TransferFlags.PENDING, TransferFlags.POST_PENDING, TransferFlags.VOID_PENDING


@pytest.fixture
def batcher(db: Database, clock: FrozenClock) -> Iterator[LedgerBatcher]:
    with LedgerBatcher(db, clock) as b:
        yield b


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def ctx(db: Database, clock: FrozenClock, batcher: LedgerBatcher, signer: Signer) -> JobContext:
    settings = Settings(database_url=db.url, block_max_transfers=4)
    return JobContext(db=db, clock=clock, batcher=batcher, settings=settings, signer=signer,
                      events=make_dispatcher(db, clock, settings))


@pytest.fixture
def funded(db: Database, tenant_id: str, clock: FrozenClock, batcher: LedgerBatcher) -> str:
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        make_account(s, tenant_id, clock, id="treasury", kind="treasury")
        make_account(s, tenant_id, clock, id="escrow", kind="escrow")
        make_wallet(s, tenant_id, clock, id="wallet")
    _ok(batcher, tenant_id, TransferIn(id="fund", debit_account_id="treasury", credit_account_id="wallet",
                                       amount=1000))
    return tenant_id


def _ok(batcher: LedgerBatcher, tenant_id: str, t: TransferIn) -> None:
    (res,) = batcher.post(tenant_id, [t])
    assert res.result == "ok", res.result


def _hold(db: Database, tenant_id: str, hold_id: str) -> Hold:
    with db.session(write=False) as s:
        row = s.get(Hold, (tenant_id, hold_id))
        assert row is not None
        return row


def _wallet(db: Database, tenant_id: str) -> Account:
    with db.session(write=False) as s:
        return ledger_service.get_account(s, tenant_id, "wallet")


def test_expired_hold_is_released(db, clock, batcher, ctx, funded):
    t = funded
    _ok(batcher, t, TransferIn(id="h1", debit_account_id="wallet", credit_account_id="escrow", amount=300,
                               flags=PENDING, timeout_s=10))
    _ok(batcher, t, TransferIn(id="h2", debit_account_id="wallet", credit_account_id="escrow", amount=100,
                               flags=PENDING, timeout_s=60))
    _ok(batcher, t, TransferIn(id="h3", debit_account_id="wallet", credit_account_id="escrow", amount=50,
                               flags=PENDING))  # no timeout: never expires
    assert _wallet(db, t).debits_pending == 450

    expires_at = _hold(db, t, "h1").expires_at  # its pending transfer's ledger time + 10 s
    clock.set(expires_at - 1)
    expire_holds(ctx)
    assert _hold(db, t, "h1").state == "pending"

    clock.set(expires_at)  # exactly at expires_at
    assert expire_holds(ctx) >= 1
    hold = _hold(db, t, "h1")
    assert hold.state == "expired" and hold.resolved_by == "expire:h1"
    assert _hold(db, t, "h2").state == "pending" and _hold(db, t, "h3").state == "pending"
    wallet = _wallet(db, t)
    assert wallet.debits_pending == 150 and wallet.debits_posted == 0 and wallet.credits_posted == 1000
    with db.session(write=False) as s:
        void = ledger_service.get_transfer(s, t, "expire:h1")
        assert void.code == "expired" and void.flags == VOID and void.amount == 300

    # Posting or voiding it afterwards fails as expired; a second sweep does nothing more.
    for flags in (POST, VOID):
        (res,) = batcher.post(t, [TransferIn(id=f"late-{flags}", pending_id="h1", flags=flags)])
        assert res.result == "pending_transfer_expired"
    expire_holds(ctx)
    assert _hold(db, t, "h1").resolved_by == "expire:h1"
    assert verify_ledger(db, t).ok


def test_post_after_timeout_fails_before_the_sweeper_runs(db, clock, batcher, ctx, funded):
    t = funded
    _ok(batcher, t, TransferIn(id="h", debit_account_id="wallet", credit_account_id="escrow", amount=10,
                               flags=PENDING, timeout_s=5))
    clock.advance(6)
    (res,) = batcher.post(t, [TransferIn(id="p", pending_id="h", flags=POST)])
    assert res.result == "pending_transfer_expired"
    assert _hold(db, t, "h").state == "pending"  # still reserved until the sweeper releases it
    expire_holds(ctx)
    assert _hold(db, t, "h").state == "expired"
    assert _wallet(db, t).debits_pending == 0


def test_a_hold_resolved_first_is_left_alone(db, clock, batcher, ctx, funded):
    t = funded
    _ok(batcher, t, TransferIn(id="h", debit_account_id="wallet", credit_account_id="escrow", amount=10,
                               flags=PENDING, timeout_s=5))
    _ok(batcher, t, TransferIn(id="p", pending_id="h", flags=POST, amount=4))
    clock.advance(10)
    expire_holds(ctx)
    hold = _hold(db, t, "h")
    assert hold.state == "posted" and hold.posted_amount == 4


def test_expiry_id_fits_for_long_pending_ids():
    assert expiry_transfer_id("abc") == "expire:abc"
    long_id = "x" * 128
    tid = expiry_transfer_id(long_id)
    assert len(tid) <= 128 and tid == expiry_transfer_id(long_id) and tid.startswith("expire#")
    # A hold named like the digest form gets the plain form: the two never meet.
    assert expiry_transfer_id(tid.removeprefix("expire#")) != tid


def test_holds_that_cannot_be_expired_never_hold_up_the_rest(db, clock, batcher, ctx, funded):
    """A hold whose expiry id is taken (clients may not take one now, but a row can say
    otherwise) is logged and passed: the sweeper pages on to every later hold instead of
    re-reading the same stuck page — a page of them once stopped every tenant's expiry."""
    t = funded
    for i in range(5):
        _ok(batcher, t, TransferIn(id=f"h{i}", debit_account_id="wallet", credit_account_id="escrow", amount=10,
                                   flags=PENDING, timeout_s=1 + i))
    for i in range(3):  # the oldest three are stuck
        _ok(batcher, t, TransferIn(id=expiry_transfer_id(f"h{i}"), debit_account_id="treasury",
                                   credit_account_id="escrow", amount=1))
    clock.advance(10)
    assert expire_holds(ctx, batch=2) >= 2
    assert [_hold(db, t, f"h{i}").state for i in range(5)] == ["pending"] * 3 + ["expired"] * 2


def test_expired_hold_with_a_maximal_id(db, clock, batcher, ctx, funded):
    t = funded
    hid = "h" * 128
    _ok(batcher, t, TransferIn(id=hid, debit_account_id="wallet", credit_account_id="escrow", amount=10,
                               flags=PENDING, timeout_s=1))
    clock.advance(2)
    expire_holds(ctx)
    assert _hold(db, t, hid).state == "expired"


def test_seal_blocks_produces_verifiable_blocks_and_proofs(db, clock, batcher, ctx, funded, signer):
    t = funded
    for i in range(9):
        _ok(batcher, t, TransferIn(id=f"s{i}", debit_account_id="wallet", credit_account_id="escrow",
                                   amount=i + 1))
    clock.advance(1)
    assert seal_blocks(ctx) >= 3  # 10 transfers, 4 per block (other tenants' may be sealed too)
    with db.session(write=False) as s:
        latest = block_service.latest(s, t)
        assert (latest.height, latest.last_seq) == (3, 10)
        for tid in ["fund", *(f"s{i}" for i in range(9))]:
            p = block_service.proof(s, t, tid)
            b = p["block"]
            assert verify_proof_offline(p["transfer_hash"], p["proof"], p["merkle_root"], b.block_hash,
                                        b.signature, signer.public_key_hex, header=block_header(b))
    report = verify_ledger(db, t, trusted_public_keys=[signer.public_key_hex])
    assert report.ok and report.blocks == 3


def test_worker_run_once_runs_the_ledger_jobs(db, clock, batcher, funded, signer):
    t = funded
    _ok(batcher, t, TransferIn(id="h", debit_account_id="wallet", credit_account_id="escrow", amount=10,
                               flags=PENDING, timeout_s=1))
    clock.advance(2)
    worker = Worker(db=db, clock=clock, batcher=batcher, settings=Settings(database_url=db.url),
                    signer=signer)
    done = worker.run_once(force=True)
    assert {EXPIRE_HOLDS, SEAL_BLOCKS} <= set(done)
    assert done[EXPIRE_HOLDS] >= 1 and done[SEAL_BLOCKS] >= 1
    assert _hold(db, t, "h").state == "expired"
    with db.session(write=False) as s:
        assert block_service.latest(s, t).last_seq == 3  # fund, hold, its expiry
    assert verify_ledger(db, t).ok
