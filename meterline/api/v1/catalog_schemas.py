"""Wire models of the catalog (/v1/devices, /v1/gpu-models, /v1/tiers, /v1/providers).

Requests forbid unknown fields and coerce nothing (``"24"`` is not 24). Ids follow
the catalog's own rule (letters, digits, ``_ . : -``), so they are single path
segments. Uptime is shown both as the stored basis points and as a percentage
string (``9980`` → ``"99.80"``), never as a float.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from meterline.catalog.models import Device, GpuModel, Provider, Tier
from meterline.clock import to_rfc3339
from meterline.ledger.schemas import TEXT_PATTERN
from meterline.money import format_amount

CATALOG_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
CatalogId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=CATALOG_ID_PATTERN)]
TierId = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=CATALOG_ID_PATTERN)]
DeviceStatus = Literal["available", "busy", "maintenance", "offline"]
Int32 = Annotated[int, Field(ge=0, le=2**31 - 1)]


def text(max_length: int, min_length: int = 0) -> Any:
    """Constraints for free text: any Unicode but control characters (PostgreSQL refuses NUL)."""
    return StringConstraints(min_length=min_length, max_length=max_length, pattern=TEXT_PATTERN)


class Request(BaseModel):
    """Base of every request body in the marketplace routers: strict and closed."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _ts(ns: int | None) -> str | None:
    return None if ns is None else to_rfc3339(ns)


# -- devices -----------------------------------------------------------------------------


class DeviceCreate(Request):
    id: CatalogId
    provider_id: CatalogId
    tier: TierId
    name: Annotated[str, text(200, 1)]
    gpu_model: CatalogId | None = Field(default=None, description="Omit for a flat-rate tier device (M2).")
    vram_gb: Int32 | None = Field(default=None, description="Defaults to the GPU model's full VRAM.")
    ram_gb: Int32 = 0
    power_limit_w: Int32 | None = Field(default=None, description="Defaults to the GPU model's board power.")
    uri: Annotated[str, text(255)] = ""
    address: Annotated[str, text(255)] = ""
    region: Annotated[str, text(64)] = ""
    audited: bool = False
    status: DeviceStatus = "available"
    uptime_bp: int = Field(default=0, ge=0, le=10_000, description="Uptime in basis points (9980 = 99.80%).")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"id": "gpu-4090-010", "provider_id": "demo-provider", "tier": "GPU", "name": "4090-10",
         "gpu_model": "nvidia_rtx_4090", "region": "West Coast", "ram_gb": 64}]})


class DeviceOut(BaseModel):
    id: str
    name: str
    provider_id: str
    tier: str
    gpu_model: str | None
    vram_gb: int
    ram_gb: int
    power_limit_w: int
    uri: str
    address: str
    region: str
    audited: bool
    status: str
    uptime_bp: int
    uptime_percent: str = Field(description="uptime_bp as a percentage with two decimals.")
    created_at: str
    last_heartbeat_at: str | None

    @classmethod
    def of(cls, d: Device) -> DeviceOut:
        return cls(
            id=d.id, name=d.name, provider_id=d.provider_id, tier=d.tier_id, gpu_model=d.gpu_model_id,
            vram_gb=d.vram_gb, ram_gb=d.ram_gb, power_limit_w=d.power_limit_w, uri=d.uri, address=d.address,
            region=d.region, audited=d.audited, status=d.status, uptime_bp=d.uptime_bp,
            uptime_percent=format_amount(d.uptime_bp, 2), created_at=to_rfc3339(d.created_at),
            last_heartbeat_at=_ts(d.last_heartbeat_at),
        )


class DevicePage(BaseModel):
    data: list[DeviceOut]
    next_cursor: str | None


# -- GPU models and tiers -----------------------------------------------------------------


class GpuModelOut(BaseModel):
    id: str
    name: str
    vram_gb: int
    default_power_w: int
    created_at: str

    @classmethod
    def of(cls, m: GpuModel) -> GpuModelOut:
        return cls(id=m.id, name=m.name, vram_gb=m.vram_gb, default_power_w=m.default_power_w,
                   created_at=to_rfc3339(m.created_at))


class GpuModelList(BaseModel):
    data: list[GpuModelOut]


class TierOut(BaseModel):
    id: str
    name: str
    description: str
    created_at: str

    @classmethod
    def of(cls, t: Tier) -> TierOut:
        return cls(id=t.id, name=t.name, description=t.description, created_at=to_rfc3339(t.created_at))


class TierList(BaseModel):
    data: list[TierOut]


# -- providers ------------------------------------------------------------------------------


class ProviderCreate(Request):
    id: CatalogId
    name: Annotated[str, text(200, 1)]
    owner_id: Annotated[str, text(128, 1)] | None = Field(
        default=None, description="The principal id of the provider's own API keys (they may then manage "
                                  "its rates and payouts).")


class ProviderOut(BaseModel):
    id: str
    name: str
    owner_id: str | None
    created_at: str

    @classmethod
    def of(cls, p: Provider) -> ProviderOut:
        return cls(id=p.id, name=p.name, owner_id=p.owner_id, created_at=to_rfc3339(p.created_at))


class ProviderList(BaseModel):
    data: list[ProviderOut]
