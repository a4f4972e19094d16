"""Accounts: balances in one asset, TigerBeetle-style (debits/credits, pending/posted)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from meterline.api.body import Parsed, json_body, openapi_body
from meterline.api.deps import ReadSession, RuntimeDep, WriteSession
from meterline.api.idempotency import in_transaction, json_response
from meterline.api.v1.common import (
    AccountIdPath,
    AssetFilter,
    Cursor,
    LedgerStaffRead,
    LedgerStaffWrite,
    Limit,
    TextFilter,
    decode_cursor,
    encode_cursor,
    errors,
)
from meterline.ledger import service as ledger
from meterline.ledger.schemas import AccountCreate, AccountOut, AccountPage
from meterline.ledger.service import ledger_service

router = APIRouter(tags=["accounts"])


@router.post(
    "/accounts", status_code=201, response_model=AccountOut, summary="Create an account",
    openapi_extra=openapi_body(AccountCreate),
    responses={
        200: {"description": "An account with this `id` and the same fields already existed",
              "model": AccountOut},
        **errors({
            404: "`asset_not_found`",
            409: "`account_exists_with_different_fields`; `idempotency_conflict`",
            413: "`payload_too_large`",
            422: "`validation_error`, `invalid_account`, `invalid_idempotency_key`",
        }),
    },
)
def create_account(
    request: Request,
    principal: LedgerStaffWrite,
    body: Annotated[Parsed[AccountCreate], Depends(json_body(AccountCreate))],
    session: WriteSession,
    runtime: RuntimeDep,
) -> Response:
    """Create an account (201). With a client `id`, re-creating the same account answers 200
    with the existing one, and the same id with different fields is a 409 — so a retry is
    safe even without `Idempotency-Key` (which is also accepted)."""
    data = body.value
    tenant = principal.tenant_id
    now = runtime.clock.now_ns()

    def work() -> Response:
        row, created = ledger_service.create_account(
            session, tenant,
            ledger.AccountCreate(asset=data.asset, kind=data.kind, id=data.id, owner_type=data.owner_type,
                                 owner_id=data.owner_id, flags=data.flag_bits(), metadata=data.metadata),
            now,
        )
        asset = ledger_service.get_asset(session, tenant, row.asset)
        return json_response(AccountOut.of(row, asset), 201 if created else 200)

    return in_transaction(request, tenant, body.raw, session, now, work)


@router.get("/accounts/{account_id}", response_model=AccountOut, summary="Get an account",
            responses=errors({404: "`account_not_found`", 422: "`validation_error`"}))
def get_account(account_id: AccountIdPath, principal: LedgerStaffRead, session: ReadSession) -> AccountOut:
    """One account with its balances (another tenant's account is a 404)."""
    row = ledger_service.get_account(session, principal.tenant_id, account_id)
    return AccountOut.of(row, ledger_service.get_asset(session, principal.tenant_id, row.asset))


@router.get("/accounts", response_model=AccountPage, summary="List accounts",
            responses=errors({422: "`validation_error`, `invalid_cursor`"}))
def list_accounts(
    principal: LedgerStaffRead,
    session: ReadSession,
    kind: TextFilter = None,
    asset: AssetFilter = None,
    owner_type: TextFilter = None,
    owner_id: TextFilter = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> AccountPage:
    """Accounts in id order, filtered by any of `kind`, `asset`, `owner_type`, `owner_id`.
    Pass `next_cursor` back as `cursor` for the next page; it is null on the last one."""
    tenant = principal.tenant_id
    page = ledger_service.list_accounts(
        session, tenant, kind=kind, asset=asset, owner_type=owner_type, owner_id=owner_id,
        after=decode_cursor(cursor), limit=limit,
    )
    return AccountPage(
        data=[AccountOut.of(r, ledger_service.get_asset(session, tenant, r.asset)) for r in page.items],
        next_cursor=encode_cursor(page.next_cursor),
    )
