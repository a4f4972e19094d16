"""The outbox and its two destinations: webhook endpoints and NATS JetStream.

An event row is written in the same transaction as the change it reports
(`outbox.emit`), so an event exists exactly when its change committed — no
"published but rolled back", no "committed but never published". The worker
reads the rows afterwards and delivers them: it fans each event out to one
`WebhookDelivery` per matching endpoint and publishes it to NATS when a NATS
server is configured. Delivery is at least once; consumers deduplicate by the
event id (the `webhook-id` header, JetStream's `Nats-Msg-Id`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from meterline.db.base import Base


class Event(Base):
    __tablename__ = "events"

    # Global insertion order: the dispatcher works oldest first. (Commit order can differ
    # from it under concurrency, so the dispatcher selects by state, never by a seq cursor.)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    id: Mapped[str] = mapped_column(String(80))
    type: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # Still to be fanned out to webhook endpoints / published to NATS.
    webhooks_pending: Mapped[bool] = mapped_column(Boolean)
    nats_pending: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (
        UniqueConstraint("tenant_id", "id", name="uq_events_tenant_id"),
        Index("ix_events_tenant_seq", "tenant_id", "seq"),
        Index("ix_events_tenant_type_seq", "tenant_id", "type", "seq"),
        Index("ix_events_webhooks_pending", "webhooks_pending", "seq"),
        Index("ix_events_nats_pending", "nats_pending", "seq"),
        Index("ix_events_created_at", "created_at"),
        # SQLite would otherwise hand out the seq of pruned newest rows again.
        {"sqlite_autoincrement": True},
    )


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    # Standard Webhooks signing secret, `whsec_<base64>`. Kept readable: every delivery is
    # signed with it (a hash could not sign).
    secret: Mapped[str] = mapped_column(String(100))
    event_types: Mapped[list[str]] = mapped_column(JSON)  # [] = every type
    description: Mapped[str] = mapped_column(String(500))
    enabled: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class WebhookDelivery(Base):
    """One event on its way to one endpoint: pending → delivered, or failed after the last retry
    (the dead letter: listed, and sent again on request)."""

    __tablename__ = "webhook_deliveries"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(String(40))
    event_id: Mapped[str] = mapped_column(String(80))
    event_seq: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(12))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        # Fan-out may run twice for an event (a crash before its commit): never two deliveries.
        UniqueConstraint("tenant_id", "endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "tenant_id", "endpoint_id", "created_at"),
    )
