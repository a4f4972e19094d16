"""Wire models of the native ledger API (`/v1`).

Requests forbid unknown fields (a typo is a 422, not a silently ignored
option). Amounts travel as decimal strings in the asset's major unit with the
asset beside them (``{"amount": "12.50", "asset": "USD"}``); a JSON number is
accepted too, but only as the exact `Decimal` that `api.body.parse_json`
produced, and it is converted to minor units by `money.parse_amount` with the
asset's scale — never through float. Responses carry amounts as canonical
strings (exactly `scale` decimals) and times as RFC 3339 UTC.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from meterline.clock import to_rfc3339
from meterline.ledger.models import Account as AccountRow
from meterline.ledger.models import AssetRow
from meterline.ledger.models import Block as BlockRow
from meterline.ledger.models import Hold as HoldRow
from meterline.ledger.types import (
    ACCOUNT_FLAG_NAMES,
    TRANSFER_FLAG_NAMES,
    StoredTransfer,
    TransferIn,
    flag_names,
)
from meterline.money import Asset, format_amount, parse_amount

# Ids are printable ASCII without spaces or "/" (UUIDs, "rental_42:settle", …), so each
# one is a single path segment; free text
# may be any Unicode except control characters (PostgreSQL refuses NUL in text).
ID_PATTERN = r"^[!-.0-~]+$"
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
ASSET_PATTERN = r"^[A-Z0-9]{1,16}$"
MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 16

ID_MAX = 64
TRANSFER_ID_MAX = 128
ASSET_MAX = 16
Id = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN)]
TransferId = Annotated[str, StringConstraints(min_length=1, max_length=TRANSFER_ID_MAX, pattern=ID_PATTERN)]
AssetCode = Annotated[str, StringConstraints(min_length=1, max_length=ASSET_MAX, pattern=ASSET_PATTERN)]
# Ids Meterline's own services derive: the hold sweeper's `expire:…`, deposits' `dep:…`,
# withdrawals' `wd:…`, rentals' `rent:…`, invoice payments' `inv:…`; wallets' `wal:…`,
# earnings' `earn:…` and platform accounts' `sys:…`. A client taking one first would block
# that service for good (a hold the sweeper can never expire — and with a thousand of them,
# no tenant's holds expiring at all — a deposit that never credits) or stand in for it (an
# account without a wallet's non-negative flag), and voiding a hold Meterline placed would
# empty a rental's escrow. So a client's transfer id, the hold it resolves and its account
# ids may not start with these.
RESERVED_TRANSFER_PREFIXES = ("expire:", "expire#", "dep:", "wd:", "rent:", "inv:")
RESERVED_ACCOUNT_PREFIXES = ("wal:", "earn:", "sys:")


def _not_reserved(prefixes: tuple[str, ...]) -> Any:
    def check(value: str) -> str:
        if value.startswith(prefixes):
            raise ValueError(f"ids starting with {', '.join(repr(p) for p in prefixes)} are Meterline's own")
        return value

    return AfterValidator(check)


ClientTransferId = Annotated[TransferId, _not_reserved(RESERVED_TRANSFER_PREFIXES)]
ClientAccountId = Annotated[Id, _not_reserved(RESERVED_ACCOUNT_PREFIXES)]
AccountFlagName = Literal["debits_must_not_exceed_credits", "credits_must_not_exceed_debits"]
TransferFlagName = Literal["pending", "post_pending", "void_pending", "linked"]


def _text(max_length: int, min_length: int = 0) -> Any:
    return StringConstraints(min_length=min_length, max_length=max_length, pattern=TEXT_PATTERN)


def _raw_amount(value: Any) -> Any:
    # Keep the wire value as written; `parse_amount` applies the asset's scale later.
    # bool is an int subclass and a float means a lossy parser ran: both refused here.
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError("amount must be a decimal string such as \"12.50\" (or an exact JSON number)")
    return value


AmountIn = Annotated[
    str | int | Decimal,
    BeforeValidator(_raw_amount),
    WithJsonSchema({"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "examples": ["12.50"],
                    "description": "Major units of `asset`, as a decimal string (a JSON number is also "
                                   "accepted exactly). More decimals than the asset's scale is an error."}),
]


def _check_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    def walk(v: Any, depth: int = 0) -> None:
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata must not nest deeper than {MAX_METADATA_DEPTH} levels")
        if isinstance(v, Decimal):
            raise ValueError("metadata numbers must be integers; send fractional values as strings")
        if isinstance(v, str) and "\x00" in v:
            raise ValueError("metadata strings must not contain NUL characters")
        if isinstance(v, dict):
            for k, item in v.items():
                walk(k, depth + 1)
                walk(item, depth + 1)
        elif isinstance(v, list):
            for item in v:
                walk(item, depth + 1)

    if value is None:
        return None
    walk(value)
    if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must encode to at most {MAX_METADATA_BYTES} bytes of JSON")
    return value


Metadata = Annotated[dict[str, Any] | None, AfterValidator(_check_metadata)]


class _Request(BaseModel):
    # Strict: no silent coercion ("5" is not 5, true is not 1, 5.0 is not an integer),
    # and an unknown field is an error rather than an ignored option.
    model_config = ConfigDict(extra="forbid", strict=True)


# -- assets ----------------------------------------------------------------------------


class AssetCreate(_Request):
    code: AssetCode
    scale: int = Field(ge=0, le=18, description="Decimal places of the minor unit (USD 2, SOL 9).")
    kind: Annotated[str, _text(16, 1)] = "token"
    name: Annotated[str, _text(100)] = ""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"code": "GPUH", "scale": 6, "kind": "token", "name": "GPU hour credit"}]})


class AssetOut(BaseModel):
    code: str
    scale: int
    kind: str
    name: str
    created_at: str

    @classmethod
    def of(cls, row: AssetRow) -> AssetOut:
        return cls(code=row.code, scale=row.scale, kind=row.kind, name=row.name,
                   created_at=to_rfc3339(row.created_at))


class AssetList(BaseModel):
    data: list[AssetOut]


# -- accounts --------------------------------------------------------------------------


class AccountCreate(_Request):
    id: ClientAccountId | None = Field(default=None, description="Optional client id; re-creating it with the same fields "
                                            "returns the existing account (200).")
    asset: AssetCode
    kind: Annotated[str, _text(40, 1)]
    owner_type: Annotated[str, _text(40)] | None = None
    owner_id: Annotated[str, _text(128)] | None = None
    flags: list[AccountFlagName] = Field(default_factory=list)
    metadata: Metadata = None

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"id": "wallet_alice_usd", "asset": "USD", "kind": "customer_wallet", "owner_type": "customer",
         "owner_id": "alice", "flags": ["debits_must_not_exceed_credits"]}]})

    def flag_bits(self) -> int:
        bits = 0
        for name in self.flags:
            bits |= ACCOUNT_FLAG_NAMES[name]
        return bits


class Balances(BaseModel):
    debits_pending: str
    debits_posted: str
    credits_pending: str
    credits_posted: str
    balance: str = Field(description="credits_posted - debits_posted (credit-normal).")
    available: str = Field(description="balance - debits_pending: what can still be spent.")


class AccountOut(BaseModel):
    id: str
    asset: str
    kind: str
    owner_type: str | None
    owner_id: str | None
    flags: list[AccountFlagName]
    balances: Balances
    created_at: str
    metadata: dict[str, Any] | None

    @classmethod
    def of(cls, row: AccountRow, asset: Asset) -> AccountOut:
        s = asset.scale
        balance = row.credits_posted - row.debits_posted
        return cls(
            id=row.id, asset=row.asset, kind=row.kind, owner_type=row.owner_type, owner_id=row.owner_id,
            flags=flag_names(row.flags, ACCOUNT_FLAG_NAMES),  # type: ignore[arg-type]
            balances=Balances(
                debits_pending=format_amount(row.debits_pending, s),
                debits_posted=format_amount(row.debits_posted, s),
                credits_pending=format_amount(row.credits_pending, s),
                credits_posted=format_amount(row.credits_posted, s),
                balance=format_amount(balance, s),
                available=format_amount(balance - row.debits_pending, s),
            ),
            created_at=to_rfc3339(row.created_at), metadata=row.metadata_,
        )


class AccountPage(BaseModel):
    data: list[AccountOut]
    next_cursor: str | None


# -- transfers -------------------------------------------------------------------------


class TransferCreate(_Request):
    id: ClientTransferId = Field(description="Client-chosen and unique per tenant: it is the transfer's "
                                             "idempotency key (resubmitting it returns `exists`).")
    debit_account_id: Id | None = None
    credit_account_id: Id | None = None
    amount: AmountIn | None = Field(default=None, description="Omit on post_pending to post the full hold.")
    asset: AssetCode | None = Field(default=None, description="Required with `amount`.")
    pending_id: ClientTransferId | None = None
    flags: list[TransferFlagName] = Field(default_factory=list)
    timeout_s: int = Field(default=0, ge=0, le=2**31 - 1, description="Pending transfers only: the hold "
                                                               "expires after this many seconds (0 = never).")
    code: Annotated[str, _text(64)] = Field(default="", description="A reason code of your own.")
    reference: Annotated[str, _text(128)] | None = None
    metadata: Metadata = None

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"id": "tr_7f3a", "debit_account_id": "wallet_alice_usd", "credit_account_id": "escrow_usd",
         "amount": "12.50", "asset": "USD", "flags": ["pending"], "timeout_s": 3600,
         "reference": "rental_42"}]})

    @model_validator(mode="after")
    def _amount_needs_asset(self) -> TransferCreate:
        if self.amount is not None and self.asset is None:
            raise ValueError("`asset` is required with `amount` (it fixes the amount's scale)")
        return self

    def to_transfer_in(self, asset: Asset | None) -> TransferIn:
        """Minor units via the asset's scale; raises the `money` errors on a bad amount."""
        flags = 0
        for name in self.flags:
            flags |= TRANSFER_FLAG_NAMES[name]
        amount = None
        if self.amount is not None:
            assert asset is not None
            amount = parse_amount(self.amount, asset.scale)
        return TransferIn(
            id=self.id, debit_account_id=self.debit_account_id, credit_account_id=self.credit_account_id,
            amount=amount, asset=self.asset, pending_id=self.pending_id, flags=flags,
            timeout_s=self.timeout_s, code=self.code, reference=self.reference, metadata=self.metadata,
        )


# -- the plain single transfer, checked without the model ---------------------------------
_PLAIN_FIELDS = frozenset({"id", "debit_account_id", "credit_account_id", "amount", "asset"})
_ID_CHARS = re.compile(ID_PATTERN[1:-1])  # fullmatch: no "$"-before-newline leniency
_ASSET_CHARS = re.compile(ASSET_PATTERN[1:-1])  # its length bound included


def _plain_id(value: Any, max_length: int) -> bool:
    return type(value) is str and len(value) <= max_length and _ID_CHARS.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class PlainTransfer:
    """A validated plain transfer: an id, two accounts, an amount as a decimal string and its
    asset — no flags, hold, code, reference or metadata. What `TransferCreate` would hold for
    the same body (a property test keeps the two in agreement)."""

    id: str
    debit_account_id: str
    credit_account_id: str
    amount: str
    asset: str

    @staticmethod
    def of(data: Any) -> PlainTransfer | None:
        """The body as a `PlainTransfer` if it is exactly the five plain fields and each holds
        what the model's own rules accept; None for anything else (the model then decides).

        Why: nearly every single transfer looks like this, and `TransferCreate.model_validate`
        plus `to_transfer_in` were about a fifth of the app's own event-loop work on it (~10 of
        ~45 µs; this check and conversion cost ~4). A body this declines is validated by the
        model as before, so every error keeps its answer."""
        if type(data) is not dict or len(data) != 5 or not data.keys() <= _PLAIN_FIELDS:
            return None
        tid, debit, credit = data["id"], data["debit_account_id"], data["credit_account_id"]
        amount, asset = data["amount"], data["asset"]
        if not (_plain_id(tid, TRANSFER_ID_MAX) and _plain_id(debit, ID_MAX) and _plain_id(credit, ID_MAX)):
            return None
        if tid.startswith(RESERVED_TRANSFER_PREFIXES):
            return None
        # An amount only as ASCII text: a JSON number (Decimal) or any other text goes to the model.
        if type(amount) is not str or not amount.isascii():
            return None
        if type(asset) is not str or _ASSET_CHARS.fullmatch(asset) is None:
            return None
        return PlainTransfer(tid, debit, credit, amount, asset)

    def to_transfer_in(self, asset: Asset | None) -> TransferIn:
        """As `TransferCreate.to_transfer_in`: minor units via the asset's scale."""
        assert asset is not None
        return TransferIn(self.id, self.debit_account_id, self.credit_account_id,
                          parse_amount(self.amount, asset.scale), self.asset)


class TransferBatch(_Request):
    """Up to `max_batch` transfers; each is validated and answered on its own."""

    # Items stay raw here so that one malformed transfer fails alone (see the route).
    transfers: Annotated[
        list[Any],
        WithJsonSchema({"type": "array", "minItems": 1, "items": TransferCreate.model_json_schema()}),
    ] = Field(min_length=1)


class TransferOut(BaseModel):
    id: str
    debit_account_id: str
    credit_account_id: str
    amount: str
    asset: str
    pending_id: str | None
    flags: list[TransferFlagName]
    timeout_s: int
    code: str
    reference: str | None
    metadata: dict[str, Any] | None
    timestamp: str
    seq: int
    hash: str

    @classmethod
    def of(cls, t: StoredTransfer | Any, asset: Asset) -> TransferOut:
        """From a `StoredTransfer` (posting result) or a `Transfer` row — both already valid,
        so the model is built without validation (a visible share of a hot transfer answer)."""
        meta = t.metadata if isinstance(t, StoredTransfer) else t.metadata_
        return cls.model_construct(
            id=t.id, debit_account_id=t.debit_account_id, credit_account_id=t.credit_account_id,
            amount=format_amount(t.amount, asset.scale), asset=t.asset, pending_id=t.pending_id,
            flags=flag_names(t.flags, TRANSFER_FLAG_NAMES),  # type: ignore[arg-type]
            timeout_s=t.timeout_s, code=t.code, reference=t.reference, metadata=meta,
            timestamp=to_rfc3339(t.timestamp), seq=t.seq, hash=t.hash,
        )


_json_str = json.encoder.encode_basestring  # type: ignore[attr-defined]  # the C escaper, as pydantic escapes
_json_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _opt_str(value: str | None) -> str:
    return "null" if value is None else _json_str(value)


def transfer_json(t: StoredTransfer, asset: Asset) -> bytes:
    """`TransferOut.of(t, asset).model_dump_json()`, byte for byte, written directly.

    The answer to a single posted transfer is the hottest JSON the ledger writes; building
    the model and serialising it was a tenth of that request's event-loop time. Same
    fields, order and escaping as the model — a property test holds the two equal."""
    flags = ",".join(map(_json_str, flag_names(t.flags, TRANSFER_FLAG_NAMES))) if t.flags else ""
    meta = "null" if t.metadata is None else _json_compact(t.metadata)
    return (
        f'{{"id":{_json_str(t.id)},"debit_account_id":{_json_str(t.debit_account_id)},'
        f'"credit_account_id":{_json_str(t.credit_account_id)},'
        f'"amount":"{format_amount(t.amount, asset.scale)}","asset":{_json_str(t.asset)},'
        f'"pending_id":{_opt_str(t.pending_id)},"flags":[{flags}],"timeout_s":{t.timeout_s},'
        f'"code":{_json_str(t.code)},"reference":{_opt_str(t.reference)},"metadata":{meta},'
        f'"timestamp":"{to_rfc3339(t.timestamp)}","seq":{t.seq},"hash":{_json_str(t.hash)}}}'
    ).encode()


def _none(value: Any) -> bool:
    return value is None


class TransferResultOut(BaseModel):
    index: int
    id: str | None
    result: str = Field(description="`ok` and `exists` succeeded; any other code was not applied.")
    transfer: TransferOut | None = Field(default=None, exclude_if=_none)
    detail: str | None = Field(default=None, exclude_if=_none)
    errors: list[dict[str, Any]] | None = Field(default=None, exclude_if=_none)


class TransferBatchResult(BaseModel):
    results: list[TransferResultOut]


class TransferPage(BaseModel):
    data: list[TransferOut]
    next_cursor: str | None


# -- holds -----------------------------------------------------------------------------


class HoldOut(BaseModel):
    transfer_id: str
    debit_account_id: str
    credit_account_id: str
    amount: str
    asset: str
    state: Literal["pending", "posted", "voided", "expired"]
    created_at: str
    expires_at: str | None
    resolved_by: str | None
    resolved_at: str | None
    posted_amount: str | None

    @classmethod
    def of(cls, row: HoldRow, asset: Asset) -> HoldOut:
        s = asset.scale
        return cls(
            transfer_id=row.transfer_id, debit_account_id=row.debit_account_id,
            credit_account_id=row.credit_account_id, amount=format_amount(row.amount, s), asset=row.asset,
            state=row.state,  # type: ignore[arg-type]
            created_at=to_rfc3339(row.created_at),
            expires_at=None if row.expires_at is None else to_rfc3339(row.expires_at),
            resolved_by=row.resolved_by,
            resolved_at=None if row.resolved_at is None else to_rfc3339(row.resolved_at),
            posted_amount=None if row.posted_amount is None else format_amount(row.posted_amount, s),
        )


class HoldPage(BaseModel):
    data: list[HoldOut]
    next_cursor: str | None


# -- blocks ----------------------------------------------------------------------------


class BlockOut(BaseModel):
    tenant_id: str
    height: int
    first_seq: int
    last_seq: int
    transfer_count: int
    merkle_root: str
    prev_block_hash: str
    last_transfer_hash: str
    block_hash: str
    timestamp: str
    timestamp_ns: int = Field(description="The exact header value `block_hash` covers.")
    signature: str
    public_key: str

    @classmethod
    def of(cls, row: BlockRow) -> BlockOut:
        return cls(
            tenant_id=row.tenant_id, height=row.height, first_seq=row.first_seq, last_seq=row.last_seq,
            transfer_count=row.transfer_count, merkle_root=row.merkle_root,
            prev_block_hash=row.prev_block_hash, last_transfer_hash=row.last_transfer_hash,
            block_hash=row.block_hash, timestamp=to_rfc3339(row.timestamp), timestamp_ns=row.timestamp,
            signature=row.signature, public_key=row.public_key,
        )


class ProofStep(BaseModel):
    side: Literal["left", "right"]
    hash: str


class TransferProof(BaseModel):
    transfer_id: str
    transfer_hash: str
    block_height: int
    leaf_index: int
    merkle_root: str
    proof: list[ProofStep]
    block: BlockOut

    @classmethod
    def of(cls, proof: dict[str, Any]) -> TransferProof:
        return cls(**{**proof, "block": BlockOut.of(proof["block"])})
