"""Wire models of wallets (/v1/wallets/{owner_type}/{owner_id}/{asset}/…).

Amounts are decimal strings in the asset's major unit; a request amount with
more decimals than the asset's scale is 422 `amount_precision`, never rounded.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from meterline.api.v1.catalog_schemas import Request, text
from meterline.clock import to_rfc3339
from meterline.ledger.schemas import AmountIn
from meterline.money import format_amount
from meterline.wallets.service import Deposit, WalletBalance, WalletEntry, Withdrawal

RailName = Annotated[str, StringConstraints(min_length=1, max_length=20, pattern=r"^[a-z0-9_-]+$")]
Proof = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[!-~]+$")]


class DepositCreate(Request):
    amount: AmountIn
    proof: Proof = Field(description="The rail's proof of payment (a transaction signature, an event id). "
                                     "Each proof credits once, ever.")
    rail: RailName | None = Field(default=None, description="Default: `simulation` (on in dev mode; outside it only with METERLINE_SIMULATION=true).")

    model_config = {"json_schema_extra": {"examples": [{"amount": "25.00", "proof": "tx_5Hq…", "rail": "simulation"}]}}


class WithdrawalCreate(Request):
    amount: AmountIn
    destination: Annotated[str, text(200, 1)] = Field(description="Where the rail sends the funds.")
    rail: RailName | None = None

    model_config = {"json_schema_extra": {"examples": [{"amount": "10.00", "destination": "9xQeWv…"}]}}


class BalanceOut(BaseModel):
    owner_type: str
    owner_id: str
    asset: str
    account_id: str
    posted: str = Field(description="credits_posted - debits_posted.")
    pending: str = Field(description="Held: escrow for rentals, withdrawals in flight.")
    available: str = Field(description="posted - pending: what can be spent now.")

    @classmethod
    def of(cls, owner_type: str, owner_id: str, account_id: str, b: WalletBalance) -> BalanceOut:
        s = b.scale
        return cls(owner_type=owner_type, owner_id=owner_id, asset=b.asset, account_id=account_id,
                   posted=format_amount(b.posted, s), pending=format_amount(b.pending, s),
                   available=format_amount(b.available, s))


class DepositOut(BaseModel):
    transfer_id: str
    account_id: str
    asset: str
    amount: str
    rail: str
    proof: str
    simulated: bool = Field(description="True for the simulation rail: no real money moved.")
    balance: BalanceOut

    @classmethod
    def of(cls, d: Deposit, scale: int, balance: BalanceOut) -> DepositOut:
        return cls(transfer_id=d.transfer_id, account_id=d.account_id, asset=d.asset,
                   amount=format_amount(d.amount_minor, scale), rail=d.rail, proof=d.proof,
                   simulated=d.simulated, balance=balance)


class WithdrawalOut(BaseModel):
    id: str = Field(description="The withdrawal's idempotency id (from the Idempotency-Key).")
    hold_transfer_id: str
    transfer_id: str
    account_id: str
    asset: str
    amount: str
    rail: str
    destination: str
    tx_signature: str
    simulated: bool
    balance: BalanceOut

    @classmethod
    def of(cls, w: Withdrawal, scale: int, balance: BalanceOut) -> WithdrawalOut:
        return cls(id=w.id, hold_transfer_id=w.hold_transfer_id, transfer_id=w.transfer_id,
                   account_id=w.account_id, asset=w.asset, amount=format_amount(w.amount_minor, scale),
                   rail=w.rail, destination=w.destination, tx_signature=w.tx_signature, simulated=w.simulated,
                   balance=balance)


class WalletEntryOut(BaseModel):
    transfer_id: str
    seq: int
    timestamp: str
    amount: str = Field(description="Signed: positive into the wallet, negative out of it.")
    asset: str
    status: str = Field(description="`posted`, `pending` (a hold) or `voided` (a hold released).")
    code: str
    reference: str | None
    counterparty_account_id: str
    metadata: dict[str, Any] | None

    @classmethod
    def of(cls, e: WalletEntry, scale: int) -> WalletEntryOut:
        return cls(transfer_id=e.transfer_id, seq=e.seq, timestamp=to_rfc3339(e.timestamp_ns),
                   amount=format_amount(e.amount_minor, scale), asset=e.asset, status=e.status, code=e.code,
                   reference=e.reference, counterparty_account_id=e.counterparty_account_id, metadata=e.metadata)


class WalletEntryPage(BaseModel):
    data: list[WalletEntryOut]
    next_cursor: str | None
