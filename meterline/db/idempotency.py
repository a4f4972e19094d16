"""Stored responses for the `Idempotency-Key` header (DESIGN §8).

Same key + same request → the stored response; same key + a different request
→ 409 `idempotency_conflict`. The row is written in the same transaction as the
request's own effects, so a crash leaves either both or neither.

Keys are scoped to the caller: the tenant, and the principal for a caller that has
one (`customer:alice`), so customers never see each other's stored responses; callers
without a principal id (admin and service keys) share the tenant's space ('').
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from meterline.db.base import Base


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal: Mapped[str] = mapped_column(String(160), primary_key=True, server_default="")
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
