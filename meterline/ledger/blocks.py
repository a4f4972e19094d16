"""Blocks: sealed, signed runs of a tenant's transfers, and Merkle inclusion proofs.

A block covers the transfers ``first_seq..last_seq`` that follow the previous
block. Its header (see `chain.block_hash`) binds the Merkle root of those
transfers' hashes, the previous block's hash and the hash of its last transfer;
the platform's Ed25519 key signs the 32 bytes of that header hash. A receipt
holder can therefore check a transfer offline: leaf → Merkle root (the proof) →
block header → signature by the platform's public key.

Sealing never takes the ledger head's lock (that would stall posting for the
tenant while a block is hashed); it only reads committed transfers, whose seq
and hash never change. Two sealers of one tenant are serialised by a
transaction-scoped advisory lock on PostgreSQL and by the single writer on
SQLite, and the ``(tenant_id, height)`` primary key refuses a duplicate height
even if that were bypassed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, text
from sqlalchemy.orm import Session

from meterline.db import advisory
from meterline.db.engine import Database
from meterline.db.scoping import scoped
from meterline.errors import Conflict, NotFound
from meterline.ledger import chain
from meterline.ledger.chain import GENESIS_HASH
from meterline.ledger.models import Block, Transfer
from meterline.ledger.service import LedgerError, ledger_service
from meterline.ledger.signing import Signer, verify_signature


class BlockNotFound(LedgerError, NotFound):
    code = "block_not_found"
    title = "No such block"


class TransferNotSealed(LedgerError, Conflict):
    code = "transfer_not_sealed"
    title = "The transfer is not in a sealed block yet"


def block_header(block: Block | Mapping[str, Any]) -> dict[str, Any]:
    """The fields `chain.block_hash` covers, from a Block row or a mapping.

    A mapping may be the API's block JSON, whose `timestamp` is RFC 3339 text and whose
    `timestamp_ns` is the integer the hash covers.
    """
    keys = ("tenant_id", "height", "first_seq", "last_seq", "transfer_count", "merkle_root",
            "prev_block_hash", "last_transfer_hash", "timestamp")
    if not isinstance(block, Mapping):
        return {k: getattr(block, k) for k in keys}
    header = {k: block.get(k) for k in keys}
    if "timestamp_ns" in block:
        header["timestamp"] = block["timestamp_ns"]
    return header


def _conn(conn_or_session: Connection | Session) -> Connection:
    return conn_or_session.connection() if isinstance(conn_or_session, Session) else conn_or_session


class BlockService:
    # -- writing ------------------------------------------------------------------
    def seal(
        self,
        conn_or_session: Connection | Session,
        tenant_id: str,
        signer: Signer,
        now_ns: int,
        max_transfers: int,
    ) -> Block | None:
        """Seal the next run of up to `max_transfers` unsealed transfers into a block.

        Returns the new block, or None when every transfer is already sealed. Runs in
        the caller's transaction (on SQLite it must be a write transaction) and only
        flushes; the caller commits.
        """
        if max_transfers < 1:
            raise ValueError("max_transfers must be at least 1")
        conn = _conn(conn_or_session)
        pg = conn.dialect.name == "postgresql"
        if pg:
            # Serialises sealers of this tenant until our transaction ends; posting is not
            # blocked. The next read (READ COMMITTED) sees any block the previous holder made.
            advisory.xact_lock(conn, advisory.SEAL, tenant_id)
        prev = conn.execute(
            select(Block.height, Block.last_seq, Block.block_hash, Block.timestamp)
            .where(Block.tenant_id == tenant_id)
            .order_by(Block.height.desc())
            .limit(1)
        ).first()
        height, after_seq, prev_hash, prev_ts = (
            (prev[0] + 1, prev[1], prev[2], prev[3]) if prev else (1, 0, GENESIS_HASH, 0)
        )
        rows = conn.execute(
            select(Transfer.seq, Transfer.hash, Transfer.timestamp)
            .where(Transfer.tenant_id == tenant_id, Transfer.seq > after_seq)
            .order_by(Transfer.seq)
            .limit(max_transfers)
        ).all()
        # Only a gap-free run is sealed: a block must cover exactly first_seq..last_seq.
        run: list[Any] = []
        for r in rows:
            if r[0] != after_seq + 1 + len(run):
                break
            run.append(r)
        if not run:
            return None
        fields: dict[str, Any] = {
            "tenant_id": tenant_id,
            "height": height,
            "first_seq": run[0][0],
            "last_seq": run[-1][0],
            "transfer_count": len(run),
            "merkle_root": chain.merkle_root([r[1] for r in run]),
            "prev_block_hash": prev_hash,
            "last_transfer_hash": run[-1][1],
            # Blocks are strictly ordered in time and never predate what they seal.
            "timestamp": max(now_ns, prev_ts + 1, run[-1][2]),
        }
        digest = chain.block_hash(fields)
        block = Block(
            **fields,
            block_hash=digest,
            signature=signer.sign(bytes.fromhex(digest)),
            public_key=signer.public_key_hex,
        )
        if isinstance(conn_or_session, Session):
            conn_or_session.add(block)
            conn_or_session.flush()
        else:
            conn.execute(insert(Block).values(**_row(block)))
        return block

    def seal_all(
        self,
        db: Database,
        signer: Signer,
        now_ns: int,
        max_transfers: int,
        *,
        tenant_id: str | None = None,
    ) -> int:
        """Seal every tenant's unsealed transfers, one committed transaction per block.

        Returns the number of blocks sealed.
        """
        sealed = 0
        for tenant in self.tenants_with_unsealed(db, tenant_id=tenant_id):
            while True:
                with db.write_connection() as conn:
                    block = self.seal(conn, tenant, signer, now_ns, max_transfers)
                if block is None:
                    break
                sealed += 1
                if block.transfer_count < max_transfers:
                    break  # caught up (anything newer goes into the next round)
        return sealed

    def tenants_with_unsealed(self, db: Database, *, tenant_id: str | None = None) -> list[str]:
        """Tenants whose chain head is past their last block (one row per tenant, no transfer scan)."""
        q = (
            "SELECT h.tenant_id FROM ledger_heads h "
            "WHERE h.last_seq > COALESCE((SELECT MAX(b.last_seq) FROM ledger_blocks b "
            "WHERE b.tenant_id = h.tenant_id), 0)"
        )
        params: dict[str, Any] = {}
        if tenant_id is not None:
            q += " AND h.tenant_id = :t"
            params["t"] = tenant_id
        with db.engine.connect() as conn:
            return [r[0] for r in conn.execute(text(q + " ORDER BY h.tenant_id"), params)]

    # -- reading (the explorer API) --------------------------------------------------
    def latest(self, session: Session, tenant_id: str) -> Block:
        row = session.scalars(
            scoped(select(Block), Block, tenant_id).order_by(Block.height.desc()).limit(1)
        ).first()
        if row is None:
            raise BlockNotFound("no block has been sealed yet")
        return row

    def get(self, session: Session, tenant_id: str, height: int) -> Block:
        row = session.get(Block, (tenant_id, height))
        if row is None:
            raise BlockNotFound(f"block {height} does not exist")
        return row

    def list_blocks(
        self, session: Session, tenant_id: str, *, before_height: int | None = None, limit: int = 50
    ) -> Sequence[Block]:
        """Newest first; `before_height` pages backwards."""
        stmt = scoped(select(Block), Block, tenant_id)
        if before_height is not None:
            stmt = stmt.where(Block.height < before_height)
        return list(session.scalars(stmt.order_by(Block.height.desc()).limit(limit)))

    def proof(self, session: Session, tenant_id: str, transfer_id: str) -> dict[str, Any]:
        """Merkle inclusion proof of a transfer in its block.

        Raises TransferNotFound (404) for an unknown transfer and TransferNotSealed
        (409) for one that is not in a block yet.
        """
        transfer = ledger_service.get_transfer(session, tenant_id, transfer_id)
        block = session.scalars(
            scoped(select(Block), Block, tenant_id)
            .where(Block.first_seq <= transfer.seq, Block.last_seq >= transfer.seq)
            .limit(1)
        ).first()
        if block is None:
            raise TransferNotSealed(f"transfer {transfer_id} is not sealed into a block yet")
        leaves = list(
            session.scalars(
                scoped(select(Transfer.hash), Transfer, tenant_id)
                .where(Transfer.seq >= block.first_seq, Transfer.seq <= block.last_seq)
                .order_by(Transfer.seq)
            )
        )
        index = transfer.seq - block.first_seq
        return {
            "transfer_id": transfer.id,
            "transfer_hash": transfer.hash,
            "block_height": block.height,
            "leaf_index": index,
            "merkle_root": block.merkle_root,
            "proof": chain.merkle_proof(leaves, index),
            "block": block,
        }

    # -- offline checks ---------------------------------------------------------------
    @staticmethod
    def verify_proof_offline(
        transfer_hash: str,
        proof: list[dict[str, str]],
        merkle_root: str,
        block_hash: str,
        signature: str,
        public_key: str,
        *,
        header: Mapping[str, Any] | None = None,
    ) -> bool:
        """Check a receipt without the database: the proof leads to `merkle_root` and
        `block_hash` carries the platform's signature.

        Pass the block `header` (see `block_header`) to also check that `block_hash`
        commits to `merkle_root`; without it a valid signature on some other block
        could be paired with a made-up root. The caller must also compare
        `public_key` with the platform key it trusts.
        """
        try:
            if not chain.verify_merkle_proof(transfer_hash, proof, merkle_root):
                return False
            if header is not None:
                if header.get("merkle_root") != merkle_root:
                    return False
                if chain.block_hash(block_header(header)) != block_hash:
                    return False
            return verify_signature(public_key, bytes.fromhex(block_hash), signature)
        except (ValueError, KeyError, TypeError):
            return False


def _row(block: Block) -> dict[str, Any]:
    return {c.name: getattr(block, c.name) for c in Block.__table__.columns}


def verify_proof_offline(
    transfer_hash: str,
    proof: list[dict[str, str]],
    merkle_root: str,
    block_hash: str,
    signature: str,
    public_key: str,
    *,
    header: Mapping[str, Any] | None = None,
) -> bool:
    return BlockService.verify_proof_offline(
        transfer_hash, proof, merkle_root, block_hash, signature, public_key, header=header
    )


verify_proof_offline.__doc__ = BlockService.verify_proof_offline.__doc__

block_service = BlockService()
