"""Assets: the currencies and tokens a tenant's accounts are kept in."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from meterline.api.body import Parsed, json_body, openapi_body
from meterline.api.deps import ReadSession, RuntimeDep, WriteSession
from meterline.api.idempotency import in_transaction, json_response
from meterline.api.v1.common import Admin, LedgerRead, errors
from meterline.ledger.schemas import AssetCreate, AssetList, AssetOut
from meterline.ledger.service import ledger_service

router = APIRouter(tags=["assets"])


@router.get("/assets", response_model=AssetList, responses=errors(), summary="List assets")
def list_assets(principal: LedgerRead, session: ReadSession) -> AssetList:
    """Every asset of the caller's tenant, by code. The standard set (SOL, USDC, USD, …) is
    seeded into each new tenant."""
    rows = ledger_service.list_assets(session, principal.tenant_id)
    return AssetList(data=[AssetOut.of(r) for r in rows])


@router.post(
    "/assets", status_code=201, response_model=AssetOut, summary="Create an asset (admin)",
    openapi_extra=openapi_body(AssetCreate),
    responses=errors({
        409: "`asset_exists`; `idempotency_conflict`",
        413: "`payload_too_large`",
        422: "`validation_error`, `invalid_asset`, `invalid_idempotency_key`",
    }),
)
def create_asset(
    request: Request,
    principal: Admin,
    body: Annotated[Parsed[AssetCreate], Depends(json_body(AssetCreate))],
    session: WriteSession,
    runtime: RuntimeDep,
) -> Response:
    """Add an asset. Its `scale` (decimal places of the minor unit) is fixed forever: amounts
    are stored as integers of that unit. Accepts `Idempotency-Key`."""
    data = body.value
    now = runtime.clock.now_ns()

    def work() -> Response:
        row = ledger_service.create_asset(session, principal.tenant_id, code=data.code, scale=data.scale,
                                          kind=data.kind, name=data.name, now_ns=now)
        return json_response(AssetOut.of(row), 201)

    return in_transaction(request, principal.tenant_id, body.raw, session, now, work)
