"""Transfers: the only way money moves.

`POST /v1/transfers` is the ledger's hot path. It is `async` and posts through
the group-commit batcher (`runtime.ledger.post_async`), so concurrent requests
share one database transaction and one fsync. Nothing on this path touches the
database except the batcher itself: asset scales come from the in-process
`AssetCache` (a miss is read in the threadpool), and the Idempotency-Key, when
sent, costs one read before and one write after.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from meterline.api.body import openapi_body, read_json, validate
from meterline.api.deps import ReadSession, get_runtime
from meterline.api.fastpath import FastRoute, authorized
from meterline.api.idempotency import IdempotentRequest, json_response
from meterline.api.problems import field_errors, problem
from meterline.api.runtime import Runtime
from meterline.api.v1.common import (
    AccountIdPath,
    Cursor,
    LedgerStaffRead,
    LedgerStaffWriteAsync,
    Limit,
    TransferIdPath,
    decode_seq_cursor,
    encode_cursor,
    errors,
    ledger_staff_write_async,
)
from meterline.errors import MeterlineError, PayloadTooLarge, ServiceUnavailable
from meterline.ledger.batcher import BatcherStopped
from meterline.ledger.schemas import (
    PlainTransfer,
    TransferBatch,
    TransferBatchResult,
    TransferCreate,
    TransferOut,
    TransferPage,
    TransferResultOut,
    transfer_json,
)
from meterline.ledger.service import AssetNotFound, ledger_service
from meterline.ledger.types import TransferIn, TransferResult
from meterline.money import Asset

router = APIRouter(tags=["transfers"])
_T = TypeVar("_T")


class BatchTooLarge(PayloadTooLarge):
    code = "batch_too_large"
    title = "The batch has too many transfers"


# -- result codes → HTTP ---------------------------------------------------------------
_CONFLICTS = frozenset({"idempotency_conflict", "pending_transfer_expired"})


def result_status(code: str) -> int:
    """The HTTP status of a refused single transfer: 404 for a missing thing, 409 for a
    state conflict (a different prior transfer, a resolved or expired hold, a limit), 422
    for anything wrong with the transfer itself."""
    if code.endswith("_not_found"):
        return 404
    if (code in _CONFLICTS or code.startswith(("exists_with_different_", "pending_transfer_already_",
                                                "exceeds_"))):
        return 409
    return 422


_DETAILS = {
    "exceeds_credits": "the debit account's balance flags forbid debits beyond its credits",
    "exceeds_debits": "the credit account's balance flags forbid credits beyond its debits",
    "debit_account_not_found": "the debit account does not exist",
    "credit_account_not_found": "the credit account does not exist",
    "pending_transfer_not_found": "no pending transfer has this pending_id",
    "asset_mismatch": "both accounts and the transfer must be in the same asset",
    "accounts_must_be_different": "the debit and credit accounts must differ",
    "idempotency_conflict": "a transfer with this id exists with different fields",
    "pending_transfer_expired": "the hold expired before it was posted or voided",
    "exceeds_pending_transfer_amount": "a post may not exceed the pending amount",
}


def rejected(res: TransferResult, instance: str) -> Response:
    detail = _DETAILS.get(res.result, f"the ledger refused the transfer: {res.result}")
    return problem(result_status(res.result), res.result, "The transfer was not applied", detail, instance,
                   transfer_id=res.id)


# -- asset scales, without a database round trip when cached ---------------------------
class _Miss(Exception):
    pass


def _miss(tenant_id: str, code: str) -> Asset:
    raise _Miss


def _load_assets(runtime: Runtime, tenant_id: str, codes: list[str]) -> dict[str, Asset | None]:
    out: dict[str, Asset | None] = {}
    with runtime.db.session(write=False) as session:
        for code in codes:
            try:
                out[code] = ledger_service.get_asset(session, tenant_id, code)
            except AssetNotFound:
                out[code] = None
    return out


async def assets_for(runtime: Runtime, tenant_id: str, codes: set[str]) -> dict[str, Asset | None]:
    """Scales for `codes` (None for an unknown asset); only cache misses read the database."""
    out: dict[str, Asset | None] = {}
    misses: list[str] = []
    for code in codes:
        try:
            out[code] = ledger_service.assets.get(None, tenant_id, code, _miss)
        except _Miss:
            misses.append(code)
    if misses:
        out.update(await run_in_threadpool(_load_assets, runtime, tenant_id, misses))
    return out


def _asset(assets: dict[str, Asset | None], code: str) -> Asset:
    asset = assets.get(code)
    if asset is None:
        raise AssetNotFound(f"asset {code} does not exist")
    return asset


async def _post(runtime: Runtime, tenant_id: str, transfers: list[TransferIn]) -> list[TransferResult]:
    # A request cancelled mid-flight (client gone, shutdown) stops waiting, but its transfers
    # are queued and commit regardless (a retry answers `exists`): see submit_item_async.
    try:
        return await runtime.ledger.post_async(tenant_id, transfers)
    except BatcherStopped:
        raise ServiceUnavailable("the ledger is not accepting transfers right now") from None


# -- POST /v1/transfers ----------------------------------------------------------------
@router.post(
    "/transfers", summary="Post one transfer or a batch", response_model=TransferOut, status_code=201,
    openapi_extra=openapi_body(TransferCreate, TransferBatch),
    responses={
        200: {"description": "One transfer: it already existed with the same fields (`exists`). "
                             "A batch: one result per transfer, in order.",
              "model": TransferBatchResult},
        **errors({
            404: "`debit_account_not_found`, `credit_account_not_found`, `pending_transfer_not_found`, "
                 "`asset_not_found`, …",
            409: "`exists_with_different_*`, `idempotency_conflict`, `pending_transfer_already_posted`, "
                 "`pending_transfer_already_voided`, `pending_transfer_expired`, `exceeds_credits`, "
                 "`exceeds_debits`, `exceeds_pending_transfer_amount`",
            413: "`payload_too_large`; `batch_too_large` (more than 1000 transfers)",
            422: "`validation_error`, `amount_precision`, `amount_not_positive`, `invalid_amount`, "
                 "`amount_overflow`, `asset_mismatch`, `accounts_must_be_different`, "
                 "`invalid_idempotency_key`, and the other ledger result codes",
            503: "`service_unavailable`: the ledger is shutting down",
        }),
    },
)
async def create_transfers(request: Request, principal: LedgerStaffWriteAsync) -> Response:
    """Post **one transfer** (an object) or **a batch** (`{"transfers": [...]}`, up to 1000).

    One transfer answers 201 with the transfer (`ok`), 200 if that id was already posted
    with the same fields (`exists`), or a problem whose `code` is the ledger's result code.

    A batch always answers 200 with `{"results": [{"index", "id", "result", "transfer"?}]}`:
    each transfer succeeds or fails on its own, except members of a `linked` chain, which
    are applied all-or-nothing (the others report `linked_event_failed`).

    Flags: `pending` reserves the amount (a hold, optionally expiring after `timeout_s`);
    `post_pending` with `pending_id` moves up to the held amount and releases the rest;
    `void_pending` releases it all; `linked` chains a transfer to the next one.
    """
    runtime = get_runtime(request)  # not RuntimeDep: a sync dependency would cost a threadpool hop
    tenant = principal.tenant_id
    data, raw = await read_json(request, max_bytes=runtime.settings.max_body_bytes)
    batch = isinstance(data, dict) and "transfers" in data
    if batch:
        listed = data["transfers"]
        if isinstance(listed, list) and len(listed) > runtime.settings.max_batch:
            raise BatchTooLarge(f"a batch holds at most {runtime.settings.max_batch} transfers")
        envelope = validate(TransferBatch, data)
    else:
        single = PlainTransfer.of(data) or validate(TransferCreate, data)
    idem = IdempotentRequest.of(request, tenant, raw)
    if idem is not None:
        replay = await run_in_threadpool(idem.claim_apart, runtime.db, runtime.clock.now_ns())
        if replay is not None:
            return replay
    response: Response | None = None
    applied = True
    try:
        if batch:
            response, applied = await _post_batch(runtime, tenant, envelope.transfers)
        else:
            response = await _post_single(runtime, tenant, single, request.scope["path"])
    finally:
        if idem is not None:
            # Stored only when something happened. A problem raised, a 4xx, or a batch (always
            # 200) in which no transfer was applied changed nothing, so the claim is released
            # and the same request runs again later: a transfer refused for `exceeds_credits`
            # may succeed after a deposit, whether it was sent alone or in a batch.
            await run_in_threadpool(idem.finish_apart, runtime.db, response if applied else None)
    return response


FAST_ROUTES = [FastRoute("POST", "/v1/transfers", authorized(ledger_staff_write_async, create_transfers))]


async def _asset_of(runtime: Runtime, tenant: str, code: str) -> Asset:
    """One asset's scale: from the cache on the event loop, else as `assets_for` reads it."""
    asset = ledger_service.assets.peek(tenant, code)
    if asset is None:
        asset = _asset(await assets_for(runtime, tenant, {code}), code)
    return asset


async def _post_single(runtime: Runtime, tenant: str, item: TransferCreate | PlainTransfer,
                       path: str) -> Response:
    asset = await _asset_of(runtime, tenant, item.asset) if item.asset else None
    [res] = await _post(runtime, tenant, [item.to_transfer_in(asset)])
    if not res.ok or res.transfer is None:
        return rejected(res, path)
    stored = res.transfer
    if asset is None or stored.asset != asset.code:
        asset = await _asset_of(runtime, tenant, stored.asset)
    return Response(transfer_json(stored, asset), 201 if res.result == "ok" else 200, media_type="application/json")


def _raw_id(item: Any) -> str | None:
    value = item.get("id") if isinstance(item, dict) else None
    return value if isinstance(value, str) and len(value) <= 128 else None


def _linked(item: Any, parsed: TransferCreate | None) -> bool:
    if parsed is not None:
        return "linked" in parsed.flags
    flags = item.get("flags") if isinstance(item, dict) else None
    return isinstance(flags, list) and "linked" in flags


def _chains(linked: list[bool]) -> list[list[int]]:
    """The engine's grouping: a chain runs through the first transfer not flagged linked."""
    groups: list[list[int]] = []
    current: list[int] = []
    for i, is_linked in enumerate(linked):
        current.append(i)
        if not is_linked:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


# Batches up to this size are shaped on the event loop; bigger ones in a worker thread, so
# a 1000-transfer batch (tens of milliseconds of validation and shaping) never stalls the
# loop that single-transfer requests share.
_INLINE_BATCH = 32


async def _cpu(size: int, fn: Callable[..., _T], *args: Any) -> _T:
    return fn(*args) if size <= _INLINE_BATCH else await run_in_threadpool(fn, *args)


async def _post_batch(runtime: Runtime, tenant: str, items: list[Any]) -> tuple[Response, bool]:
    """Validate each transfer alone, post the valid ones in one segment, answer per index;
    and whether any transfer was applied (`ok`).

    A transfer refused before posting (bad field, amount, asset) takes its linked chain
    with it — the other members report `linked_event_failed`, as the engine would — and
    the rest of the batch goes on without it.
    """
    n = len(items)
    results: list[TransferResultOut | None] = [None] * n
    parsed = await _cpu(n, _parse_items, items, results)
    assets = await assets_for(runtime, tenant, {p.asset for p in parsed if p is not None and p.asset})
    ready, submit = await _cpu(n, _prepare, items, parsed, results, assets)
    posted = await _post(runtime, tenant, [ready[i] for i in submit]) if submit else []
    missing = {r.transfer.asset for r in posted if r.transfer is not None} - assets.keys()
    if missing:
        assets.update(await assets_for(runtime, tenant, missing))
    applied = any(r.result == "ok" for r in posted)
    return await _cpu(n, _shape, results, submit, posted, assets), applied


def _parse_items(items: list[Any], results: list[TransferResultOut | None]) -> list[TransferCreate | None]:
    parsed: list[TransferCreate | None] = []
    for i, item in enumerate(items):
        try:
            parsed.append(TransferCreate.model_validate(item))
        except ValidationError as exc:
            parsed.append(None)
            results[i] = TransferResultOut(index=i, id=_raw_id(item), result="validation_error",
                                           detail="one or more fields are invalid",
                                           errors=field_errors(list(exc.errors())))
    return parsed


def _prepare(
    items: list[Any],
    parsed: list[TransferCreate | None],
    results: list[TransferResultOut | None],
    assets: dict[str, Asset | None],
) -> tuple[dict[int, TransferIn], list[int]]:
    """Minor units for each valid transfer; the indexes to submit (whole chains only)."""
    ready: dict[int, TransferIn] = {}
    for i, p in enumerate(parsed):
        if p is None:
            continue
        try:
            ready[i] = p.to_transfer_in(_asset(assets, p.asset) if p.asset else None)
        except MeterlineError as exc:
            results[i] = TransferResultOut(index=i, id=p.id, result=exc.code, detail=exc.detail)
    submit: list[int] = []
    for group in _chains([_linked(item, p) for item, p in zip(items, parsed, strict=True)]):
        if any(results[i] is not None for i in group):
            for i in group:
                if results[i] is None:
                    results[i] = TransferResultOut(index=i, id=ready[i].id, result="linked_event_failed")
        else:
            submit.extend(group)
    return ready, submit


def _shape(
    results: list[TransferResultOut | None],
    submit: list[int],
    posted: list[TransferResult],
    assets: dict[str, Asset | None],
) -> Response:
    for i, res in zip(submit, posted, strict=True):
        out = None
        if res.ok and res.transfer is not None:
            out = TransferOut.of(res.transfer, _asset(assets, res.transfer.asset))
        results[i] = TransferResultOut(index=i, id=res.id, result=res.result, transfer=out)
    return json_response(TransferBatchResult(results=[r for r in results if r is not None]), 200)


# -- reads -----------------------------------------------------------------------------
@router.get("/transfers/{transfer_id}", response_model=TransferOut, summary="Get a transfer",
            responses=errors({404: "`transfer_not_found`", 422: "`validation_error`"}))
def get_transfer(transfer_id: TransferIdPath, principal: LedgerStaffRead, session: ReadSession) -> TransferOut:
    """One transfer as stored: immutable, with its ledger `seq`, `timestamp` and chained `hash`."""
    row = ledger_service.get_transfer(session, principal.tenant_id, transfer_id)
    return TransferOut.of(row, ledger_service.get_asset(session, principal.tenant_id, row.asset))


@router.get("/accounts/{account_id}/transfers", response_model=TransferPage,
            summary="List an account's transfers",
            responses=errors({404: "`account_not_found`", 422: "`validation_error`, `invalid_cursor`"}))
def list_account_transfers(
    account_id: AccountIdPath,
    principal: LedgerStaffRead,
    session: ReadSession,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> TransferPage:
    """Transfers debiting or crediting the account, oldest first (ledger order, `seq`)."""
    tenant = principal.tenant_id
    page = ledger_service.list_transfers(session, tenant, account_id=account_id,
                                         after_seq=decode_seq_cursor(cursor), limit=limit)
    return TransferPage(
        data=[TransferOut.of(r, ledger_service.get_asset(session, tenant, r.asset)) for r in page.items],
        next_cursor=encode_cursor(page.next_cursor),
    )
