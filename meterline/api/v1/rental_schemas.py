"""Wire models of rentals (/v1/rentals): prepaid contracts and pay-as-you-go sessions.

One resource for both styles (`style`: `prepaid` | `payg`) on one state machine:
PENDING_PAYMENT → ACTIVE → (EXPIRED | TERMINATED | ENDED) → SETTLED. Amounts are
decimal strings in the rental's `asset`; the running cost is computed on read
from the locked rate and the metered power, and is the rounded value of the
exact accrual (it never drifts from what settlement charges).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, RootModel, WithJsonSchema, model_validator

from meterline.api.v1.catalog_schemas import CatalogId, Request, TierId
from meterline.api.v1.pricing_schemas import HoursIn
from meterline.api.v1.wallet_schemas import Proof, RailName
from meterline.clock import to_rfc3339
from meterline.ledger.schemas import AmountIn, Id
from meterline.money import format_amount
from meterline.rentals import accrual
from meterline.rentals.models import Rental, RentalSample
from meterline.rentals.service import SETTLED, Accrual

RentalStatus = Literal["PENDING_PAYMENT", "ACTIVE", "EXPIRED", "TERMINATED", "ENDED", "SETTLED"]
CustomerId = Annotated[Id, Field(description="The customer's id: a wallet address (prepaid) or a user id.")]
MAX_SAMPLES = 1000


# -- requests ---------------------------------------------------------------------------------


class Payment(Request):
    proof: Proof = Field(description="The rail's proof of payment; each proof is used once, ever.")
    amount: AmountIn | None = Field(default=None, description="What was paid (default: exactly the price). "
                                                              "Less than the price is 402.")
    rail: RailName | None = Field(default=None, description="Default: `simulation` (on in dev mode; outside it only with METERLINE_SIMULATION=true).")


class PrepaidCreate(Request):
    style: Literal["prepaid"]
    wallet: CustomerId
    tier: TierId
    duration_hours: HoursIn
    payment: Payment

    model_config = {"json_schema_extra": {"examples": [
        {"style": "prepaid", "wallet": "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin", "tier": "M2",
         "duration_hours": "2", "payment": {"proof": "5Hq…", "amount": "0.002"}}]}}


class PaygCreate(Request):
    style: Literal["payg"]
    customer_id: CustomerId
    gpu_model: CatalogId | None = None
    device_id: CatalogId | None = None
    vram_gb: int | None = Field(default=None, ge=1, le=2**31 - 1, description="Default: the whole card.")
    watts: int | None = Field(default=None, ge=0, le=10**6, description="Estimated draw; default: power limit.")

    model_config = {"json_schema_extra": {"examples": [
        {"style": "payg", "customer_id": "user_42", "gpu_model": "nvidia_rtx_4090", "vram_gb": 12}]}}

    @model_validator(mode="after")
    def _needs_subject(self) -> PaygCreate:
        if self.gpu_model is None and self.device_id is None:
            raise ValueError("name a gpu_model or a device_id")
        return self


class RentalCreate(RootModel[Annotated[PrepaidCreate | PaygCreate, Field(discriminator="style")]]):
    pass


class ExtendPayment(Request):
    proof: Proof
    amount: AmountIn | None = None


class RentalExtend(Request):
    hours: HoursIn
    payment: ExtendPayment | None = Field(
        default=None, description="Funds the extension; without it the wallet must cover the price "
                                  "(the simulation rail tops it up, labelled as simulated).")


def _exact(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError("must be a number (a JSON number is read exactly, or a decimal string)")
    return value


Metric = Annotated[str | int | Decimal | None, BeforeValidator(lambda v: v if v is None else _exact(v)),
                   WithJsonSchema({"type": ["number", "string", "null"]})]


class SampleIn(Request):
    """One metrics sample, stamped with the server's time. `power_w` is integrated (trapezoid
    rule) into the rental's metered energy; the others are stored as reported."""

    cpu_percent: Metric = None
    memory_mb: Metric = None
    disk_io_mbps: Metric = None
    network_io_mbps: Metric = None
    gpu_util_percent: Metric = None
    vram_used_gb: Metric = None
    power_w: Metric = None

    @model_validator(mode="after")
    def _not_empty(self) -> SampleIn:
        if not self.values():
            raise ValueError("a sample reports at least one metric")
        return self

    def values(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class SampleBatch(Request):
    samples: list[SampleIn] = Field(min_length=1, max_length=MAX_SAMPLES)


# -- responses --------------------------------------------------------------------------------


class SettlementOut(BaseModel):
    used: str = Field(description="Collected: posted from the holds, and for a session debited from the "
                                  "wallet beyond them.")
    unpaid: str | None = Field(description="A session's cost its wallet could not pay (its cost = used + "
                                           "unpaid); null for a prepaid contract, never billed past its price.")
    refund: str
    provider_share: str
    platform_fee: str
    refund_tx: str | None


class RentalOut(BaseModel):
    id: str
    style: str
    status: str
    customer_type: str
    customer_id: str
    provider_id: str | None
    device_id: str | None
    tier: str | None
    gpu_model: str | None
    vram_gb: int | None
    asset: str
    hourly_rate: str = Field(description="The locked time rate per hour (the quote's, to scale + 3 decimals).")
    held: str = Field(description="Escrowed so far: the most a prepaid contract can cost (a session's usage "
                                  "beyond it is debited from its wallet at settlement).")
    cost_so_far: str = Field(description="Prepaid: the accrual. Session: the committed cost (with the power "
                                         "drawn since the last sample), which may exceed `held`.")
    refund_available: str = Field(description="held - cost_so_far (at least 0).")
    elapsed_s: int
    as_of: str = Field(description="When cost_so_far was computed.")
    quote: dict[str, Any] = Field(description="The quote locked at the start (rates as decimal strings).")
    payment_rail: str
    sample_count: int
    created_at: str
    started_at: str
    expires_at: str | None
    ended_at: str | None
    end_reason: str | None
    settled_at: str | None
    settlement: SettlementOut | None

    @classmethod
    def of(cls, r: Rental, acc: Accrual) -> RentalOut:
        s = r.scale
        settlement = None
        if r.status == SETTLED:
            settlement = SettlementOut(
                used=format_amount(r.used_minor or 0, s), unpaid=None if r.unpaid_minor is None else format_amount(r.unpaid_minor, s),
                refund=format_amount(r.refund_minor or 0, s),
                provider_share=format_amount(r.provider_minor or 0, s), platform_fee=format_amount(r.fee_minor or 0, s),
                refund_tx=r.refund_tx,
            )
        rate = accrual.lock_rate(Decimal(str(r.quote["hourly_rate"])), s)
        return cls(
            id=r.id, style=r.style, status=r.status, customer_type=r.customer_type, customer_id=r.customer_id,
            provider_id=r.provider_id, device_id=r.device_id, tier=r.tier, gpu_model=r.gpu_model,
            vram_gb=r.vram_gb, asset=r.asset, hourly_rate=format(rate, "f"), held=format_amount(acc.held_minor, s),
            cost_so_far=format_amount(acc.cost_minor, s), refund_available=format_amount(acc.refund_minor, s),
            elapsed_s=acc.elapsed_s, as_of=to_rfc3339(acc.at_ns), quote=r.quote, payment_rail=r.payment_rail,
            sample_count=r.sample_count, created_at=to_rfc3339(r.created_at), started_at=to_rfc3339(r.started_at),
            expires_at=_ts(r.expires_at), ended_at=_ts(r.ended_at), end_reason=r.end_reason,
            settled_at=_ts(r.settled_at), settlement=settlement,
        )


def _ts(ns: int | None) -> str | None:
    return None if ns is None else to_rfc3339(ns)


class RentalCreated(RentalOut):
    price: str | None = Field(description="Prepaid: the term's price, held in escrow.")
    paid: str | None = Field(description="Prepaid: the payment deposited into the wallet.")


class RentalExtended(RentalOut):
    added_seconds: int
    added: str = Field(description="The extension's price, added to the escrow hold.")


class RentalPage(BaseModel):
    data: list[RentalOut]
    next_cursor: str | None


class AccrualOut(BaseModel):
    held: str
    cost_so_far: str
    refund_available: str
    elapsed_s: int
    as_of: str

    @classmethod
    def of(cls, acc: Accrual, scale: int) -> AccrualOut:
        return cls(held=format_amount(acc.held_minor, scale), cost_so_far=format_amount(acc.cost_minor, scale),
                   refund_available=format_amount(acc.refund_minor, scale), elapsed_s=acc.elapsed_s,
                   as_of=to_rfc3339(acc.at_ns))


class SamplesAccepted(BaseModel):
    rental_id: str
    accepted: int
    sample_count: int
    accrual: AccrualOut


class SampleOut(BaseModel):
    ts: str
    power_w: str | None
    values: dict[str, str]

    @classmethod
    def of(cls, s: RentalSample) -> SampleOut:
        power = None if s.power_mw is None else format_amount(s.power_mw, 3)
        return cls(ts=to_rfc3339(s.ts), power_w=power, values=s.values)


class SampleList(BaseModel):
    data: list[SampleOut] = Field(description="Newest first.")


class AssetTotals(BaseModel):
    asset: str
    active_count: int
    active_held: str
    active_used: str
    active_refundable: str
    settled_count: int
    settled_used: str
    settled_refunded: str
    platform_fees: str

    @classmethod
    def of(cls, asset: str, scale: int, t: dict[str, int]) -> AssetTotals:
        return cls(asset=asset, active_count=t["active_count"], settled_count=t["settled_count"],
                   **{k: format_amount(t[k], scale) for k in (
                       "active_held", "active_used", "active_refundable", "settled_used", "settled_refunded",
                       "platform_fees")})


class RentalTotals(BaseModel):
    as_of: str
    data: list[AssetTotals] = Field(description="One entry per asset that has rentals.")
