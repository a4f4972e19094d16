"""SI64 profile shapes (seeds/000): requests as the seed's curl sends them, responses as it shows.

Requests: unknown fields are allowed and ignored (clients paste the seed's
curl, which may carry more). Numeric fields are typed `Any` on purpose: the
body arrives through `parse_json` with JSON numbers as exact Decimals, and the
money and hours parsers (`money.parse_amount`, `rentals.service.parse_hours`)
are the one place that decides what a valid amount or duration is — with
their stable codes (`amount_precision`, `invalid_rental_request`) instead of a
generic type error. Strings are checked here.

Responses: amounts are `Decimal` in major units (rendered as exact JSON numbers
by `ExactJSONResponse`), times are Unix seconds, hours are Decimals. Fields
beyond the seed's are extras the seed allows ("extra fields allowed").
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

_NUMBER: dict[str, Any] = {"type": "number"}


def _number(description: str) -> Any:
    return Field(description=description, json_schema_extra=dict(_NUMBER))


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- requests ---------------------------------------------------------------------------------


class RentRequest(_Request):
    wallet: str = Field(min_length=1, max_length=128, description="The renter's wallet address.")
    tier: str = Field(min_length=1, max_length=32, description="Device tier, e.g. `M2`.")
    duration_hours: Annotated[Any, _number("Term in hours; a whole number of seconds (0.1 = 6 minutes).")]
    tx_signature: str = Field(min_length=1, max_length=100,
                              description="Payment proof; each one funds one rental, ever (replay → 409).")
    amount: Annotated[Any, _number("Amount paid in SOL (at most 9 decimals); defaults to the price.")] = None


class MetricsRequest(_Request):
    cpu_percent: Annotated[Any, _number("0-100")] = None
    memory_mb: Annotated[Any, _number("Memory in use, MB")] = None
    disk_io_mbps: Annotated[Any, _number("Disk throughput, MB/s")] = None
    network_io_mbps: Annotated[Any, _number("Network throughput, MB/s")] = None
    gpu_util_percent: Annotated[Any, _number("0-100")] = None
    vram_used_gb: Annotated[Any, _number("VRAM in use, GB")] = None
    power_w: Annotated[Any, _number("Power draw, W")] = None


class ExtendRequest(_Request):
    additional_hours: Annotated[Any, _number("Hours to add; a whole number of seconds.")]
    tx_signature: str | None = Field(default=None, min_length=1, max_length=100,
                                     description="Optional payment proof for the extension.")
    amount: Annotated[Any, _number("Amount paid with `tx_signature`, SOL; defaults to the price.")] = None


# -- responses --------------------------------------------------------------------------------


class RentResponse(BaseModel):
    contract_id: str
    status: str
    cost_sol: Decimal
    tier: str
    duration_hours: Decimal
    # extras
    wallet: str
    device_id: str | None
    paid_sol: Decimal
    created_at: int
    expires_at: int
    asset: str


class ContractStatus(BaseModel):
    contract_id: str
    wallet: str
    tier: str | None
    status: str
    prepaid_sol: Decimal
    used_sol: Decimal
    refund_available: Decimal
    duration_hours: Decimal
    elapsed_hours: Decimal
    remaining_seconds: int
    created_at: int
    expires_at: int | None
    # extras
    device_id: str | None
    asset: str
    settled_at: int | None = None
    refund_sol: Decimal | None = None
    tx_signature: str | None = None


class MetricsResponse(BaseModel):
    contract_id: str
    metrics_recorded: bool
    elapsed_hours: Decimal
    cost_so_far: Decimal
    refund_available: Decimal
    # extras
    remaining_seconds: int
    samples: int


class ExtendResponse(BaseModel):
    contract_id: str
    extended_hours: Decimal
    additional_cost_sol: Decimal
    new_total_cost: Decimal
    new_expiration: int
    # extras
    duration_hours: Decimal
    status: str


class DeviceOut(BaseModel):
    id: str
    name: str
    uri: str
    address: str
    region: str
    ram: str
    leases: int
    uptime: str
    audited: bool
    # extras
    status: str
    tier: str


class LedgerContract(BaseModel):
    contract_id: str
    wallet: str
    tier: str | None
    prepaid: Decimal
    used: Decimal
    refund: Decimal
    status: str
    # extras
    created_at: int
    expires_at: int | None
    asset: str


class LedgerSettlement(BaseModel):
    contract_id: str
    wallet: str
    tier: str | None
    prepaid: Decimal
    used: Decimal
    refund: Decimal
    status: str
    settled_at: int
    platform_fee: Decimal
    provider_share: Decimal
    end_reason: str | None
    tx_signature: str | None
    asset: str


class BillingLedger(BaseModel):
    active_contracts: list[LedgerContract]
    completed_settlements: list[LedgerSettlement]
    total_active_value: Decimal = Field(description="Held in escrow by every active contract.")
    total_used: Decimal = Field(description="Usage revenue: accrued on active contracts plus used by settled ones.")
    total_pending_refunds: Decimal = Field(description="What active contracts would refund if settled now.")
    # extras
    active_count: int
    active_used: Decimal
    settled_count: int
    settled_used: Decimal
    total_refunded: Decimal
    platform_fees: Decimal
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page of active contracts.")
    asset: str
    timestamp: int


class SettleResponse(BaseModel):
    contract_id: str
    status: str
    prepaid_sol: Decimal
    used_sol: Decimal
    refund_sol: Decimal
    tx_signature: str | None
    # extras
    provider_sol: Decimal
    fee_sol: Decimal
    settled_at: int
    end_reason: str | None
    asset: str


class Stats(BaseModel):
    status: str
    timestamp: int
    asset: str
    active_contracts: int
    settled_contracts: int
    total_active_value: Decimal
    total_used_active: Decimal
    total_pending_refunds: Decimal
    total_revenue: Decimal = Field(description="Used by settled contracts (provider share + platform fee).")
    platform_fees: Decimal
    provider_earnings: Decimal
    total_refunded: Decimal
    devices: int
    devices_available: int
    devices_leased: int
