"""BrinkByte profile: usage reporting (`POST /api/v1/usage/batch`).

The edge device (tAPI's usage tracker) reports batches of up to 1000 events:

    {"tenant_id": "tenant-123", "device_id": "device-001",
     "events": [{"event_id": "…", "camera_id": "cam-001", "meter": "frames_processed",
                 "quantity": 30, "timestamp": "2025-10-20T10:00:00Z", "properties": {…}}]}
    → {"accepted": 1, "duplicates": 0, "rejected": [{"index": 3, "code": "unknown_meter", "detail": "…"}]}

The body's `tenant_id` is BrinkByte's licensee: a customer *inside* the caller's
Meterline tenant (the API key's, or the dev default tenant). Events are stored under
the Meterline tenant + that licensee, with the camera as the subject and the device as
the reporter; they never cross Meterline tenants. Same engine, same codes as the
native `POST /v1/usage/events`. (Licensing routes live in `brinkbyte.py`.)

Usage is reported by licensed devices (seeds/002), so the licensee must hold a
license: when it has none (a typo'd `tenant_id` — usage that would bill nobody) every
event is rejected with `license_not_found` and nothing is stored; a customer key naming
another licensee is answered the same way. The lookup is the license cache's (one per
batch, no I/O when warm). Any license counts, whatever its status or dates: a device
buffers usage while offline and syncs it later (the seed's batch sync), so usage made
under a valid license may arrive after a suspension or expiry — whether to bill it is
billing's call, not a reason to lose it. Cameras and devices are not checked against
activations and registrations either: usage from a camera refused at the allowance is
evidence worth keeping.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from meterline.api.body import openapi_body
from meterline.api.deps import get_runtime, require_async
from meterline.api.fastpath import FastRoute, authorized
from meterline.api.v1.common import errors
from meterline.api.v1.meters import UsageBatchOut, ingest_request
from meterline.api.v1.principals import speaks_for
from meterline.identity.service import Principal
from meterline.licensing.service import CODE_DETAIL, LicenseCode

router = APIRouter(tags=["profile: brinkbyte"])

_usage_write = require_async("usage:write")
UsageWriteAsync = Annotated[Principal, Depends(_usage_write)]


class BrinkByteUsageEvent(BaseModel):
    event_id: str = Field(max_length=128)
    camera_id: str = Field(max_length=128)
    meter: str = Field(description="frames_processed, detections, events_uploaded, inference_seconds, …")
    quantity: Any = Field(description="JSON number (parsed exactly), up to 6 decimal places")
    timestamp: Any = Field(description="RFC 3339, or Unix seconds as a number")
    properties: dict[str, Any] | None = None


class BrinkByteUsageBatch(BaseModel):
    tenant_id: str = Field(max_length=128, description="BrinkByte licensee (a customer inside your tenant)")
    device_id: str = Field(max_length=128)
    events: list[BrinkByteUsageEvent] = Field(max_length=1000)


@router.post(
    "/api/v1/usage/batch", response_model=UsageBatchOut, summary="Report a batch of usage events",
    openapi_extra=openapi_body(BrinkByteUsageBatch),
    responses=errors({413: "`payload_too_large`, `batch_too_large` (more than 1000 events)",
                      422: "`validation_error`: tenant_id, device_id or events missing or malformed"}),
)
async def usage_batch(request: Request, principal: UsageWriteAsync) -> Response:
    """Each event is accepted, a duplicate (`event_id` seen before: deduplicated forever) or
    rejected by itself with a `code` (`unknown_meter`, `invalid_quantity`, `too_late`,
    `in_future`, `invalid_timestamp`, `invalid_event`, …); its neighbours still count.
    A `tenant_id` without a license rejects every event with `license_not_found`."""
    out = await ingest_request(request, principal, licensee_key="tenant_id", device_key="device_id",
                               subject_key="camera_id", check_licensee=_licensed)
    return JSONResponse(out.model_dump())


_NO_LICENSE = (LicenseCode.LICENSE_NOT_FOUND, CODE_DETAIL[LicenseCode.LICENSE_NOT_FOUND])


async def _licensed(request: Request, principal: Principal, licensee: str) -> tuple[str, str] | None:
    """None when the batch's licensee holds a license the caller may report for; otherwise
    the per-event refusal. Warm, a cache lookup on the event loop; cold, one load (Redis or
    the database) in the threadpool, which caches the answer — a licensee without a license
    too, until one is issued (issuing bumps the licensee's cache version)."""
    if not speaks_for(principal, licensee):
        return _NO_LICENSE
    runtime = get_runtime(request)
    lic = runtime.licensing
    assert lic is not None
    tenant, now = principal.tenant_id, runtime.clock.now_ns()
    licensed = lic.licensed_cached(tenant, licensee, now)
    if licensed is None:
        licensed = await run_in_threadpool(lic.licensed, tenant, licensee, now)
    return None if licensed else _NO_LICENSE


FAST_ROUTES = [FastRoute("POST", "/api/v1/usage/batch", authorized(_usage_write, usage_batch))]
