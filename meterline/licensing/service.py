"""Licensing operations: plans, growth packs, licenses, camera activation, devices, the audit log.

A validation is an *answer*, not an error: `ok` or a reason code
(`license_suspended`, `camera_limit_exceeded`, …) — the `LicenseCode` values.
Only malformed management requests (an unknown plan, a negative allowance) are
`MeterlineError`s.

The hot path lives in `licensing.cache`: it answers from an in-memory snapshot
(`LicenseSnapshot`) and comes here only on a cache miss or for a camera's first
activation. Every change that can alter an answer is recorded on the session
(`changed_keys`), and the cache drops those entries once the transaction
commits — locally at once, and on other processes through Redis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from meterline.db.scoping import scoped
from meterline.errors import Conflict, MeterlineError, NotFound
from meterline.ledger.service import new_id
from meterline.licensing.models import (
    GrowthPack,
    GrowthPackFeature,
    License,
    LicenseAuditEntry,
    LicenseCamera,
    LicenseDevice,
    LicensePlan,
)

NS = 1_000_000_000
DAY_NS = 86_400 * NS

# -- errors (management requests only; validation answers are codes, below) -----------------------


class LicensingError(MeterlineError):
    code = "licensing_error"


class LicenseNotFound(LicensingError, NotFound):
    code = "license_not_found"
    title = "No such license"


def license_missing(licensee_id: str) -> LicenseNotFound:
    """The one "no license" error: what a missing licensee and one the caller may not see
    both raise, word for word, so the answer doesn't tell them apart."""
    return LicenseNotFound(f"no license for {licensee_id}")


class PlanNotFound(LicensingError, NotFound):
    code = "plan_not_found"
    title = "No such license plan"


class GrowthPackNotFound(LicensingError, NotFound):
    code = "growth_pack_not_found"
    title = "No such growth pack"


class CameraNotActivated(LicensingError, NotFound):
    code = "camera_not_activated"
    title = "The camera is not activated under this license"


class LicenseExists(LicensingError, Conflict):
    code = "license_exists"
    title = "This licensee already has a license"


class CatalogueEntryExists(LicensingError, Conflict):
    code = "licensing_entry_exists"
    title = "A plan, pack or feature with this id already exists"


class AllowanceBelowActive(LicensingError, Conflict):
    code = "allowance_below_active"
    title = "The allowance is lower than the cameras already activated; release some first"


class InvalidLicenseRequest(LicensingError):
    status = 422
    code = "invalid_license_request"
    title = "The licensing request is not valid"


# -- answer codes -------------------------------------------------------------------------------


class LicenseCode:
    """Stable reason codes of validation, entitlement and heartbeat answers."""

    OK = "ok"
    LICENSE_NOT_FOUND = "license_not_found"
    LICENSE_SUSPENDED = "license_suspended"
    LICENSE_EXPIRED = "license_expired"
    TRIAL_EXPIRED = "trial_expired"
    LICENSE_NOT_YET_VALID = "license_not_yet_valid"
    CAMERA_LIMIT_EXCEEDED = "camera_limit_exceeded"
    FEATURE_NOT_FOUND = "feature_not_found"
    GROWTH_PACK_NOT_ENABLED = "growth_pack_not_enabled"
    CAMERA_NOT_ACTIVATED = "camera_not_activated"
    DEVICE_LIMIT_EXCEEDED = "device_limit_exceeded"


CODE_DETAIL = {
    LicenseCode.LICENSE_NOT_FOUND: "no license exists for this tenant",
    LicenseCode.LICENSE_SUSPENDED: "the license is suspended",
    LicenseCode.LICENSE_EXPIRED: "the license has expired",
    LicenseCode.TRIAL_EXPIRED: "the trial has ended",
    LicenseCode.LICENSE_NOT_YET_VALID: "the license is not valid yet",
    LicenseCode.CAMERA_LIMIT_EXCEEDED: "every camera the license allows is already activated",
    LicenseCode.FEATURE_NOT_FOUND: "no growth pack provides this feature",
    LicenseCode.GROWTH_PACK_NOT_ENABLED: "the growth pack providing this feature is not enabled",
    LicenseCode.CAMERA_NOT_ACTIVATED: "the camera is not activated under this license",
    LicenseCode.DEVICE_LIMIT_EXCEEDED: "every device the license allows is already registered",
}

# Ids appear in URLs and Redis keys; '|' is reserved as the cache-key separator.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]*")
_CHANGED = "licensing.changed"


def check_id(value: Any, what: str, limit: int = 128) -> str:
    if not isinstance(value, str) or len(value) > limit or not _ID.fullmatch(value):
        raise InvalidLicenseRequest(f"{what} must be 1-{limit} letters, digits or _ . : @ / -")
    return value


def _check_count(value: Any, what: str, hi: int = 10_000_000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise InvalidLicenseRequest(f"{what} must be a whole number from 0 to {hi}")
    return value


# -- snapshots: what the cache holds ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LicenseSnapshot:
    """The immutable part of a license an answer depends on (not its usage counters)."""

    tenant_id: str
    licensee_id: str
    license_id: str
    plan_id: str
    mode: str
    status: str
    valid_from: int
    valid_until: int
    cameras_allowed: int
    devices_allowed: int
    packs: tuple[str, ...]
    version: int

    @classmethod
    def of(cls, row: License) -> LicenseSnapshot:
        return cls(row.tenant_id, row.licensee_id, row.id, row.plan_id, row.mode, row.status, row.valid_from,
                   row.valid_until, row.cameras_allowed, row.devices_allowed, tuple(row.packs or ()), row.version)

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LicenseSnapshot:
        return cls(**{**d, "packs": tuple(d["packs"])})


def license_verdict(snap: LicenseSnapshot | None, now_ns: int) -> str:
    """The license-level answer, before any camera is considered. Pure: time is passed in,
    so a cached snapshot gives the right answer the moment a license expires."""
    if snap is None:
        return LicenseCode.LICENSE_NOT_FOUND
    if snap.status == "suspended":
        return LicenseCode.LICENSE_SUSPENDED
    if now_ns >= snap.valid_until:
        return LicenseCode.TRIAL_EXPIRED if snap.mode == "trial" else LicenseCode.LICENSE_EXPIRED
    if now_ns < snap.valid_from:
        return LicenseCode.LICENSE_NOT_YET_VALID
    return LicenseCode.OK


def entitlement_verdict(snap: LicenseSnapshot | None, pack_id: str | None, now_ns: int) -> str:
    code = license_verdict(snap, now_ns)
    if code != LicenseCode.OK:
        return code
    if pack_id is None:
        return LicenseCode.FEATURE_NOT_FOUND
    assert snap is not None
    return LicenseCode.OK if pack_id in snap.packs else LicenseCode.GROWTH_PACK_NOT_ENABLED


@dataclass(frozen=True, slots=True)
class LicenseState:
    """A snapshot plus the cameras activated when it was read (for a complete local set)."""

    snapshot: LicenseSnapshot | None
    cameras: frozenset[str]


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    code: str
    snapshot: LicenseSnapshot | None
    device: LicenseDevice | None


class AuditRecord(NamedTuple):
    """One audit entry, queued by every answer (a named tuple: built in a fraction of a frozen
    dataclass's time, which counts on the validation hot path)."""

    tenant_id: str
    ts: int
    principal: str
    action: str
    licensee_id: str
    camera_id: str | None
    device_id: str | None
    feature: str | None
    allowed: bool
    code: str


def changed_keys(session: Session) -> set[tuple[str, str]]:
    """(tenant, licensee) pairs changed in this transaction; licensee '' = the tenant's packs."""
    return session.info.setdefault(_CHANGED, set())  # type: ignore[no-any-return]


def _changed(session: Session, tenant_id: str, licensee_id: str) -> None:
    changed_keys(session).add((tenant_id, licensee_id))


def _rowcount(result: Any) -> int:
    """Rows matched by an UPDATE/DELETE (a CursorResult's rowcount; typed loosely by SQLAlchemy)."""
    return int(result.rowcount)


class _Full(Exception):
    """Raised inside an activation savepoint (a camera's, a device's) to undo it: no slot."""


class LicensingService:
    # -- catalogue ------------------------------------------------------------------------
    def create_plan(
        self, session: Session, tenant_id: str, *, id: str, name: str, kind: str, unit: str, price_minor: int,
        now_ns: int, currency: str = "USD", trial_cameras: int | None = None, trial_days: int | None = None,
    ) -> LicensePlan:
        if kind not in ("trial", "base", "device"):
            raise InvalidLicenseRequest("kind must be trial, base or device")
        if unit not in ("camera", "device", "tenant"):
            raise InvalidLicenseRequest("unit must be camera, device or tenant")
        if kind == "trial" and (trial_cameras is None or trial_days is None):
            raise InvalidLicenseRequest("a trial plan needs trial_cameras and trial_days")
        row = LicensePlan(
            tenant_id=tenant_id, id=check_id(id, "plan id", 64), name=name[:200], kind=kind, unit=unit,
            price_minor=_check_count(price_minor, "price_minor", 2**53), currency=currency,
            trial_cameras=trial_cameras, trial_days=trial_days, created_at=now_ns,
        )
        return self._insert(session, row, (tenant_id, id), f"plan {id}")

    def create_pack(
        self, session: Session, tenant_id: str, *, id: str, name: str, unit: str, price_minor: int, now_ns: int,
        currency: str = "USD",
    ) -> GrowthPack:
        if unit not in ("camera", "device", "tenant"):
            raise InvalidLicenseRequest("unit must be camera, device or tenant")
        row = GrowthPack(tenant_id=tenant_id, id=check_id(id, "pack id", 64), name=name[:200], unit=unit,
                         price_minor=_check_count(price_minor, "price_minor", 2**53), currency=currency,
                         created_at=now_ns)
        self._insert(session, row, (tenant_id, id), f"growth pack {id}")
        _changed(session, tenant_id, "")
        return row

    def add_feature(
        self, session: Session, tenant_id: str, *, id: str, pack_id: str, now_ns: int, description: str = "",
    ) -> GrowthPackFeature:
        self.get_pack(session, tenant_id, pack_id)
        row = GrowthPackFeature(tenant_id=tenant_id, id=check_id(id, "feature", 64), pack_id=pack_id,
                                description=description[:500], created_at=now_ns)
        self._insert(session, row, (tenant_id, id), f"feature {id}")
        _changed(session, tenant_id, "")
        return row

    def get_plan(self, session: Session, tenant_id: str, plan_id: str) -> LicensePlan:
        row = session.get(LicensePlan, (tenant_id, plan_id))
        if row is None:
            raise PlanNotFound(f"plan {plan_id} does not exist")
        return row

    def get_pack(self, session: Session, tenant_id: str, pack_id: str) -> GrowthPack:
        row = session.get(GrowthPack, (tenant_id, pack_id))
        if row is None:
            raise GrowthPackNotFound(f"growth pack {pack_id} does not exist")
        return row

    def list_plans(self, session: Session, tenant_id: str) -> list[LicensePlan]:
        return list(session.scalars(scoped(select(LicensePlan), LicensePlan, tenant_id).order_by(LicensePlan.id)))

    def list_packs(self, session: Session, tenant_id: str) -> list[GrowthPack]:
        return list(session.scalars(scoped(select(GrowthPack), GrowthPack, tenant_id).order_by(GrowthPack.id)))

    def feature_map(self, session: Session, tenant_id: str) -> dict[str, str]:
        """feature → pack for the tenant (what the entitlement cache holds)."""
        stmt = scoped(select(GrowthPackFeature.id, GrowthPackFeature.pack_id),  # type: ignore[type-var]
                      GrowthPackFeature, tenant_id)
        return {f: p for f, p in session.execute(stmt)}

    # -- licenses -------------------------------------------------------------------------
    def create_license(
        self, session: Session, tenant_id: str, *, licensee_id: str, plan_id: str, now_ns: int,
        cameras_allowed: int | None = None, devices_allowed: int | None = None, packs: list[str] | None = None,
        valid_from: int | None = None, valid_until: int | None = None,
    ) -> License:
        """Issue a licensee's license. A trial plan fixes cameras and length (2 cameras, 90 days);
        a base license defaults to one year and as many devices as cameras."""
        check_id(licensee_id, "tenant_id")
        plan = self.get_plan(session, tenant_id, plan_id)
        if plan.kind not in ("trial", "base"):
            raise InvalidLicenseRequest(f"plan {plan_id} is a {plan.kind} plan, not a license plan")
        start = now_ns if valid_from is None else valid_from
        if plan.kind == "trial":
            assert plan.trial_cameras is not None and plan.trial_days is not None
            cameras = plan.trial_cameras if cameras_allowed is None else min(cameras_allowed, plan.trial_cameras)
            end = start + plan.trial_days * DAY_NS if valid_until is None else valid_until
        else:
            if cameras_allowed is None:
                raise InvalidLicenseRequest("cameras_allowed is required for a base license")
            cameras = cameras_allowed
            end = start + 365 * DAY_NS if valid_until is None else valid_until
        cameras = _check_count(cameras, "cameras_allowed")
        devices = _check_count(cameras if devices_allowed is None else devices_allowed, "devices_allowed")
        if end <= start:
            raise InvalidLicenseRequest("valid_until must be after valid_from")
        if session.get(License, (tenant_id, licensee_id)) is not None:
            raise LicenseExists(f"{licensee_id} already has a license")
        row = License(
            tenant_id=tenant_id, licensee_id=licensee_id, id=new_id("lic"), plan_id=plan_id,
            mode=plan.kind, status="active", valid_from=start, valid_until=end, cameras_allowed=cameras,
            devices_allowed=devices, cameras_active=0, devices_active=0,
            packs=self._check_packs(session, tenant_id, packs or []), version=1, created_at=now_ns,
            updated_at=now_ns,
        )
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            raise LicenseExists(f"{licensee_id} already has a license") from None
        _changed(session, tenant_id, licensee_id)
        return row

    def get_license(self, session: Session, tenant_id: str, licensee_id: str, *, lock: bool = False) -> License:
        stmt = scoped(select(License), License, tenant_id).where(License.licensee_id == licensee_id)
        if lock:  # (and read afresh: an object this session loaded before may be stale)
            stmt = stmt.with_for_update().execution_options(populate_existing=True)
        row = session.scalars(stmt).first()
        if row is None:
            raise license_missing(licensee_id)
        return row

    def list_licenses(self, session: Session, tenant_id: str, *, after: str | None = None, limit: int = 100,
                      licensee_id: str | None = None) -> list[License]:
        """In licensee order; with `licensee_id`, only that licensee's (a customer's own)."""
        stmt = scoped(select(License), License, tenant_id)
        if licensee_id is not None:
            stmt = stmt.where(License.licensee_id == licensee_id)
        if after is not None:
            stmt = stmt.where(License.licensee_id > after)
        return list(session.scalars(stmt.order_by(License.licensee_id).limit(limit)))

    def update_license(
        self, session: Session, tenant_id: str, licensee_id: str, *, now_ns: int, status: str | None = None,
        cameras_allowed: int | None = None, devices_allowed: int | None = None, packs: list[str] | None = None,
        valid_until: int | None = None, mode: str | None = None, plan_id: str | None = None,
    ) -> License:
        """Change a license (suspend/resume, allowances, packs, renewal, trial → base).

        Lowering the camera allowance below the activated count is refused rather than
        silently dropping cameras: which ones to release is the operator's decision."""
        row = self.get_license(session, tenant_id, licensee_id, lock=True)
        if status is not None:
            if status not in ("active", "suspended"):
                raise InvalidLicenseRequest("status must be active or suspended")
            row.status = status
        if plan_id is not None:
            plan = self.get_plan(session, tenant_id, plan_id)
            if plan.kind not in ("trial", "base"):
                raise InvalidLicenseRequest(f"plan {plan_id} is not a license plan")
            row.plan_id, row.mode = plan_id, plan.kind
        if mode is not None:
            if mode not in ("trial", "base"):
                raise InvalidLicenseRequest("mode must be trial or base")
            row.mode = mode
        if cameras_allowed is not None:
            _check_count(cameras_allowed, "cameras_allowed")
            if cameras_allowed < row.cameras_active:
                raise AllowanceBelowActive(f"{row.cameras_active} cameras are active; release some first")
            row.cameras_allowed = cameras_allowed
        if devices_allowed is not None:
            row.devices_allowed = _check_count(devices_allowed, "devices_allowed")
        if packs is not None:
            row.packs = self._check_packs(session, tenant_id, packs)
        if valid_until is not None:
            if valid_until <= row.valid_from:
                raise InvalidLicenseRequest("valid_until must be after valid_from")
            row.valid_until = valid_until
        row.version += 1
        row.updated_at = now_ns
        session.flush()
        _changed(session, tenant_id, licensee_id)
        return row

    def load_state(self, session: Session, tenant_id: str, licensee_id: str) -> LicenseState:
        """The snapshot and activated cameras, in two indexed reads (a cache miss)."""
        row = session.get(License, (tenant_id, licensee_id))
        if row is None:
            return LicenseState(None, frozenset())
        cams = session.scalars(
            select(LicenseCamera.camera_id).where(
                LicenseCamera.tenant_id == tenant_id, LicenseCamera.licensee_id == licensee_id)
        )
        return LicenseState(LicenseSnapshot.of(row), frozenset(cams))

    # -- cameras --------------------------------------------------------------------------
    def activate_camera(
        self, session: Session, tenant_id: str, licensee_id: str, camera_id: str, device_id: str | None,
        now_ns: int,
    ) -> tuple[str, LicenseSnapshot | None]:
        """A camera's first successful validation: take one slot of the allowance, or refuse.

        The slot is taken by a conditional UPDATE on the license row (atomic on both
        backends; on PostgreSQL a racing second UPDATE waits for the row and re-checks
        the condition), inside a savepoint with the camera's insert, so a refusal
        leaves no camera row and a camera activated twice at once counts once.
        """
        row = session.get(License, (tenant_id, licensee_id))
        snap = LicenseSnapshot.of(row) if row is not None else None
        code = license_verdict(snap, now_ns)
        if code != LicenseCode.OK:
            return code, snap
        if session.get(LicenseCamera, (tenant_id, licensee_id, camera_id)) is not None:
            return LicenseCode.OK, snap
        try:
            with session.begin_nested():
                session.add(LicenseCamera(tenant_id=tenant_id, licensee_id=licensee_id, camera_id=camera_id,
                                          device_id=device_id, activated_at=now_ns))
                session.flush()
                taken = session.execute(
                    update(License)
                    .where(License.tenant_id == tenant_id, License.licensee_id == licensee_id,
                           License.cameras_active < License.cameras_allowed)
                    .values(cameras_active=License.cameras_active + 1)
                    .execution_options(synchronize_session=False)
                )
                if not _rowcount(taken):
                    raise _Full
        except _Full:
            return LicenseCode.CAMERA_LIMIT_EXCEEDED, snap
        except IntegrityError:
            return LicenseCode.OK, snap  # activated concurrently by another request: it counts once
        return LicenseCode.OK, snap

    def is_activated(self, session: Session, tenant_id: str, licensee_id: str, camera_id: str) -> bool:
        return session.get(LicenseCamera, (tenant_id, licensee_id, camera_id)) is not None

    def list_cameras(self, session: Session, tenant_id: str, licensee_id: str) -> list[LicenseCamera]:
        self.get_license(session, tenant_id, licensee_id)
        stmt = scoped(select(LicenseCamera), LicenseCamera, tenant_id).where(
            LicenseCamera.licensee_id == licensee_id)
        return list(session.scalars(stmt.order_by(LicenseCamera.camera_id)))

    def release_camera(self, session: Session, tenant_id: str, licensee_id: str, camera_id: str) -> None:
        """Free a camera's slot; it is activated afresh on its next validation."""
        self.get_license(session, tenant_id, licensee_id, lock=True)
        if not self._release(session, tenant_id, licensee_id, [camera_id]):
            raise CameraNotActivated(f"camera {camera_id} is not activated for {licensee_id}")

    def _release(self, session: Session, tenant_id: str, licensee_id: str, camera_ids: list[str]) -> int:
        if not camera_ids:
            return 0
        n = _rowcount(session.execute(
            delete(LicenseCamera).where(
                LicenseCamera.tenant_id == tenant_id, LicenseCamera.licensee_id == licensee_id,
                LicenseCamera.camera_id.in_(camera_ids))
            .execution_options(synchronize_session=False)
        ))
        if n:
            session.execute(
                update(License).where(License.tenant_id == tenant_id, License.licensee_id == licensee_id)
                .values(cameras_active=License.cameras_active - n, version=License.version + 1)
                .execution_options(synchronize_session=False)
            )
            _changed(session, tenant_id, licensee_id)
        return n

    # -- devices --------------------------------------------------------------------------
    def heartbeat(
        self, session: Session, tenant_id: str, licensee_id: str, device_id: str, *, software_version: str,
        cameras: list[str], now_ns: int,
    ) -> HeartbeatResult:
        """Register the device on its first heartbeat (or revive a dead one), within the
        device allowance; otherwise note that it is alive. Only a registration or revival
        changes cached answers — a plain heartbeat does not invalidate anything.

        Two first heartbeats of one device may arrive at once (a device retrying, two
        gateways): the registration is the device row's insert — or, for a dead device,
        its conditional `dead → alive` update — and the slot is taken in the same savepoint,
        so the loser meets the key (or finds the device alive) and is a plain heartbeat:
        one slot for one device, and never a 500."""
        row = session.get(License, (tenant_id, licensee_id))
        if row is None:
            return HeartbeatResult(LicenseCode.LICENSE_NOT_FOUND, None, None)
        snap = LicenseSnapshot.of(row)
        key = (tenant_id, licensee_id, device_id)
        # Locked: the cull may be marking this device dead in a transaction not yet committed.
        # Read without the lock it looked alive, the heartbeat only touched its timestamps,
        # and it answered alive for a device left dead with its slot given away. Locked, it
        # waits for the cull and revives the device, or locks first and the cull skips it.
        device = session.get(LicenseDevice, key, with_for_update=True, populate_existing=True)
        if device is None or device.state == "dead":
            try:
                claimed = self._claim_device(session, key, device, now_ns)
            except _Full:
                device = session.get(LicenseDevice, key, populate_existing=True)
                return HeartbeatResult(LicenseCode.DEVICE_LIMIT_EXCEEDED, snap, device)
            except IntegrityError:
                device = session.get(LicenseDevice, key, populate_existing=True)
                if device is None:
                    raise  # not the racing registration it would be
                claimed = False  # registered at this moment by another request
            else:
                device = session.get(LicenseDevice, key, populate_existing=True)
            assert device is not None
            if claimed:
                _changed(session, tenant_id, licensee_id)
        device.last_heartbeat_at = now_ns
        device.software_version = software_version[:64]
        device.cameras_reported = cameras
        session.flush()
        return HeartbeatResult(license_verdict(snap, now_ns), snap, device)

    @staticmethod
    def _claim_device(session: Session, key: tuple[str, str, str], device: LicenseDevice | None,
                      now_ns: int) -> bool:
        """Make the device alive and take one slot of the allowance, in one savepoint.
        False if another request revived it first; raises `_Full` (nothing changed) when no
        slot is free, IntegrityError when another request registered it first."""
        tenant_id, licensee_id, device_id = key
        with session.begin_nested():
            if device is None:
                session.add(LicenseDevice(tenant_id=tenant_id, licensee_id=licensee_id, device_id=device_id,
                                          registered_at=now_ns, last_heartbeat_at=now_ns, state="alive",
                                          died_at=None))
                session.flush()
            else:
                revived = session.execute(
                    update(LicenseDevice)
                    .where(LicenseDevice.tenant_id == tenant_id, LicenseDevice.licensee_id == licensee_id,
                           LicenseDevice.device_id == device_id, LicenseDevice.state == "dead")
                    .values(state="alive", died_at=None)
                    .execution_options(synchronize_session=False)
                )
                if not _rowcount(revived):
                    return False
            taken = session.execute(
                update(License)
                .where(License.tenant_id == tenant_id, License.licensee_id == licensee_id,
                       License.devices_active < License.devices_allowed)
                .values(devices_active=License.devices_active + 1)
                .execution_options(synchronize_session=False)
            )
            if not _rowcount(taken):
                raise _Full
        return True

    def list_devices(self, session: Session, tenant_id: str, licensee_id: str) -> list[LicenseDevice]:
        self.get_license(session, tenant_id, licensee_id)
        stmt = scoped(select(LicenseDevice), LicenseDevice, tenant_id).where(
            LicenseDevice.licensee_id == licensee_id)
        return list(session.scalars(stmt.order_by(LicenseDevice.device_id)))

    def cull_dead_devices(
        self, session: Session, now_ns: int, *, dead_after_ns: int, release_cameras: bool, limit: int = 500,
    ) -> list[LicenseDevice]:
        """Mark alive devices silent for longer than `dead_after_ns` dead (across tenants),
        free their device slot and, if configured, release the cameras they activated."""
        cutoff = now_ns - dead_after_ns
        due = list(session.scalars(
            select(LicenseDevice).where(LicenseDevice.state == "alive", LicenseDevice.last_heartbeat_at < cutoff)
            .order_by(LicenseDevice.tenant_id, LicenseDevice.licensee_id, LicenseDevice.device_id)
            .limit(limit).with_for_update(skip_locked=True)
        ))
        for dev in due:
            dev.state, dev.died_at = "dead", now_ns
            session.execute(
                update(License).where(License.tenant_id == dev.tenant_id, License.licensee_id == dev.licensee_id)
                # An alive device always holds one slot, so this never goes below zero.
                .values(devices_active=License.devices_active - 1)
                .execution_options(synchronize_session=False)
            )
            if release_cameras:
                cams = list(session.scalars(select(LicenseCamera.camera_id).where(
                    LicenseCamera.tenant_id == dev.tenant_id, LicenseCamera.licensee_id == dev.licensee_id,
                    LicenseCamera.device_id == dev.device_id)))
                self._release(session, dev.tenant_id, dev.licensee_id, cams)
            _changed(session, dev.tenant_id, dev.licensee_id)
        session.flush()
        return due

    # -- audit ----------------------------------------------------------------------------
    def write_audit(self, session: Session, records: list[AuditRecord]) -> int:
        """One executemany for a batch drained from the in-memory queue.

        Straight to the driver: the ORM/Core parameter processing of a few hundred rows
        holds the GIL for milliseconds, and this runs beside the validation hot path."""
        if records:
            conn = session.connection()
            ph = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            conn.exec_driver_sql(
                f"INSERT INTO license_audit_log (tenant_id, ts, principal, action, licensee_id, camera_id, "
                f"device_id, feature, allowed, code) VALUES ({', '.join([ph] * 10)})",
                [(r.tenant_id, r.ts, r.principal[:160], r.action, r.licensee_id[:128], r.camera_id, r.device_id,
                  r.feature, r.allowed, r.code) for r in records],
            )
        return len(records)

    def prune_audit(self, session: Session, before_ns: int, *, limit: int = 10_000) -> int:
        """Delete up to `limit` entries older than `before_ns` (bounded so a backlog can't hold
        one long transaction)."""
        ids = select(LicenseAuditEntry.id).where(LicenseAuditEntry.ts < before_ns).order_by(
            LicenseAuditEntry.id).limit(limit)
        ids_list = list(session.scalars(ids))
        if not ids_list:
            return 0
        session.execute(delete(LicenseAuditEntry).where(LicenseAuditEntry.id.in_(ids_list))
                        .execution_options(synchronize_session=False))
        return len(ids_list)

    def audit_entries(self, session: Session, tenant_id: str, licensee_id: str | None = None,
                      limit: int = 100) -> list[LicenseAuditEntry]:
        stmt = scoped(select(LicenseAuditEntry), LicenseAuditEntry, tenant_id)
        if licensee_id is not None:
            stmt = stmt.where(LicenseAuditEntry.licensee_id == licensee_id)
        return list(session.scalars(stmt.order_by(LicenseAuditEntry.id.desc()).limit(limit)))

    def stats(self, session: Session, tenant_id: str, licensee_id: str | None = None) -> dict[str, int]:
        """The tenant's licensing counts; with `licensee_id`, that one licensee's (a customer's)."""

        def count(stmt: Any, model: Any) -> int:
            stmt = scoped(stmt, model, tenant_id)
            if licensee_id is not None:
                stmt = stmt.where(model.licensee_id == licensee_id)
            return int(session.scalar(stmt) or 0)

        devices = select(func.count()).select_from(LicenseDevice)
        validations = select(func.count()).select_from(LicenseAuditEntry).where(
            LicenseAuditEntry.action == "validate")
        return {
            "licenses": count(select(func.count()).select_from(License), License),
            "cameras_active": count(select(func.coalesce(func.sum(License.cameras_active), 0)), License),
            "devices_alive": count(devices.where(LicenseDevice.state == "alive"), LicenseDevice),
            "devices_dead": count(devices.where(LicenseDevice.state == "dead"), LicenseDevice),
            "validations": count(validations, LicenseAuditEntry),
            "validations_refused": count(validations.where(LicenseAuditEntry.allowed.is_(False)),
                                         LicenseAuditEntry),
        }

    # -- demo -----------------------------------------------------------------------------
    def seed_demo(self, session: Session, tenant_id: str, now_ns: int) -> None:
        """The BrinkByte pricing model and its example tenant (seeds/002). Idempotent."""
        for plan in DEMO_PLANS:
            if session.get(LicensePlan, (tenant_id, plan["id"])) is None:
                self.create_plan(session, tenant_id, now_ns=now_ns, **plan)
        for pack in DEMO_PACKS:
            if session.get(GrowthPack, (tenant_id, pack["id"])) is None:
                self.create_pack(session, tenant_id, now_ns=now_ns, **pack)
        for pack_id, features in DEMO_FEATURES.items():
            for feature in features:
                if session.get(GrowthPackFeature, (tenant_id, feature)) is None:
                    self.add_feature(session, tenant_id, id=feature, pack_id=pack_id, now_ns=now_ns)
        if session.get(License, (tenant_id, DEMO_LICENSEE)) is None:
            self.create_license(session, tenant_id, licensee_id=DEMO_LICENSEE, plan_id="base_license",
                                cameras_allowed=100, devices_allowed=10,
                                packs=["advanced_analytics", "active_transport"], now_ns=now_ns)

    # -- helpers --------------------------------------------------------------------------
    def _check_packs(self, session: Session, tenant_id: str, packs: list[str]) -> list[str]:
        if not isinstance(packs, list) or len(packs) > 100:
            raise InvalidLicenseRequest("packs must be a list of at most 100 pack ids")
        for p in packs:
            self.get_pack(session, tenant_id, check_id(p, "pack id", 64))
        return list(dict.fromkeys(packs))  # deduplicated, in the order given (the seed's order)

    @staticmethod
    def _insert(session: Session, row: Any, key: tuple[str, str], what: str) -> Any:
        if session.get(type(row), key) is not None:
            raise CatalogueEntryExists(f"{what} already exists")
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            raise CatalogueEntryExists(f"{what} already exists") from None
        return row


# -- demo data (seeds/002: "Pricing Model", "33 growth pack features") ---------------------------
DEMO_LICENSEE = "tenant-123"
DEMO_PLANS: list[dict[str, Any]] = [
    {"id": "base_license", "name": "Base License", "kind": "base", "unit": "camera", "price_minor": 6000},
    {"id": "trial", "name": "Trial", "kind": "trial", "unit": "camera", "price_minor": 0,
     "trial_cameras": 2, "trial_days": 90},
    {"id": "edge_device_basic", "name": "Edge Device Basic", "kind": "device", "unit": "device",
     "price_minor": 5000},
    {"id": "edge_device_managed", "name": "Edge Device Managed", "kind": "device", "unit": "device",
     "price_minor": 6500},
]
# The seed prices two packs; `active_transport` is enabled for tenant-123 but unpriced there —
# Meterline's demo prices it like Advanced Analytics (per camera), labelled as an assumption.
DEMO_PACKS: list[dict[str, Any]] = [
    {"id": "advanced_analytics", "name": "Advanced Analytics Pack", "unit": "camera", "price_minor": 2000},
    {"id": "intelligence", "name": "Intelligence Pack", "unit": "tenant", "price_minor": 40000},
    {"id": "active_transport", "name": "Active Transport Pack", "unit": "camera", "price_minor": 2000},
]
DEMO_FEATURES: dict[str, list[str]] = {
    "advanced_analytics": [
        "heatmaps", "dwell_time", "queue_analytics", "people_counting", "occupancy_tracking",
        "line_crossing_analytics", "zone_analytics", "trajectory_analysis", "demographic_analytics",
        "custom_reports", "historical_trends", "data_export",
    ],
    "active_transport": [
        "vehicle_counting", "vehicle_classification", "license_plate_recognition", "speed_estimation",
        "traffic_flow", "parking_occupancy", "wrong_way_detection", "pedestrian_safety", "cyclist_detection",
        "incident_detection", "transit_dwell_time",
    ],
    "intelligence": [
        "anomaly_detection", "predictive_analytics", "natural_language_search", "ai_insights",
        "cross_camera_tracking", "behavior_analysis", "forecasting", "alert_correlation", "event_summaries",
        "api_access",
    ],
}

licensing_service = LicensingService()
