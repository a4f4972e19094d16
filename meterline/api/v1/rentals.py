"""Rentals: prepaid contracts and pay-as-you-go sessions, their samples, extension and settlement.

    POST /v1/rentals {"style": "prepaid", …}  → contract_service.rent (payment claimed once, term held)
    POST /v1/rentals {"style": "payg", …}     → session_service.start (rolling hold on the user's wallet)
    GET  /v1/rentals/{id}                     → the rental with its live accrual (computed on read)
    POST /v1/rentals/{id}/samples             → the sample batcher (one or a batch; group commit)
    POST /v1/rentals/{id}/extend              → contract_service.extend
    POST /v1/rentals/{id}/settle              → rental_service.settle (one linked ledger batch, once)

Staff keys see every rental of the tenant; a `customer` key only rentals whose
`customer_id` is its principal id (another's is 404), and it may only rent for
itself; other keys (provider, device) see none (`principals.owner_filter`). Reads need `ledger:read`, everything else `ledger:write`.

Both kinds, on purpose: this is the native resource for prepaid contracts and
pay-as-you-go sessions alike (each answer carries `style`), so every route
accepts either kind's id, and an operation that does not apply to a kind is a
state error (extending a session: 409 `contract_not_active`). The API profiles
are the ones that keep to one kind each (SI64: prepaid, Dante: payg).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from sqlalchemy.orm import Session

from meterline.api.body import Parsed, json_body, loads, openapi_body, read_json, validate
from meterline.api.deps import ReadSession, RuntimeDep, WriteSession, get_runtime
from meterline.api.idempotency import in_transaction, json_response
from meterline.api.runtime import Runtime
from meterline.api.v1.common import (
    Cursor,
    LedgerRead,
    LedgerWrite,
    LedgerWriteAsync,
    Limit,
    decode_cursor,
    encode_cursor,
    errors,
)
from meterline.api.v1.principals import (
    is_staff,
    list_filter,
    merge_pages,
    owner_filter,
    owns,
    require_self,
)
from meterline.api.v1.rental_schemas import (
    AccrualOut,
    AssetTotals,
    PaygCreate,
    PrepaidCreate,
    RentalCreate,
    RentalCreated,
    RentalExtend,
    RentalExtended,
    RentalOut,
    RentalPage,
    RentalStatus,
    RentalTotals,
    SampleBatch,
    SampleIn,
    SampleList,
    SampleOut,
    SamplesAccepted,
)
from meterline.api.v1.transfers import BatchTooLarge
from meterline.clock import to_rfc3339
from meterline.errors import Forbidden, PayloadTooLarge, ServiceUnavailable, ValidationFailed
from meterline.identity.service import Principal
from meterline.ledger.schemas import ID_PATTERN
from meterline.ledger.service import ledger_service
from meterline.money import format_amount, parse_amount
from meterline.rentals.contracts import WALLET_OWNER, contract_service
from meterline.rentals.models import Rental
from meterline.rentals.sampler import SamplerStopped
from meterline.rentals.service import RentalNotFound, parse_hours, rental_service
from meterline.rentals.sessions import USER_OWNER, session_service

router = APIRouter(prefix="/rentals", tags=["rentals"])

RentalIdPath = Annotated[str, Path(min_length=1, max_length=32, pattern=ID_PATTERN)]
CustomerFilter = Annotated[str | None, Query(min_length=1, max_length=128, pattern=ID_PATTERN,
                                             description="Only this customer's rentals (both styles).")]
CUSTOMER_TYPES = (WALLET_OWNER, USER_OWNER)  # prepaid contracts, pay-as-you-go sessions

_STATE_ERRORS = ("`contract_not_active`, `contract_already_settled`, `contract_expired`; "
                 "`idempotency_conflict`")


def _visible(session: Session, principal: Principal, rental_id: str) -> Rental:
    rental = rental_service.get(session, principal.tenant_id, rental_id)
    if not owns(principal, rental.customer_id):
        raise RentalNotFound(f"contract {rental_id} does not exist")
    return rental


def _out(rental: Rental, now_ns: int) -> RentalOut:
    return RentalOut.of(rental, rental_service.running_cost(rental, now_ns))


# -- create ---------------------------------------------------------------------------------
@router.post(
    "", status_code=201, response_model=RentalCreated, summary="Rent: a prepaid contract or a payg session",
    openapi_extra=openapi_body(PrepaidCreate, PaygCreate),
    responses=errors({
        402: "`insufficient_payment` (prepaid: paid less than the price); `insufficient_funds` (payg: the "
             "wallet cannot fund the first slice)",
        403: "`forbidden`: a non-staff key rents only for its own customer id",
        404: "`tier_not_found`, `device_not_found`, `gpu_model_not_found`, `price_book_missing`, "
             "`asset_not_found`",
        409: "`no_device_available`; `payment_proof_reused`; `idempotency_conflict`",
        413: "`payload_too_large`",
        422: "`validation_error`, `invalid_rental_request`, `tier_not_priced`, `gpu_model_not_priced`, "
             "`invalid_vram`, `amount_precision`, `invalid_amount`, `invalid_payment_proof`, `unknown_rail`, `rail_disabled`, "
             "`invalid_idempotency_key`",
    }),
)
def create_rental(
    request: Request,
    principal: LedgerWrite,
    body: Annotated[Parsed[RentalCreate], Depends(json_body(RentalCreate))],
    session: WriteSession,
    runtime: RuntimeDep,
) -> Response:
    """**Prepaid** (`"style": "prepaid"`): the payment proof is verified and claimed once, it
    funds `wallet/<wallet>`, and the term's price (tier rate × duration) is held in escrow.
    Unused time is refunded through the payment's rail at settlement.

    **Pay-as-you-go** (`"style": "payg"`): a dynamically priced GPU (by `gpu_model` or a named
    `device_id`, a VRAM fraction, demand, the provider's minimum) is started against the
    customer's standing wallet `user/<customer_id>`, which must hold at least one slice
    (five minutes of time; power is held as it is metered, at the draw last sampled — the
    quote's estimate is never held); the worker keeps the hold ahead of use.

    Accepts `Idempotency-Key` (a retry never rents twice)."""
    data = body.value.root
    tenant = principal.tenant_id
    clock = runtime.clock
    now = clock.now_ns()
    if isinstance(data, PrepaidCreate):
        require_self(principal, data.wallet, "wallet")
    else:
        require_self(principal, data.customer_id, "customer id")

    def work() -> Response:
        if isinstance(data, PrepaidCreate):
            seconds = parse_hours(data.duration_hours)
            _, scale, _ = contract_service.price(session, tenant, data.tier, seconds)
            pay = data.payment
            paid = None if pay.amount is None else parse_amount(pay.amount, scale)
            res = contract_service.rent(session, tenant, wallet=data.wallet, tier=data.tier, duration_s=seconds,
                                        paid_minor=paid, proof=pay.proof, rail=pay.rail, clock=clock)
            out = RentalCreated(**dict(_out(res.rental, now)), price=format_amount(res.price_minor, scale),
                                paid=format_amount(res.paid_minor, scale))
        else:
            rental = session_service.start(session, tenant, customer_id=data.customer_id, device_id=data.device_id,
                                           gpu_model=data.gpu_model, vram_gb=data.vram_gb, watts=data.watts,
                                           clock=clock)
            out = RentalCreated(**dict(_out(rental, now)), price=None, paid=None)
        return json_response(out, 201)

    return in_transaction(request, tenant, body.raw, session, now, work)


# -- read -----------------------------------------------------------------------------------
@router.get("", response_model=RentalPage, summary="List rentals",
            responses=errors({422: "`validation_error`, `invalid_cursor`"}))
def list_rentals(
    principal: LedgerRead,
    session: ReadSession,
    runtime: RuntimeDep,
    status: Annotated[RentalStatus | None, Query()] = None,
    customer: CustomerFilter = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> RentalPage:
    """Rentals in creation order, with their live accrual, filtered by `status` and `customer`.
    A non-staff key lists only its own (the `customer` filter is then implied)."""
    tenant = principal.tenant_id
    after = decode_cursor(cursor)
    customer, visible = list_filter(principal, customer)
    if not visible:
        return RentalPage(data=[], next_cursor=None)
    if customer is None:
        rows, nxt = rental_service.list_rentals(session, tenant, status=status, after=after, limit=limit)
    else:
        # One customer id may rent in both styles (its prepaid wallet and its payg user).
        rows, nxt = merge_pages(
            [rental_service.list_rentals(session, tenant, status=status, customer=(kind, customer), after=after,
                                         limit=limit) for kind in CUSTOMER_TYPES],
            limit, key=lambda r: f"{r.created_at:019d}:{r.id}",
        )
    now = runtime.clock.now_ns()
    return RentalPage(data=[_out(r, now) for r in rows], next_cursor=encode_cursor(nxt))


@router.get("/totals", response_model=RentalTotals, summary="Totals over all rentals (staff)",
            responses=errors({403: "`forbidden`: totals span every customer; staff keys only"}))
def rental_totals(principal: LedgerRead, session: ReadSession, runtime: RuntimeDep) -> RentalTotals:
    """Per asset: active rentals' held / used / refundable (computed in SQL with the same
    integer arithmetic as each rental's `cost_so_far`, so they add up exactly) and settled
    rentals' used / refunded / platform fees."""
    if not is_staff(principal):
        raise Forbidden("rental totals span every customer: an operator or admin key is needed")
    tenant = principal.tenant_id
    now = runtime.clock.now_ns()
    data = []
    for asset in ledger_service.list_assets(session, tenant):
        totals = rental_service.totals(session, tenant, now, asset=asset.code)
        if totals["active_count"] or totals["settled_count"]:
            data.append(AssetTotals.of(asset.code, asset.scale, totals))
    return RentalTotals(as_of=to_rfc3339(now), data=data)


@router.get("/{rental_id}", response_model=RentalOut, summary="Get a rental with its live accrual",
            responses=errors({404: "`contract_not_found`", 422: "`validation_error`"}))
def get_rental(rental_id: RentalIdPath, principal: LedgerRead, session: ReadSession, runtime: RuntimeDep) -> RentalOut:
    """Status, the locked rate and quote, and what it has cost so far: `cost_so_far` +
    `refund_available` = `held`. Settled rentals carry the `settlement` figures."""
    return _out(_visible(session, principal, rental_id), runtime.clock.now_ns())


# -- samples --------------------------------------------------------------------------------
class SampleBatchTooLarge(BatchTooLarge):
    """The transfers' `batch_too_large` (same status and code), titled for samples."""

    title = "The batch has too many samples"


async def _samples_body(request: Request) -> Parsed[SampleBatch]:
    """One sample (an object of metrics) or a batch (`{"samples": [...]}`)."""
    settings = request.app.state.runtime.settings
    data, raw = await read_json(request, max_bytes=settings.max_body_bytes)
    if isinstance(data, dict) and "samples" in data:
        listed = data["samples"]
        if isinstance(listed, list) and len(listed) > settings.max_batch:
            raise SampleBatchTooLarge(f"a batch holds at most {settings.max_batch} samples")
        return Parsed(validate(SampleBatch, data), raw)
    return Parsed(SampleBatch(samples=[validate(SampleIn, data)]), raw)


@router.post(
    "/{rental_id}/samples", status_code=201, response_model=SamplesAccepted, summary="Record metrics samples",
    openapi_extra=openapi_body(SampleIn, SampleBatch),
    responses=errors({
        404: "`contract_not_found`",
        409: "`contract_not_active`, `contract_already_settled`, `contract_expired`",
        413: "`payload_too_large`, `batch_too_large` (more than 1000 samples)",
        422: "`validation_error`, `invalid_rental_request` (unknown metric, out of range)",
    }),
)
async def add_samples(
    request: Request,
    rental_id: RentalIdPath,
    principal: LedgerWriteAsync,
    body: Annotated[Parsed[SampleBatch], Depends(_samples_body)],
) -> SamplesAccepted:
    """Store samples, stamped with the server's time (a batch shares one timestamp). Each
    `power_w` extends the exact energy integral that metered power is charged from; nothing
    is written to the ledger per sample. A batch is all-or-nothing. Answered once committed
    (group commit with concurrent samples)."""
    runtime = get_runtime(request)  # not RuntimeDep: a sync dependency would cost a threadpool hop
    # Refuse the whole batch before storing any of it.
    clean = [rental_service.validate_sample(s.values()) for s in body.value.samples]
    try:
        done = await runtime.sampler.record_async(principal.tenant_id, rental_id, clean,
                                                  owner=owner_filter(principal))
    except SamplerStopped:
        raise ServiceUnavailable("samples are not being accepted right now") from None
    rental = done.rental
    return SamplesAccepted(rental_id=rental.id, accepted=len(clean), sample_count=rental.sample_count,
                           accrual=AccrualOut.of(done.accrual, rental.scale))


@router.get("/{rental_id}/samples", response_model=SampleList, summary="List a rental's samples",
            responses=errors({404: "`contract_not_found`", 422: "`validation_error`"}))
def list_samples(
    rental_id: RentalIdPath,
    principal: LedgerRead,
    session: ReadSession,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> SampleList:
    """The newest `limit` samples, newest first."""
    _visible(session, principal, rental_id)
    rows = rental_service.samples(session, principal.tenant_id, rental_id, limit=limit)
    return SampleList(data=[SampleOut.of(s) for s in rows])


# -- extend and settle -----------------------------------------------------------------------
@router.post(
    "/{rental_id}/extend", response_model=RentalExtended, summary="Extend a prepaid contract",
    openapi_extra=openapi_body(RentalExtend),
    responses=errors({
        402: "`insufficient_funds`: the wallet does not cover the extension (non-simulated rail)",
        404: "`contract_not_found`",
        409: f"{_STATE_ERRORS}; `payment_proof_reused`",
        413: "`payload_too_large`",
        422: "`validation_error`, `invalid_rental_request`, `amount_precision`, `invalid_payment_proof`, "
             "`invalid_idempotency_key`",
    }),
)
def extend_rental(
    rental_id: RentalIdPath,
    request: Request,
    principal: LedgerWrite,
    body: Annotated[Parsed[RentalExtend], Depends(json_body(RentalExtend))],
    session: WriteSession,
    runtime: RuntimeDep,
) -> Response:
    """Add `hours` to a prepaid contract at its locked rate; the price is added to the escrow
    hold (from `payment`, else from the wallet). Sessions are not extended: their hold
    renews while the wallet can fund it (409). Accepts `Idempotency-Key`."""
    rental = _visible(session, principal, rental_id)
    data = body.value
    tenant = principal.tenant_id
    now = runtime.clock.now_ns()

    def work() -> Response:
        pay = data.payment
        paid = None if pay is None or pay.amount is None else parse_amount(pay.amount, rental.scale)
        res = contract_service.extend(session, tenant, rental_id, added_s=parse_hours(data.hours, "hours"),
                                      proof=None if pay is None else pay.proof, paid_minor=paid, clock=runtime.clock)
        out = RentalExtended(**dict(_out(res.rental, now)), added_seconds=res.added_seconds,
                             added=format_amount(res.added_minor, res.rental.scale))
        return json_response(out, 200)

    return in_transaction(request, tenant, body.raw, session, now, work)


async def _empty_body(request: Request) -> bytes:
    """Settle takes no fields: an absent body or `{}`. Returns the raw bytes (Idempotency-Key)."""
    runtime: Runtime = request.app.state.runtime
    raw = await request.body()
    if len(raw) > runtime.settings.max_body_bytes:
        raise PayloadTooLarge(f"the body is larger than {runtime.settings.max_body_bytes} bytes")
    if raw.strip() and loads(raw) != {}:
        raise ValidationFailed("settle takes no fields: send no body or {}")
    return raw


@router.post(
    "/{rental_id}/settle", response_model=RentalOut, summary="End and settle a rental",
    responses=errors({
        404: "`contract_not_found`",
        409: "`contract_already_settled`; `ledger_refused`; `idempotency_conflict`",
        422: "`validation_error`, `invalid_idempotency_key`",
    }),
)
def settle_rental(
    rental_id: RentalIdPath,
    request: Request,
    principal: LedgerWrite,
    raw: Annotated[bytes, Depends(_empty_body)],
    session: WriteSession,
    runtime: RuntimeDep,
) -> Response:
    """End the rental now (or at its expiry, if that has passed) and settle it in one linked
    ledger batch: the used amount is posted from escrow and split between the provider and
    the platform fee; the rest is released — for a prepaid contract, refunded through the
    payment's rail. Exactly once: a second call is 409. Accepts `Idempotency-Key`."""
    _visible(session, principal, rental_id)
    tenant = principal.tenant_id
    now = runtime.clock.now_ns()

    def work() -> Response:
        done = rental_service.settle(session, tenant, rental_id, runtime.clock, reason="ended")
        return json_response(_out(done.rental, now), 200)

    return in_transaction(request, tenant, raw, session, now, work)
