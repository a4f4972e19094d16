"""Catalog tables: what can be rented, and from whom.

Keys lead with `tenant_id` (the schema can be distributed by tenant), and every
reference between catalog rows is a composite foreign key that includes it, so
a device can never point at another tenant's tier or provider. Timestamps are
Unix nanoseconds (BigInteger), like the ledger's.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from meterline.db.base import Base

DEVICE_STATUSES = ("available", "busy", "maintenance", "offline")


class GpuModel(Base):
    """A GPU product line (``nvidia_rtx_4090``): what a base rate in a price book is keyed by."""

    __tablename__ = "gpu_models"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    vram_gb: Mapped[int] = mapped_column(Integer)
    default_power_w: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger)


class Tier(Base):
    """A class of device sold at one flat rate (SI64's ``M2``)."""

    __tablename__ = "tiers"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(1000), default="")
    created_at: Mapped[int] = mapped_column(BigInteger)


class Provider(Base):
    """Whoever hosts devices and is paid for them; `owner_id` links a principal when it has one."""

    __tablename__ = "providers"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    owner_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class Device(Base):
    """One rentable machine. `uptime_bp` is uptime in basis points (9980 = 99.8%), an exact int."""

    __tablename__ = "devices"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    uri: Mapped[str] = mapped_column(String(255), default="")
    address: Mapped[str] = mapped_column(String(255), default="")
    region: Mapped[str] = mapped_column(String(64), default="")
    tier_id: Mapped[str] = mapped_column(String(32))
    gpu_model_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    vram_gb: Mapped[int] = mapped_column(Integer, default=0)
    ram_gb: Mapped[int] = mapped_column(Integer, default=0)
    power_limit_w: Mapped[int] = mapped_column(Integer, default=0)
    audited: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="available")
    uptime_bp: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger)
    last_heartbeat_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "provider_id"], ["providers.tenant_id", "providers.id"]),
        ForeignKeyConstraint(["tenant_id", "tier_id"], ["tiers.tenant_id", "tiers.id"]),
        ForeignKeyConstraint(["tenant_id", "gpu_model_id"], ["gpu_models.tenant_id", "gpu_models.id"]),
        CheckConstraint("status IN ('available', 'busy', 'maintenance', 'offline')", name="status"),
        CheckConstraint("uptime_bp >= 0 AND uptime_bp <= 10000", name="uptime_bp"),
        # The listing queries: by tier (SI64 /api/devices/{tier}), by GPU model, by provider.
        Index("ix_devices_tenant_tier_status", "tenant_id", "tier_id", "status"),
        Index("ix_devices_tenant_gpu_model", "tenant_id", "gpu_model_id"),
        Index("ix_devices_tenant_provider", "tenant_id", "provider_id"),
    )
