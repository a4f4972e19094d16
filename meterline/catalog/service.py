"""Catalog operations: GPU models, tiers, providers and devices, always scoped to one tenant.

The catalog says what exists; it knows nothing of rentals or prices. Where a
rule needs both (demand-based pricing needs "how many of these are busy"), the
caller passes in what the other domain knows (`busy_device_ids`) instead of the
catalog reading rental tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from meterline.catalog.models import DEVICE_STATUSES, Device, GpuModel, Provider, Tier
from meterline.db.scoping import scoped
from meterline.errors import Conflict, MeterlineError, NotFound

# -- errors -------------------------------------------------------------------------


class CatalogError(MeterlineError):
    code = "catalog_error"


class GpuModelNotFound(CatalogError, NotFound):
    code = "gpu_model_not_found"
    title = "No such GPU model"


class TierNotFound(CatalogError, NotFound):
    code = "tier_not_found"
    title = "No such tier"


class ProviderNotFound(CatalogError, NotFound):
    code = "provider_not_found"
    title = "No such provider"


class DeviceNotFound(CatalogError, NotFound):
    code = "device_not_found"
    title = "No such device"


class CatalogEntryExists(CatalogError, Conflict):
    code = "catalog_entry_exists"
    title = "A catalog entry with this id already exists"


class InvalidCatalogEntry(CatalogError):
    status = 422
    code = "invalid_catalog_entry"
    title = "The catalog entry is not valid"


# -- values -------------------------------------------------------------------------

# Catalog ids appear in URLs (`/api/devices/{tier}`) and in price books, so they stay plain.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
# Utilisation is a ratio of counts (1/3 does not terminate); 18 places is the precision
# rates carry everywhere else, so rounding here never shows in a minor-unit cost.
_UTILISATION_PLACES = Decimal(1).scaleb(-18)
# Devices that count as supply when measuring demand: ones that could be rented now or are.
_IN_SERVICE = ("available", "busy")


@dataclass(slots=True)
class DeviceCreate:
    id: str
    provider_id: str
    tier_id: str
    name: str
    uri: str = ""
    address: str = ""
    region: str = ""
    gpu_model_id: str | None = None
    # None: take the GPU model's figure (full card, its default power limit).
    vram_gb: int | None = None
    ram_gb: int = 0
    power_limit_w: int | None = None
    audited: bool = False
    status: str = "available"
    uptime_bp: int = 0


def _check_id(value: str, what: str, limit: int = 64) -> str:
    if not isinstance(value, str) or len(value) > limit or not _ID.fullmatch(value):
        raise InvalidCatalogEntry(f"{what} must be 1-{limit} letters, digits, '_', '.', ':' or '-'")
    return value


def _check_text(value: str, what: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidCatalogEntry(f"{what} must be text of at most {limit} characters")
    return value


def _check_int(value: Any, what: str, *, lo: int = 0, hi: int = 2**31 - 1) -> int:
    # bool is an int subclass; `audited=True` passed as a VRAM figure is a bug, not 1 GB.
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidCatalogEntry(f"{what} must be a whole number from {lo} to {hi}")
    return value


def _check_status(status: str) -> str:
    if status not in DEVICE_STATUSES:
        raise InvalidCatalogEntry(f"status must be one of {', '.join(DEVICE_STATUSES)}")
    return status


class CatalogService:
    # -- GPU models -----------------------------------------------------------------
    def create_gpu_model(
        self, session: Session, tenant_id: str, *, id: str, name: str, vram_gb: int,
        default_power_w: int, now_ns: int,
    ) -> GpuModel:
        row = GpuModel(
            tenant_id=tenant_id, id=_check_id(id, "gpu model id"), name=_check_text(name, "name", 200),
            vram_gb=_check_int(vram_gb, "vram_gb", lo=1), default_power_w=_check_int(default_power_w, "default_power_w"),
            created_at=now_ns,
        )
        return self._insert(session, row, f"GPU model {id}")

    def get_gpu_model(self, session: Session, tenant_id: str, gpu_model_id: str) -> GpuModel:
        row = session.get(GpuModel, (tenant_id, gpu_model_id))
        if row is None:
            raise GpuModelNotFound(f"GPU model {gpu_model_id} does not exist")
        return row

    def list_gpu_models(self, session: Session, tenant_id: str) -> list[GpuModel]:
        return list(session.scalars(scoped(select(GpuModel), GpuModel, tenant_id).order_by(GpuModel.id)))

    # -- tiers ------------------------------------------------------------------------
    def create_tier(
        self, session: Session, tenant_id: str, *, id: str, name: str, description: str = "", now_ns: int,
    ) -> Tier:
        row = Tier(
            tenant_id=tenant_id, id=_check_id(id, "tier id", 32),
            name=_check_text(name, "name", 200), description=_check_text(description, "description", 1000),
            created_at=now_ns,
        )
        return self._insert(session, row, f"tier {id}")

    def get_tier(self, session: Session, tenant_id: str, tier_id: str) -> Tier:
        row = session.get(Tier, (tenant_id, tier_id))
        if row is None:
            raise TierNotFound(f"tier {tier_id} does not exist")
        return row

    def list_tiers(self, session: Session, tenant_id: str) -> list[Tier]:
        return list(session.scalars(scoped(select(Tier), Tier, tenant_id).order_by(Tier.id)))

    # -- providers --------------------------------------------------------------------
    def create_provider(
        self, session: Session, tenant_id: str, *, id: str, name: str, owner_id: str | None = None, now_ns: int,
    ) -> Provider:
        if owner_id is not None:
            _check_text(owner_id, "owner_id", 128)
        row = Provider(
            tenant_id=tenant_id, id=_check_id(id, "provider id"), name=_check_text(name, "name", 200),
            owner_id=owner_id, created_at=now_ns,
        )
        return self._insert(session, row, f"provider {id}")

    def get_provider(self, session: Session, tenant_id: str, provider_id: str) -> Provider:
        row = session.get(Provider, (tenant_id, provider_id))
        if row is None:
            raise ProviderNotFound(f"provider {provider_id} does not exist")
        return row

    def providers_of(self, session: Session, tenant_id: str, principal_id: str) -> list[Provider]:
        """The providers a provider principal acts for: those it owns (`owner_id`), and a
        provider without an owner to the principal named after it (the seeds' provider keys:
        `--principal-id demo-provider`). An owned provider belongs to its owner alone — a key
        merely named after it is someone else."""
        stmt = scoped(select(Provider), Provider, tenant_id).where(
            (Provider.owner_id == principal_id) | (Provider.owner_id.is_(None) & (Provider.id == principal_id)))
        return list(session.scalars(stmt.order_by(Provider.id)))

    def list_providers(self, session: Session, tenant_id: str, *, owner_id: str | None = None) -> list[Provider]:
        stmt = scoped(select(Provider), Provider, tenant_id)
        if owner_id is not None:
            stmt = stmt.where(Provider.owner_id == owner_id)
        return list(session.scalars(stmt.order_by(Provider.id)))

    # -- devices ----------------------------------------------------------------------
    def create_device(self, session: Session, tenant_id: str, data: DeviceCreate, now_ns: int) -> Device:
        """Add a device. Its provider, tier and GPU model must exist in the same tenant (404s
        name which one is missing); VRAM and power limit default to the GPU model's."""
        _check_id(data.id, "device id")
        self.get_provider(session, tenant_id, data.provider_id)
        self.get_tier(session, tenant_id, data.tier_id)
        model = self.get_gpu_model(session, tenant_id, data.gpu_model_id) if data.gpu_model_id else None
        vram_gb = data.vram_gb if data.vram_gb is not None else (model.vram_gb if model else 0)
        power_w = data.power_limit_w if data.power_limit_w is not None else (model.default_power_w if model else 0)
        if model is not None and vram_gb > model.vram_gb:
            raise InvalidCatalogEntry(f"vram_gb {vram_gb} exceeds the {model.id}'s {model.vram_gb} GB")
        row = Device(
            tenant_id=tenant_id, id=data.id, provider_id=data.provider_id, tier_id=data.tier_id,
            name=_check_text(data.name, "name", 200), uri=_check_text(data.uri, "uri", 255),
            address=_check_text(data.address, "address", 255), region=_check_text(data.region, "region", 64),
            gpu_model_id=data.gpu_model_id, vram_gb=_check_int(vram_gb, "vram_gb"),
            ram_gb=_check_int(data.ram_gb, "ram_gb"), power_limit_w=_check_int(power_w, "power_limit_w"),
            audited=bool(data.audited), status=_check_status(data.status),
            uptime_bp=_check_int(data.uptime_bp, "uptime_bp", hi=10_000), created_at=now_ns,
        )
        return self._insert(session, row, f"device {data.id}")

    def get_device(self, session: Session, tenant_id: str, device_id: str) -> Device:
        row = session.get(Device, (tenant_id, device_id))
        if row is None:
            raise DeviceNotFound(f"device {device_id} does not exist")
        return row

    def list_devices(
        self, session: Session, tenant_id: str, *, tier: str | None = None, region: str | None = None,
        gpu_model: str | None = None, status: str | None = None, provider_id: str | None = None,
    ) -> list[Device]:
        stmt: Select[Any] = self._device_query(tenant_id, tier=tier, gpu_model=gpu_model)
        if region is not None:
            stmt = stmt.where(Device.region == region)
        if status is not None:
            stmt = stmt.where(Device.status == _check_status(status))
        if provider_id is not None:
            stmt = stmt.where(Device.provider_id == provider_id)
        return list(session.scalars(stmt.order_by(Device.id)))

    def set_device_status(self, session: Session, tenant_id: str, device_id: str, status: str) -> Device:
        device = self.get_device(session, tenant_id, device_id)
        device.status = _check_status(status)
        session.flush()
        return device

    def record_heartbeat(
        self, session: Session, tenant_id: str, device_id: str, now_ns: int, *, uptime_bp: int | None = None,
    ) -> Device:
        """Note that the device is alive; the agent reports its measured uptime when it has one."""
        device = self.get_device(session, tenant_id, device_id)
        device.last_heartbeat_at = now_ns
        if uptime_bp is not None:
            device.uptime_bp = _check_int(uptime_bp, "uptime_bp", hi=10_000)
        session.flush()
        return device

    def utilisation(
        self, session: Session, tenant_id: str, *, tier: str | None = None, gpu_model: str | None = None,
        busy_device_ids: set[str],
    ) -> Decimal:
        """Busy share (0..1) of the in-service devices of a tier and/or GPU model.

        Supply is the devices that are available or busy; ones in maintenance or
        offline can't be rented, so counting them would make a scarce pool look
        idle and keep its price low. A device is busy if the caller says so (it
        has an active rental) or its status says so. No supply reads as 0: there
        is nothing to quote, and a multiplier must not jump on an empty pool.
        """
        stmt = self._device_query(tenant_id, tier=tier, gpu_model=gpu_model).where(Device.status.in_(_IN_SERVICE))
        rows = session.execute(stmt.with_only_columns(Device.id, Device.status)).all()
        if not rows:
            return Decimal(0)
        busy = sum(1 for device_id, status in rows if status == "busy" or device_id in busy_device_ids)
        return (Decimal(busy) / Decimal(len(rows))).quantize(_UTILISATION_PLACES, rounding=ROUND_HALF_UP)

    # -- demo -------------------------------------------------------------------------
    def seed_demo(self, session: Session, tenant_id: str, now_ns: int) -> None:
        """The demo catalog (SI64's M2 tier, Dante's GPU models). Idempotent: creates what's missing."""
        for model in DEMO_GPU_MODELS:
            if session.get(GpuModel, (tenant_id, model["id"])) is None:
                self.create_gpu_model(session, tenant_id, now_ns=now_ns, **model)
        for tier in DEMO_TIERS:
            if session.get(Tier, (tenant_id, tier["id"])) is None:
                self.create_tier(session, tenant_id, now_ns=now_ns, **tier)
        for provider in DEMO_PROVIDERS:
            if session.get(Provider, (tenant_id, provider["id"])) is None:
                self.create_provider(session, tenant_id, now_ns=now_ns, **provider)
        for device in DEMO_DEVICES:
            if session.get(Device, (tenant_id, device.id)) is None:
                self.create_device(session, tenant_id, device, now_ns)

    # -- helpers ----------------------------------------------------------------------
    @staticmethod
    def _device_query(tenant_id: str, *, tier: str | None, gpu_model: str | None) -> Select[Any]:
        stmt: Select[Any] = scoped(select(Device), Device, tenant_id)
        if tier is not None:
            stmt = stmt.where(Device.tier_id == tier)
        if gpu_model is not None:
            stmt = stmt.where(Device.gpu_model_id == gpu_model)
        return stmt

    @staticmethod
    def _insert(session: Session, row: Any, what: str) -> Any:
        """Insert in a savepoint so a duplicate id (even one racing in from another
        request) is a 409 and leaves the caller's transaction usable."""
        if session.get(type(row), (row.tenant_id, row.id)) is not None:
            raise CatalogEntryExists(f"{what} already exists")
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            raise CatalogEntryExists(f"{what} already exists") from None
        return row


# -- demo data ---------------------------------------------------------------------------
# SI64's listing (seeds/000: `GET /api/devices/M2`) field for field, and Dante's GPU models
# (seeds/004: the base rates are keyed by these ids). Power limits are the cards' board power.

DEMO_GPU_MODELS: list[dict[str, Any]] = [
    {"id": "nvidia_rtx_4090", "name": "NVIDIA GeForce RTX 4090", "vram_gb": 24, "default_power_w": 450},
    {"id": "nvidia_a100", "name": "NVIDIA A100 80GB", "vram_gb": 80, "default_power_w": 400},
    {"id": "nvidia_h100", "name": "NVIDIA H100 80GB", "vram_gb": 80, "default_power_w": 700},
]
DEMO_TIERS: list[dict[str, Any]] = [
    {"id": "M2", "name": "M2", "description": "Apple M2 nodes, 8 GB unified memory, flat hourly rate (SI64)"},
    {"id": "GPU", "name": "Dedicated GPU", "description": "Whole or fractional NVIDIA GPUs, dynamic pricing (Dante)"},
]
DEMO_PROVIDERS: list[dict[str, Any]] = [
    {"id": "si64", "name": "SI64 Network"},
    {"id": "demo-provider", "name": "Demo GPU Provider"},
]


def _m2(n: int, region: str, uptime_bp: int) -> DeviceCreate:
    return DeviceCreate(
        id=f"device-m2-{n:03d}", provider_id="si64", tier_id="M2", name=f"M2-DEV-{n:02d}",
        uri=f"node{n:03d}.si64.network", address=f"192.168.1.{100 + n}", region=region,
        vram_gb=8, ram_gb=8, power_limit_w=50, audited=True, uptime_bp=uptime_bp,
    )


_SUBNET = {"4090": 1, "a100": 2, "h100": 3}


def _gpu(model: str, short: str, n: int, region: str, ram_gb: int, uptime_bp: int) -> DeviceCreate:
    return DeviceCreate(
        id=f"gpu-{short}-{n:03d}", provider_id="demo-provider", tier_id="GPU", name=f"{short.upper()}-{n:02d}",
        uri=f"{short}-{n:03d}.gpu.demo.meterline", address=f"10.0.{_SUBNET[short]}.{n}", region=region,
        gpu_model_id=model, ram_gb=ram_gb, audited=n == 1, uptime_bp=uptime_bp,
    )


DEMO_DEVICES: list[DeviceCreate] = [
    _m2(1, "West Coast", 9980),
    _m2(2, "West Coast", 9950),
    _m2(3, "East Coast", 9990),
    _m2(4, "East Coast", 9920),
    _gpu("nvidia_rtx_4090", "4090", 1, "West Coast", 64, 9970),
    _gpu("nvidia_rtx_4090", "4090", 2, "West Coast", 64, 9940),
    _gpu("nvidia_rtx_4090", "4090", 3, "East Coast", 64, 9960),
    _gpu("nvidia_a100", "a100", 1, "West Coast", 256, 9995),
    _gpu("nvidia_a100", "a100", 2, "East Coast", 256, 9990),
    _gpu("nvidia_h100", "h100", 1, "West Coast", 512, 9999),
    _gpu("nvidia_h100", "h100", 2, "East Coast", 512, 9985),
]

catalog_service = CatalogService()
