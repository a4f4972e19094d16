"""Licensing tables: what can be licensed, who holds a license, and what it has been used for.

A *licensee* is the platform's customer (BrinkByte's ``tenant-123``) inside one
Meterline tenant; every key leads with ``tenant_id`` so one Meterline tenant can
never reach another's licensees. Prices are integer minor units of ``currency``
(USD cents). Timestamps are Unix nanoseconds, like the ledger's.

`licenses.cameras_active` is a counter kept next to the allowance so activation
can be one conditional ``UPDATE … WHERE cameras_active < cameras_allowed`` —
atomic on both SQLite and PostgreSQL, so the 100th and 101st camera racing each
other can never both win.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
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

LICENSE_MODES = ("trial", "base")
LICENSE_STATUSES = ("active", "suspended")
DEVICE_STATES = ("alive", "dead")
PRICE_UNITS = ("camera", "device", "tenant")


class LicensePlan(Base):
    """A sellable plan: the base license, the trial, the edge-device plans."""

    __tablename__ = "license_plans"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # What the plan grants: a license mode ('trial' | 'base') or 'device' for edge-device plans.
    kind: Mapped[str] = mapped_column(String(16))
    unit: Mapped[str] = mapped_column(String(16))  # price per camera | device | tenant, per month
    price_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(16), default="USD")
    # Trials only: how many cameras and how long.
    trial_cameras: Mapped[int | None] = mapped_column(Integer, nullable=True)
    trial_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("kind IN ('trial', 'base', 'device')", name="kind"),
        CheckConstraint("unit IN ('camera', 'device', 'tenant')", name="unit"),
        CheckConstraint("price_minor >= 0", name="price_minor"),
    )


class GrowthPack(Base):
    """An add-on bundle of features (``advanced_analytics``), priced per camera or per tenant."""

    __tablename__ = "growth_packs"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    unit: Mapped[str] = mapped_column(String(16))
    price_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(16), default="USD")
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("unit IN ('camera', 'device', 'tenant')", name="unit"),
        CheckConstraint("price_minor >= 0", name="price_minor"),
    )


class GrowthPackFeature(Base):
    """One feature and the pack that grants it; a feature belongs to exactly one pack."""

    __tablename__ = "growth_pack_features"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pack_id: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "pack_id"], ["growth_packs.tenant_id", "growth_packs.id"]),
        Index("ix_growth_pack_features_pack", "tenant_id", "pack_id"),
    )


class License(Base):
    """A licensee's one current license: mode, validity window, allowances and packs.

    `version` increases on every change and is what offline files and caches key on.
    """

    __tablename__ = "licenses"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    licensee_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    id: Mapped[str] = mapped_column(String(32))
    plan_id: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), default="active")
    valid_from: Mapped[int] = mapped_column(BigInteger)
    valid_until: Mapped[int] = mapped_column(BigInteger)
    cameras_allowed: Mapped[int] = mapped_column(Integer)
    devices_allowed: Mapped[int] = mapped_column(Integer)
    cameras_active: Mapped[int] = mapped_column(Integer, default=0)
    devices_active: Mapped[int] = mapped_column(Integer, default=0)
    packs: Mapped[list[str]] = mapped_column(JSON, default=list)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "plan_id"], ["license_plans.tenant_id", "license_plans.id"]),
        CheckConstraint("mode IN ('trial', 'base')", name="mode"),
        CheckConstraint("status IN ('active', 'suspended')", name="status"),
        CheckConstraint("cameras_allowed >= 0 AND devices_allowed >= 0", name="allowances"),
        # The activation guard relies on this; a bug that over-counts fails loudly instead.
        CheckConstraint("cameras_active >= 0 AND cameras_active <= cameras_allowed", name="cameras_active"),
        CheckConstraint("devices_active >= 0", name="devices_active"),
        Index("ix_licenses_tenant_id", "tenant_id", "id", unique=True),
    )


class LicenseCamera(Base):
    """A camera activated under a license (on its first successful validation)."""

    __tablename__ = "license_cameras"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    licensee_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    camera_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    device_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    activated_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "licensee_id"], ["licenses.tenant_id", "licenses.licensee_id"]),
        Index("ix_license_cameras_device", "tenant_id", "licensee_id", "device_id"),
    )


class LicenseDevice(Base):
    """An edge device registered under a license; alive while it sends heartbeats."""

    __tablename__ = "license_devices"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    licensee_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(8), default="alive")
    software_version: Mapped[str] = mapped_column(String(64), default="")
    cameras_reported: Mapped[list[str]] = mapped_column(JSON, default=list)
    registered_at: Mapped[int] = mapped_column(BigInteger)
    last_heartbeat_at: Mapped[int] = mapped_column(BigInteger)
    died_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "licensee_id"], ["licenses.tenant_id", "licenses.licensee_id"]),
        CheckConstraint("state IN ('alive', 'dead')", name="state"),
        # The culling sweep: alive devices by last heartbeat, across tenants.
        Index("ix_license_devices_state_heartbeat", "state", "last_heartbeat_at"),
    )


class LicenseAuditEntry(Base):
    """One validation, entitlement check or heartbeat: who asked, about what, and the answer.

    Written in batches from an in-memory queue (see `licensing.audit`), pruned by age.
    """

    __tablename__ = "license_audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[str] = mapped_column(String(64))
    ts: Mapped[int] = mapped_column(BigInteger)
    principal: Mapped[str] = mapped_column(String(160))  # key id, or 'dev' for a dev-mode loopback call
    action: Mapped[str] = mapped_column(String(16))  # validate | entitlement | heartbeat
    licensee_id: Mapped[str] = mapped_column(String(128))
    camera_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    feature: Mapped[str | None] = mapped_column(String(64), nullable=True)
    allowed: Mapped[bool] = mapped_column(Boolean)
    code: Mapped[str] = mapped_column(String(40))

    __table_args__ = (
        Index("ix_license_audit_log_ts", "ts"),
        Index("ix_license_audit_log_tenant_licensee_ts", "tenant_id", "licensee_id", "ts"),
    )
