"""The BrinkByte profile (seeds/002): license validation and entitlements for edge video devices.

    POST /api/v1/licenses/validate   → LicensingRuntime.validate (cache first; a new camera activates)
    POST /api/v1/entitlements/check  → LicensingRuntime.entitlement
    POST /api/v1/heartbeat           → licensing_service.heartbeat (registers the device on first call)
    GET  /stats                      → licensing counts, cache and audit figures
    GET  /health                     → meterline.api.health (already `{"status": "ok", ...}`)
    POST /api/v1/usage/batch         → the metering profile (not here)

The body's ``tenant_id`` is BrinkByte's customer — a *licensee* inside the
caller's Meterline tenant (the API key's tenant, or the dev default tenant).
One Meterline tenant never sees another's licensees: every lookup is keyed by
the caller's tenant first. Inside a tenant, a `customer` key speaks only for
itself (its principal id is its licensee id): naming another licensee is answered
exactly as a licensee without a license (`license_not_found`), and nothing of that
licensee is activated, registered or counted. Staff and device keys name any
licensee of their tenant (`api/v1/principals.speaks_for`).

Validation answers are 200s with ``is_valid`` and, when not valid, a reason
``code`` and ``detail``; only malformed bodies (422), a missing key (401) or
scope (403) are errors. The validate and entitlement handlers are ``async`` and
dispatched on the fast path: on a warm cache they answer on the event loop with
no I/O; a miss goes to the threadpool. Every answer is queued for the audit log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Generic, TypeGuard, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from meterline.api.body import json_body, loads, openapi_body, validate
from meterline.api.deps import ReadSession, RuntimeDep, require, require_async
from meterline.api.fastpath import FastRoute
from meterline.api.runtime import Runtime
from meterline.api.v1 import license_checks
from meterline.api.v1.common import errors
from meterline.api.v1.principals import owner_filter, speaks_for
from meterline.clock import to_rfc3339
from meterline.errors import PayloadTooLarge
from meterline.identity.service import Principal
from meterline.licensing.runtime import NOT_LICENSED, Answer, LicensingRuntime
from meterline.licensing.schemas import (
    EntitlementRequest,
    EntitlementResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    ValidateRequest,
    ValidateResponse,
)
from meterline.licensing.service import CODE_DETAIL, LicenseCode, licensing_service

router = APIRouter(tags=["profile: brinkbyte"])

_validate_scope = require_async("licenses:validate")
_BAD_INPUT = errors({401: "`unauthenticated`", 403: "`forbidden`", 413: "`payload_too_large`",
                     422: "`validation_error`"})


def _license_body(answer: Answer) -> dict[str, Any]:
    snap = answer.snapshot
    body: dict[str, Any] = {
        "is_valid": answer.allowed,
        "license_mode": snap.mode if snap else None,
        "enabled_growth_packs": list(snap.packs) if snap else [],
        "valid_until": to_rfc3339(snap.valid_until) if snap else None,
        "cameras_allowed": snap.cameras_allowed if snap else 0,
    }
    if not answer.allowed:
        body["code"] = answer.code
        body["detail"] = CODE_DETAIL.get(answer.code, answer.code)
    return body


def _json(body: dict[str, Any]) -> Response:
    # A plain Response with compact JSON: the hot path skips FastAPI's response-model pass.
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


class _Rendered(Response):
    """A response rendered once and sent as often as asked: the status line, headers and body
    are fixed, so sending it is two ASGI messages and nothing else (Starlette's `Response`
    builds its header list and background handling on every construction)."""

    def __init__(self, content: bytes, status_code: int = 200) -> None:
        super().__init__(content, status_code=status_code, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


class _RenderedBodies:
    """Answer bodies rendered once and reused: a warm validation's answer depends only on
    its snapshot and code, and rendering it (a dict, an RFC 3339 date, `json.dumps`) cost
    more than the cache lookup that produced it. Keyed by the snapshot object's identity
    (the value keeps the object alive, so the id cannot be reused while cached); a changed
    license is a new snapshot, hence a new entry. Bounded: cleared when full. What is kept
    is the whole response (`_Rendered`), so a warm answer builds no response object either."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._bodies: dict[Any, tuple[Any, _Rendered]] = {}

    def license(self, answer: Answer) -> bytes:
        return bytes(self.license_response(answer).body)

    def entitlement(self, answer: Answer, feature: str) -> bytes:
        return bytes(self.entitlement_response(answer, feature).body)

    def license_response(self, answer: Answer) -> _Rendered:
        key = (id(answer.snapshot), answer.code, answer.allowed)
        hit = self._bodies.get(key)
        if hit is not None and hit[0] is answer.snapshot:
            return hit[1]
        return self._put(key, answer.snapshot, _license_body(answer))

    def entitlement_response(self, answer: Answer, feature: str) -> _Rendered:
        key = (id(answer.snapshot), answer.code, answer.growth_pack, answer.allowed, feature)
        hit = self._bodies.get(key)
        if hit is not None and hit[0] is answer.snapshot:
            return hit[1]
        return self._put(key, answer.snapshot, {"allowed": answer.allowed, "feature": feature,
                                                "growth_pack": answer.growth_pack, "code": answer.code})

    def _put(self, key: Any, snapshot: Any, body: dict[str, Any]) -> _Rendered:
        response = _Rendered(json.dumps(body, separators=(",", ":")).encode())
        if len(self._bodies) >= self.limit:
            self._bodies.clear()
        self._bodies[key] = (snapshot, response)
        return response


_BODIES = _RenderedBodies()
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]*")


def _plain_id(value: Any, limit: int = 128) -> TypeGuard[str]:
    return type(value) is str and 0 < len(value) <= limit and _ID.fullmatch(value) is not None


ValidateFields = tuple[str, str, str | None]  # licensee (the body's tenant_id), camera_id, device_id
EntitlementFields = tuple[str, str | None, str]  # licensee, camera_id, feature


def _validate_fields(data: Any) -> ValidateFields:
    """The common, well-formed body checked by hand (what the schema checks, in a fraction
    of pydantic's time); anything else goes through the schema, which renders the 422."""
    if type(data) is dict:
        camera, licensee, device = data.get("camera_id"), data.get("tenant_id"), data.get("device_id")
        if _plain_id(camera) and _plain_id(licensee) and (device is None or _plain_id(device)):
            return licensee, camera, device
    body = validate(ValidateRequest, data)
    return body.tenant_id, body.camera_id, body.device_id


def _entitlement_fields(data: Any) -> EntitlementFields:
    """As `_validate_fields`, for an entitlement check."""
    if type(data) is dict:
        licensee, camera, feature = data.get("tenant_id"), data.get("camera_id"), data.get("feature")
        if _plain_id(licensee) and (camera is None or _plain_id(camera)) and _plain_id(feature, 64):
            return licensee, camera, feature
    body = validate(EntitlementRequest, data)
    return body.tenant_id, body.camera_id, body.feature


F = TypeVar("F")
_INLINE_PARSE = 64 * 1024  # larger bodies are parsed off the event loop, as `read_json` does


class _ParsedBodies(Generic[F]):
    """Request bodies already parsed and checked, by their exact bytes. A device sends the
    same few bodies over and over (its cameras' validations), so after the first time a
    body costs one dict lookup instead of a JSON decode and three pattern matches. Only
    valid bodies are kept; only short ones; cleared when full."""

    MAX_BODY = 512

    def __init__(self, parse: Callable[[Any], F], limit: int = 16_384) -> None:
        self.parse = parse
        self.limit = limit
        self._fields: dict[bytes, F] = {}

    async def fields(self, raw: bytes, max_bytes: int) -> F:
        """The fields of a request body (413 when too large, 422 when malformed)."""
        fields = self._fields.get(raw)
        if fields is not None:
            return fields
        if len(raw) > max_bytes:
            raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
        data = loads(raw) if len(raw) <= _INLINE_PARSE else await run_in_threadpool(loads, raw)
        fields = self.parse(data)
        if len(raw) <= self.MAX_BODY:
            if len(self._fields) >= self.limit:
                self._fields.clear()
            self._fields[raw] = fields
        return fields


_VALIDATE_BODIES = _ParsedBodies(_validate_fields)
_ENTITLEMENT_BODIES = _ParsedBodies(_entitlement_fields)


def _lic(runtime: Runtime) -> LicensingRuntime:
    assert runtime.licensing is not None
    return runtime.licensing


@router.post(
    "/api/v1/licenses/validate", summary="Validate a camera's license (activates a new camera)",
    response_model=ValidateResponse, responses=_BAD_INPUT, openapi_extra=openapi_body(ValidateRequest),
)
async def validate_license(request: Request, principal: Principal = Depends(_validate_scope)) -> Response:
    """Is this camera licensed? A camera is activated on its first successful validation;
    past the allowance a new camera gets `camera_limit_exceeded` while activated ones stay
    valid. Other codes: `license_not_found`, `license_suspended`, `license_expired`,
    `trial_expired`, `license_not_yet_valid`."""
    return await _validate(request, principal, await request.body())


async def _validate(request: Request, principal: Principal, raw: bytes) -> Response:
    runtime: Runtime = request.app.state.runtime
    licensee, camera, device = await _VALIDATE_BODIES.fields(raw, runtime.settings.max_body_bytes)
    answer = await license_checks.validate(_lic(runtime), principal, licensee, camera, device,
                                           runtime.clock.now_ns())
    return _BODIES.license_response(answer)


@router.post(
    "/api/v1/entitlements/check", summary="May this tenant (and camera) use a feature?",
    response_model=EntitlementResponse, responses=_BAD_INPUT, openapi_extra=openapi_body(EntitlementRequest),
)
async def check_entitlement(request: Request, principal: Principal = Depends(_validate_scope)) -> Response:
    """`allowed` with the growth pack that grants the feature. Codes: `ok`,
    `feature_not_found`, `growth_pack_not_enabled`, `camera_not_activated` (a camera_id
    was given and is not activated), and the license codes of validation."""
    return await _entitlement(request, principal, await request.body())


async def _entitlement(request: Request, principal: Principal, raw: bytes) -> Response:
    runtime: Runtime = request.app.state.runtime
    licensee, camera, feature = await _ENTITLEMENT_BODIES.fields(raw, runtime.settings.max_body_bytes)
    answer = await license_checks.entitlement(_lic(runtime), principal, licensee, camera, feature,
                                              runtime.clock.now_ns())
    return _BODIES.entitlement_response(answer, feature)


@router.post(
    "/api/v1/heartbeat", summary="A device is alive: register it, answer with the license status",
    response_model=HeartbeatResponse, responses=_BAD_INPUT, openapi_extra=openapi_body(HeartbeatRequest),
)
def heartbeat(
    runtime: RuntimeDep, principal: Principal = Depends(require("licenses:validate")),
    parsed: Any = Depends(json_body(HeartbeatRequest)),
) -> Response:
    """The first heartbeat registers the device (within `devices_allowed`, else the license
    answer carries `device_limit_exceeded`); a device silent for longer than
    `METERLINE_DEVICE_DEAD_AFTER_S` is marked dead by the worker, and a later heartbeat revives it."""
    body: HeartbeatRequest = parsed.value
    lic = _lic(runtime)
    now = runtime.clock.now_ns()
    cameras = body.cameras if isinstance(body.cameras, int) else body.cameras[:10_000]
    if not speaks_for(principal, body.tenant_id):
        answer, device_status = NOT_LICENSED, None  # registers nothing under another customer's license
    else:
        with runtime.db.session() as session:
            lic.bind(session)
            result = licensing_service.heartbeat(
                session, principal.tenant_id, body.tenant_id, body.device_id, software_version=body.version,
                cameras=cameras, now_ns=now)  # type: ignore[arg-type]
            device_status = result.device.state if result.device is not None and result.code != \
                LicenseCode.DEVICE_LIMIT_EXCEEDED else None
        answer = Answer(result.code == LicenseCode.OK, result.code, result.snapshot)
    lic.record(principal.tenant_id, license_checks.who(principal), "heartbeat", body.tenant_id, answer, now,
               device_id=body.device_id)
    return _json({"status": "ok", "server_time": to_rfc3339(now), "device_id": body.device_id,
                  "device_status": device_status, "license": _license_body(answer)})


@router.get("/stats", summary="Licensing statistics for the caller's tenant")
def stats(runtime: RuntimeDep, session: ReadSession,
          principal: Principal = Depends(require("licenses:read"))) -> dict[str, Any]:
    """Counts from the database plus this process's cache and audit-queue figures. Staff
    keys count the whole tenant; a customer key only its own license (anyone else: zeros)."""
    lic = _lic(runtime)
    figures: dict[str, Any] = dict(licensing_service.stats(session, principal.tenant_id,
                                                           owner_filter(principal)))
    figures["cache"] = {"hits": lic.cache.hits, "misses": lic.cache.misses, "shared": lic.cache.shared}
    figures["audit"] = {"queued": lic.audit.pending(), "dropped": lic.audit.dropped}
    figures["server_time"] = to_rfc3339(runtime.clock.now_ns())
    return figures


async def _fast_validate(request: Request) -> Response:
    return await _validate(request, await _validate_scope(request), await request.body())


async def _fast_entitlement(request: Request) -> Response:
    return await _entitlement(request, await _validate_scope(request), await request.body())


# A warm validation is a dict lookup: dispatched ahead of FastAPI's router (meterline.api.fastpath),
# with the same scope dependency, body checks and answer as the routes above.
FAST_ROUTES = [FastRoute("POST", "/api/v1/licenses/validate", _fast_validate),
               FastRoute("POST", "/api/v1/entitlements/check", _fast_entitlement)]
