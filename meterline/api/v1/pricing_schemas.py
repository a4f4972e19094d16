"""Wire models of pricing (/v1/price-book, /v1/providers/{id}/rates, /v1/quotes).

Rates are decimal strings with up to 18 fractional digits (a JSON number is
accepted too, as the exact Decimal `api.body.parse_json` produced). Which values
are valid — non-negative, ≤ 18 places, a fee ≤ 100 % — is the pricing engine's
rule: a bad price book answers 422 `invalid_price_book` listing every bad field.
Costs are amounts: decimal strings in the asset's major unit.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from meterline.api.v1.catalog_schemas import CatalogId, Request, TierId
from meterline.clock import to_rfc3339
from meterline.ledger.schemas import AssetCode
from meterline.pricing.engine import PriceBook, Quote
from meterline.pricing.models import PriceBookRow, ProviderRate
from meterline.rentals.service import InvalidRentalRequest, parse_hours


def _exact_number(value: Any) -> Any:
    # bool is an int subclass and a float means a lossy parser ran: both refused.
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError("must be a decimal string such as \"0.50\" (or an exact JSON number)")
    return value


DecimalIn = Annotated[
    str | int | Decimal,
    BeforeValidator(_exact_number),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "examples": ["0.50"]}),
]


def _check_hours(value: Any) -> Any:
    _exact_number(value)
    try:
        parse_hours(value, "hours")
    except InvalidRentalRequest as exc:
        raise ValueError(exc.detail) from None
    return value


HoursIn = Annotated[
    str | int | Decimal,
    BeforeValidator(_check_hours),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "examples": ["2", "0.5"],
                    "description": "Hours as an exact decimal; must come to whole seconds."}),
]
RateKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
RoundingName = Literal["half_up", "half_even", "up", "down", "floor"]


# -- price book --------------------------------------------------------------------------


class TierRateIn(Request):
    asset: AssetCode
    hourly: DecimalIn


class PriceBookChanges(Request):
    """Fields to change in the current book; what is omitted is kept. `base_rates` and
    `tier_rates` merge key by key, and `null` for a key removes it."""

    asset: AssetCode | None = Field(default=None, description="The asset GPU quotes are priced in.")
    base_rates: dict[RateKey, DecimalIn | None] | None = Field(
        default=None, description="Per hour, whole card, by GPU model id.")
    tier_rates: dict[RateKey, TierRateIn | None] | None = None
    power_multiplier: DecimalIn | None = Field(default=None, description="Per watt-hour, in `asset`.")
    platform_fee_percent: DecimalIn | None = None
    minimum_session_minutes: int | None = Field(default=None, ge=0)
    granularity: Literal["second", "minute"] | None = None
    rounding: RoundingName | None = None
    demand_curve: list[Annotated[list[DecimalIn], Field(min_length=2, max_length=2)]] | None = Field(
        default=None, max_length=100, description="[utilisation 0..1, multiplier] points, utilisation increasing.")

    model_config = {"json_schema_extra": {"examples": [
        {"base_rates": {"nvidia_h100": "4.50"}, "platform_fee_percent": "7.5"}]}}

    @model_validator(mode="after")
    def _not_empty(self) -> PriceBookChanges:
        if not self.changes():
            raise ValueError("name at least one field to change")
        return self

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude_unset=True).items() if v is not None}


class TierRateOut(BaseModel):
    asset: str
    hourly: str


class PriceBookOut(BaseModel):
    version: int
    asset: str
    base_rates: dict[str, str]
    tier_rates: dict[str, TierRateOut]
    power_multiplier: str
    platform_fee_percent: str
    minimum_session_minutes: int
    granularity: str
    rounding: str
    demand_curve: list[list[str]]

    @classmethod
    def of(cls, book: PriceBook) -> PriceBookOut:
        return cls.model_validate(book.to_dict())


class PriceBookVersionOut(BaseModel):
    version: int
    created_at: str
    created_by: str

    @classmethod
    def of(cls, row: PriceBookRow) -> PriceBookVersionOut:
        return cls(version=row.version, created_at=to_rfc3339(row.created_at), created_by=row.created_by)


class PriceBookVersionList(BaseModel):
    data: list[PriceBookVersionOut]


# -- provider minimums ----------------------------------------------------------------------


class ProviderRateSet(Request):
    min_hourly: DecimalIn = Field(description="The provider's floor per hour for this GPU model.")
    asset: AssetCode | None = Field(default=None, description="Defaults to the current book's asset.")


class ProviderRateOut(BaseModel):
    provider_id: str
    gpu_model: str
    asset: str
    min_hourly: str
    updated_at: str

    @classmethod
    def of(cls, row: ProviderRate) -> ProviderRateOut:
        return cls(provider_id=row.provider_id, gpu_model=row.gpu_model_id, asset=row.asset,
                   min_hourly=row.min_hourly, updated_at=to_rfc3339(row.updated_at))


class ProviderRateList(BaseModel):
    data: list[ProviderRateOut]


# -- quotes ----------------------------------------------------------------------------------


class QuoteRequest(Request):
    """Exactly one of `device_id` (the exact price a session on it is charged), `gpu_model`
    (any card of the model, before a provider's minimum) or `tier` (a flat-rate contract)."""

    device_id: CatalogId | None = None
    gpu_model: CatalogId | None = None
    tier: TierId | None = None
    vram_gb: int | None = Field(default=None, ge=1, le=2**31 - 1, description="Default: the whole card.")
    watts: int | None = Field(default=None, ge=0, le=10**6, description="Default: the card's power limit.")
    hours: HoursIn | None = Field(default=None, description="With hours, the answer includes the estimated cost.")

    model_config = {"json_schema_extra": {"examples": [
        {"gpu_model": "nvidia_rtx_4090", "vram_gb": 12, "hours": "2"}, {"device_id": "gpu-h100-001"},
        {"tier": "M2", "hours": "24"}]}}

    @model_validator(mode="after")
    def _one_subject(self) -> QuoteRequest:
        named = [n for n in ("device_id", "gpu_model", "tier") if getattr(self, n) is not None]
        if len(named) != 1:
            raise ValueError("name exactly one of device_id, gpu_model or tier")
        if self.tier is not None and (self.vram_gb is not None or self.watts is not None):
            raise ValueError("a tier's rate is all-in: vram_gb and watts do not apply")
        return self


class LineItemOut(BaseModel):
    name: str
    amount_per_hour: str
    detail: str


class EstimateOut(BaseModel):
    hours: str
    billable_seconds: int = Field(description="After the minimum session and the billing granularity.")
    time_cost: str
    power_cost: str = Field(description="At `estimated_power_w` for the whole time (billed as metered).")
    total: str = Field(description="Rounded once, by the quote's rule, as a settlement would be.")
    asset: str


class QuoteOut(BaseModel):
    asset: str
    price_book_version: int
    hourly_rate: str = Field(description="The time rate per hour (what the provider's minimum applies to).")
    power_rate_per_wh: str
    estimated_power_w: int
    estimated_hourly_total: str = Field(description="hourly_rate + power at estimated_power_w; the line "
                                                    "items sum to it.")
    platform_fee_percent: str
    minimum_session_minutes: int
    granularity: str
    rounding: str
    line_items: list[LineItemOut]
    gpu_model: str | None
    tier: str | None
    vram_gb: int | None
    device_id: str | None
    utilisation: str | None = Field(description="The pool's busy share the demand multiplier used.")
    estimate: EstimateOut | None

    @classmethod
    def of(cls, quote: Quote, *, device_id: str | None, utilisation: Decimal | None,
           estimate: EstimateOut | None) -> QuoteOut:
        return cls.model_validate({**quote.to_dict(), "device_id": device_id,
                                   "utilisation": None if utilisation is None else format(utilisation.normalize(), "f"),
                                   "estimate": estimate})
