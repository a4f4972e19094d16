"""Tenants and API keys."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from meterline.db.base import Base

# A key's principal is a customer, provider or operator id; customer and wallet owner ids
# are up to 128 characters, and a customer's key must be able to name any of them.
MAX_PRINCIPAL_ID = 128


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    """An API key. Only the SHA-256 of the secret is stored; `prefix` is for display."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(24))
    name: Mapped[str] = mapped_column(String(200), default="")
    principal_kind: Mapped[str] = mapped_column(String(20))
    principal_id: Mapped[str | None] = mapped_column(String(MAX_PRINCIPAL_ID), nullable=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)

    __table_args__ = (Index("ix_api_keys_tenant_prefix", "tenant_id", "prefix"),)
