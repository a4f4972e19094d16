"""Blocks: sealed, signed runs of transfers, and Merkle inclusion proofs (the explorer).

Staff only, like the transfers and proofs they seal: a header carries the tenant's ledger
`seq` range and `transfer_count` (how much money moves, and how fast, across every
customer) and the roots of transfers a customer may not read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from meterline.api.deps import ReadSession
from meterline.api.v1.common import LedgerStaffRead, TransferIdPath, errors
from meterline.ledger.blocks import block_service
from meterline.ledger.schemas import BlockOut, TransferProof

router = APIRouter(tags=["blocks"])


@router.get("/blocks/latest", response_model=BlockOut, summary="The newest sealed block",
            responses=errors({404: "`block_not_found`: nothing sealed yet"}))
def latest_block(principal: LedgerStaffRead, session: ReadSession) -> BlockOut:
    """The tenant's most recent block. `block_hash` is the SHA-256 of the header fields
    (`tenant_id`, `height`, `first_seq`, `last_seq`, `transfer_count`, `merkle_root`,
    `prev_block_hash`, `last_transfer_hash`, `timestamp_ns`); `signature` is the platform's
    Ed25519 signature of it by `public_key`."""
    return BlockOut.of(block_service.latest(session, principal.tenant_id))


@router.get("/blocks/{height}", response_model=BlockOut, summary="A block by height",
            responses=errors({404: "`block_not_found`", 422: "`validation_error`"}))
def get_block(
    height: Annotated[int, Path(ge=1, le=2**63 - 1)], principal: LedgerStaffRead, session: ReadSession
) -> BlockOut:
    """Heights start at 1 and have no gaps."""
    return BlockOut.of(block_service.get(session, principal.tenant_id, height))


@router.get("/transfers/{transfer_id}/proof", response_model=TransferProof,
            summary="Merkle inclusion proof of a transfer",
            responses=errors({404: "`transfer_not_found`",
                              409: "`transfer_not_sealed`: not in a block yet; retry after the next seal",
                              422: "`validation_error`"}))
def transfer_proof(transfer_id: TransferIdPath, principal: LedgerStaffRead, session: ReadSession) -> TransferProof:
    """Everything needed to check the transfer offline: hash the leaf (`0x00 ‖ transfer_hash`),
    fold in each `proof` step (`0x01 ‖ left ‖ right`) to reach `merkle_root`, then check the
    block's header hash and its signature."""
    return TransferProof.of(block_service.proof(session, principal.tenant_id, transfer_id))
