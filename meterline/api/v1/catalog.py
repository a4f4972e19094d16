"""The catalog: devices, GPU models, tiers and providers. Reads need `ledger:read`; adding
devices and providers needs `admin`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from meterline.api.body import Parsed, json_body, openapi_body
from meterline.api.deps import ReadSession, RuntimeDep, WriteSession
from meterline.api.idempotency import in_transaction, json_response
from meterline.api.v1.catalog_schemas import (
    CATALOG_ID_PATTERN,
    DeviceCreate,
    DeviceOut,
    DevicePage,
    DeviceStatus,
    GpuModelList,
    GpuModelOut,
    ProviderCreate,
    ProviderList,
    ProviderOut,
    TierList,
    TierOut,
)
from meterline.api.v1.common import (
    Admin,
    Cursor,
    LedgerRead,
    Limit,
    TextFilter,
    decode_cursor,
    encode_cursor,
    errors,
)
from meterline.catalog import service as catalog
from meterline.catalog.service import catalog_service

router = APIRouter(tags=["catalog"])

CatalogIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=CATALOG_ID_PATTERN)]
CatalogIdFilter = Annotated[str | None, Query(min_length=1, max_length=64, pattern=CATALOG_ID_PATTERN)]


@router.get("/devices", response_model=DevicePage, summary="List devices",
            responses=errors({422: "`validation_error`, `invalid_cursor`"}))
def list_devices(
    principal: LedgerRead,
    session: ReadSession,
    tier: CatalogIdFilter = None,
    region: TextFilter = None,
    gpu_model: CatalogIdFilter = None,
    status: Annotated[DeviceStatus | None, Query()] = None,
    provider_id: CatalogIdFilter = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> DevicePage:
    """Devices in id order, filtered by any of `tier`, `region`, `gpu_model`, `status`,
    `provider_id`. Pass `next_cursor` back as `cursor` for the next page."""
    after = decode_cursor(cursor)
    # The catalog lists without a limit (a tenant's catalog is small); the page is cut here.
    rows = catalog_service.list_devices(session, principal.tenant_id, tier=tier, region=region,
                                        gpu_model=gpu_model, status=status, provider_id=provider_id)
    if after is not None:
        rows = [d for d in rows if d.id > after]
    page = rows[:limit]
    more = len(rows) > limit
    return DevicePage(data=[DeviceOut.of(d) for d in page],
                      next_cursor=encode_cursor(page[-1].id) if more and page else None)


@router.get("/devices/{device_id}", response_model=DeviceOut, summary="Get a device",
            responses=errors({404: "`device_not_found`", 422: "`validation_error`"}))
def get_device(device_id: CatalogIdPath, principal: LedgerRead, session: ReadSession) -> DeviceOut:
    return DeviceOut.of(catalog_service.get_device(session, principal.tenant_id, device_id))


@router.post(
    "/devices", status_code=201, response_model=DeviceOut, summary="Add a device (admin)",
    openapi_extra=openapi_body(DeviceCreate),
    responses=errors({
        404: "`provider_not_found`, `tier_not_found`, `gpu_model_not_found`",
        409: "`catalog_entry_exists`; `idempotency_conflict`",
        413: "`payload_too_large`",
        422: "`validation_error`, `invalid_catalog_entry` (e.g. more VRAM than the card), "
             "`invalid_idempotency_key`",
    }),
)
def create_device(
    request: Request,
    principal: Admin,
    body: Annotated[Parsed[DeviceCreate], Depends(json_body(DeviceCreate))],
    session: WriteSession,
    runtime: RuntimeDep,
) -> Response:
    """Add a device to a provider. Its provider, tier and GPU model must exist; VRAM and
    power limit default to the GPU model's. Accepts `Idempotency-Key`."""
    d = body.value
    now = runtime.clock.now_ns()

    def work() -> Response:
        row = catalog_service.create_device(session, principal.tenant_id, catalog.DeviceCreate(
            id=d.id, provider_id=d.provider_id, tier_id=d.tier, name=d.name, uri=d.uri, address=d.address,
            region=d.region, gpu_model_id=d.gpu_model, vram_gb=d.vram_gb, ram_gb=d.ram_gb,
            power_limit_w=d.power_limit_w, audited=d.audited, status=d.status, uptime_bp=d.uptime_bp,
        ), now)
        return json_response(DeviceOut.of(row), 201)

    return in_transaction(request, principal.tenant_id, body.raw, session, now, work)


@router.get("/gpu-models", response_model=GpuModelList, summary="List GPU models", responses=errors())
def list_gpu_models(principal: LedgerRead, session: ReadSession) -> GpuModelList:
    """The GPU product lines the price book's base rates are keyed by."""
    return GpuModelList(data=[GpuModelOut.of(m) for m in catalog_service.list_gpu_models(session, principal.tenant_id)])


@router.get("/tiers", response_model=TierList, summary="List tiers", responses=errors())
def list_tiers(principal: LedgerRead, session: ReadSession) -> TierList:
    """Classes of device sold at one flat rate (e.g. `M2`) or dynamically priced (`GPU`)."""
    return TierList(data=[TierOut.of(t) for t in catalog_service.list_tiers(session, principal.tenant_id)])


@router.get("/providers", response_model=ProviderList, summary="List providers", responses=errors())
def list_providers(principal: LedgerRead, session: ReadSession) -> ProviderList:
    return ProviderList(data=[ProviderOut.of(p) for p in catalog_service.list_providers(session, principal.tenant_id)])


@router.get("/providers/{provider_id}", response_model=ProviderOut, summary="Get a provider",
            responses=errors({404: "`provider_not_found`", 422: "`validation_error`"}))
def get_provider(provider_id: CatalogIdPath, principal: LedgerRead, session: ReadSession) -> ProviderOut:
    return ProviderOut.of(catalog_service.get_provider(session, principal.tenant_id, provider_id))


@router.post(
    "/providers", status_code=201, response_model=ProviderOut, summary="Add a provider (admin)",
    openapi_extra=openapi_body(ProviderCreate),
    responses=errors({
        409: "`catalog_entry_exists`; `idempotency_conflict`",
        413: "`payload_too_large`",
        422: "`validation_error`, `invalid_catalog_entry`, `invalid_idempotency_key`",
    }),
)
def create_provider(
    request: Request,
    principal: Admin,
    body: Annotated[Parsed[ProviderCreate], Depends(json_body(ProviderCreate))],
    session: WriteSession,
    runtime: RuntimeDep,
) -> Response:
    """Add a provider. With `owner_id`, keys whose principal id is that value act as the
    provider: they set its minimum rates and request its payouts. Accepts `Idempotency-Key`."""
    p = body.value
    now = runtime.clock.now_ns()

    def work() -> Response:
        row = catalog_service.create_provider(session, principal.tenant_id, id=p.id, name=p.name,
                                              owner_id=p.owner_id, now_ns=now)
        return json_response(ProviderOut.of(row), 201)

    return in_transaction(request, principal.tenant_id, body.raw, session, now, work)
