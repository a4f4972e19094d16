"""Rentals: one table for both styles (prepaid contracts and pay-as-you-go sessions).

Money never lives here: the escrow is a set of ledger holds (`rental_holds`),
and settlement figures are copied from the ledger batch that settled the
rental. What lives here is the state machine, the locked quote, and the
running power integral that lets cost be computed on read without scanning
samples.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from meterline.db.base import Base


class Rental(Base):
    __tablename__ = "rentals"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    style: Mapped[str] = mapped_column(String(10))  # prepaid | payg
    status: Mapped[str] = mapped_column(String(20))
    customer_type: Mapped[str] = mapped_column(String(20))
    customer_id: Mapped[str] = mapped_column(String(128))
    wallet_account_id: Mapped[str] = mapped_column(String(64))
    escrow_account_id: Mapped[str] = mapped_column(String(64))
    provider_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tier: Mapped[str | None] = mapped_column(String(32), nullable=True)
    gpu_model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    vram_gb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    asset: Mapped[str] = mapped_column(String(16))
    scale: Mapped[int] = mapped_column(Integer)
    quote: Mapped[dict[str, Any]] = mapped_column(JSON)
    payment_rail: Mapped[str] = mapped_column(String(20))
    payment_proof: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Prepaid contracts return the unused part through the payment's rail; sessions
    # funded from a standing wallet leave it in the wallet.
    refund_to_rail: Mapped[bool] = mapped_column(default=False)
    # Sum of the escrow holds placed so far (minor units): the most a prepaid contract can cost;
    # a pay-as-you-go session's usage beyond it is debited from the wallet at settlement.
    held_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ended_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    settled_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    used_minor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    refund_minor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    provider_minor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    fee_minor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    refund_tx: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # A settled pay-as-you-go session's cost that its wallet could not pay (holds and wallet
    # exhausted): cost = used_minor + unpaid_minor. NULL for prepaid contracts (capped at
    # their prepaid price) and for sessions settled before it was recorded.
    unpaid_minor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The time rate as an exact reduced fraction of minor units per second, so SQL can
    # total running costs with integer arithmetic identical to Python's (see accrual.py).
    rate_num: Mapped[int] = mapped_column(BigInteger)
    rate_den: Mapped[int] = mapped_column(BigInteger)
    rounding: Mapped[str] = mapped_column(String(10), default="half_up")
    # Metered power cost so far in millionths of a minor unit (floor of the exact value,
    # recomputed from the integral at each sample, so it never accumulates rounding).
    power_cost_e6: Mapped[int] = mapped_column(BigInteger, default=0)
    # Power integral, trapezoid rule, kept doubled so it stays an exact integer:
    # Σ (p_prev_mw + p_mw) × Δt_ms. Energy in Wh = energy2 / (2 × 1000 × 3_600_000).
    energy2_mw_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    last_sample_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_power_mw: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sample_count: Mapped[int] = mapped_column(BigInteger, default=0)
    hold_count: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index("ix_rentals_tenant_status", "tenant_id", "status"),
        Index("ix_rentals_tenant_customer", "tenant_id", "customer_type", "customer_id"),
        Index("ix_rentals_status_expires", "status", "expires_at"),
        Index("ix_rentals_tenant_device_status", "tenant_id", "device_id", "status"),
    )


class RentalHold(Base):
    """One escrow hold (a pending ledger transfer) placed for a rental, in order."""

    __tablename__ = "rental_holds"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    transfer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    rental_id: Mapped[str] = mapped_column(String(32))
    ordinal: Mapped[int] = mapped_column(Integer)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))  # initial | extend | rolling
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_rental_holds_rental", "tenant_id", "rental_id", "ordinal"),)


class RentalSample(Base):
    """A metrics sample. Values are kept as exact decimal strings; power also as integer mW."""

    __tablename__ = "rental_samples"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    rental_id: Mapped[str] = mapped_column(String(32))
    ts: Mapped[int] = mapped_column(BigInteger)
    power_mw: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    values: Mapped[dict[str, str]] = mapped_column(JSON)

    __table_args__ = (Index("ix_rental_samples_rental_ts", "tenant_id", "rental_id", "ts"),)
