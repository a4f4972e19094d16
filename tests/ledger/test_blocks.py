"""Sealing transfers into signed blocks, and Merkle inclusion proofs."""

from __future__ import annotations

import threading

import pytest

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.ledger import chain
from meterline.ledger.blocks import (
    BlockNotFound,
    TransferNotSealed,
    block_header,
    block_service,
    verify_proof_offline,
)
from meterline.ledger.models import Block, Transfer
from meterline.ledger.service import TransferNotFound, ledger_service
from meterline.ledger.signing import Signer, verify_signature
from meterline.ledger.types import TransferIn
from meterline.ledger.verify import verify_ledger
from tests.factories import make_account, make_tenant


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


def _setup(db: Database, tenant_id: str, clock: FrozenClock) -> None:
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        make_account(s, tenant_id, clock, id="treasury", kind="treasury")
        make_account(s, tenant_id, clock, id="wallet")


def _post(db: Database, tenant_id: str, clock: FrozenClock, n: int, start: int = 0) -> None:
    with db.session() as s:
        results = ledger_service.post(
            s, tenant_id,
            [TransferIn(id=f"t{start + i}", debit_account_id="treasury", credit_account_id="wallet",
                        amount=100 + i) for i in range(n)],
            clock,
        )
    assert all(r.result == "ok" for r in results), results


def _seal(db: Database, tenant_id: str, signer: Signer, clock: FrozenClock, max_transfers: int) -> Block | None:
    with db.write_connection() as conn:
        return block_service.seal(conn, tenant_id, signer, clock.now_ns(), max_transfers)


def _hashes(db: Database, tenant_id: str) -> list[str]:
    with db.session(write=False) as s:
        return list(s.scalars(
            Transfer.__table__.select().with_only_columns(Transfer.hash)
            .where(Transfer.tenant_id == tenant_id).order_by(Transfer.seq)
        ))


def test_nothing_to_seal_returns_none(db, tenant_id, clock, signer):
    _setup(db, tenant_id, clock)
    assert _seal(db, tenant_id, signer, clock, 10) is None
    _post(db, tenant_id, clock, 2)
    assert _seal(db, tenant_id, signer, clock, 10) is not None
    assert _seal(db, tenant_id, signer, clock, 10) is None


def test_blocks_are_chained_signed_and_cover_runs_in_order(db, tenant_id, clock, signer):
    _setup(db, tenant_id, clock)
    _post(db, tenant_id, clock, 5)
    clock.advance(1)
    b1 = _seal(db, tenant_id, signer, clock, 3)
    b2 = _seal(db, tenant_id, signer, clock, 3)
    assert b1 is not None and b2 is not None
    hashes = _hashes(db, tenant_id)

    assert (b1.height, b1.first_seq, b1.last_seq, b1.transfer_count) == (1, 1, 3, 3)
    assert (b2.height, b2.first_seq, b2.last_seq, b2.transfer_count) == (2, 4, 5, 2)
    assert b1.prev_block_hash == chain.GENESIS_HASH
    assert b2.prev_block_hash == b1.block_hash
    assert b1.merkle_root == chain.merkle_root(hashes[:3])
    assert b2.merkle_root == chain.merkle_root(hashes[3:])
    assert b1.last_transfer_hash == hashes[2] and b2.last_transfer_hash == hashes[4]
    for b in (b1, b2):
        assert b.block_hash == chain.block_hash(block_header(b))
        assert b.public_key == signer.public_key_hex
        assert verify_signature(b.public_key, bytes.fromhex(b.block_hash), b.signature)
    assert b2.timestamp > b1.timestamp

    with db.session(write=False) as s:
        assert block_service.latest(s, tenant_id).height == 2
        stored = block_service.get(s, tenant_id, 1)
        assert stored.block_hash == b1.block_hash and stored.signature == b1.signature
        assert [b.height for b in block_service.list_blocks(s, tenant_id)] == [2, 1]
    assert verify_ledger(db, tenant_id).ok


def test_seal_in_a_session(db, tenant_id, clock, signer):
    _setup(db, tenant_id, clock)
    _post(db, tenant_id, clock, 3)
    with db.session() as s:
        block = block_service.seal(s, tenant_id, signer, clock.now_ns(), 100)
        assert block is not None and block.transfer_count == 3
    with db.session(write=False) as s:
        assert block_service.latest(s, tenant_id).block_hash == block.block_hash


def test_block_not_found(db, tenant_id, clock):
    _setup(db, tenant_id, clock)
    with db.session(write=False) as s:
        with pytest.raises(BlockNotFound) as exc:
            block_service.latest(s, tenant_id)
        assert exc.value.status == 404 and exc.value.code == "block_not_found"
        with pytest.raises(BlockNotFound):
            block_service.get(s, tenant_id, 1)


def test_proofs_verify_offline_for_every_transfer(db, tenant_id, clock, signer):
    _setup(db, tenant_id, clock)
    _post(db, tenant_id, clock, 7)
    _seal(db, tenant_id, signer, clock, 5)
    _seal(db, tenant_id, signer, clock, 5)
    with db.session(write=False) as s:
        for i in range(7):
            p = block_service.proof(s, tenant_id, f"t{i}")
            block = p["block"]
            assert p["transfer_id"] == f"t{i}"
            assert p["block_height"] == (1 if i < 5 else 2)
            assert p["leaf_index"] == (i if i < 5 else i - 5)
            assert p["merkle_root"] == block.merkle_root
            args = (p["transfer_hash"], p["proof"], p["merkle_root"], block.block_hash, block.signature,
                    block.public_key)
            assert verify_proof_offline(*args)
            assert verify_proof_offline(*args, header=block_header(block))
            assert block_service.verify_proof_offline(*args)


def test_offline_verification_rejects_forgeries(db, tenant_id, clock, signer):
    _setup(db, tenant_id, clock)
    _post(db, tenant_id, clock, 4)
    _seal(db, tenant_id, signer, clock, 10)
    with db.session(write=False) as s:
        p = block_service.proof(s, tenant_id, "t1")
        other = block_service.proof(s, tenant_id, "t2")
    b = p["block"]
    good = [p["transfer_hash"], p["proof"], p["merkle_root"], b.block_hash, b.signature, b.public_key]
    assert verify_proof_offline(*good)

    wrong_leaf = list(good)
    wrong_leaf[0] = other["transfer_hash"]
    assert not verify_proof_offline(*wrong_leaf)

    bent = list(good)
    bent[1] = [dict(step, hash="00" * 32) for step in p["proof"]]
    assert not verify_proof_offline(*bent)

    impostor = Signer.generate()
    forged = list(good)
    forged[4] = impostor.sign(bytes.fromhex(b.block_hash))
    assert not verify_proof_offline(*forged)
    forged[5] = impostor.public_key_hex  # self-consistent, but not the platform's key
    assert verify_proof_offline(*forged)  # the caller must compare the key it trusts

    # A made-up root with a self-consistent proof, paired with a genuinely signed block:
    # only the header check catches that the block does not commit to that root.
    fake_leaves = [p["transfer_hash"], "11" * 32]
    fake_root = chain.merkle_root(fake_leaves)
    fake = [p["transfer_hash"], chain.merkle_proof(fake_leaves, 0), fake_root, b.block_hash, b.signature,
            b.public_key]
    assert verify_proof_offline(*fake)
    assert not verify_proof_offline(*fake, header=block_header(b))

    garbage = list(good)
    garbage[4] = "not-hex"
    assert not verify_proof_offline(*garbage)


def test_proof_errors(db, tenant_id, clock, signer):
    _setup(db, tenant_id, clock)
    _post(db, tenant_id, clock, 2)
    with db.session(write=False) as s:
        with pytest.raises(TransferNotSealed) as exc:
            block_service.proof(s, tenant_id, "t0")
        assert exc.value.status == 409 and exc.value.code == "transfer_not_sealed"
        with pytest.raises(TransferNotFound):
            block_service.proof(s, tenant_id, "nope")
    _seal(db, tenant_id, signer, clock, 10)
    other = tenant_id + "-x"
    _setup(db, other, clock)
    with db.session(write=False) as s:
        block_service.proof(s, tenant_id, "t0")
        with pytest.raises(TransferNotFound):  # another tenant's transfer does not exist for you
            block_service.proof(s, other, "t0")
        with pytest.raises(BlockNotFound):
            block_service.get(s, other, 1)


def test_seal_all_seals_only_tenants_with_unsealed_transfers(db, tenant_id, clock, signer):
    quiet = tenant_id + "-q"
    _setup(db, tenant_id, clock)
    _setup(db, quiet, clock)
    _post(db, tenant_id, clock, 5)
    assert tenant_id in block_service.tenants_with_unsealed(db)
    assert block_service.tenants_with_unsealed(db, tenant_id=quiet) == []
    assert block_service.seal_all(db, signer, clock.now_ns(), 2, tenant_id=tenant_id) == 3
    assert block_service.tenants_with_unsealed(db, tenant_id=tenant_id) == []
    _post(db, tenant_id, clock, 1, start=100)
    assert block_service.seal_all(db, signer, clock.now_ns(), 2, tenant_id=tenant_id) == 1
    with db.session(write=False) as s:
        latest = block_service.latest(s, tenant_id)
        assert (latest.height, latest.first_seq, latest.last_seq) == (4, 6, 6)
        with pytest.raises(BlockNotFound):
            block_service.latest(s, quiet)


def test_concurrent_sealers_never_overlap(db, tenant_id, clock, signer):
    _setup(db, tenant_id, clock)
    _post(db, tenant_id, clock, 30)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def sealer() -> None:
        try:
            barrier.wait()
            while _seal(db, tenant_id, signer, clock, 3) is not None:
                pass
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=sealer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with db.session(write=False) as s:
        blocks = sorted(block_service.list_blocks(s, tenant_id), key=lambda b: b.height)
    assert [b.height for b in blocks] == list(range(1, 11))
    assert [(b.first_seq, b.last_seq) for b in blocks] == [(i * 3 + 1, i * 3 + 3) for i in range(10)]
    report = verify_ledger(db, tenant_id)
    assert report.ok, report.problems


def test_offline_check_accepts_the_api_block_json(db, tenant_id, clock, signer):
    """A receipt built from the HTTP shape (RFC 3339 `timestamp` plus `timestamp_ns`) verifies."""
    _setup(db, tenant_id, clock)
    _post(db, tenant_id, clock, 3)
    _seal(db, tenant_id, signer, clock, 10)
    with db.session(write=False) as s:
        p = block_service.proof(s, tenant_id, "t1")
    b = p["block"]
    as_json = {**block_header(b), "timestamp": "2023-11-14T22:13:20.000000Z", "timestamp_ns": b.timestamp,
               "block_hash": b.block_hash, "signature": b.signature, "public_key": b.public_key}
    assert verify_proof_offline(p["transfer_hash"], p["proof"], p["merkle_root"], as_json["block_hash"],
                                as_json["signature"], as_json["public_key"], header=as_json)
    as_json["height"] = 2
    assert not verify_proof_offline(p["transfer_hash"], p["proof"], p["merkle_root"], as_json["block_hash"],
                                    as_json["signature"], as_json["public_key"], header=as_json)
