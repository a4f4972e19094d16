"""Pricing: the versioned price book, providers' minimum rates, and quotes.

A quote is the deterministic breakdown a rental locks in (line items summing to
the estimated hourly total). With `hours`, it also shows what that much use
would cost, computed the way the rental would be charged: at the rate locked to
the asset's scale + 3 decimals, with the minimum session and billing
granularity applied, rounded once by the book's rule.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from sqlalchemy.orm import Session

from meterline.api.body import Parsed, json_body, openapi_body
from meterline.api.deps import ReadSession, RuntimeDep, WriteSession
from meterline.api.idempotency import in_transaction, json_response
from meterline.api.v1.catalog import CatalogIdPath
from meterline.api.v1.common import Admin, LedgerRead, LedgerWrite, errors
from meterline.api.v1.pricing_schemas import (
    EstimateOut,
    PriceBookChanges,
    PriceBookOut,
    PriceBookVersionList,
    PriceBookVersionOut,
    ProviderRateList,
    ProviderRateOut,
    ProviderRateSet,
    QuoteOut,
    QuoteRequest,
)
from meterline.api.v1.principals import actor_id, owned_provider_ids
from meterline.catalog.models import Provider
from meterline.catalog.service import ProviderNotFound, catalog_service
from meterline.errors import Forbidden
from meterline.identity.service import Principal
from meterline.ledger.service import ledger_service
from meterline.money import format_amount
from meterline.pricing.engine import Quote, billable_seconds, check_rate, quote_gpu, quote_tier
from meterline.pricing.service import pricing_service
from meterline.rentals import accrual
from meterline.rentals.service import parse_hours, term_price
from meterline.rentals.sessions import busy_devices

router = APIRouter(tags=["pricing"])

VersionPath = Annotated[int, Path(ge=1, le=2**31 - 1)]


# -- price book -------------------------------------------------------------------------------
@router.get("/price-book", response_model=PriceBookOut, summary="Get the current price book",
            responses=errors({404: "`price_book_missing`: nothing has been published yet"}))
def get_price_book(principal: LedgerRead, session: ReadSession) -> PriceBookOut:
    """The newest version; every rate is a decimal string."""
    return PriceBookOut.of(pricing_service.current_book(session, principal.tenant_id))


@router.post(
    "/price-book", status_code=201, response_model=PriceBookOut, summary="Publish a new version (admin)",
    openapi_extra=openapi_body(PriceBookChanges),
    responses=errors({
        409: "`price_book_version_conflict` (published concurrently; retry); `idempotency_conflict`",
        413: "`payload_too_large`",
        422: "`validation_error`; `invalid_price_book` with `errors` naming each bad field "
             "(`invalid_rate`, `invalid_fee`, `invalid_curve`, `asset_not_found`, …)",
    }),
)
def publish_price_book(
    request: Request,
    principal: Admin,
    body: Annotated[Parsed[PriceBookChanges], Depends(json_body(PriceBookChanges))],
    session: WriteSession,
    runtime: RuntimeDep,
) -> Response:
    """Publish the current book with these changes applied, as version N+1. Versions are
    never edited, so a rental's quote always names the prices it came from. `base_rates`
    and `tier_rates` merge per key (`null` removes one). Accepts `Idempotency-Key`."""
    changes = body.value.changes()
    now = runtime.clock.now_ns()

    def work() -> Response:
        book = pricing_service.publish_book(session, principal.tenant_id, changes, actor_id(principal), now)
        return json_response(PriceBookOut.of(book), 201)

    return in_transaction(request, principal.tenant_id, body.raw, session, now, work)


@router.get("/price-book/versions", response_model=PriceBookVersionList, summary="List price-book versions",
            responses=errors())
def list_price_book_versions(principal: LedgerRead, session: ReadSession) -> PriceBookVersionList:
    """Every version, newest first, with who published it and when: the audit trail of prices."""
    rows = pricing_service.list_books(session, principal.tenant_id)
    return PriceBookVersionList(data=[PriceBookVersionOut.of(r) for r in rows])


@router.get("/price-book/versions/{version}", response_model=PriceBookOut, summary="Get a price-book version",
            responses=errors({404: "`price_book_version_not_found`", 422: "`validation_error`"}))
def get_price_book_version(version: VersionPath, principal: LedgerRead, session: ReadSession) -> PriceBookOut:
    return PriceBookOut.of(pricing_service.get_book(session, principal.tenant_id, version))


# -- provider minimums ------------------------------------------------------------------------
def _provider_for(session: Session, principal: Principal, provider_id: str) -> Provider:
    """The provider, if the caller is staff or its owner; anyone else's is a 404."""
    provider = catalog_service.get_provider(session, principal.tenant_id, provider_id)
    owned = owned_provider_ids(session, principal)
    if owned is not None and provider_id not in owned:
        raise ProviderNotFound(f"provider {provider_id} does not exist")
    return provider


@router.put(
    "/providers/{provider_id}/rates/{gpu_model}", response_model=ProviderRateOut,
    summary="Set a provider's minimum hourly rate", openapi_extra=openapi_body(ProviderRateSet),
    responses=errors({
        403: "`forbidden`: only the provider's own key or an admin sets its rates",
        404: "`provider_not_found`, `gpu_model_not_found`, `price_book_missing`",
        413: "`payload_too_large`",
        422: "`validation_error`, `invalid_rate`, `invalid_price_book` (unknown asset)",
    }),
)
def set_provider_rate(
    provider_id: CatalogIdPath,
    gpu_model: CatalogIdPath,
    principal: LedgerWrite,
    body: Annotated[Parsed[ProviderRateSet], Depends(json_body(ProviderRateSet))],
    session: WriteSession,
    runtime: RuntimeDep,
) -> ProviderRateOut:
    """A provider's floor for a GPU model: a quote's time rate is never below it. Replaces
    the previous floor in the same asset (the book's asset by default)."""
    if not principal.has("admin") and principal.kind != "provider":
        raise Forbidden("only the provider's own key or an admin key sets its rates")
    _provider_for(session, principal, provider_id)
    catalog_service.get_gpu_model(session, principal.tenant_id, gpu_model)
    data = body.value
    row = pricing_service.set_provider_min(session, principal.tenant_id, provider_id, gpu_model,
                                           check_rate(data.min_hourly, "min_hourly"), runtime.clock.now_ns(),
                                           asset=data.asset)
    return ProviderRateOut.of(row)


@router.get("/providers/{provider_id}/rates", response_model=ProviderRateList,
            summary="List a provider's minimum rates",
            responses=errors({404: "`provider_not_found`", 422: "`validation_error`"}))
def list_provider_rates(provider_id: CatalogIdPath, principal: LedgerRead, session: ReadSession) -> ProviderRateList:
    """Visible to staff and to the provider itself."""
    _provider_for(session, principal, provider_id)
    rows = pricing_service.list_provider_rates(session, principal.tenant_id, provider_id)
    return ProviderRateList(data=[ProviderRateOut.of(r) for r in rows])


# -- quotes -----------------------------------------------------------------------------------
@router.post(
    "/quotes", response_model=QuoteOut, summary="Quote a device, a GPU model or a tier",
    openapi_extra=openapi_body(QuoteRequest),
    responses=errors({
        404: "`device_not_found`, `gpu_model_not_found`, `tier_not_found`, `price_book_missing`",
        413: "`payload_too_large`",
        422: "`validation_error`, `gpu_model_not_priced`, `tier_not_priced`, `invalid_vram`, `invalid_power`",
    }),
)
def create_quote(
    principal: LedgerRead,
    body: Annotated[Parsed[QuoteRequest], Depends(json_body(QuoteRequest))],
    session: ReadSession,
) -> QuoteOut:
    """Price something from the current book without renting it (nothing is stored).

    - `device_id`: the price a session on that device gets now (its provider's minimum
      applies; `vram_gb` defaults to the whole card, `watts` to its power limit);
    - `gpu_model`: any card of the model, at the model's VRAM and board power by default,
      before any provider's minimum;
    - `tier`: a flat-rate contract; with `hours`, the estimate is the term's price.
    """
    q = body.value
    tenant = principal.tenant_id
    utilisation: Decimal | None = None
    if q.device_id is not None:
        device = catalog_service.get_device(session, tenant, q.device_id)
        if device.gpu_model_id is not None:
            utilisation = catalog_service.utilisation(session, tenant, gpu_model=device.gpu_model_id,
                                                      busy_device_ids=busy_devices(session, tenant))
        quote = pricing_service.quote_for_device(session, tenant, device, vram_gb_requested=q.vram_gb,
                                                 watts=q.watts, utilisation=utilisation or Decimal(0))
    elif q.gpu_model is not None:
        model = catalog_service.get_gpu_model(session, tenant, q.gpu_model)
        book = pricing_service.current_book(session, tenant)
        utilisation = catalog_service.utilisation(session, tenant, gpu_model=model.id,
                                                  busy_device_ids=busy_devices(session, tenant))
        quote = quote_gpu(book, gpu_model=model.id, vram_gb_total=model.vram_gb,
                          vram_gb_requested=model.vram_gb if q.vram_gb is None else q.vram_gb,
                          watts=model.default_power_w if q.watts is None else q.watts, utilisation=utilisation)
    else:
        assert q.tier is not None
        catalog_service.get_tier(session, tenant, q.tier)
        quote = quote_tier(pricing_service.current_book(session, tenant), q.tier)
    estimate = None
    if q.hours is not None:
        scale = ledger_service.get_asset(session, tenant, quote.asset).scale
        hours = format(Decimal(q.hours).normalize(), "f")
        estimate = _estimate(quote, scale, hours, parse_hours(q.hours, "hours"), term=q.tier is not None)
    return QuoteOut.of(quote, device_id=q.device_id, utilisation=utilisation, estimate=estimate)


def _estimate(quote: Quote, scale: int, hours: str, seconds: int, *, term: bool) -> EstimateOut:
    """What `seconds` of use would be charged, by the rentals' own arithmetic (accrual.py).

    A contract term (`term`) is priced in full up front; a session is billed its billable
    seconds plus power metered at the quote's estimated draw.
    """
    num, den = accrual.rate_fraction(accrual.lock_rate(quote.hourly_rate, scale), scale)
    rounding = quote.rounding.value
    if term:
        billable = seconds
        time_cost = total = term_price((num, den, rounding), seconds)
    else:
        billable = billable_seconds(quote, seconds)
        time_cost = accrual.accrued_minor(num, den, billable, 0, accrual.UNCAPPED, rounding)
        # The doubled trapezoid integral (mW·ms) of a constant draw over the elapsed time.
        energy2 = 2 * quote.estimated_power_w * 1000 * seconds * 1000
        power_e6 = accrual.power_cost_e6(quote.power_rate_per_wh, scale, energy2)
        total = accrual.accrued_minor(num, den, billable, power_e6, accrual.UNCAPPED, rounding)
    return EstimateOut(
        hours=hours, billable_seconds=billable, time_cost=format_amount(time_cost, scale),
        power_cost=format_amount(total - time_cost, scale), total=format_amount(total, scale), asset=quote.asset,
    )
