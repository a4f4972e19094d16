"""Request and response models of the licensing API (BrinkByte profile and /v1)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# Licensee, camera and device ids: what `service.check_id` accepts ('|' is reserved for cache keys).
ID = r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]*$"
IdField = Field(min_length=1, max_length=128, pattern=ID)
FeatureField = Field(min_length=1, max_length=64, pattern=ID)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


class ValidateRequest(_Strict):
    camera_id: str = IdField
    tenant_id: str = Field(min_length=1, max_length=128, pattern=ID, description="The licensee (seed: tenant-123).")
    device_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=ID)


class ValidateResponse(BaseModel):
    is_valid: bool
    license_mode: str | None = Field(description="`base` or `trial`; null when there is no license.")
    enabled_growth_packs: list[str]
    valid_until: str | None = Field(description="RFC 3339 UTC.")
    cameras_allowed: int
    code: str | None = Field(default=None, description="Present when not valid: the reason.")
    detail: str | None = None


class EntitlementRequest(_Strict):
    tenant_id: str = IdField
    camera_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=ID)
    feature: str = FeatureField


class EntitlementResponse(BaseModel):
    allowed: bool
    feature: str
    growth_pack: str | None
    code: str


class HeartbeatRequest(_Strict):
    device_id: str = IdField
    tenant_id: str = IdField
    version: str = Field(default="", max_length=64)
    cameras: Annotated[list[Annotated[str, Field(max_length=128)]], Field(max_length=10_000)] | Annotated[
        int, Field(ge=0, le=1_000_000)] = Field(
        default_factory=list, description="The camera ids the device runs (or just their count).")


class HeartbeatResponse(BaseModel):
    status: str
    server_time: str
    device_id: str
    device_status: str | None
    license: ValidateResponse


class LicenseCreate(_Strict):
    tenant_id: str = IdField
    plan_id: str = Field(min_length=1, max_length=64, pattern=ID)
    cameras_allowed: int | None = Field(default=None, ge=0, le=10_000_000)
    devices_allowed: int | None = Field(default=None, ge=0, le=10_000_000)
    growth_packs: list[str] = Field(default_factory=list, max_length=100)
    valid_from: datetime | None = None
    valid_until: datetime | None = None


class LicenseUpdate(_Strict):
    status: str | None = Field(default=None, pattern="^(active|suspended)$")
    plan_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=ID)
    cameras_allowed: int | None = Field(default=None, ge=0, le=10_000_000)
    devices_allowed: int | None = Field(default=None, ge=0, le=10_000_000)
    growth_packs: list[str] | None = Field(default=None, max_length=100)
    valid_until: datetime | None = None


class LicenseOut(BaseModel):
    id: str
    tenant_id: str
    plan_id: str
    license_mode: str
    status: str
    valid_from: str
    valid_until: str
    cameras_allowed: int
    cameras_active: int
    devices_allowed: int
    devices_active: int
    enabled_growth_packs: list[str]
    version: int


class LicenseList(BaseModel):
    data: list[LicenseOut]
    next_cursor: str | None


class CameraOut(BaseModel):
    camera_id: str
    device_id: str | None
    activated_at: str


class DeviceOut(BaseModel):
    device_id: str
    state: str
    version: str
    cameras: list[str] | int
    registered_at: str
    last_heartbeat_at: str


class PlanOut(BaseModel):
    id: str
    name: str
    kind: str
    unit: str
    price_minor: int
    currency: str
    trial_cameras: int | None
    trial_days: int | None


class PackOut(BaseModel):
    id: str
    name: str
    unit: str
    price_minor: int
    currency: str
    features: list[str]
