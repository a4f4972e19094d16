"""Wire models of the Dante profile (seeds/004): wallets, GPU sessions, provider payouts, pricing.

The seed names the endpoints but not their bodies, so the shapes follow the
native API: requests forbid unknown fields and never coerce ("12" is not 12);
amounts are ``{"amount": "1.250000", "asset": "DGPU"}`` — a decimal string in
major units with exactly the asset's decimals — and a JSON number is accepted
on input only as the exact `Decimal` the body parser produced. A *rate* (per
hour, per watt-hour) is not an amount: it is ``{"amount": "0.25", "asset":
"DGPU", "per": "hour"}``, exact, with as many decimals as it needs (up to 18).
Times are RFC 3339 UTC; lists are ``{"data": [...], "next_cursor": ...}``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from meterline.clock import to_rfc3339
from meterline.ledger.schemas import ASSET_PATTERN, ID_PATTERN, AmountIn
from meterline.money import Asset, format_amount
from meterline.payouts.models import PayoutRequest
from meterline.pricing.engine import LineItem, Quote
from meterline.wallets.service import WalletBalance, WalletEntry

SubjectId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
ModelId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=ID_PATTERN)]
SessionId = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=ID_PATTERN)]
AssetCode = Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=ASSET_PATTERN)]
Proof = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[!-~]+$")]
Destination = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[!-~]+$")]
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=ID_PATTERN)]
RailName = Annotated[str, StringConstraints(min_length=1, max_length=20, pattern=r"^[a-z0-9_]+$")]

MAX_VRAM_GB = 100_000
MAX_WATTS = 1_000_000


def text(value: Decimal) -> str:
    """A rate or percentage in plain positional notation ("0.0000001", never "1E-7")."""
    return format(value, "f")


def ratio(value: Decimal) -> str:
    """A utilisation without its padding: "0.5", not "0.500000000000000000"."""
    return format(value.normalize(), "f")


class _Request(BaseModel):
    # Strict: no silent coercion, and an unknown field is an error, not an ignored option.
    model_config = ConfigDict(extra="forbid", strict=True)


# -- common values ------------------------------------------------------------------------


class Money(BaseModel):
    """An amount: major units as a decimal string with exactly the asset's decimals."""

    amount: str = Field(examples=["1.250000"])
    asset: str = Field(examples=["DGPU"])

    @classmethod
    def of(cls, minor: int, asset: Asset) -> Money:
        return cls(amount=format_amount(minor, asset.scale), asset=asset.code)


class Rate(BaseModel):
    """A price per unit: exact decimal text (up to 18 places, not padded to the asset's scale)."""

    amount: str = Field(examples=["0.25"])
    asset: str = Field(examples=["DGPU"])
    per: Literal["hour", "watt_hour"]

    @classmethod
    def hourly(cls, value: Decimal, asset: str) -> Rate:
        return cls(amount=text(value), asset=asset, per="hour")

    @classmethod
    def per_wh(cls, value: Decimal, asset: str) -> Rate:
        return cls(amount=text(value), asset=asset, per="watt_hour")


class LineItemOut(BaseModel):
    name: str = Field(description="`gpu_time`, `demand`, `provider_minimum` (only when it applies), `power`.")
    amount_per_hour: Rate
    detail: str

    @classmethod
    def of(cls, item: LineItem, asset: str) -> LineItemOut:
        return cls(name=item.name, amount_per_hour=Rate.hourly(item.amount_per_hour, asset), detail=item.detail)


class QuoteOut(BaseModel):
    """The price a session locks in at its start. Time is billed at `hourly_rate`; power is
    billed as metered at `power_rate` (the `power` line item is an estimate from `estimated_power_w`)."""

    price_book_version: int
    hourly_rate: Rate
    power_rate: Rate
    estimated_power_w: int
    estimated_hourly_total: Rate = Field(description="hourly_rate + power_rate × estimated_power_w; "
                                                     "the line items sum to it.")
    line_items: list[LineItemOut]
    platform_fee_percent: str = Field(description="Deducted from the provider's share.", examples=["5.0"])
    minimum_session_minutes: int
    granularity: Literal["second", "minute"]
    rounding: str

    @classmethod
    def of(cls, q: Quote) -> QuoteOut:
        return cls(
            price_book_version=q.price_book_version, hourly_rate=Rate.hourly(q.hourly_rate, q.asset),
            power_rate=Rate.per_wh(q.power_rate_per_wh, q.asset), estimated_power_w=q.estimated_power_w,
            estimated_hourly_total=Rate.hourly(q.estimated_hourly_total, q.asset),
            line_items=[LineItemOut.of(i, q.asset) for i in q.line_items],
            platform_fee_percent=text(q.platform_fee_percent), minimum_session_minutes=q.minimum_session_minutes,
            granularity=q.granularity,  # type: ignore[arg-type]
            rounding=q.rounding.value,
        )


# -- wallet ---------------------------------------------------------------------------------


class WalletBalanceOut(BaseModel):
    user_id: str
    balance: Money = Field(description="Posted: everything credited minus everything spent or sent.")
    held: Money = Field(description="Reserved by holds: active sessions' escrow, withdrawals in flight.")
    available: Money = Field(description="balance − held: what a new session or withdrawal can use.")

    @classmethod
    def of(cls, user_id: str, b: WalletBalance) -> WalletBalanceOut:
        asset = Asset(b.asset, b.scale)
        return cls(user_id=user_id, balance=Money.of(b.posted, asset), held=Money.of(b.pending, asset),
                   available=Money.of(b.available, asset))


class DepositIn(_Request):
    user_id: SubjectId | None = Field(default=None, description="Admin/operator keys only: the user credited.")
    amount: AmountIn
    asset: AssetCode | None = Field(default=None, description="Default: the price book's asset (DGPU).")
    tx_signature: Proof = Field(description="The payment's proof (a Solana transaction signature). "
                                            "Each proof credits once, ever: reuse is 409 payment_proof_reused.")
    rail: RailName = Field(default="simulation", description="The rail that verifies the proof.")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"user_id": "alice", "amount": "10.00", "tx_signature": "5sim-demo-0001"}]})


class DepositOut(BaseModel):
    deposit_id: str = Field(description="The ledger transfer that credited the wallet.")
    user_id: str
    amount: Money
    tx_signature: str
    rail: str
    simulated: bool = Field(description="True on the simulation rail: nothing was verified on chain.")
    balance: WalletBalanceOut


class WithdrawIn(_Request):
    user_id: SubjectId | None = None
    amount: AmountIn
    asset: AssetCode | None = None
    destination: Destination = Field(description="Where the rail sends the funds (a Solana address).")
    rail: RailName = "simulation"
    request_id: RequestId | None = Field(default=None, description="Makes the withdrawal idempotent when no "
                                                                   "Idempotency-Key header is sent.")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"user_id": "alice", "amount": "1.5", "destination": "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin",
         "request_id": "wd-0001"}]})


class WithdrawOut(BaseModel):
    withdrawal_id: str = Field(description="The idempotency id the withdrawal was made under.")
    user_id: str
    status: Literal["completed"]
    amount: Money
    destination: str
    rail: str
    tx_signature: str
    simulated: bool
    balance: WalletBalanceOut


class WalletTransaction(BaseModel):
    id: str = Field(description="The ledger transfer id.")
    seq: int = Field(description="Ledger order.")
    type: str = Field(description="`deposit`, `withdrawal`, `rental_hold`, `rental_settle`, `rental_release`, …")
    status: Literal["posted", "pending", "voided"] = Field(
        description="`posted` moved money; `pending` is a hold placed (it reserves, the balance is unchanged); "
                    "`voided` released a hold. A hold's later `posted` entry is the part actually spent.")
    amount: Money = Field(description="Signed: positive into the wallet, negative out of it.")
    reference: str | None = Field(description="The session or withdrawal it belongs to.")
    counterparty: str = Field(description="The other ledger account.")
    created_at: str
    metadata: dict[str, Any] | None

    @classmethod
    def of(cls, e: WalletEntry, asset: Asset) -> WalletTransaction:
        return cls(id=e.transfer_id, seq=e.seq, type=e.code, status=e.status,  # type: ignore[arg-type]
                   amount=Money.of(e.amount_minor, asset), reference=e.reference,
                   counterparty=e.counterparty_account_id, created_at=to_rfc3339(e.timestamp_ns),
                   metadata=e.metadata)


class WalletTransactionPage(BaseModel):
    user_id: str
    data: list[WalletTransaction]
    next_cursor: str | None


# -- billing --------------------------------------------------------------------------------


class StartSessionIn(_Request):
    user_id: SubjectId | None = None
    gpu_model: ModelId | None = Field(default=None, description="Any available device of this model.")
    device_id: ModelId | None = Field(default=None, description="This device (overrides the choice by model).")
    vram_gb: int | None = Field(default=None, ge=1, le=MAX_VRAM_GB,
                                description="VRAM to allocate (a fraction of the card); default: the whole card.")
    watts: int | None = Field(default=None, ge=0, le=MAX_WATTS,
                              description="Expected power draw, for the estimate; default: the device's limit.")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"user_id": "alice", "gpu_model": "nvidia_rtx_4090", "vram_gb": 12}]})

    @model_validator(mode="after")
    def _needs_target(self) -> StartSessionIn:
        if self.gpu_model is None and self.device_id is None:
            raise ValueError("name a gpu_model or a device_id")
        return self


class EndSessionIn(_Request):
    session_id: SessionId
    user_id: SubjectId | None = None


class SessionOut(BaseModel):
    """A pay-as-you-go GPU session."""

    session_id: str
    user_id: str
    status: Literal["active", "ended", "terminated", "expired", "settled"]
    end_reason: str | None = Field(description="`ended` (by the user) or `insufficient_funds`.")
    device_id: str | None
    provider_id: str | None
    gpu_model: str | None
    vram_gb: int | None
    started_at: str
    ended_at: str | None
    quote: QuoteOut
    held: Money = Field(description="Escrowed from the wallet so far (a rolling hold a few minutes ahead).")


class ActiveSessionOut(SessionOut):
    as_of: str
    elapsed_seconds: int
    cost_so_far: Money = Field(description="Committed so far: time, metered power and the power drawn since "
                                           "the last sample at its draw, rounded once. May exceed `held` until "
                                           "the worker renews the hold.")
    refund_available: Money = Field(description="held − cost_so_far (at least 0): released to the wallet at "
                                                "the end.")


class SettledSessionOut(SessionOut):
    settled_at: str
    duration_seconds: int
    billed_seconds: int = Field(description="At least the minimum session, rounded up to the granularity.")
    cost: Money = Field(description="What the session cost: paid from its holds, then from the wallet.")
    unpaid: Money = Field(description="The part of `cost` the wallet could not pay (0 when paid in full).")
    refund: Money = Field(description="The part of the hold released back to the wallet.")
    provider_earnings: Money
    platform_fee: Money


class StartSessionOut(ActiveSessionOut):
    balance: WalletBalanceOut


class EndSessionOut(SettledSessionOut):
    balance: WalletBalanceOut


class CurrentUsageOut(BaseModel):
    user_id: str
    as_of: str
    data: list[ActiveSessionOut]
    next_cursor: str | None


class BillingHistoryOut(BaseModel):
    user_id: str
    data: list[SettledSessionOut]
    next_cursor: str | None


# -- provider -------------------------------------------------------------------------------


class EarningsOut(BaseModel):
    provider_id: str
    earned: Money = Field(description="Everything ever credited (the provider's share of settled sessions).")
    paid_out: Money = Field(description="Everything sent out by completed payouts.")
    balance: Money = Field(description="earned − paid_out.")
    held_for_payouts: Money = Field(description="Reserved by payouts requested and not yet paid.")
    available: Money = Field(description="balance − held_for_payouts: what a new payout can request.")


class PayoutIn(_Request):
    provider_id: SubjectId | None = Field(default=None, description="Admin/operator keys only.")
    amount: AmountIn
    asset: AssetCode | None = None
    destination: Destination
    rail: RailName = "simulation"

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"provider_id": "demo-provider", "amount": "0.01",
         "destination": "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"}]})


class PayoutOut(BaseModel):
    payout_id: str
    provider_id: str
    status: Literal["requested", "approved", "executing", "paid", "failed", "rejected"] = Field(
        description="`approved`: due for execution by the worker; `requested`: above the approval "
                    "threshold, waiting for operators.")
    amount: Money
    destination: str
    rail: str
    required_approvals: int
    approvals: int
    attempts: int
    tx_signature: str | None
    last_error: str | None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, row: PayoutRequest, asset: Asset) -> PayoutOut:
        return cls(
            payout_id=row.id, provider_id=row.provider_id, status=row.status,  # type: ignore[arg-type]
            amount=Money.of(row.amount_minor, asset), destination=row.destination, rail=row.rail,
            required_approvals=row.required_approvals, approvals=len(row.approvals), attempts=row.attempts,
            tx_signature=row.tx_signature, last_error=row.last_error, created_at=to_rfc3339(row.created_at),
            updated_at=to_rfc3339(row.updated_at),
        )


class PayoutPage(BaseModel):
    provider_id: str
    data: list[PayoutOut]
    next_cursor: str | None


class ProviderRatesIn(_Request):
    provider_id: SubjectId | None = None
    asset: AssetCode | None = Field(default=None, description="Default: the price book's asset.")
    rates: dict[ModelId, AmountIn | None] = Field(
        min_length=1, max_length=100,
        description="GPU model → minimum hourly rate for a whole card (a decimal); null removes it. "
                    "Models not named are left as they are.")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"provider_id": "demo-provider", "rates": {"nvidia_rtx_4090": "0.60", "nvidia_a100": None}}]})


class ProviderRateOut(BaseModel):
    gpu_model: str
    base_hourly: Rate | None = Field(description="The price book's whole-card rate (null: not priced).")
    min_hourly: Rate | None = Field(description="The provider's floor (null: none; the dynamic rate stands).")
    updated_at: str | None


class ProviderRatesOut(BaseModel):
    provider_id: str
    price_book_version: int
    data: list[ProviderRateOut]


# -- pricing --------------------------------------------------------------------------------


class DemandPoint(BaseModel):
    utilisation: str
    multiplier: str


class GpuRateOut(BaseModel):
    gpu_model: str
    name: str | None
    vram_gb: int | None
    base_hourly: Rate = Field(description="Whole card, before demand.")
    utilisation: str = Field(description="Busy share (0..1) of this model's in-service devices now.")
    demand_multiplier: str
    current_hourly: Rate = Field(description="Whole card at today's demand, before any provider minimum.")


class PricingRatesOut(BaseModel):
    price_book_version: int
    asset: str
    as_of: str
    gpu_models: list[GpuRateOut]
    power_multiplier: Rate
    platform_fee_percent: str
    minimum_session_minutes: int
    granularity: Literal["second", "minute"]
    rounding: str
    demand_curve: list[DemandPoint]


class CalculateIn(_Request):
    gpu_model: ModelId | None = None
    device_id: ModelId | None = Field(default=None, description="Quote this device (includes its provider's "
                                                                "minimum rate).")
    vram_gb: int | None = Field(default=None, ge=1, le=MAX_VRAM_GB, description="Default: the whole card.")
    watts: int | None = Field(default=None, ge=0, le=MAX_WATTS, description="Default: the card's power limit.")
    hours: AmountIn = Field(default=1, description="Duration to price (a decimal; default 1).")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"gpu_model": "nvidia_rtx_4090", "vram_gb": 12, "watts": 300, "hours": "2.5"}]})

    @model_validator(mode="after")
    def _needs_target(self) -> CalculateIn:
        if self.gpu_model is None and self.device_id is None:
            raise ValueError("name a gpu_model or a device_id")
        return self


class CalculateOut(BaseModel):
    gpu_model: str | None
    device_id: str | None
    provider_id: str | None
    vram_gb: int | None
    vram_gb_total: int | None
    watts: int
    hours: str
    utilisation: str
    quote: QuoteOut
    billed_seconds: int = Field(description="`hours` with the minimum session and granularity applied.")
    estimated_cost: Money = Field(description="Time at hourly_rate for billed_seconds plus power at "
                                              "power_rate × watts × hours, rounded once.")
    estimated_provider_earnings: Money
    estimated_platform_fee: Money
