"""Wallets: one per owner and asset, on top of the ledger.

`/v1/wallets/{owner_type}/{owner_id}/{asset}` names a wallet: prepaid contracts
fund `wallet/<address>`, pay-as-you-go sessions draw on `user/<id>`. Staff keys
see every wallet; any other key only wallets whose `owner_id` is its principal
id (another's answers 404).
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from sqlalchemy.orm import Session

from meterline.api.body import Parsed, json_body, openapi_body
from meterline.api.deps import ReadSession, RuntimeDep, WriteSession
from meterline.api.idempotency import HEADER, IdempotentRequest, in_transaction, json_response
from meterline.api.v1.common import (
    Cursor,
    LedgerRead,
    LedgerWrite,
    Limit,
    decode_seq_cursor,
    encode_cursor,
    errors,
)
from meterline.api.v1.principals import owns
from meterline.api.v1.wallet_schemas import (
    BalanceOut,
    DepositCreate,
    DepositOut,
    WalletEntryOut,
    WalletEntryPage,
    WithdrawalCreate,
    WithdrawalOut,
)
from meterline.errors import MeterlineError
from meterline.identity.service import Principal
from meterline.ledger.schemas import ASSET_PATTERN, ID_PATTERN
from meterline.ledger.service import ledger_service
from meterline.money import parse_amount
from meterline.wallets.service import WalletNotFound, owned_account_id, wallet_service

router = APIRouter(prefix="/wallets/{owner_type}/{owner_id}/{asset}", tags=["wallets"])

OwnerTypePath = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$",
                                    description="`wallet` (prepaid), `user` (pay-as-you-go), `customer`, …")]
OwnerIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN)]
AssetPath = Annotated[str, Path(pattern=ASSET_PATTERN)]

_MONEY_ERRORS = "`validation_error`, `invalid_amount`, `amount_precision`, `amount_not_positive`, " \
                "`amount_overflow`, `unknown_rail`, `rail_disabled`, `invalid_idempotency_key`"


class IdempotencyKeyRequired(MeterlineError):
    status = 422
    code = "idempotency_key_required"
    title = "This request needs an Idempotency-Key header"


def _visible(principal: Principal, owner_type: str, owner_id: str, asset: str) -> None:
    if not owns(principal, owner_id):
        raise WalletNotFound(f"{owner_type} {owner_id} has no {asset} wallet")


def _balance(session: Session, tenant: str, owner_type: str, owner_id: str, asset: str) -> BalanceOut:
    b = wallet_service.balance(session, tenant, owner_type, owner_id, asset)
    return BalanceOut.of(owner_type, owner_id, owned_account_id("wal", owner_type, owner_id, asset), b)


@router.get("", response_model=BalanceOut, summary="Get a wallet's balance",
            responses=errors({404: "`asset_not_found`, `wallet_not_found` (not yours)",
                              422: "`validation_error`, `invalid_wallet_owner`"}))
def get_wallet(owner_type: OwnerTypePath, owner_id: OwnerIdPath, asset: AssetPath, principal: LedgerRead,
               session: ReadSession) -> BalanceOut:
    """Posted, pending (held) and available balance. A wallet nobody has paid into yet
    reads as zero."""
    _visible(principal, owner_type, owner_id, asset)
    return _balance(session, principal.tenant_id, owner_type, owner_id, asset)


@router.post(
    "/deposits", status_code=201, response_model=DepositOut, summary="Deposit through a rail",
    openapi_extra=openapi_body(DepositCreate),
    responses=errors({
        404: "`asset_not_found`, `wallet_not_found` (not yours)",
        409: "`payment_proof_reused`: this proof already credited a wallet; `idempotency_conflict`",
        413: "`payload_too_large`",
        422: f"{_MONEY_ERRORS}, `invalid_payment_proof`, `payment_amount_mismatch`, `invalid_wallet_owner`",
    }),
)
def deposit(
    owner_type: OwnerTypePath,
    owner_id: OwnerIdPath,
    asset: AssetPath,
    request: Request,
    principal: LedgerWrite,
    body: Annotated[Parsed[DepositCreate], Depends(json_body(DepositCreate))],
    session: WriteSession,
    runtime: RuntimeDep,
) -> Response:
    """Credit the wallet from a payment the rail verifies. A proof credits once, ever: sending
    it again is 409 `payment_proof_reused` (with the same `Idempotency-Key`, the first
    response is replayed instead). The simulation rail accepts any claimed payment and
    labels it `simulated`."""
    _visible(principal, owner_type, owner_id, asset)
    tenant = principal.tenant_id
    data = body.value
    now = runtime.clock.now_ns()

    def work() -> Response:
        scale = ledger_service.get_asset(session, tenant, asset).scale
        done = wallet_service.deposit(
            session, tenant, owner_type=owner_type, owner_id=owner_id, asset=asset,
            amount_minor=parse_amount(data.amount, scale), rail=data.rail or "simulation", proof=data.proof,
            clock=runtime.clock,
        )
        balance = _balance(session, tenant, owner_type, owner_id, asset)
        return json_response(DepositOut.of(done, scale, balance), 201)

    return in_transaction(request, tenant, body.raw, session, now, work)


_SAFE_ID = re.compile(r"[!-.0-~]{1,64}")


def withdrawal_id(key: str) -> str:
    """The service's withdrawal id for an Idempotency-Key: the key itself when it is a plain
    id, else a digest (the id becomes ledger transfer ids, which allow no spaces or '/')."""
    if _SAFE_ID.fullmatch(key):
        return key
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:63]


@router.post(
    "/withdrawals", status_code=201, response_model=WithdrawalOut, summary="Withdraw through a rail",
    openapi_extra={**openapi_body(WithdrawalCreate), "parameters": [
        {"name": HEADER, "in": "header", "required": True, "schema": {"type": "string", "maxLength": 255},
         "description": "Required: the withdrawal's idempotency key."}]},
    responses=errors({
        402: "`insufficient_funds`: the available balance does not cover the amount",
        404: "`asset_not_found`, `wallet_not_found` (not yours)",
        409: "`idempotency_conflict`, `withdrawal_not_completed`",
        413: "`payload_too_large`",
        422: f"{_MONEY_ERRORS}, `idempotency_key_required`, `invalid_withdrawal`",
        502: "`rail_send_failed`: nothing was debited",
    }),
)
def withdraw(
    owner_type: OwnerTypePath,
    owner_id: OwnerIdPath,
    asset: AssetPath,
    request: Request,
    principal: LedgerWrite,
    body: Annotated[Parsed[WithdrawalCreate], Depends(json_body(WithdrawalCreate))],
    session: WriteSession,
    runtime: RuntimeDep,
) -> Response:
    """Send funds out of the wallet. **`Idempotency-Key` is required**: a retry with the same
    key and body answers the first result and never debits twice. The wallet is held
    first, then the rail sends, then the hold is posted; if the rail fails, nothing moves."""
    _visible(principal, owner_type, owner_id, asset)
    tenant = principal.tenant_id
    if IdempotentRequest.of(request, tenant, body.raw) is None:
        raise IdempotencyKeyRequired(f"send an {HEADER} header so that a retry can never withdraw twice")
    key = request.headers[HEADER]
    data = body.value
    now = runtime.clock.now_ns()

    def work() -> Response:
        scale = ledger_service.get_asset(session, tenant, asset).scale
        done = wallet_service.withdraw(
            session, tenant, owner_type=owner_type, owner_id=owner_id, asset=asset,
            amount_minor=parse_amount(data.amount, scale), rail=data.rail or "simulation",
            destination=data.destination, clock=runtime.clock, idempotency_id=withdrawal_id(key),
        )
        balance = _balance(session, tenant, owner_type, owner_id, asset)
        return json_response(WithdrawalOut.of(done, scale, balance), 201)

    return in_transaction(request, tenant, body.raw, session, now, work)


@router.get("/transactions", response_model=WalletEntryPage, summary="List a wallet's transactions",
            responses=errors({404: "`asset_not_found`, `wallet_not_found` (not yours)",
                              422: "`validation_error`, `invalid_cursor`, `invalid_wallet_owner`"}))
def list_transactions(
    owner_type: OwnerTypePath,
    owner_id: OwnerIdPath,
    asset: AssetPath,
    principal: LedgerRead,
    session: ReadSession,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> WalletEntryPage:
    """The wallet's ledger transfers, oldest first: deposits, rental holds and their
    settlement, refunds, withdrawals. Amounts are signed from the wallet's side."""
    _visible(principal, owner_type, owner_id, asset)
    tenant = principal.tenant_id
    scale = ledger_service.get_asset(session, tenant, asset).scale
    page = wallet_service.history(session, tenant, owner_type, owner_id, asset,
                                  after_seq=decode_seq_cursor(cursor), limit=limit)
    return WalletEntryPage(data=[WalletEntryOut.of(e, scale) for e in page.items],
                           next_cursor=encode_cursor(page.next_cursor))
