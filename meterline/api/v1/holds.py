"""Holds: the state of each pending transfer touching an account."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from meterline.api.deps import ReadSession
from meterline.api.v1.common import (
    AccountIdPath,
    Cursor,
    LedgerStaffRead,
    Limit,
    decode_cursor,
    encode_cursor,
    errors,
)
from meterline.ledger.schemas import HoldOut, HoldPage
from meterline.ledger.service import ledger_service

router = APIRouter(tags=["holds"])

HoldState = Literal["pending", "posted", "voided", "expired"]


@router.get("/accounts/{account_id}/holds", response_model=HoldPage, summary="List an account's holds",
            responses=errors({404: "`account_not_found`", 422: "`validation_error`, `invalid_cursor`"}))
def list_holds(
    account_id: AccountIdPath,
    principal: LedgerStaffRead,
    session: ReadSession,
    state: Annotated[HoldState | None, Query(description="Only holds in this state; all when omitted.")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> HoldPage:
    """Pending transfers on the account (as debit or credit side) and how each was resolved:
    `pending` → `posted` (with `posted_amount`) | `voided` | `expired`. Ordered by transfer id."""
    tenant = principal.tenant_id
    page = ledger_service.list_holds(session, tenant, account_id=account_id, state=state,
                                     after=decode_cursor(cursor), limit=limit)
    return HoldPage(
        data=[HoldOut.of(h, ledger_service.get_asset(session, tenant, h.asset)) for h in page.items],
        next_cursor=encode_cursor(page.next_cursor),
    )
