"""Wire models of payouts (/v1/payouts): provider earnings on their way out through a rail."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from meterline.api.v1.catalog_schemas import CatalogId, Request, text
from meterline.api.v1.wallet_schemas import RailName
from meterline.clock import to_rfc3339
from meterline.ledger.schemas import AmountIn, AssetCode
from meterline.money import format_amount
from meterline.payouts.models import PayoutRequest

PayoutStatusName = Literal["requested", "approved", "executing", "paid", "failed", "rejected"]


class PayoutCreate(Request):
    provider_id: CatalogId
    asset: AssetCode
    amount: AmountIn
    destination: Annotated[str, text(200, 1)] = Field(description="Where the rail pays (an address, an account).")
    rail: RailName | None = Field(default=None, description="Default: `simulation` (on in dev mode; outside it only with METERLINE_SIMULATION=true).")

    model_config = {"json_schema_extra": {"examples": [
        {"provider_id": "demo-provider", "asset": "DGPU", "amount": "12.500000", "destination": "9xQeWv…"}]}}


class PayoutReject(Request):
    reason: Annotated[str, text(500)] | None = None


class PayoutOut(BaseModel):
    id: str
    provider_id: str
    asset: str
    amount: str
    destination: str
    rail: str
    status: PayoutStatusName
    requested_by: str
    approvals: list[str]
    required_approvals: int = Field(description="Distinct operator approvals needed (0: under the threshold).")
    attempts: int
    next_attempt_at: str | None = Field(description="When the worker next tries to send it.")
    last_error: str | None
    tx_signature: str | None
    hold_transfer_id: str
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, row: PayoutRequest, scale: int) -> PayoutOut:
        return cls(
            id=row.id, provider_id=row.provider_id, asset=row.asset, amount=format_amount(row.amount_minor, scale),
            destination=row.destination, rail=row.rail, status=row.status,  # type: ignore[arg-type]
            requested_by=row.requested_by, approvals=list(row.approvals), required_approvals=row.required_approvals,
            attempts=row.attempts,
            next_attempt_at=None if row.next_attempt_at is None else to_rfc3339(row.next_attempt_at),
            last_error=row.last_error, tx_signature=row.tx_signature, hold_transfer_id=row.hold_transfer_id,
            created_at=to_rfc3339(row.created_at), updated_at=to_rfc3339(row.updated_at),
        )


class PayoutPage(BaseModel):
    data: list[PayoutOut]
    next_cursor: str | None
