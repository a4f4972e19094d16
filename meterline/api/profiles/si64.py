"""The SI64 profile (seeds/000): prepaid GPU/M2 rental contracts at the seed's paths and shapes.

    POST /api/rent                      → contract_service.rent (payment proof claimed once)
    GET  /api/contracts/{id}            → one primary-key read (rentals/reads.py) + accrual (cost on read)
    POST /api/metrics/{id}              → the sample batcher (group commit; rentals/sampler.py)
    POST /api/contracts/{id}/extend     → contract_service.extend
    GET  /api/devices/{tier}            → catalog devices + active leases (one grouped query)
    GET  /api/billing/ledger            → SQL totals + a page of active contracts + recent settlements
    POST /api/contracts/{id}/settle     → rental_service.settle (one linked ledger batch, exactly once)
    GET  /api/stats                     → counts and totals

Amounts are exact JSON numbers in SOL (`money.to_major(minor, scale)`), times
Unix seconds. Bodies are parsed with Decimal numbers (`api.body`); every error
is problem+json. Reads need `ledger:read`, changes `ledger:write` (dev mode:
unauthenticated loopback calls are the default tenant's admin). One request,
one transaction: `WriteSession` / `ReadSession` commit at the edge.

Contracts only. A `Rental` row is either a prepaid contract (this profile's) or a
pay-as-you-go session (the Dante profile's): every route here addresses prepaid
rentals only, and a session's id answers exactly as an unknown id (404
`contract_not_found`), so ids do not leak from one profile into the other. The
kind is checked where the row is read — in the status read's WHERE clause, by the
sample batcher on the row it loads anyway, in `_own_contract` — never by an extra
query. The billing ledger and stats cover contracts only.
"""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Annotated, Any, TypeVarTuple

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import Select, select, tuple_
from sqlalchemy.orm import Session, load_only
from starlette.concurrency import run_in_threadpool

from meterline.api import exact_json
from meterline.api.body import Parsed, json_body, openapi_body
from meterline.api.body import loads as json_loads
from meterline.api.deps import ReadSession, RuntimeDep, WriteSession, get_runtime
from meterline.api.exact_json import ExactJSONResponse
from meterline.api.fastpath import FastRoute
from meterline.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from meterline.api.idempotency import in_transaction
from meterline.api.profiles.si64_schemas import (
    BillingLedger,
    ContractStatus,
    DeviceOut,
    ExtendRequest,
    ExtendResponse,
    LedgerContract,
    LedgerSettlement,
    MetricsRequest,
    MetricsResponse,
    RentRequest,
    RentResponse,
    SettleResponse,
    Stats,
)
from meterline.api.runtime import Runtime
from meterline.api.v1.common import (
    LedgerRead,
    LedgerReadAsync,
    LedgerWrite,
    LedgerWriteAsync,
    decode_time_id_cursor,
    encode_cursor,
    errors,
    ledger_read_async,
    ledger_write_async,
)
from meterline.api.v1.principals import is_staff, owner_filter, owns, require_self
from meterline.catalog.service import catalog_service
from meterline.db.scoping import scoped
from meterline.errors import Forbidden, ServiceUnavailable
from meterline.identity.service import Principal
from meterline.money import STANDARD_ASSETS, parse_amount, to_major
from meterline.rentals import accrual
from meterline.rentals.contracts import active_leases, contract_service
from meterline.rentals.models import Rental
from meterline.rentals.reads import ContractReader, ContractRow, contract_reader
from meterline.rentals.sampler import SamplerStopped
from meterline.rentals.service import (
    ACTIVE,
    PREPAID,
    SAMPLE_FIELDS,
    SETTLED,
    Accrual,
    AccrualState,
    InvalidRentalRequest,
    RentalNotFound,
    RentalState,
    parse_hours,
    rental_service,
    term_price,
)

Ts = TypeVarTuple("Ts")

router = APIRouter(prefix="/api", tags=["profile: si64"])

# Every SI64 amount field is named in SOL (`cost_sol`, `prepaid_sol`, ...); the ledger view and
# stats cover the rentals held in it. Each row still carries its `asset`.
PROFILE_ASSET = "SOL"
_SCALE = next(a.scale for a in STANDARD_ASSETS if a.code == PROFILE_ASSET)
NS = accrual.NS
_HOURS_PLACES = Decimal("0.0001")  # the seed shows elapsed_hours to 4 places (0.0042)
_EXACT = Context(prec=40)
_json_str = json.encoder.encode_basestring  # type: ignore[attr-defined]  # the C escaper (ensure_ascii=False)

ContractId = Annotated[str, Path(min_length=1, max_length=64, description="`CTR-` and 8 letters/digits.")]
_metrics_body = json_body(MetricsRequest)
_FAST_BODY_BYTES = 16 * 1024  # a sample's body on the fast path (bigger ones take the route)
PageLimit = Annotated[int, Query(ge=1, le=1000, description="Active contracts per page (newest first).")]
SettledLimit = Annotated[int, Query(ge=0, le=1000, description="How many recent settlements to list.")]
PageCursor = Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]*$",
                                         description="`next_cursor` of the previous page.")]

_NOT_FOUND = {404: "`contract_not_found` (also another tenant's or customer's contract, and a pay-as-you-go "
                   "session's id)"}
_BAD_INPUT = {413: "`payload_too_large`", 422: "`validation_error`, `invalid_rental_request`"}


# -- shaping helpers ----------------------------------------------------------------------------


def _secs(ns: int | None) -> int | None:
    return None if ns is None else ns // NS


def _elapsed_hours(seconds: int) -> Decimal:
    return (Decimal(seconds) / 3600).quantize(_HOURS_PLACES, rounding=ROUND_HALF_UP)


def _hours(seconds: int) -> Decimal:
    """Exact hours when they terminate (0.1 h = 360 s), else to 6 places (1 s = 0.000278 h)."""
    d = _EXACT.divide(Decimal(seconds), Decimal(3600))
    return d if d * 3600 == seconds else d.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def _status(rental: AccrualState, now_ns: int) -> str:
    """ACTIVE, SETTLED, or EXPIRED for an active contract past its term that the worker has
    not settled yet (it accrues nothing more)."""
    if rental.status == ACTIVE and rental.expires_at is not None and now_ns >= rental.expires_at:
        return "EXPIRED"
    return rental.status


def _remaining(rental: AccrualState, elapsed_s: int) -> int:
    if rental.status != ACTIVE or rental.duration_s is None:
        return 0
    return max(0, rental.duration_s - elapsed_s)


def _answer(model: BaseModel, status: int = 200) -> ExactJSONResponse:
    # model_dump in python mode keeps Decimals; ExactJSONResponse writes their exact digits.
    return ExactJSONResponse(model.model_dump(), status_code=status)


def _parse_amount(value: Any, scale: int) -> int | None:
    return None if value is None else parse_amount(value, scale)


# The hot answers (status, metrics) are written directly, not built as a response model and
# dumped: the model stays the documented `response_model`, and tests check that the answers
# carry exactly its fields, in order. Strings go through the JSON encoder's C escaper, numbers
# through `exact_json.number` (a Decimal's exact digits).


def _j_str(value: str | None) -> str:
    return "null" if value is None else _json_str(value)


def _j_int(value: int | None) -> str:
    return "null" if value is None else str(value)


def _j_num(value: Decimal | None) -> str:
    return "null" if value is None else exact_json.number(value)


def _j_minor(minor: int, scale: int) -> str:
    """`_j_num(to_major(minor, scale))`, from the integer: the same exact digits (trailing zeros
    dropped, "0" for zero) without building, scaling and normalising a Decimal."""
    if minor == 0:
        return "0"
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**scale)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{scale}d}".rstrip("0")


def _j_elapsed_hours(seconds: int) -> str:
    """`_j_num(_elapsed_hours(seconds))` in integers: seconds / 3600 to 4 places, half-up, is
    round(seconds × 25 / 9) ten-thousandths. (A ninth never sits on a half, so no tie arises.)"""
    return _j_minor((seconds * 50 + 9) // 18, 4) if seconds >= 0 else _j_num(_elapsed_hours(seconds))


class _JSONAnswer(Response):
    """A 200 JSON answer from bytes already written: Starlette's `Response` renders its content
    and works out its headers in Python on every construction; the hot answers know both."""

    media_type = "application/json"

    def __init__(self, body: bytes) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]


def _contract_status(rental: ContractRow, now_ns: int) -> bytes:
    """A ContractStatus, as JSON."""
    acc = rental_service.accrual(rental, now_ns)
    m = rental.scale
    settled = rental.status == SETTLED
    return (
        f'{{"contract_id":{_j_str(rental.id)},"wallet":{_j_str(rental.customer_id)},"tier":{_j_str(rental.tier)},'
        f'"status":{_j_str(_status(rental, now_ns))},"prepaid_sol":{_j_minor(rental.held_minor, m)},'
        f'"used_sol":{_j_minor(acc.cost_minor, m)},'
        f'"refund_available":{_j_minor(acc.refund_minor, m)},'
        f'"duration_hours":{_j_num(_hours(rental.duration_s or 0))},'
        f'"elapsed_hours":{_j_elapsed_hours(acc.elapsed_s)},'
        f'"remaining_seconds":{_remaining(rental, acc.elapsed_s)},"created_at":{rental.created_at // NS},'
        f'"expires_at":{_j_int(_secs(rental.expires_at))},"device_id":{_j_str(rental.device_id)},'
        f'"asset":{_j_str(rental.asset)},"settled_at":{_j_int(_secs(rental.settled_at))},'
        f'"refund_sol":{_j_minor(rental.refund_minor or 0, m) if settled else "null"},'
        f'"tx_signature":{_j_str(rental.refund_tx if settled else None)}}}'
    ).encode()


# -- contracts ----------------------------------------------------------------------------------


@router.post(
    "/rent", summary="Rent a device tier for a prepaid term", response_model=RentResponse,
    openapi_extra=openapi_body(RentRequest),
    responses=errors({402: "`insufficient_payment`: `amount` is below the price",
                      404: "`tier_not_found`, `price_book_missing`",
                      409: "`payment_proof_reused`: this `tx_signature` already paid; "
                           "`no_device_available`; `idempotency_conflict`",
                      **_BAD_INPUT,
                      422: "`validation_error`, `invalid_rental_request` (hours), `amount_precision` "
                           "(more than 9 decimals), `invalid_amount`, `amount_not_positive`, "
                           "`invalid_payment_proof`, `rail_disabled` (simulation off outside dev mode)"}),
)
def rent(
    request: Request,
    principal: LedgerWrite,
    body: Annotated[Parsed[RentRequest], Depends(json_body(RentRequest))],
    session: WriteSession,
    runtime: RuntimeDep,
) -> Response:
    """Verify the payment (`tx_signature`, simulation rail by default — each proof pays once),
    credit the wallet and hold the term's price in escrow. The contract starts now."""
    data = body.value
    tenant = principal.tenant_id
    now = runtime.clock.now_ns()
    require_self(principal, data.wallet, "wallet")  # a customer rents for itself (403 otherwise)

    def work() -> Response:
        duration_s = parse_hours(data.duration_hours)
        _quote, scale, _price = contract_service.price(session, tenant, data.tier, duration_s)
        paid = _parse_amount(data.amount, scale)
        result = contract_service.rent(
            session, tenant, wallet=data.wallet, tier=data.tier, duration_s=duration_s, paid_minor=paid,
            proof=data.tx_signature, rail=None, clock=runtime.clock,
        )
        r = result.rental
        assert r.expires_at is not None
        return _answer(RentResponse(
            contract_id=r.id, status=r.status, cost_sol=to_major(result.price_minor, scale), tier=data.tier,
            duration_hours=_hours(duration_s), wallet=r.customer_id, device_id=r.device_id,
            paid_sol=to_major(result.paid_minor, scale), created_at=r.created_at // NS,
            expires_at=r.expires_at // NS, asset=r.asset,
        ))

    return in_transaction(request, tenant, body.raw, session, now, work)


@router.get("/contracts/{contract_id}", summary="A contract's live status", response_model=ContractStatus,
            responses=errors(_NOT_FOUND))
async def get_contract(request: Request, contract_id: ContractId, principal: LedgerReadAsync) -> Response:
    """Prepaid, used so far and refundable now — computed on read from the locked rate, so the
    three always add up (`prepaid_sol = used_sol + refund_available`)."""
    # Polled while devices stream samples: one primary-key SELECT of the columns the status
    # shows (rentals/reads.py), which never waits for the sample writer (WAL). On SQLite it
    # takes microseconds and runs right here on the event loop — a threadpool hop would cost
    # more than the read; on PostgreSQL it is a round trip, so it goes to the threadpool.
    runtime = get_runtime(request)
    reader = contract_reader(runtime.db)
    if reader.inline:
        return _read_contract(runtime, reader, principal, contract_id)
    return await run_in_threadpool(_read_contract, runtime, reader, principal, contract_id)


def _read_contract(runtime: Runtime, reader: ContractReader, principal: Principal, contract_id: str) -> Response:
    row = reader.status_row(principal.tenant_id, contract_id, style=PREPAID)
    if row is None or not owns(principal, row.customer_id):  # another customer's is not found either
        raise RentalNotFound(f"contract {contract_id} does not exist")
    return _JSONAnswer(_contract_status(row, runtime.clock.now_ns()))


@router.post(
    "/metrics/{contract_id}", summary="Record a usage sample", response_model=MetricsResponse,
    openapi_extra=openapi_body(MetricsRequest),
    responses=errors({**_NOT_FOUND, 409: "`contract_already_settled`, `contract_expired`, "
                                         "`contract_not_active`", **_BAD_INPUT}),
)
async def record_metrics(
    request: Request,
    contract_id: ContractId,
    principal: LedgerWriteAsync,
    body: Annotated[Parsed[MetricsRequest], Depends(_metrics_body)],
) -> Response:
    """Store a metrics sample and answer with the running cost. Nothing is written to the
    ledger per sample; cost accrues with time (and metered power, when `power_w` is sent).
    Answered once the sample is committed (group commit with concurrent samples)."""
    values = {k: v for k, v in body.value.model_dump().items() if k in SAMPLE_FIELDS and v is not None}
    return await _record(request, principal, contract_id, values, body.raw)


async def _record(request: Request, principal: Principal, contract_id: str, values: dict[str, Any],
                  raw: bytes) -> Response:
    runtime = get_runtime(request)  # not RuntimeDep: a sync dependency would cost a threadpool hop
    if _has_header(request, _IDEMPOTENCY_NAME):
        # Claiming the key and storing the sample must commit together: the one-transaction path.
        return await run_in_threadpool(_record_idempotent, request, runtime, principal, contract_id, values, raw)
    clean = rental_service.validate_sample(values)
    try:
        done = await runtime.sampler.record_async(principal.tenant_id, contract_id, [clean],
                                                  owner=owner_filter(principal), style=PREPAID)
    except SamplerStopped:
        raise ServiceUnavailable("samples are not being accepted right now") from None
    return _metrics_answer(done.rental, done.accrual)


_IDEMPOTENCY_NAME = IDEMPOTENCY_HEADER.lower().encode("latin-1")


def _has_header(request: Request, name: bytes) -> bool:
    # Straight from the ASGI headers (lower-case names): Starlette's Headers mapping costs more.
    return any(k == name for k, _ in request.scope["headers"])


def _fast_contract_id(request: Request) -> str | None:
    """The path's contract id when it satisfies `ContractId`; otherwise the route renders the 422."""
    contract_id: str = request.path_params["contract_id"]
    return contract_id if 1 <= len(contract_id) <= 64 else None


async def _fast_get_contract(request: Request) -> Response | None:
    contract_id = _fast_contract_id(request)
    if contract_id is None:
        return None
    return await get_contract(request, contract_id, await ledger_read_async(request))


async def _fast_record_metrics(request: Request) -> Response | None:
    contract_id: str = request.path_params["contract_id"]
    if not 1 <= len(contract_id) <= 64:  # `ContractId`; otherwise the route renders the 422
        return None
    principal = await ledger_write_async(request)
    # The fast path hands over bodies that came in one message (a sample is ~100 bytes); the
    # body limit middleware has refused any declared Content-Length over the limit already.
    raw = await request.body()
    if len(raw) > _FAST_BODY_BYTES:
        return None  # the route reads, limits and parses a big body (off the event loop)
    data = json_loads(raw)
    # MetricsRequest, without building the model: an object's sample fields (others are ignored,
    # as the model ignores them). Anything else goes to the route, which renders the 422.
    if not isinstance(data, dict):
        return None
    runtime: Runtime = request.app.state.runtime
    if _has_header(request, _IDEMPOTENCY_NAME):
        values = {k: v for k, v in data.items() if k in SAMPLE_FIELDS and v is not None}
        return await run_in_threadpool(_record_idempotent, request, runtime, principal, contract_id, values, raw)
    clean = rental_service.validate_sample(data, ignore_unknown=True)
    try:
        done = await runtime.sampler.record_async(principal.tenant_id, contract_id, [clean],
                                                  owner=owner_filter(principal), style=PREPAID)
    except SamplerStopped:
        raise ServiceUnavailable("samples are not being accepted right now") from None
    return _metrics_answer(done.rental, done.accrual)


# Devices stream samples and poll status thousands of times a second: both are dispatched
# ahead of FastAPI's router (meterline.api.fastpath), through the same functions.
FAST_ROUTES = [FastRoute("GET", "/api/contracts/{contract_id}", _fast_get_contract),
               FastRoute("POST", "/api/metrics/{contract_id}", _fast_record_metrics)]


def _record_idempotent(request: Request, runtime: Runtime, principal: Principal, contract_id: str,
                       values: dict[str, Any], raw: bytes) -> Response:
    tenant = principal.tenant_id
    with runtime.db.session(write=True) as session:
        _own_contract(session, principal, contract_id)  # before a stored answer is replayed

        def work() -> Response:
            rental, acc = rental_service.record_sample(session, tenant, contract_id, values, runtime.clock,
                                                       owner=owner_filter(principal), style=PREPAID)
            return _metrics_answer(rental, acc)

        return in_transaction(request, tenant, raw, session, runtime.clock.now_ns(), work)


def _metrics_answer(rental: RentalState, acc: Accrual) -> Response:
    """A MetricsResponse, written directly (see `_contract_status`): it answers every sample."""
    m = rental.scale
    return _JSONAnswer(
        f'{{"contract_id":{_json_str(rental.id)},"metrics_recorded":true,'
        f'"elapsed_hours":{_j_elapsed_hours(acc.elapsed_s)},'
        f'"cost_so_far":{_j_minor(acc.cost_minor, m)},'
        f'"refund_available":{_j_minor(acc.held_minor - acc.cost_minor, m)},'
        f'"remaining_seconds":{_remaining(rental, acc.elapsed_s)},"samples":{rental.sample_count}}}'.encode()
    )


@router.post(
    "/contracts/{contract_id}/extend", summary="Extend a contract's term", response_model=ExtendResponse,
    openapi_extra=openapi_body(ExtendRequest),
    responses=errors({**_NOT_FOUND,
                      402: "`insufficient_funds`: a non-simulated rail needs a payment covering the price",
                      409: "`contract_already_settled`, `contract_expired`, `payment_proof_reused`",
                      **_BAD_INPUT,
                      422: "`validation_error`, `rail_disabled` (simulation off outside dev mode)"}),
)
def extend(
    request: Request,
    contract_id: ContractId,
    principal: LedgerWrite,
    body: Annotated[Parsed[ExtendRequest], Depends(json_body(ExtendRequest))],
    session: WriteSession,
    runtime: RuntimeDep,
) -> Response:
    """Add `additional_hours` at the contract's locked rate and hold the price in escrow.
    Under the simulation rail the seed's call (no payment) is funded by a labelled simulated
    payment; with `tx_signature` (+ optional `amount`) that payment funds it."""
    data = body.value
    tenant = principal.tenant_id
    now = runtime.clock.now_ns()
    scale = _own_contract(session, principal, contract_id).scale  # before a stored answer is replayed

    def work() -> Response:
        added_s = parse_hours(data.additional_hours, "additional_hours")
        if data.amount is not None and data.tx_signature is None:
            raise InvalidRentalRequest("amount needs the tx_signature of the payment it describes")
        paid = _parse_amount(data.amount, scale)
        result = contract_service.extend(session, tenant, contract_id, added_s=added_s,
                                         proof=data.tx_signature, paid_minor=paid, clock=runtime.clock)
        r = result.rental
        assert r.expires_at is not None
        return _answer(ExtendResponse(
            contract_id=r.id, extended_hours=_hours(added_s), additional_cost_sol=to_major(
                result.added_minor if result.cost_minor is None else result.cost_minor, scale),
            # The whole term's cost at the locked rate: an overpayment is held (and refunded at
            # settlement), so what is held can be more.
            new_total_cost=to_major(term_price((r.rate_num, r.rate_den, r.rounding), r.duration_s or 0), scale),
            new_expiration=r.expires_at // NS,
            duration_hours=_hours(r.duration_s or 0), status=r.status,
        ))

    return in_transaction(request, tenant, body.raw, session, now, work)


@router.post(
    "/contracts/{contract_id}/settle", summary="Settle a contract now", response_model=SettleResponse,
    responses=errors({**_NOT_FOUND, 409: "`contract_already_settled`"}),
)
def settle(request: Request, contract_id: ContractId, principal: LedgerWrite, session: WriteSession,
           runtime: RuntimeDep) -> Response:
    """End the contract and settle it in one linked ledger batch: the used part is paid to the
    provider (less the platform fee), the rest refunded through the payment's rail. Exactly
    once: a second settle (or a concurrent one) is 409 `contract_already_settled`."""
    tenant = principal.tenant_id
    now = runtime.clock.now_ns()
    _own_contract(session, principal, contract_id)  # before a stored answer is replayed

    def work() -> Response:
        s = rental_service.settle(session, tenant, contract_id, runtime.clock)
        r, m = s.rental, s.rental.scale
        assert r.settled_at is not None
        return _answer(SettleResponse(
            contract_id=r.id, status=r.status, prepaid_sol=to_major(r.held_minor, m),
            used_sol=to_major(s.used_minor, m), refund_sol=to_major(s.refund_minor, m),
            tx_signature=s.refund_tx, provider_sol=to_major(s.provider_minor, m), fee_sol=to_major(s.fee_minor, m),
            settled_at=r.settled_at // NS, end_reason=r.end_reason, asset=r.asset,
        ))

    return in_transaction(request, tenant, b"", session, now, work)


# -- devices ------------------------------------------------------------------------------------


@router.get("/devices/{tier}", summary="Devices of a tier", response_model=list[DeviceOut],
            responses=errors({404: "`tier_not_found`"}))
def list_devices(tier: Annotated[str, Path(min_length=1, max_length=32)], principal: LedgerRead,
                 session: ReadSession) -> Response:
    """Every device of the tier with its active leases (one grouped query) and uptime."""
    tenant = principal.tenant_id
    catalog_service.get_tier(session, tenant, tier)
    devices = catalog_service.list_devices(session, tenant, tier=tier)
    leases = active_leases(session, tenant, [d.id for d in devices])
    return _answer_list([
        DeviceOut(id=d.id, name=d.name, uri=d.uri, address=d.address, region=d.region, ram=f"{d.ram_gb}GB",
                  leases=leases.get(d.id, 0), uptime=_percent(d.uptime_bp), audited=d.audited, status=d.status,
                  tier=d.tier_id)
        for d in devices
    ])


def _percent(basis_points: int) -> str:
    text = format(Decimal(basis_points).scaleb(-2).normalize(), "f")
    return f"{text}%"


def _answer_list(items: list[BaseModel]) -> ExactJSONResponse:
    return ExactJSONResponse([i.model_dump() for i in items])


# -- the billing ledger and stats -----------------------------------------------------------------
# Totals come from `rental_service.totals` (SQL over every active contract, the same integer
# formula as the per-contract figures, so a total always equals the sum of the rows), limited to
# the profile's asset: minor units of different assets don't add up. The two lists order in ways
# `rental_service.list_rentals` does not (it pages by id, and contract ids are random): active
# contracts newest first with a (created_at, id) keyset cursor, settlements by settlement time.
# Both are tenant-scoped through `db.scoping.scoped`.


def _in_profile(stmt: Select[*Ts], tenant: str) -> Select[*Ts]:
    # `scoped` is typed for one-column selects; the tenant filter is the same for any.
    return scoped(stmt, Rental, tenant).where(  # type: ignore[type-var]
        Rental.asset == PROFILE_ASSET, Rental.style == PREPAID)


def _totals(session: Session, tenant: str, now_ns: int) -> dict[str, int]:
    return rental_service.totals(session, tenant, now_ns, asset=PROFILE_ASSET, style=PREPAID)


_ROW_COLUMNS = (
    Rental.tenant_id, Rental.id, Rental.status, Rental.customer_id, Rental.tier, Rental.asset, Rental.scale,
    Rental.held_minor, Rental.created_at, Rental.started_at, Rental.expires_at, Rental.ended_at,
    Rental.settled_at, Rental.used_minor, Rental.rate_num, Rental.rate_den, Rental.power_cost_e6,
    Rental.rounding,
)


def _active_page(session: Session, tenant: str, limit: int, cursor: tuple[int, str] | None
                 ) -> tuple[list[Rental], str | None]:
    # Only what a ledger row shows and the accrual needs: skipping the quote (JSON) and the
    # other wide columns halves the cost of loading a page.
    stmt = _in_profile(select(Rental), tenant).where(Rental.status == ACTIVE).options(load_only(*_ROW_COLUMNS))
    if cursor is not None:
        stmt = stmt.where(tuple_(Rental.created_at, Rental.id) < tuple_(*cursor))
    rows = list(session.scalars(stmt.order_by(Rental.created_at.desc(), Rental.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if more and rows else None
    return rows, (encode_cursor(f"{last.created_at}:{last.id}") if last is not None else None)


def _recent_settlements(session: Session, tenant: str, limit: int) -> list[Rental]:
    if limit == 0:
        return []
    stmt = _in_profile(select(Rental), tenant).where(Rental.status == SETTLED)
    return list(session.scalars(stmt.order_by(Rental.settled_at.desc(), Rental.id.desc()).limit(limit)))


def _ledger_row(r: Rental, now_ns: int) -> LedgerContract:
    acc = rental_service.accrual(r, now_ns)
    m = r.scale
    return LedgerContract(
        contract_id=r.id, wallet=r.customer_id, tier=r.tier, prepaid=to_major(r.held_minor, m),
        used=to_major(acc.cost_minor, m), refund=to_major(acc.refund_minor, m), status=_status(r, now_ns),
        created_at=r.created_at // NS, expires_at=_secs(r.expires_at), asset=r.asset,
    )


def _own_contract(session: Session, principal: Principal, contract_id: str) -> Rental:
    """The contract, if the caller may act on it; another customer's — or a pay-as-you-go
    session, which is not a contract of this profile — is not found."""
    rental = rental_service.get(session, principal.tenant_id, contract_id)
    if rental.style != PREPAID or not owns(principal, rental.customer_id):
        raise RentalNotFound(f"contract {contract_id} does not exist")
    return rental


def _require_staff(principal: Principal) -> None:
    if not is_staff(principal):
        raise Forbidden("the tenant's books are for admin and operator keys")


def _settlement_row(r: Rental) -> LedgerSettlement:
    m = r.scale
    assert r.settled_at is not None
    return LedgerSettlement(
        contract_id=r.id, wallet=r.customer_id, tier=r.tier, prepaid=to_major(r.held_minor, m),
        used=to_major(r.used_minor or 0, m), refund=to_major(r.refund_minor or 0, m), status=r.status,
        settled_at=r.settled_at // NS, platform_fee=to_major(r.fee_minor or 0, m),
        provider_share=to_major(r.provider_minor or 0, m), end_reason=r.end_reason, tx_signature=r.refund_tx,
        asset=r.asset,
    )


@router.get("/billing/ledger", summary="Active contracts, settlements and totals", response_model=BillingLedger,
            responses=errors({422: "`validation_error`, `invalid_cursor`"}))
def billing_ledger(principal: LedgerRead, session: ReadSession, runtime: RuntimeDep, limit: PageLimit = 100,
                   cursor: PageCursor = None, settlements_limit: SettledLimit = 50) -> Response:
    """Totals over every active SOL contract (computed in SQL), the newest `limit` active
    contracts (page on with `cursor` = `next_cursor`) and the `settlements_limit` most recent
    settlements. `total_used` is usage revenue: accrued on active contracts plus used by
    settled ones; `total_active_value` and `total_pending_refunds` cover active contracts.
    The whole tenant's books: for admin and operator keys."""
    _require_staff(principal)
    tenant = principal.tenant_id
    now = runtime.clock.now_ns()
    page, next_cursor = _active_page(session, tenant, limit, decode_time_id_cursor(cursor))
    settled = _recent_settlements(session, tenant, settlements_limit)
    t = _totals(session, tenant, now)
    scale = _SCALE
    return _answer(BillingLedger(
        active_contracts=[_ledger_row(r, now) for r in page],
        completed_settlements=[_settlement_row(r) for r in settled],
        total_active_value=to_major(t["active_held"], scale),
        total_used=to_major(t["active_used"] + t["settled_used"], scale),
        total_pending_refunds=to_major(t["active_refundable"], scale),
        active_count=t["active_count"], active_used=to_major(t["active_used"], scale),
        settled_count=t["settled_count"], settled_used=to_major(t["settled_used"], scale),
        total_refunded=to_major(t["settled_refunded"], scale), platform_fees=to_major(t["platform_fees"], scale),
        next_cursor=next_cursor, asset=PROFILE_ASSET, timestamp=now // NS,
    ))


@router.get("/stats", summary="Platform counts and totals", response_model=Stats, responses=errors())
def stats(principal: LedgerRead, session: ReadSession, runtime: RuntimeDep) -> Response:
    """Contracts active and settled, escrowed value, pending refunds, revenue (provider share
    and platform fee) and devices (available, and leased by at least one active contract).
    The whole tenant's figures: for admin and operator keys."""
    _require_staff(principal)
    tenant = principal.tenant_id
    now = runtime.clock.now_ns()
    t = _totals(session, tenant, now)
    devices = catalog_service.list_devices(session, tenant)
    leases = active_leases(session, tenant, [d.id for d in devices])
    scale = _SCALE
    return _answer(Stats(
        status="ok", timestamp=now // NS, asset=PROFILE_ASSET, active_contracts=t["active_count"],
        settled_contracts=t["settled_count"], total_active_value=to_major(t["active_held"], scale),
        total_used_active=to_major(t["active_used"], scale),
        total_pending_refunds=to_major(t["active_refundable"], scale),
        total_revenue=to_major(t["settled_used"], scale), platform_fees=to_major(t["platform_fees"], scale),
        provider_earnings=to_major(t["settled_used"] - t["platform_fees"], scale),
        total_refunded=to_major(t["settled_refunded"], scale), devices=len(devices),
        devices_available=sum(1 for d in devices if d.status == "available"),
        devices_leased=sum(1 for n in leases.values() if n > 0),
    ))
