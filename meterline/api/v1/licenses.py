"""Licenses as /v1 resources: plans, growth packs, licenses, their cameras and devices, and the
validation / entitlement / heartbeat calls of the BrinkByte profile under resource paths.

Reads need `licenses:read`, changes `licenses:write`, and the device-facing calls
`licenses:validate`. A licensee id (BrinkByte's "tenant-123") lives inside the
caller's tenant; another tenant's licensee is a 404 like any missing one.

Scopes say what a key may do, `principals` whose licenses: staff (admin, operator)
keys read every license of the tenant; a `customer` key only the license whose
licensee id is its principal id — another customer's answers 404 `license_not_found`,
word for word like a missing one, and is never read or changed. Provider and device
keys own no license; device keys still make the device-facing calls for any licensee
(`principals.speaks_for`).

Changing a license — issuing it, `PATCH` (status: suspend/resume; allowances, packs,
plan, renewal) and releasing a camera's slot — is staff-only, like changing a
subscription (`billing.py`): a license is what a customer is sold, and a PATCH moves
its subscriptions (`follow_license`), so a customer key with `licenses:write` could
otherwise lift a suspension or grant itself cameras and packs. Releasing a slot is
the operator's call too (`update_license` refuses to pick cameras to drop): a customer
free to release could rotate more cameras through its allowance than it pays for.
A customer key gets `403 forbidden` on these even for its own license; on another
customer's it still gets the 404 first (ownership is checked before the staff rule,
as for subscriptions), so nothing about that license leaks either way.

Every change is published to the license cache when its transaction commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response

from meterline.api.body import Parsed, json_body, openapi_body
from meterline.api.deps import ReadSession, RuntimeDep, WriteSession, require
from meterline.api.v1 import license_checks
from meterline.api.v1.common import errors
from meterline.api.v1.principals import is_staff, list_filter, owns
from meterline.billing.license_sync import follow_license
from meterline.clock import in_range, to_rfc3339
from meterline.errors import Forbidden
from meterline.identity.service import Principal
from meterline.licensing.models import License, LicenseCamera, LicenseDevice
from meterline.licensing.schemas import (
    ID,
    CameraOut,
    DeviceOut,
    LicenseCreate,
    LicenseList,
    LicenseOut,
    LicenseUpdate,
    PackOut,
    PlanOut,
)
from meterline.licensing.service import (
    CODE_DETAIL,
    InvalidLicenseRequest,
    license_missing,
    licensing_service,
)

router = APIRouter(tags=["licenses"])

LicRead = Annotated[Principal, Depends(require("licenses:read"))]
LicWrite = Annotated[Principal, Depends(require("licenses:write"))]
LicValidate = Annotated[Principal, Depends(require("licenses:validate"))]
LicenseePath = Annotated[str, Path(min_length=1, max_length=128, pattern=ID)]
CameraPath = Annotated[str, Path(min_length=1, max_length=128, pattern=ID)]
FeaturePath = Annotated[str, Path(min_length=1, max_length=64, pattern=ID)]

_NOT_FOUND = {404: "`license_not_found` (also another tenant's licensee, or another customer's)"}
_STAFF_403 = "`forbidden`: the key lacks `licenses:write`, or is not a staff (admin, operator) key"


def _licensee(principal: Principal, licensee_id: str) -> str:
    """The licensee this caller may read or change: staff any, a customer only itself.
    Checked before anything is read, so another customer's license is a 404 exactly like
    a missing one (same code, same detail) whether or not it exists."""
    if not owns(principal, licensee_id):
        raise license_missing(licensee_id)
    return licensee_id


def _require_staff(principal: Principal) -> None:
    """Changes to a license are staff's, even to a customer's own (module docstring)."""
    if not is_staff(principal):
        raise Forbidden("only an operator or admin key changes licenses; a customer key reads its own")


def _ns(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        raise InvalidLicenseRequest("times need a UTC offset (RFC 3339)")
    try:
        ns = int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000
    except (OverflowError, ValueError):  # (an offset that moves year 1 or 9999 out of range)
        ns = -1
    if not in_range(ns):
        raise InvalidLicenseRequest("times must fall between 1970-01-01 and 2200-01-01")
    return ns


def license_out(row: License) -> LicenseOut:
    return LicenseOut(
        id=row.id, tenant_id=row.licensee_id, plan_id=row.plan_id, license_mode=row.mode, status=row.status,
        valid_from=to_rfc3339(row.valid_from), valid_until=to_rfc3339(row.valid_until),
        cameras_allowed=row.cameras_allowed, cameras_active=row.cameras_active,
        devices_allowed=row.devices_allowed, devices_active=row.devices_active,
        enabled_growth_packs=list(row.packs or []), version=row.version,
    )


def _camera(c: LicenseCamera) -> CameraOut:
    return CameraOut(camera_id=c.camera_id, device_id=c.device_id, activated_at=to_rfc3339(c.activated_at))


def _device(d: LicenseDevice) -> DeviceOut:
    return DeviceOut(device_id=d.device_id, state=d.state, version=d.software_version, cameras=d.cameras_reported,
                     registered_at=to_rfc3339(d.registered_at), last_heartbeat_at=to_rfc3339(d.last_heartbeat_at))


# -- catalogue ---------------------------------------------------------------------------------
@router.get("/license-plans", response_model=list[PlanOut], summary="Plans (prices in minor units)")
def list_plans(principal: LicRead, session: ReadSession) -> list[PlanOut]:
    return [PlanOut(id=p.id, name=p.name, kind=p.kind, unit=p.unit, price_minor=p.price_minor, currency=p.currency,
                    trial_cameras=p.trial_cameras, trial_days=p.trial_days)
            for p in licensing_service.list_plans(session, principal.tenant_id)]


@router.get("/growth-packs", response_model=list[PackOut], summary="Growth packs and their features")
def list_packs(principal: LicRead, session: ReadSession) -> list[PackOut]:
    features = licensing_service.feature_map(session, principal.tenant_id)
    return [PackOut(id=p.id, name=p.name, unit=p.unit, price_minor=p.price_minor, currency=p.currency,
                    features=sorted(f for f, pk in features.items() if pk == p.id))
            for p in licensing_service.list_packs(session, principal.tenant_id)]


# -- licenses ----------------------------------------------------------------------------------
@router.post("/licenses", status_code=201, response_model=LicenseOut, summary="Issue a license",
             openapi_extra=openapi_body(LicenseCreate),
             responses=errors({403: _STAFF_403,
                               404: "`plan_not_found`, `growth_pack_not_found`", 409: "`license_exists`",
                               422: "`validation_error`, `invalid_license_request`"}))
def create_license(runtime: RuntimeDep, principal: LicWrite, session: WriteSession,
                   parsed: Parsed[LicenseCreate] = Depends(json_body(LicenseCreate))) -> LicenseOut:
    _require_staff(principal)
    b = parsed.value
    assert runtime.licensing is not None
    runtime.licensing.bind(session)
    row = licensing_service.create_license(
        session, principal.tenant_id, licensee_id=b.tenant_id, plan_id=b.plan_id, now_ns=runtime.clock.now_ns(),
        cameras_allowed=b.cameras_allowed, devices_allowed=b.devices_allowed, packs=b.growth_packs,
        valid_from=_ns(b.valid_from), valid_until=_ns(b.valid_until))
    return license_out(row)


@router.get("/licenses", response_model=LicenseList, summary="List licenses")
def list_licenses(principal: LicRead, session: ReadSession,
                  after: Annotated[str | None, Query(max_length=128, pattern=ID)] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> LicenseList:
    """Staff see every license of the tenant; a customer key only its own."""
    licensee, visible = list_filter(principal, None)
    if not visible:
        return LicenseList(data=[], next_cursor=None)
    rows = licensing_service.list_licenses(session, principal.tenant_id, after=after, limit=limit,
                                           licensee_id=licensee)
    return LicenseList(data=[license_out(r) for r in rows],
                       next_cursor=rows[-1].licensee_id if len(rows) == limit else None)


@router.get("/licenses/{licensee_id}", response_model=LicenseOut, summary="A license",
            responses=errors(_NOT_FOUND))
def get_license(licensee_id: LicenseePath, principal: LicRead, session: ReadSession) -> LicenseOut:
    return license_out(licensing_service.get_license(session, principal.tenant_id,
                                                     _licensee(principal, licensee_id)))


@router.patch("/licenses/{licensee_id}", response_model=LicenseOut,
              summary="Change a license (suspend, resume, allowances, packs, renewal)",
              openapi_extra=openapi_body(LicenseUpdate),
              responses=errors({**_NOT_FOUND, 403: _STAFF_403, 409: "`allowance_below_active`",
                                422: "`validation_error`, `invalid_license_request`"}))
def update_license(licensee_id: LicenseePath, runtime: RuntimeDep, principal: LicWrite, session: WriteSession,
                   parsed: Parsed[LicenseUpdate] = Depends(json_body(LicenseUpdate))) -> LicenseOut:
    b = parsed.value
    _licensee(principal, licensee_id)
    _require_staff(principal)
    assert runtime.licensing is not None
    runtime.licensing.bind(session)
    row = licensing_service.update_license(
        session, principal.tenant_id, licensee_id, now_ns=runtime.clock.now_ns(), status=b.status,
        plan_id=b.plan_id, cameras_allowed=b.cameras_allowed, devices_allowed=b.devices_allowed,
        packs=b.growth_packs, valid_until=_ns(b.valid_until))
    follow_license(session, row, runtime.clock)  # the licensee's subscriptions, prorated, same transaction
    return license_out(row)


@router.get("/licenses/{licensee_id}/cameras", response_model=list[CameraOut], summary="Activated cameras",
            responses=errors(_NOT_FOUND))
def list_cameras(licensee_id: LicenseePath, principal: LicRead, session: ReadSession) -> list[CameraOut]:
    return [_camera(c) for c in licensing_service.list_cameras(session, principal.tenant_id,
                                                                _licensee(principal, licensee_id))]


@router.delete("/licenses/{licensee_id}/cameras/{camera_id}", status_code=204,
               summary="Release a camera's slot",
               responses=errors({403: _STAFF_403, 404: "`license_not_found`, `camera_not_activated`"}))
def release_camera(licensee_id: LicenseePath, camera_id: CameraPath, runtime: RuntimeDep, principal: LicWrite,
                   session: WriteSession) -> Response:
    """Free the slot; the camera is activated afresh on its next validation (staff only)."""
    _licensee(principal, licensee_id)
    _require_staff(principal)
    assert runtime.licensing is not None
    runtime.licensing.bind(session)
    licensing_service.release_camera(session, principal.tenant_id, licensee_id, camera_id)
    return Response(status_code=204)


@router.get("/licenses/{licensee_id}/devices", response_model=list[DeviceOut], summary="Registered devices",
            responses=errors(_NOT_FOUND))
def list_devices(licensee_id: LicenseePath, principal: LicRead, session: ReadSession) -> list[DeviceOut]:
    return [_device(d) for d in licensing_service.list_devices(session, principal.tenant_id,
                                                                _licensee(principal, licensee_id))]


# -- the device-facing calls as resources ------------------------------------------------------
@router.post("/licenses/{licensee_id}/cameras/{camera_id}/validation", summary="Validate a camera",
             responses=errors({}))
async def validate_camera(licensee_id: LicenseePath, camera_id: CameraPath, runtime: RuntimeDep,
                          principal: LicValidate,
                          device_id: Annotated[str | None, Query(max_length=128, pattern=ID)] = None) -> dict[str, Any]:
    """The profile's `POST /api/v1/licenses/validate`, as a resource. Same answer and codes
    (a customer key naming another customer's licensee: `license_not_found`)."""
    assert runtime.licensing is not None
    answer = await license_checks.validate(runtime.licensing, principal, licensee_id, camera_id, device_id,
                                           runtime.clock.now_ns())
    snap = answer.snapshot
    return {"valid": answer.allowed, "code": answer.code, "detail": CODE_DETAIL.get(answer.code),
            "license_mode": snap.mode if snap else None, "valid_until": to_rfc3339(snap.valid_until) if snap else None,
            "cameras_allowed": snap.cameras_allowed if snap else 0,
            "enabled_growth_packs": list(snap.packs) if snap else []}


@router.get("/licenses/{licensee_id}/entitlements/{feature}", summary="Check a feature")
async def get_entitlement(licensee_id: LicenseePath, feature: FeaturePath, runtime: RuntimeDep,
                          principal: LicValidate,
                          camera_id: Annotated[str | None, Query(max_length=128, pattern=ID)] = None) -> dict[str, Any]:
    """The profile's `POST /api/v1/entitlements/check`, as a resource."""
    assert runtime.licensing is not None
    answer = await license_checks.entitlement(runtime.licensing, principal, licensee_id, camera_id, feature,
                                              runtime.clock.now_ns())
    return {"allowed": answer.allowed, "feature": feature, "growth_pack": answer.growth_pack, "code": answer.code}
