"""Billing tables: subscriptions, their items, invoices, invoice lines, invoice numbers.

Every key leads with ``tenant_id``. Amounts are integer minor units of the
subscription's currency (USD cents); times are Unix nanoseconds, like the
ledger's, and billing periods fall on whole seconds.

Periods are billed in arrears: an item's ``period_quantity`` is the quantity the
current period's recurring line will bill (what it had when the period began),
while ``quantity`` is what it has now; the difference since then is in the
proration lines. A line with no ``invoice_id`` is *pending*: it waits for the
subscription's next invoice, which sweeps it in.

``uq_invoices_period`` is the period job's idempotency key: one invoice per
(subscription, period start), so a retried or concurrent close can never
invoice a period twice.
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
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from meterline.db.base import Base

BASES = ("camera", "device", "tenant")
SUBSCRIPTION_STATUSES = ("active", "canceled")
ITEM_STATUSES = ("active", "removed")
INVOICE_STATUSES = ("draft", "open", "paid", "void")
LINE_KINDS = ("subscription", "proration", "balance")


class Subscription(Base):
    __tablename__ = "subscriptions"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # Whose wallet pays: the wallet (customer_type, customer_id, currency). For BrinkByte
    # the customer is a licensee ('licensee', 'tenant-123').
    customer_type: Mapped[str] = mapped_column(String(40))
    customer_id: Mapped[str] = mapped_column(String(128))
    currency: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    # Period k is [anchor + k months, anchor + k+1 months): kept as anchor and index so a
    # period starting on the 31st comes back to the 31st after February.
    billing_anchor: Mapped[int] = mapped_column(BigInteger)
    period_index: Mapped[int] = mapped_column(Integer)
    current_period_start: Mapped[int] = mapped_column(BigInteger)
    current_period_end: Mapped[int] = mapped_column(BigInteger)
    canceled_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("status IN ('active', 'canceled')", name="status"),
        CheckConstraint("current_period_end > current_period_start", name="period"),
        Index("ix_subscriptions_tenant_customer", "tenant_id", "customer_id", "id"),
        # The period job's query: active subscriptions whose period has ended, across tenants.
        Index("ix_subscriptions_due", "status", "current_period_end"),
    )


class SubscriptionItem(Base):
    """One priced thing on a subscription. Catalogue items name their plan or pack; the price
    is the catalogue's at the time the item was added (a later catalogue change does not
    reprice a running subscription)."""

    __tablename__ = "subscription_items"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(40))
    plan_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pack_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    name: Mapped[str] = mapped_column(String(200))
    basis: Mapped[str] = mapped_column(String(16))  # camera | device | tenant
    unit_price_minor: Mapped[int] = mapped_column(BigInteger)  # per unit per month
    quantity: Mapped[int] = mapped_column(Integer)
    period_quantity: Mapped[int] = mapped_column(Integer)
    # What the current period charges from now to its end: the period's quantity, then the
    # quantity of each prorated change. A change without proration leaves it (it counts from
    # the next period), so a later prorated change credits only time that was charged.
    billed_quantity: Mapped[int] = mapped_column(Integer, server_default="0")
    status: Mapped[str] = mapped_column(String(16))
    # The order items were added in (their order on invoices), independent of id or clock.
    position: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    removed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "subscription_id"], ["subscriptions.tenant_id", "subscriptions.id"]),
        ForeignKeyConstraint(["tenant_id", "plan_id"], ["license_plans.tenant_id", "license_plans.id"]),
        ForeignKeyConstraint(["tenant_id", "pack_id"], ["growth_packs.tenant_id", "growth_packs.id"]),
        CheckConstraint("basis IN ('camera', 'device', 'tenant')", name="basis"),
        CheckConstraint("status IN ('active', 'removed')", name="status"),
        CheckConstraint("unit_price_minor >= 0", name="unit_price_minor"),
        CheckConstraint("quantity >= 0 AND period_quantity >= 0", name="quantity"),
        CheckConstraint("plan_id IS NULL OR pack_id IS NULL", name="one_reference"),
        Index("ix_subscription_items_subscription", "tenant_id", "subscription_id"),
    )


class Invoice(Base):
    __tablename__ = "invoices"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(40))
    customer_type: Mapped[str] = mapped_column(String(40))
    customer_id: Mapped[str] = mapped_column(String(128))
    currency: Mapped[str] = mapped_column(String(16))
    # Assigned when finalized, from the tenant's gapless counter (`invoice_counters`).
    number: Mapped[str | None] = mapped_column(String(32), nullable=True)
    status: Mapped[str] = mapped_column(String(8))
    period_start: Mapped[int] = mapped_column(BigInteger)
    period_end: Mapped[int] = mapped_column(BigInteger)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    # Settled so far: by the wallet payment (`payment_transfer_id`), or in part by a canceled
    # subscription's leftover credit (`billing.credits`), which moves no money.
    amount_paid_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    payment_transfer_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    payment_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_payment_attempt_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_payment_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    finalized_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    paid_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    voided_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "subscription_id"], ["subscriptions.tenant_id", "subscriptions.id"]),
        CheckConstraint("status IN ('draft', 'open', 'paid', 'void')", name="status"),
        # A credit larger than the charges is carried forward, so a total is never negative.
        CheckConstraint("total_minor >= 0 AND amount_paid_minor >= 0 AND amount_paid_minor <= total_minor",
                        name="amounts"),
        CheckConstraint("period_end >= period_start", name="period"),
        Index("uq_invoices_period", "tenant_id", "subscription_id", "period_start", unique=True),
        Index("uq_invoices_number", "tenant_id", "number", unique=True),
        Index("ix_invoices_tenant_customer", "tenant_id", "customer_id", "id"),
        # The collection job's query: open invoices whose next payment attempt is due.
        Index("ix_invoices_collect", "status", "next_payment_attempt_at"),
    )


class InvoiceLine(Base):
    """A line of an invoice, or a pending line (``invoice_id`` NULL) waiting for the next one.

    ``amount_minor`` is signed: a proration credit is negative. Lines are immutable once
    written; an invoice is their sum.
    """

    __tablename__ = "invoice_lines"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(40))
    invoice_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    item_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))  # subscription | proration | balance
    description: Mapped[str] = mapped_column(String(300))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_minor: Mapped[int] = mapped_column(BigInteger)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    period_start: Mapped[int] = mapped_column(BigInteger)
    period_end: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # Pending: the order among lines written at one instant (a credit before its charge).
    # Invoiced: the line's place on the invoice, fixed when the invoice was created.
    position: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "subscription_id"], ["subscriptions.tenant_id", "subscriptions.id"]),
        ForeignKeyConstraint(["tenant_id", "invoice_id"], ["invoices.tenant_id", "invoices.id"]),
        CheckConstraint("kind IN ('subscription', 'proration', 'balance')", name="kind"),
        Index("ix_invoice_lines_invoice", "tenant_id", "invoice_id"),
        Index("ix_invoice_lines_subscription", "tenant_id", "subscription_id", "invoice_id"),
    )


class InvoiceCounter(Base):
    """The tenant's last invoice number. Bumped in the finalizing transaction, so a rollback
    gives the number back and numbers stay gapless."""

    __tablename__ = "invoice_counters"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_number: Mapped[int] = mapped_column(BigInteger)
