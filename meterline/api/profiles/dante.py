"""The Dante profile (seeds/004): wallet, billing, provider and pricing endpoints under /api/v1.

Thin handlers over the same services as the native API: wallets (deposit,
withdraw, history), rentals' pay-as-you-go sessions (a rolling escrow hold,
cost computed on read, one linked settlement batch), payouts, and the dynamic
GPU pricing engine. Shapes follow the native API (see `dante_schemas`); the
endpoint-by-endpoint reference is docs/profiles/dante.md.

Who a call is for. A customer key acts for its own user (`principal.id`), a
provider key for its own provider; naming anyone else is 403
`subject_forbidden`. An admin or operator key — and dev-mode loopback, which is
the default tenant's admin — acts for the user or provider named by `user_id`
/ `provider_id` (body or query), which it must then give. Another tenant's
session is a 404, like one that doesn't exist.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal, localcontext
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.orm import Session

from meterline.api.body import Parsed, json_body, openapi_body
from meterline.api.deps import ReadSession, RuntimeDep, WriteSession
from meterline.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from meterline.api.idempotency import in_transaction, json_response
from meterline.api.profiles import dante_schemas as s
from meterline.api.v1.common import (
    Cursor,
    LedgerRead,
    LedgerWrite,
    decode_cursor,
    decode_seq_cursor,
    encode_cursor,
    errors,
)
from meterline.api.v1.principals import actor_id, owned_provider_ids
from meterline.catalog.service import GpuModelNotFound, catalog_service
from meterline.clock import to_rfc3339
from meterline.errors import Conflict, Forbidden, MeterlineError, NotFound, ValidationFailed
from meterline.identity.service import Principal
from meterline.ledger.schemas import ASSET_PATTERN, ID_PATTERN
from meterline.ledger.service import AccountNotFound, ledger_service
from meterline.money import Asset, parse_amount, to_decimal
from meterline.payouts.service import payout_service
from meterline.pricing.engine import (
    Quote,
    billable_seconds,
    check_rate,
    cost_minor,
    demand_multiplier,
    quote_gpu,
    split_fee,
)
from meterline.pricing.service import ProviderRateNotFound, pricing_service
from meterline.rentals.models import Rental
from meterline.rentals.service import (
    ACTIVE,
    PAYG,
    SETTLED,
    RentalAlreadySettled,
    RentalNotFound,
    rental_service,
)
from meterline.rentals.sessions import USER_OWNER, busy_devices, session_service
from meterline.wallets.service import owned_account_id, wallet_service

router = APIRouter(prefix="/api/v1", tags=["dante"])

# -- errors -------------------------------------------------------------------------------


class SubjectForbidden(Forbidden):
    code = "subject_forbidden"
    title = "This key acts only for its own user or provider"


class PrincipalKindForbidden(Forbidden):
    code = "principal_kind_forbidden"
    title = "This kind of key cannot use this endpoint"


class KeyNotBound(Forbidden):
    code = "key_not_bound"
    title = "The key is not bound to a user or provider id"


class SessionNotFound(NotFound):
    code = "session_not_found"
    title = "No such session"


class SessionNotActive(Conflict):
    code = "session_not_active"
    title = "The session has already ended"


class IdempotencyKeyRequired(MeterlineError):
    status = 422
    code = "idempotency_key_required"
    title = "This request needs an Idempotency-Key header or a request_id"


# -- parameters ----------------------------------------------------------------------------

UserQuery = Annotated[str | None, Query(min_length=1, max_length=128, pattern=ID_PATTERN,
                                        description="Admin/operator keys: the user to act for.")]
ProviderQuery = Annotated[str | None, Query(min_length=1, max_length=128, pattern=ID_PATTERN,
                                            description="Admin/operator keys: the provider to act for.")]
AssetQuery = Annotated[str | None, Query(pattern=ASSET_PATTERN,
                                         description="Default: the price book's asset (DGPU).")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size (1-1000).")]

_ACTING = ("admin", "operator")
_AUTH = {401: "`unauthenticated`, `invalid_api_key`",
         403: "`forbidden` (scope), `subject_forbidden`, `principal_kind_forbidden`, `key_not_bound`"}


def _errors(extra: dict[int, str]) -> dict[int | str, dict[str, object]]:
    return errors({**_AUTH, **extra})


# -- who the call is for -------------------------------------------------------------------


def _subject(principal: Principal, given: str | None, kind: str, field: str) -> str:
    if principal.kind == kind:
        if not principal.id:
            raise KeyNotBound(f"this {kind} key has no principal id; create it with --principal-id")
        if given is not None and given != principal.id:
            raise SubjectForbidden(f"a {kind} key acts only for {kind} {principal.id}")
        return principal.id
    if principal.kind in _ACTING:
        if given is None:
            raise ValidationFailed(f"an {principal.kind} key must name the {field} it acts for", errors=[
                {"field": field, "code": "missing", "detail": f"required with an {principal.kind} key"}])
        return given
    raise PrincipalKindForbidden(f"a {principal.kind} key cannot use this endpoint; use a {kind} key")


def user_for(principal: Principal, user_id: str | None) -> str:
    return _subject(principal, user_id, "customer", "user_id")


def provider_for(session: Session, principal: Principal, provider_id: str | None, *,
                 write: bool = False) -> str:
    """The provider the call is for. A provider key acts for the providers it owns, as on
    the native API (`owned_provider_ids`): naming another is 403, and naming none picks its
    only one. Staff name it; a provider's writes (payouts, rates) are its own key's or an
    admin's — an operator reviews payouts, it does not request them (as `/v1/payouts`)."""
    if principal.kind == "provider":
        if not principal.id:
            raise KeyNotBound("this provider key has no principal id; create it with --principal-id")
        owned = owned_provider_ids(session, principal) or []
        if provider_id is None and len(owned) == 1:
            return owned[0]
        if provider_id is None:
            raise ValidationFailed(f"this provider key acts for {len(owned)} providers: name the provider_id",
                                   errors=[{"field": "provider_id", "code": "missing",
                                            "detail": "required when a key owns no single provider"}])
        if provider_id not in owned:
            raise SubjectForbidden(f"provider key {principal.id} does not act for provider {provider_id}")
        return provider_id
    if write and principal.kind in _ACTING and not principal.has("admin"):
        raise PrincipalKindForbidden("a provider's payouts and rates are set by its own key or an admin key")
    pid = _subject(principal, provider_id, "provider", "provider_id")
    catalog_service.get_provider(session, principal.tenant_id, pid)  # 404 provider_not_found
    return pid


def _asset(session: Session, tenant_id: str, code: str | None) -> Asset:
    if code is None:
        code = pricing_service.current_book(session, tenant_id).asset
    return ledger_service.get_asset(session, tenant_id, code)


def _balance(session: Session, tenant_id: str, user_id: str, asset: str) -> s.WalletBalanceOut:
    return s.WalletBalanceOut.of(user_id, wallet_service.balance(session, tenant_id, USER_OWNER, user_id, asset))


# -- session shapes ------------------------------------------------------------------------


def _session_fields(rental: Rental) -> dict[str, object]:
    asset = Asset(rental.asset, rental.scale)
    return {
        "session_id": rental.id, "user_id": rental.customer_id, "status": rental.status.lower(),
        "end_reason": rental.end_reason, "device_id": rental.device_id, "provider_id": rental.provider_id,
        "gpu_model": rental.gpu_model, "vram_gb": rental.vram_gb, "started_at": to_rfc3339(rental.started_at),
        "ended_at": None if rental.ended_at is None else to_rfc3339(rental.ended_at),
        "quote": s.QuoteOut.of(Quote.from_dict(rental.quote)), "held": s.Money.of(rental.held_minor, asset),
    }


def _active(rental: Rental, now_ns: int) -> dict[str, object]:
    acc = rental_service.running_cost(rental, now_ns)  # the committed cost renewal judges cover by
    asset = Asset(rental.asset, rental.scale)
    return {
        **_session_fields(rental), "as_of": to_rfc3339(now_ns), "elapsed_seconds": acc.elapsed_s,
        "cost_so_far": s.Money.of(acc.cost_minor, asset), "refund_available": s.Money.of(acc.refund_minor, asset),
    }


def _settled(rental: Rental) -> dict[str, object]:
    assert rental.settled_at is not None and rental.ended_at is not None
    asset = Asset(rental.asset, rental.scale)
    duration = max(0, (rental.ended_at - rental.started_at) // 1_000_000_000)
    return {
        **_session_fields(rental), "settled_at": to_rfc3339(rental.settled_at), "duration_seconds": duration,
        "billed_seconds": billable_seconds(Quote.from_dict(rental.quote), duration),
        "cost": s.Money.of((rental.used_minor or 0) + (rental.unpaid_minor or 0), asset),
        "unpaid": s.Money.of(rental.unpaid_minor or 0, asset),
        "refund": s.Money.of(rental.refund_minor or 0, asset),
        "provider_earnings": s.Money.of(rental.provider_minor or 0, asset),
        "platform_fee": s.Money.of(rental.fee_minor or 0, asset),
    }


def _own_session(session: Session, tenant_id: str, user_id: str, session_id: str) -> Rental:
    """The user's pay-as-you-go session; anything else (another user's, another tenant's, a
    prepaid contract) is indistinguishable from a missing one."""
    try:
        rental = rental_service.get(session, tenant_id, session_id)
    except RentalNotFound:
        raise SessionNotFound(f"session {session_id} does not exist") from None
    if rental.style != PAYG or rental.customer_type != USER_OWNER or rental.customer_id != user_id:
        raise SessionNotFound(f"session {session_id} does not exist")
    return rental


# -- wallet --------------------------------------------------------------------------------


@router.get("/wallet/balance", response_model=s.WalletBalanceOut, summary="Wallet balance",
            responses=_errors({404: "`asset_not_found`, `price_book_missing`", 422: "`validation_error`"}))
def wallet_balance(principal: LedgerRead, session: ReadSession, user_id: UserQuery = None,
                   asset: AssetQuery = None) -> s.WalletBalanceOut:
    """The user's balance, what active sessions and withdrawals hold, and what is available.
    A user who never deposited has a zero balance."""
    uid = user_for(principal, user_id)
    a = _asset(session, principal.tenant_id, asset)
    return _balance(session, principal.tenant_id, uid, a.code)


@router.post(
    "/wallet/deposit", status_code=201, response_model=s.DepositOut, summary="Deposit tokens",
    openapi_extra=openapi_body(s.DepositIn),
    responses=_errors({
        404: "`asset_not_found`, `price_book_missing`",
        409: "`payment_proof_reused` (this tx_signature already credited a wallet); `idempotency_conflict`",
        422: "`validation_error`, `amount_precision`, `amount_not_positive`, `invalid_payment_proof`, "
             "`unknown_rail`, `rail_disabled`",
    }),
)
def wallet_deposit(request: Request, principal: LedgerWrite,
                   body: Annotated[Parsed[s.DepositIn], Depends(json_body(s.DepositIn))],
                   session: WriteSession, runtime: RuntimeDep) -> Response:
    """Credit the wallet from a payment proven by `tx_signature`, verified by the rail (the
    `simulation` rail accepts any proof and labels the ledger entry `SIMULATION_MODE`). A proof
    credits once: sending it again is 409 `payment_proof_reused`."""
    data, tenant = body.value, principal.tenant_id
    uid = user_for(principal, data.user_id)

    def work() -> Response:
        a = _asset(session, tenant, data.asset)
        dep = wallet_service.deposit(session, tenant, owner_type=USER_OWNER, owner_id=uid, asset=a.code,
                                     amount_minor=parse_amount(data.amount, a.scale), rail=data.rail,
                                     proof=data.tx_signature, clock=runtime.clock)
        return json_response(s.DepositOut(
            deposit_id=dep.transfer_id, user_id=uid, amount=s.Money.of(dep.amount_minor, a),
            tx_signature=dep.proof, rail=dep.rail, simulated=dep.simulated,
            balance=_balance(session, tenant, uid, a.code),
        ), 201)

    return in_transaction(request, tenant, body.raw, session, runtime.clock.now_ns(), work)


def _withdrawal_id(user_id: str, key: str) -> str:
    # Namespaced by user, so one user's request ids can never collide with (or reveal) another's.
    readable = f"dante:{user_id}:{key}"
    if len(readable) <= 100:
        return readable
    return "dante:" + hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()[:64]


@router.post(
    "/wallet/withdraw", status_code=201, response_model=s.WithdrawOut, summary="Withdraw tokens",
    openapi_extra=openapi_body(s.WithdrawIn),
    responses=_errors({
        402: "`insufficient_funds`: the available balance does not cover the amount",
        404: "`asset_not_found`, `price_book_missing`",
        409: "`idempotency_conflict` (the key or request_id was used for another withdrawal)",
        422: "`validation_error`, `idempotency_key_required`, `amount_precision`, `amount_not_positive`, "
             "`invalid_withdrawal`, `unknown_rail`, `rail_disabled`",
    }),
)
def wallet_withdraw(request: Request, principal: LedgerWrite,
                    body: Annotated[Parsed[s.WithdrawIn], Depends(json_body(s.WithdrawIn))],
                    session: WriteSession, runtime: RuntimeDep) -> Response:
    """Send tokens from the available balance to `destination` through the rail. Money leaves,
    so the request must be idempotent: send an `Idempotency-Key` header or a `request_id`
    (the header wins). Repeating it returns the same withdrawal and never debits twice."""
    data, tenant = body.value, principal.tenant_id
    uid = user_for(principal, data.user_id)
    key = request.headers.get(IDEMPOTENCY_HEADER) or data.request_id
    if not key:
        raise IdempotencyKeyRequired(f"send an {IDEMPOTENCY_HEADER} header or a request_id")

    def work() -> Response:
        a = _asset(session, tenant, data.asset)
        wd = wallet_service.withdraw(session, tenant, owner_type=USER_OWNER, owner_id=uid, asset=a.code,
                                     amount_minor=parse_amount(data.amount, a.scale), rail=data.rail,
                                     destination=data.destination, clock=runtime.clock,
                                     idempotency_id=_withdrawal_id(uid, key))
        return json_response(s.WithdrawOut(
            withdrawal_id=key, user_id=uid, status="completed", amount=s.Money.of(wd.amount_minor, a),
            destination=wd.destination, rail=wd.rail, tx_signature=wd.tx_signature, simulated=wd.simulated,
            balance=_balance(session, tenant, uid, a.code),
        ), 201)

    return in_transaction(request, tenant, body.raw, session, runtime.clock.now_ns(), work)


@router.get("/wallet/transactions", response_model=s.WalletTransactionPage, summary="Wallet transactions",
            responses=_errors({404: "`asset_not_found`, `price_book_missing`",
                               422: "`validation_error`, `invalid_cursor`"}))
def wallet_transactions(principal: LedgerRead, session: ReadSession, user_id: UserQuery = None,
                        asset: AssetQuery = None, limit: Limit = 100,
                        cursor: Cursor = None) -> s.WalletTransactionPage:
    """Every ledger entry of the wallet, oldest first: deposits, withdrawals, session holds,
    the spent part of each hold (`rental_settle`) and its released rest (`rental_release`)."""
    uid = user_for(principal, user_id)
    tenant = principal.tenant_id
    a = _asset(session, tenant, asset)
    page = wallet_service.history(session, tenant, USER_OWNER, uid, a.code, after_seq=decode_seq_cursor(cursor),
                                  limit=limit)
    return s.WalletTransactionPage(user_id=uid, data=[s.WalletTransaction.of(e, a) for e in page.items],
                                   next_cursor=encode_cursor(page.next_cursor))


# -- billing -------------------------------------------------------------------------------


@router.post(
    "/billing/start-session", status_code=201, response_model=s.StartSessionOut,
    summary="Start a GPU session", openapi_extra=openapi_body(s.StartSessionIn),
    responses=_errors({
        402: "`insufficient_funds`: the available balance cannot fund the first slice of the hold",
        404: "`gpu_model_not_found`, `device_not_found`, `price_book_missing`",
        409: "`no_device_available` (no device has that much free VRAM); `idempotency_conflict`",
        422: "`validation_error`, `invalid_vram`, `gpu_model_not_priced`",
    }),
)
def start_session(request: Request, principal: LedgerWrite,
                  body: Annotated[Parsed[s.StartSessionIn], Depends(json_body(s.StartSessionIn))],
                  session: WriteSession, runtime: RuntimeDep) -> Response:
    """Rent a GPU (or `vram_gb` of one) by the second. The price is quoted now — base rate ×
    VRAM fraction × demand, or the provider's minimum if higher, plus power — and locked into
    the session. A first slice (five minutes of time) is held from the wallet — power is held
    as it is metered, at the draw last sampled, never at the quote's estimate;
    the worker renews the hold while the wallet can fund it and ends the session with
    `insufficient_funds` when it cannot."""
    data, tenant = body.value, principal.tenant_id
    uid = user_for(principal, data.user_id)

    def work() -> Response:
        if data.device_id is not None:
            device = catalog_service.get_device(session, tenant, data.device_id)
            if data.gpu_model is not None and device.gpu_model_id != data.gpu_model:
                raise ValidationFailed("the device is not of that gpu_model", errors=[
                    {"field": "gpu_model", "code": "mismatch",
                     "detail": f"device {device.id} is a {device.gpu_model_id}"}])
        elif data.gpu_model is not None:
            catalog_service.get_gpu_model(session, tenant, data.gpu_model)
        rental = session_service.start(session, tenant, customer_id=uid, device_id=data.device_id,
                                       gpu_model=data.gpu_model, vram_gb=data.vram_gb, watts=data.watts,
                                       clock=runtime.clock)
        return json_response(s.StartSessionOut.model_validate({
            **_active(rental, runtime.clock.now_ns()), "balance": _balance(session, tenant, uid, rental.asset),
        }), 201)

    return in_transaction(request, tenant, body.raw, session, runtime.clock.now_ns(), work)


@router.post(
    "/billing/end-session", response_model=s.EndSessionOut, summary="End a GPU session",
    openapi_extra=openapi_body(s.EndSessionIn),
    responses=_errors({
        404: "`session_not_found` (also another user's or another tenant's session, and an SI64 contract's id)",
        409: "`session_not_active`: it already ended; `idempotency_conflict`",
        422: "`validation_error`",
    }),
)
def end_session(request: Request, principal: LedgerWrite,
                body: Annotated[Parsed[s.EndSessionIn], Depends(json_body(s.EndSessionIn))],
                session: WriteSession, runtime: RuntimeDep) -> Response:
    """End and settle the session in one ledger batch: the cost (elapsed time, at least the
    minimum session, rounded up to the granularity, plus metered power) is taken from the
    hold, split provider / platform fee by largest remainder, and the rest of the hold is
    released to the wallet."""
    data, tenant = body.value, principal.tenant_id
    uid = user_for(principal, data.user_id)

    def work() -> Response:
        rental = _own_session(session, tenant, uid, data.session_id)
        if rental.status != ACTIVE:
            raise SessionNotActive(f"session {rental.id} is {rental.status.lower()}")
        try:
            settled = session_service.end(session, tenant, rental.id, runtime.clock).rental
        except RentalAlreadySettled:  # ended by a concurrent request or the worker meanwhile
            raise SessionNotActive(f"session {rental.id} has already ended") from None
        return json_response(s.EndSessionOut.model_validate({
            **_settled(settled), "balance": _balance(session, tenant, uid, settled.asset),
        }), 200)

    return in_transaction(request, tenant, body.raw, session, runtime.clock.now_ns(), work)


@router.get("/billing/current-usage", response_model=s.CurrentUsageOut, summary="Running sessions and their cost",
            responses=_errors({422: "`validation_error`, `invalid_cursor`"}))
def current_usage(principal: LedgerRead, session: ReadSession, runtime: RuntimeDep, user_id: UserQuery = None,
                  limit: Limit = 100, cursor: Cursor = None) -> s.CurrentUsageOut:
    """The user's active sessions with their cost so far (the exact accrual, rounded once),
    what is held for each and what would be released if it ended now."""
    uid = user_for(principal, user_id)
    now = runtime.clock.now_ns()
    rows, after = rental_service.list_rentals(session, principal.tenant_id, status=ACTIVE, style=PAYG,
                                              customer=(USER_OWNER, uid), after=decode_cursor(cursor), limit=limit)
    return s.CurrentUsageOut(
        user_id=uid, as_of=to_rfc3339(now),
        data=[s.ActiveSessionOut.model_validate(_active(r, now)) for r in rows if r.style == PAYG],
        next_cursor=encode_cursor(after),
    )


@router.get("/billing/history", response_model=s.BillingHistoryOut, summary="Settled sessions",
            responses=_errors({422: "`validation_error`, `invalid_cursor`"}))
def billing_history(principal: LedgerRead, session: ReadSession, user_id: UserQuery = None, limit: Limit = 100,
                    cursor: Cursor = None) -> s.BillingHistoryOut:
    """The user's settled sessions with what each cost, what was refunded, and the provider's
    and platform's shares. Newest first."""
    uid = user_for(principal, user_id)
    rows, after = rental_service.list_rentals(session, principal.tenant_id, status=SETTLED, style=PAYG,
                                              customer=(USER_OWNER, uid), after=decode_cursor(cursor), limit=limit,
                                              newest_first=True)
    return s.BillingHistoryOut(
        user_id=uid, data=[s.SettledSessionOut.model_validate(_settled(r)) for r in rows if r.style == PAYG],
        next_cursor=encode_cursor(after),
    )


# -- provider ------------------------------------------------------------------------------


@router.get("/provider/earnings", response_model=s.EarningsOut, summary="Provider earnings",
            responses=_errors({404: "`provider_not_found`, `asset_not_found`, `price_book_missing`",
                               422: "`validation_error`"}))
def provider_earnings(principal: LedgerRead, session: ReadSession, provider_id: ProviderQuery = None,
                      asset: AssetQuery = None) -> s.EarningsOut:
    """The provider's earnings account: lifetime earnings (its share of settled sessions, after
    the platform fee), what payouts sent, what pending payouts hold and what is available."""
    tenant = principal.tenant_id
    pid = provider_for(session, principal, provider_id)
    a = _asset(session, tenant, asset)
    try:
        row = ledger_service.get_account(session, tenant, owned_account_id("earn", "provider", pid, a.code))
        credits, debits, pending = row.credits_posted, row.debits_posted, row.debits_pending
    except AccountNotFound:  # nothing earned yet; a read doesn't create the account
        credits = debits = pending = 0
    return s.EarningsOut(
        provider_id=pid, earned=s.Money.of(credits, a), paid_out=s.Money.of(debits, a),
        balance=s.Money.of(credits - debits, a), held_for_payouts=s.Money.of(pending, a),
        available=s.Money.of(credits - debits - pending, a),
    )


@router.post(
    "/provider/payout", status_code=201, response_model=s.PayoutOut, summary="Request a payout",
    openapi_extra=openapi_body(s.PayoutIn),
    responses=_errors({
        402: "`insufficient_funds`: available earnings do not cover the amount",
        404: "`provider_not_found`, `asset_not_found`, `price_book_missing`",
        409: "`idempotency_conflict`",
        422: "`validation_error`, `amount_precision`, `amount_not_positive`, `invalid_payout_request`, "
             "`unknown_rail`, `rail_disabled`",
    }),
)
def provider_payout(request: Request, principal: LedgerWrite,
                    body: Annotated[Parsed[s.PayoutIn], Depends(json_body(s.PayoutIn))],
                    session: WriteSession, runtime: RuntimeDep) -> Response:
    """Hold `amount` of the available earnings and open a payout. At or below the asset's
    approval threshold it is `approved` at once and the worker sends it through the rail;
    above it, it waits (`requested`) for operator approval. Send an `Idempotency-Key` so a
    retried request does not open a second payout."""
    data, tenant = body.value, principal.tenant_id
    pid = provider_for(session, principal, data.provider_id, write=True)
    requested_by = actor_id(principal)  # as the native route: the name approvals are checked against

    def work() -> Response:
        a = _asset(session, tenant, data.asset)
        row = payout_service.request(session, tenant, provider_id=pid, asset=a.code,
                                     amount_minor=parse_amount(data.amount, a.scale), destination=data.destination,
                                     rail=data.rail, clock=runtime.clock, requested_by=requested_by,
                                     settings=runtime.settings)
        return json_response(s.PayoutOut.of(row, a), 201)

    return in_transaction(request, tenant, body.raw, session, runtime.clock.now_ns(), work)


@router.get("/provider/payout", response_model=s.PayoutPage, summary="List payouts",
            responses=_errors({404: "`provider_not_found`", 422: "`validation_error`, `invalid_cursor`"}))
def provider_payouts(principal: LedgerRead, session: ReadSession, provider_id: ProviderQuery = None,
                     limit: Limit = 100, cursor: Cursor = None) -> s.PayoutPage:
    """The provider's payout requests and their state, in payout id (creation) order."""
    tenant = principal.tenant_id
    pid = provider_for(session, principal, provider_id)
    page = payout_service.list_payouts(session, tenant, provider_id=pid, after=decode_cursor(cursor), limit=limit)
    return s.PayoutPage(
        provider_id=pid,
        data=[s.PayoutOut.of(r, ledger_service.get_asset(session, tenant, r.asset)) for r in page.items],
        next_cursor=encode_cursor(page.next_cursor),
    )


def _provider_rates(session: Session, tenant_id: str, provider_id: str) -> s.ProviderRatesOut:
    book = pricing_service.current_book(session, tenant_id)
    rows = {(r.gpu_model_id, r.asset): r for r in pricing_service.list_provider_rates(session, tenant_id, provider_id)}
    keys = sorted({(m, book.asset) for m in book.base_rates} | set(rows))
    data = []
    for model, asset in keys:
        row = rows.get((model, asset))
        base = book.base_rates.get(model) if asset == book.asset else None
        data.append(s.ProviderRateOut(
            gpu_model=model, base_hourly=None if base is None else s.Rate.hourly(base, asset),
            min_hourly=None if row is None else s.Rate.hourly(Decimal(row.min_hourly), asset),
            updated_at=None if row is None else to_rfc3339(row.updated_at),
        ))
    return s.ProviderRatesOut(provider_id=provider_id, price_book_version=book.version, data=data)


@router.get("/provider/rates", response_model=s.ProviderRatesOut, summary="Provider minimum rates",
            responses=_errors({404: "`provider_not_found`, `price_book_missing`", 422: "`validation_error`"}))
def get_provider_rates(principal: LedgerRead, session: ReadSession,
                       provider_id: ProviderQuery = None) -> s.ProviderRatesOut:
    """Every GPU model the price book prices, with its base rate and the provider's minimum
    hourly rate (a floor on the time rate of the provider's devices; null when none is set)."""
    pid = provider_for(session, principal, provider_id)
    return _provider_rates(session, principal.tenant_id, pid)


_SET_RATES: dict[str, Any] = {
    "response_model": s.ProviderRatesOut,
    "openapi_extra": openapi_body(s.ProviderRatesIn),
    "responses": _errors({404: "`provider_not_found`, `gpu_model_not_found`, `asset_not_found`, `price_book_missing`",
                          409: "`idempotency_conflict`",
                          422: "`validation_error`, `invalid_rate`"}),
}


@router.put("/provider/rates", summary="Set provider minimum rates", **_SET_RATES)
@router.post("/provider/rates", summary="Set provider minimum rates (POST alias)", **_SET_RATES)
def set_provider_rates(request: Request, principal: LedgerWrite,
                       body: Annotated[Parsed[s.ProviderRatesIn], Depends(json_body(s.ProviderRatesIn))],
                       session: WriteSession, runtime: RuntimeDep) -> Response:
    """Set the provider's minimum hourly rate (whole card) per GPU model: a decimal sets it,
    null removes it, models not named keep theirs. New sessions on the provider's devices are
    charged at least this per hour for time; running sessions keep the rate they locked in."""
    data, tenant = body.value, principal.tenant_id
    pid = provider_for(session, principal, data.provider_id, write=True)

    def work() -> Response:
        asset = _asset(session, tenant, data.asset).code
        now = runtime.clock.now_ns()
        for model, value in sorted(data.rates.items()):
            catalog_service.get_gpu_model(session, tenant, model)
            if value is None:
                try:
                    pricing_service.delete_provider_min(session, tenant, pid, model, asset=asset)
                except ProviderRateNotFound:
                    pass  # none set, or another request just removed it: null is a no-op either way
            else:
                pricing_service.set_provider_min(session, tenant, pid, model, check_rate(value, f"rates.{model}"),
                                                 now, asset=asset)
        return json_response(_provider_rates(session, tenant, pid), 200)

    return in_transaction(request, tenant, body.raw, session, runtime.clock.now_ns(), work)


# -- pricing -------------------------------------------------------------------------------


@router.get("/pricing/rates", response_model=s.PricingRatesOut, summary="Current GPU rental rates",
            responses=_errors({404: "`price_book_missing`"}))
def pricing_rates(principal: LedgerRead, session: ReadSession, runtime: RuntimeDep) -> s.PricingRatesOut:
    """The current price book: per GPU model its whole-card base rate, today's utilisation and
    demand multiplier and the resulting rate; the power multiplier (per watt-hour), the
    platform fee, the minimum billable minutes and the billing granularity."""
    tenant = principal.tenant_id
    book = pricing_service.current_book(session, tenant)
    busy = busy_devices(session, tenant)
    models = []
    for model_id, base in sorted(book.base_rates.items()):
        try:
            model = catalog_service.get_gpu_model(session, tenant, model_id)
            name, vram = model.name, model.vram_gb
        except GpuModelNotFound:  # priced but not in the catalog: no supply, no demand
            name, vram = None, None
        u = catalog_service.utilisation(session, tenant, gpu_model=model_id, busy_device_ids=busy)
        # A whole card (1 of 1 GB) through the engine: base × demand, rounded as the book says.
        whole = quote_gpu(book, gpu_model=model_id, vram_gb_total=1, vram_gb_requested=1, watts=0, utilisation=u)
        models.append(s.GpuRateOut(
            gpu_model=model_id, name=name, vram_gb=vram, base_hourly=s.Rate.hourly(base, book.asset),
            utilisation=s.ratio(u), demand_multiplier=s.text(demand_multiplier(book.demand_curve, u)),
            current_hourly=s.Rate.hourly(whole.hourly_rate, book.asset),
        ))
    return s.PricingRatesOut(
        price_book_version=book.version, asset=book.asset, as_of=to_rfc3339(runtime.clock.now_ns()),
        gpu_models=models, power_multiplier=s.Rate.per_wh(book.power_multiplier, book.asset),
        platform_fee_percent=s.text(book.platform_fee_percent),
        minimum_session_minutes=book.minimum_session_minutes,
        granularity=book.granularity,  # type: ignore[arg-type]
        rounding=book.rounding.value,
        demand_curve=[s.DemandPoint(utilisation=s.text(x), multiplier=s.text(m)) for x, m in book.demand_curve],
    )


_MAX_HOURS = Decimal(87_600)  # ten years


def _hours(value: object) -> Decimal:
    def bad(detail: str) -> ValidationFailed:
        return ValidationFailed("hours is not valid", errors=[{"field": "hours", "code": "invalid_hours",
                                                               "detail": detail}])

    try:
        d = to_decimal(value)  # type: ignore[arg-type]
    except MeterlineError:
        raise bad("must be a decimal number of hours") from None
    if d <= 0 or d > _MAX_HOURS:
        raise bad(f"must be more than 0 and at most {_MAX_HOURS}")
    # Decimal places without trailing zeros, counted from the digits (normalize() would round).
    _, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)  # finite: checked by to_decimal
    trailing = 0
    while trailing < len(digits) - 1 and digits[len(digits) - 1 - trailing] == 0:
        trailing += 1
    if -(exponent + trailing) > 18:
        raise bad("has more than 18 decimal places")
    return d


@router.post(
    "/pricing/calculate", response_model=s.CalculateOut, summary="Price a GPU for some hours",
    openapi_extra=openapi_body(s.CalculateIn),
    responses=_errors({404: "`gpu_model_not_found`, `device_not_found`, `price_book_missing`",
                       422: "`validation_error`, `invalid_vram`, `gpu_model_not_priced`"}),
)
def pricing_calculate(principal: LedgerRead,
                      body: Annotated[Parsed[s.CalculateIn], Depends(json_body(s.CalculateIn))],
                      session: ReadSession) -> s.CalculateOut:
    """Quote a GPU as start-session would (same engine, current demand) and price `hours` of
    it: time at the hourly rate for the billed seconds plus power at `watts`, rounded once;
    the estimate is split into the provider's earnings and the platform fee. Without a
    `device_id` no provider minimum applies; with one, that provider's does."""
    data, tenant = body.value, principal.tenant_id
    hours = _hours(data.hours)
    book = pricing_service.current_book(session, tenant)
    busy = busy_devices(session, tenant)
    device_id = provider_id = None
    if data.device_id is not None:
        device = catalog_service.get_device(session, tenant, data.device_id)
        if data.gpu_model is not None and device.gpu_model_id != data.gpu_model:
            raise ValidationFailed("the device is not of that gpu_model", errors=[
                {"field": "gpu_model", "code": "mismatch", "detail": f"device {device.id} is a {device.gpu_model_id}"}])
        u = catalog_service.utilisation(session, tenant, gpu_model=device.gpu_model_id,
                                        tier=None if device.gpu_model_id else device.tier_id, busy_device_ids=busy)
        quote = pricing_service.quote_for_device(session, tenant, device, vram_gb_requested=data.vram_gb,
                                                 watts=data.watts, utilisation=u)
        device_id, provider_id, vram_total = device.id, device.provider_id, device.vram_gb
    else:
        assert data.gpu_model is not None
        model = catalog_service.get_gpu_model(session, tenant, data.gpu_model)
        u = catalog_service.utilisation(session, tenant, gpu_model=model.id, busy_device_ids=busy)
        quote = quote_gpu(book, gpu_model=model.id, vram_gb_total=model.vram_gb,
                          vram_gb_requested=model.vram_gb if data.vram_gb is None else data.vram_gb,
                          watts=model.default_power_w if data.watts is None else data.watts, utilisation=u)
        vram_total = model.vram_gb
    asset = ledger_service.get_asset(session, tenant, quote.asset)
    with localcontext() as ctx:
        ctx.prec = 80  # hours × 3600 and watts × hours exactly
        seconds = hours * 3600
        energy_wh = hours * quote.estimated_power_w
    cost = cost_minor(quote, asset.scale, seconds=seconds, energy_wh=energy_wh)
    provider_minor, fee_minor = split_fee(quote, cost)
    return s.CalculateOut(
        gpu_model=quote.gpu_model, device_id=device_id, provider_id=provider_id, vram_gb=quote.vram_gb,
        vram_gb_total=vram_total if quote.gpu_model else None, watts=quote.estimated_power_w,
        hours=s.text(hours), utilisation=s.ratio(u), quote=s.QuoteOut.of(quote),
        billed_seconds=billable_seconds(quote, seconds), estimated_cost=s.Money.of(cost, asset),
        estimated_provider_earnings=s.Money.of(provider_minor, asset),
        estimated_platform_fee=s.Money.of(fee_minor, asset),
    )
