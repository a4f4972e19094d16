"""Pricing tables: versioned price books and providers' minimum rates.

A price book is append-only: publishing writes version N+1 and never touches
N, so a rental's quote can always name the exact book it came from, and the
history of who changed which price when is the table itself. The current book
is the highest version. Rates are stored as decimal strings (inside the JSON
and in `provider_rates.min_hourly`) because neither SQLite nor JSON can hold an
18-place decimal exactly as a number.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKeyConstraint, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from meterline.db.base import Base


class PriceBookRow(Base):
    __tablename__ = "price_books"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(128))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class ProviderRate(Base):
    """A provider's floor for a GPU model in one asset (seeds/004 "provider-set minimum rates")."""

    __tablename__ = "provider_rates"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    gpu_model_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    asset: Mapped[str] = mapped_column(String(16), primary_key=True)
    min_hourly: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        # By table name, not by importing the catalog's class: a rate for a provider
        # that doesn't exist (in this tenant) is refused by the database.
        ForeignKeyConstraint(["tenant_id", "provider_id"], ["providers.tenant_id", "providers.id"]),
    )
