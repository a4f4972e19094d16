"""The payments inbox: every external payment, stored once.

Keyed by ``(rail, external_id)`` — globally, not per tenant — so one on-chain
payment or one Stripe event can never fund two tenants, nor one tenant twice.
Rows are written with insert-or-ignore, which makes two concurrent claims of the
same proof race safely: the loser's insert waits for the winner's transaction
and then does nothing. (For a Citus deployment this is a reference table: its
uniqueness is deliberately not distributed by tenant.)
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from meterline.db.base import Base


class PaymentInbox(Base):
    __tablename__ = "payment_inbox"

    rail: Mapped[str] = mapped_column(String(20), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(20))  # deposit | rent_payment | ...
    owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    amount_minor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    asset: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(12))  # received | processed
    received_at: Mapped[int] = mapped_column(BigInteger)
    processed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    transfer_id: Mapped[str | None] = mapped_column(String(128), nullable=True)

    __table_args__ = (
        Index("ix_payment_inbox_tenant_received", "tenant_id", "received_at"),
        Index("ix_payment_inbox_status", "status", "received_at"),
    )
