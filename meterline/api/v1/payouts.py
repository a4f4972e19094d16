"""Payouts: a provider's earnings requested, approved, and sent through a rail.

    requested ──N operator approvals──► approved ──execute──► paid
    (≤ threshold: approved at once)        │  └─send fails─► approved, retried with backoff ─► failed
                                           └─reject─► rejected (the earnings return)

A provider's own key (its principal id is the provider's `owner_id`) or an admin
key requests payouts; operators and admins approve or reject them, never their
own; the worker executes due payouts, and an admin may execute one now. A
provider key sees only its own providers' payouts; a customer key none.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from sqlalchemy.orm import Session

from meterline.api.body import Parsed, json_body, openapi_body, read_json, validate
from meterline.api.deps import ReadSession, RuntimeDep, WriteSession
from meterline.api.idempotency import in_transaction, json_response
from meterline.api.v1.catalog import CatalogIdFilter
from meterline.api.v1.common import (
    Admin,
    Cursor,
    LedgerRead,
    LedgerWrite,
    Limit,
    decode_cursor,
    encode_cursor,
    errors,
)
from meterline.api.v1.payout_schemas import (
    PayoutCreate,
    PayoutOut,
    PayoutPage,
    PayoutReject,
    PayoutStatusName,
)
from meterline.api.v1.principals import actor_id, merge_pages, owned_provider_ids, require_operator
from meterline.catalog.service import ProviderNotFound, catalog_service
from meterline.errors import Forbidden
from meterline.identity.service import Principal
from meterline.ledger.service import ledger_service
from meterline.money import parse_amount
from meterline.payouts.models import PayoutRequest
from meterline.payouts.service import PayoutNotFound, payout_service

router = APIRouter(prefix="/payouts", tags=["payouts"])

PayoutIdPath = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_]+$")]


def _visible(session: Session, principal: Principal, payout_id: str) -> PayoutRequest:
    row = payout_service.get(session, principal.tenant_id, payout_id)
    owned = owned_provider_ids(session, principal)
    if owned is not None and row.provider_id not in owned:
        raise PayoutNotFound(f"payout {payout_id} does not exist")
    return row


def _out(session: Session, row: PayoutRequest) -> PayoutOut:
    return PayoutOut.of(row, ledger_service.get_asset(session, row.tenant_id, row.asset).scale)


@router.post(
    "", status_code=201, response_model=PayoutOut, summary="Request a payout of a provider's earnings",
    openapi_extra=openapi_body(PayoutCreate),
    responses=errors({
        402: "`insufficient_funds`: the provider's available earnings do not cover the amount",
        403: "`forbidden`: only the provider's own key or an admin key requests payouts",
        404: "`provider_not_found`, `asset_not_found`",
        409: "`idempotency_conflict`",
        413: "`payload_too_large`",
        422: "`validation_error`, `invalid_amount`, `amount_precision`, `amount_not_positive`, "
             "`invalid_payout_request`, `unknown_rail`, `rail_disabled`, `invalid_idempotency_key`",
    }),
)
def request_payout(
    request: Request,
    principal: LedgerWrite,
    body: Annotated[Parsed[PayoutCreate], Depends(json_body(PayoutCreate))],
    session: WriteSession,
    runtime: RuntimeDep,
) -> Response:
    """Hold `amount` of the provider's earnings and open a payout. At or below the asset's
    approval threshold (`METERLINE_PAYOUT_APPROVAL_THRESHOLD`) it is approved at once and
    the worker sends it; above, it waits for operator approvals. Accepts `Idempotency-Key`."""
    data = body.value
    tenant = principal.tenant_id
    if not principal.has("admin") and principal.kind != "provider":
        raise Forbidden("only the provider's own key or an admin key requests payouts")
    owned = owned_provider_ids(session, principal)
    if owned is not None and data.provider_id not in owned:
        raise ProviderNotFound(f"provider {data.provider_id} does not exist")
    catalog_service.get_provider(session, tenant, data.provider_id)
    now = runtime.clock.now_ns()

    def work() -> Response:
        scale = ledger_service.get_asset(session, tenant, data.asset).scale
        row = payout_service.request(
            session, tenant, provider_id=data.provider_id, asset=data.asset,
            amount_minor=parse_amount(data.amount, scale), destination=data.destination,
            rail=data.rail or "simulation", clock=runtime.clock, requested_by=actor_id(principal),
            settings=runtime.settings,
        )
        return json_response(PayoutOut.of(row, scale), 201)

    return in_transaction(request, tenant, body.raw, session, now, work)


@router.get("", response_model=PayoutPage, summary="List payouts",
            responses=errors({422: "`validation_error`, `invalid_cursor`"}))
def list_payouts(
    principal: LedgerRead,
    session: ReadSession,
    provider_id: CatalogIdFilter = None,
    status: Annotated[PayoutStatusName | None, Query()] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> PayoutPage:
    """Payouts in id (creation) order, filtered by `provider_id` and `status`."""
    tenant = principal.tenant_id
    after = decode_cursor(cursor)
    owned = owned_provider_ids(session, principal)
    if owned is None:
        page = payout_service.list_payouts(session, tenant, provider_id=provider_id, status=status, after=after,
                                           limit=limit)
        rows, nxt = page.items, page.next_cursor
    else:
        providers = [p for p in owned if provider_id in (None, p)]
        pages = []
        for p in providers:
            page = payout_service.list_payouts(session, tenant, provider_id=p, status=status, after=after,
                                               limit=limit)
            pages.append((page.items, page.next_cursor))
        rows, nxt = merge_pages(pages, limit, key=lambda r: r.id)
    return PayoutPage(data=[_out(session, r) for r in rows], next_cursor=encode_cursor(nxt))


@router.get("/{payout_id}", response_model=PayoutOut, summary="Get a payout",
            responses=errors({404: "`payout_not_found`", 422: "`validation_error`"}))
def get_payout(payout_id: PayoutIdPath, principal: LedgerRead, session: ReadSession) -> PayoutOut:
    return _out(session, _visible(session, principal, payout_id))


@router.post(
    "/{payout_id}/approve", response_model=PayoutOut, summary="Approve a payout (operator)",
    responses=errors({
        403: "`forbidden` (not an operator or admin key); `self_approval_forbidden` (you requested it)",
        404: "`payout_not_found`",
        409: "`payout_not_approvable`",
    }),
)
def approve_payout(payout_id: PayoutIdPath, principal: LedgerWrite, session: WriteSession,
                   runtime: RuntimeDep) -> PayoutOut:
    """Add the caller's approval; the last one needed makes the payout due. Approving twice
    counts once. The requester (and the provider) cannot approve their own payout."""
    require_operator(principal)
    _visible(session, principal, payout_id)
    row = payout_service.approve(session, principal.tenant_id, payout_id, actor_id(principal), runtime.clock)
    return _out(session, row)


async def _reject_body(request: Request) -> PayoutReject:
    """The body is optional: none (or `{}`) rejects without a reason."""
    if not (await request.body()).strip():
        return PayoutReject()
    data, _ = await read_json(request, max_bytes=request.app.state.runtime.settings.max_body_bytes)
    return validate(PayoutReject, data)


@router.post(
    "/{payout_id}/reject", response_model=PayoutOut, summary="Reject a payout (operator)",
    openapi_extra={"requestBody": {"required": False, **openapi_body(PayoutReject)["requestBody"]}},
    responses=errors({
        403: "`forbidden`: not an operator or admin key",
        404: "`payout_not_found`",
        409: "`payout_not_rejectable`: it was already sent (or is being sent)",
        422: "`validation_error`",
    }),
)
def reject_payout(
    payout_id: PayoutIdPath,
    principal: LedgerWrite,
    body: Annotated[PayoutReject, Depends(_reject_body)],
    session: WriteSession,
    runtime: RuntimeDep,
) -> PayoutOut:
    """Refuse a payout not yet sent: its hold is voided and the earnings are available again.
    Body: `{"reason": "..."}` (optional text)."""
    require_operator(principal)
    _visible(session, principal, payout_id)
    row = payout_service.reject(session, principal.tenant_id, payout_id, actor_id(principal), runtime.clock,
                                reason=body.reason)
    return _out(session, row)


@router.post(
    "/{payout_id}/execute", response_model=PayoutOut, summary="Send an approved payout now (admin)",
    responses=errors({
        404: "`payout_not_found`",
        409: "`payout_not_executable` (not approved yet, rejected or failed); `idempotency_conflict`",
        422: "`invalid_idempotency_key`",
    }),
)
def execute_payout(payout_id: PayoutIdPath, request: Request, principal: Admin, session: WriteSession,
                   runtime: RuntimeDep) -> Response:
    """Send it through its rail now instead of waiting for the worker. A failed send is not an
    error here: it is recorded (`last_error`, `attempts`) and retried with backoff. A paid
    payout is returned unchanged. Accepts `Idempotency-Key`."""
    tenant = principal.tenant_id
    now = runtime.clock.now_ns()

    def work() -> Response:
        row = payout_service.execute(session, tenant, payout_id, None, runtime.clock)
        return json_response(_out(session, row), 200)

    return in_transaction(request, tenant, b"", session, now, work)
