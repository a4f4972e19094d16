"""Wire models of billing (/v1/subscriptions, /v1/invoices).

Money follows the native convention — decimal strings in the currency's major
unit (``"6000.00"``) with the currency named beside them — and every amount also
carries its exact integer twin in minor units (``amount_minor``: USD cents), the
form invoices are kept in. A credit line's amounts are negative.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

from meterline.api.v1.catalog_schemas import Request, text
from meterline.billing.invoices import InvoiceDocument
from meterline.billing.models import InvoiceLine, Subscription, SubscriptionItem
from meterline.clock import to_rfc3339
from meterline.ledger.schemas import AmountIn, AssetCode
from meterline.money import format_amount

# Customer (licensee) ids: what licensing accepts, so a licensee id is a customer id.
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]*$"
BILLING_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
CatalogueRef = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=CUSTOMER_ID_PATTERN)]
CustomerId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=CUSTOMER_ID_PATTERN)]
CustomerType = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")]
Quantity = Annotated[int, Field(ge=0, le=10_000_000)]
Basis = Literal["camera", "device", "tenant"]
ProrationBehavior = Literal["create_prorations", "none"]
InvoiceStatus = Literal["draft", "open", "paid", "void"]
SubscriptionStatus = Literal["active", "canceled"]


class ItemCreate(Request):
    """A catalogue plan (`plan_id`), a catalogue pack (`pack_id`), or a custom price (`name`,
    `basis`, `unit_price`). Leave `quantity` out to bill 1 per tenant, or the licensee's
    camera / device allowance."""

    plan_id: CatalogueRef | None = None
    pack_id: CatalogueRef | None = None
    name: Annotated[str, text(200, 1)] | None = None
    basis: Basis | None = None
    unit_price: AmountIn | None = Field(default=None, description="Per unit per month, major units.")
    quantity: Quantity | None = None

    @model_validator(mode="after")
    def _one_price(self) -> ItemCreate:
        named = [self.plan_id is not None, self.pack_id is not None, self.unit_price is not None]
        if sum(named) != 1:
            raise ValueError("name exactly one of plan_id, pack_id or a custom unit_price")
        if self.unit_price is not None and (self.name is None or self.basis is None):
            raise ValueError("a custom item needs name, basis and unit_price")
        if self.unit_price is None and (self.name is not None or self.basis is not None):
            raise ValueError("a catalogue item takes its name and basis from the catalogue")
        return self


class ItemAdd(ItemCreate):
    proration_behavior: ProrationBehavior = Field(
        default="create_prorations",
        description="`none`: no proration lines; the change only counts from the next period.")

    model_config = {"json_schema_extra": {"examples": [{"pack_id": "intelligence"}]}}


class ItemUpdate(Request):
    quantity: Quantity
    proration_behavior: ProrationBehavior = "create_prorations"

    model_config = {"json_schema_extra": {"examples": [{"quantity": 120}]}}


class SubscriptionCreate(Request):
    customer_id: CustomerId = Field(description="Who pays: with the default customer_type, a licensee "
                                                "such as `tenant-123`.")
    customer_type: CustomerType = Field(default="licensee", description="The wallet owner type that pays "
                                                                        "(`/v1/wallets/{customer_type}/…`).")
    currency: AssetCode = "USD"
    items: list[ItemCreate] = Field(min_length=1, max_length=100)

    model_config = {"json_schema_extra": {"examples": [{
        "customer_id": "tenant-123",
        "items": [{"plan_id": "base_license"}, {"pack_id": "advanced_analytics"}, {"pack_id": "intelligence"}],
    }]}}


class ItemOut(BaseModel):
    id: str
    plan_id: str | None
    pack_id: str | None
    name: str
    basis: Basis
    unit_price: str
    unit_price_minor: int
    quantity: int
    period_quantity: int = Field(description="The quantity the current period's invoice bills (what the "
                                             "item had when the period began); changes since are prorated.")
    status: Literal["active", "removed"]
    created_at: str
    removed_at: str | None

    @classmethod
    def of(cls, i: SubscriptionItem, scale: int) -> ItemOut:
        return cls(id=i.id, plan_id=i.plan_id, pack_id=i.pack_id, name=i.name, basis=i.basis,  # type: ignore[arg-type]
                   unit_price=format_amount(i.unit_price_minor, scale), unit_price_minor=i.unit_price_minor,
                   quantity=i.quantity, period_quantity=i.period_quantity, status=i.status,  # type: ignore[arg-type]
                   created_at=to_rfc3339(i.created_at),
                   removed_at=None if i.removed_at is None else to_rfc3339(i.removed_at))


class SubscriptionOut(BaseModel):
    id: str
    customer_type: str
    customer_id: str
    currency: str
    status: SubscriptionStatus
    cancel_at_period_end: bool
    billing_anchor: str
    current_period_start: str
    current_period_end: str
    canceled_at: str | None
    created_at: str
    items: list[ItemOut]

    @classmethod
    def of(cls, s: Subscription, items: list[SubscriptionItem], scale: int) -> SubscriptionOut:
        return cls(
            id=s.id, customer_type=s.customer_type, customer_id=s.customer_id, currency=s.currency,
            status=s.status, cancel_at_period_end=s.cancel_at_period_end,  # type: ignore[arg-type]
            billing_anchor=to_rfc3339(s.billing_anchor), current_period_start=to_rfc3339(s.current_period_start),
            current_period_end=to_rfc3339(s.current_period_end),
            canceled_at=None if s.canceled_at is None else to_rfc3339(s.canceled_at),
            created_at=to_rfc3339(s.created_at), items=[ItemOut.of(i, scale) for i in items],
        )


class SubscriptionPage(BaseModel):
    data: list[SubscriptionOut]
    next_cursor: str | None


class LineOut(BaseModel):
    id: str
    kind: Literal["subscription", "proration", "balance"]
    description: str
    item_id: str | None
    quantity: int
    unit_price: str
    unit_price_minor: int
    amount: str = Field(description="Negative for a credit.")
    amount_minor: int
    period_start: str
    period_end: str

    @classmethod
    def of(cls, ln: InvoiceLine, scale: int) -> LineOut:
        return cls(id=ln.id, kind=ln.kind, description=ln.description, item_id=ln.item_id,  # type: ignore[arg-type]
                   quantity=ln.quantity, unit_price=format_amount(ln.unit_price_minor, scale),
                   unit_price_minor=ln.unit_price_minor, amount=format_amount(ln.amount_minor, scale),
                   amount_minor=ln.amount_minor, period_start=to_rfc3339(ln.period_start),
                   period_end=to_rfc3339(ln.period_end))


class SubscriptionChangeOut(BaseModel):
    subscription: SubscriptionOut
    item: ItemOut
    prorations: list[LineOut] = Field(description="The pending proration lines this change wrote; they "
                                                  "join the subscription's next invoice.")


class InvoiceOut(BaseModel):
    id: str | None = Field(description="Null for an upcoming invoice (a preview).")
    number: str | None = Field(description="Assigned when finalized: INV-000001, gapless per tenant.")
    status: Literal["upcoming", "draft", "open", "paid", "void"]
    subscription_id: str
    customer_type: str
    customer_id: str
    currency: str
    period_start: str
    period_end: str
    total: str
    total_minor: int
    amount_paid: str
    amount_paid_minor: int
    amount_due: str
    amount_due_minor: int
    payment_transfer_id: str | None = Field(description="The ledger transfer wallet → platform revenue.")
    payment_attempts: int
    next_payment_attempt_at: str | None
    last_payment_error: str | None = Field(description="Why the last attempt to collect it failed.")
    created_at: str
    finalized_at: str | None
    paid_at: str | None
    voided_at: str | None
    html_url: str | None = Field(description="The printable page.")
    lines: list[LineOut]

    @classmethod
    def of(cls, doc: InvoiceDocument, scale: int) -> InvoiceOut:
        inv = doc.invoice

        def ts(ns: int | None) -> str | None:
            return None if ns is None else to_rfc3339(ns)

        due = inv.total_minor - inv.amount_paid_minor
        return cls(
            id=inv.id, number=inv.number, status=inv.status,  # type: ignore[arg-type]
            subscription_id=inv.subscription_id, customer_type=inv.customer_type, customer_id=inv.customer_id,
            currency=inv.currency, period_start=to_rfc3339(inv.period_start), period_end=to_rfc3339(inv.period_end),
            total=format_amount(inv.total_minor, scale), total_minor=inv.total_minor,
            amount_paid=format_amount(inv.amount_paid_minor, scale), amount_paid_minor=inv.amount_paid_minor,
            amount_due=format_amount(due, scale), amount_due_minor=due,
            payment_transfer_id=inv.payment_transfer_id, payment_attempts=inv.payment_attempts,
            next_payment_attempt_at=ts(inv.next_payment_attempt_at), last_payment_error=inv.last_payment_error,
            created_at=to_rfc3339(inv.created_at), finalized_at=ts(inv.finalized_at), paid_at=ts(inv.paid_at),
            voided_at=ts(inv.voided_at), html_url=f"/v1/invoices/{inv.id}.html" if inv.id else None,
            lines=[LineOut.of(ln, scale) for ln in doc.lines],
        )


class InvoicePage(BaseModel):
    data: list[InvoiceOut]
    next_cursor: str | None
