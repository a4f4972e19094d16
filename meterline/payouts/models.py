"""Payout requests: a provider's earnings on their way out through a rail.

The money is reserved the moment a payout is requested — a pending ledger
transfer provider_earnings → external:<rail> (`hold_transfer_id`) — so the
same earnings can't be paid twice. Paying posts the hold; rejecting or
failing for good voids it and the earnings are available again.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from meterline.db.base import Base


class PayoutRequest(Base):
    __tablename__ = "payout_requests"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    provider_id: Mapped[str] = mapped_column(String(128))
    asset: Mapped[str] = mapped_column(String(16))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    destination: Mapped[str] = mapped_column(String(200))
    rail: Mapped[str] = mapped_column(String(20))
    # requested → approved → executing → paid | failed; requested | approved → rejected
    status: Mapped[str] = mapped_column(String(12))
    requested_by: Mapped[str] = mapped_column(String(128))
    approvals: Mapped[list[str]] = mapped_column(JSON)  # distinct approver principal ids
    required_approvals: Mapped[int] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    tx_signature: Mapped[str | None] = mapped_column(String(200), nullable=True)
    hold_transfer_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_payout_requests_tenant_provider", "tenant_id", "provider_id", "created_at"),
        # The worker's query: approved payouts whose next attempt is due, across tenants.
        Index("ix_payout_requests_due", "status", "next_attempt_at"),
    )
