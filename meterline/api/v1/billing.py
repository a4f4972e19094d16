"""Subscriptions and invoices (/v1/subscriptions, /v1/invoices): BrinkByte's monthly bill.

    draft ──finalize──► open ──pay (from the wallet)──► paid
      └──────void───────┴──void──► void

Reads need `billing:read`, changes `billing:write`. Staff keys (admin, operator)
manage every subscription of the tenant; any other key sees only the
subscriptions and invoices whose `customer_id` is its principal id, and may pay
those — another's answers 404, like a missing one. POSTs that create lines or
move money accept `Idempotency-Key`. `GET /v1/invoices/{id}.html` is the
printable page.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from meterline.api.body import Parsed, json_body, openapi_body
from meterline.api.deps import ReadSession, RuntimeDep, WriteSession, require
from meterline.api.idempotency import in_transaction, json_response
from meterline.api.problems import from_error
from meterline.api.v1.billing_schemas import (
    BILLING_ID_PATTERN,
    CUSTOMER_ID_PATTERN,
    InvoiceOut,
    InvoicePage,
    InvoiceStatus,
    ItemAdd,
    ItemCreate,
    ItemOut,
    ItemUpdate,
    LineOut,
    ProrationBehavior,
    SubscriptionChangeOut,
    SubscriptionCreate,
    SubscriptionOut,
    SubscriptionPage,
    SubscriptionStatus,
)
from meterline.api.v1.common import Cursor, Limit, decode_cursor, encode_cursor, errors
from meterline.api.v1.principals import is_staff, list_filter, owns
from meterline.billing.html import render_invoice
from meterline.billing.invoices import InvoiceDocument, InvoiceNotFound, invoice_service
from meterline.billing.models import Invoice, Subscription
from meterline.billing.service import Change, ItemSpec, SubscriptionNotFound, billing_service
from meterline.errors import Forbidden
from meterline.identity.service import Principal, TenantNotFound, identity_service
from meterline.ledger.service import ledger_service
from meterline.money import parse_amount

router = APIRouter(tags=["billing"])

BillingRead = Annotated[Principal, Depends(require("billing:read"))]
BillingWrite = Annotated[Principal, Depends(require("billing:write"))]
SubscriptionIdPath = Annotated[str, Path(min_length=1, max_length=40, pattern=BILLING_ID_PATTERN)]
ItemIdPath = Annotated[str, Path(min_length=1, max_length=40, pattern=BILLING_ID_PATTERN)]
# No '.' in an invoice id, so `/invoices/{id}.html` is never read as an id.
InvoiceIdPath = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_]+$")]
CustomerFilter = Annotated[str | None, Query(min_length=1, max_length=128, pattern=CUSTOMER_ID_PATTERN)]

_SUB_404 = "`subscription_not_found` (also another tenant's or customer's)"
_INV_404 = "`invoice_not_found` (also another tenant's or customer's)"
_STAFF_403 = "`forbidden`: the key lacks the scope, or is not a staff key"
_CHANGE = {403: _STAFF_403, 404: f"{_SUB_404}, `subscription_item_not_found`, `plan_not_found`, "
                                 "`growth_pack_not_found`",
           409: "`subscription_canceled`, `duplicate_subscription_item`, `idempotency_conflict`",
           422: "`validation_error`, `invalid_billing_request`, `amount_precision`, `amount_overflow`, "
                "`invalid_idempotency_key`"}
_TRANSITION = {403: _STAFF_403, 404: _INV_404, 409: "`invalid_invoice_state`, `idempotency_conflict`",
               422: "`validation_error`, `invalid_idempotency_key`"}


def _require_staff(principal: Principal) -> None:
    if not is_staff(principal):
        raise Forbidden("only an operator or admin key manages subscriptions and invoices")


def _subscription(session: Session, principal: Principal, subscription_id: str) -> Subscription:
    sub = billing_service.get_subscription(session, principal.tenant_id, subscription_id)
    if not owns(principal, sub.customer_id):
        raise SubscriptionNotFound(f"subscription {subscription_id} does not exist")
    return sub


def _invoice(session: Session, principal: Principal, invoice_id: str) -> Invoice:
    inv = invoice_service.get(session, principal.tenant_id, invoice_id)
    if not owns(principal, inv.customer_id):
        raise InvoiceNotFound(f"invoice {invoice_id} does not exist")
    return inv


def _scale(session: Session, tenant_id: str, currency: str) -> int:
    return ledger_service.get_asset(session, tenant_id, currency).scale


def _sub_out(session: Session, sub: Subscription) -> SubscriptionOut:
    items = billing_service.items(session, sub.tenant_id, sub.id)
    return SubscriptionOut.of(sub, items, _scale(session, sub.tenant_id, sub.currency))


def _change_out(session: Session, change: Change) -> SubscriptionChangeOut:
    sub = change.subscription
    scale = _scale(session, sub.tenant_id, sub.currency)
    return SubscriptionChangeOut(subscription=_sub_out(session, sub), item=ItemOut.of(change.item, scale),
                                 prorations=[LineOut.of(ln, scale) for ln in change.prorations])


def _invoice_out(session: Session, doc: InvoiceDocument) -> InvoiceOut:
    return InvoiceOut.of(doc, _scale(session, doc.invoice.tenant_id, doc.invoice.currency))


def _spec(item: ItemCreate, scale: int) -> ItemSpec:
    price = None if item.unit_price is None else parse_amount(item.unit_price, scale, allow_zero=True)
    return ItemSpec(plan_id=item.plan_id, pack_id=item.pack_id, name=item.name, basis=item.basis,
                    unit_price_minor=price, quantity=item.quantity)


# -- subscriptions --------------------------------------------------------------------------
@router.post("/subscriptions", status_code=201, response_model=SubscriptionOut, summary="Create a subscription",
             openapi_extra=openapi_body(SubscriptionCreate),
             responses=errors({**_CHANGE, 404: "`asset_not_found`, `plan_not_found`, `growth_pack_not_found`",
                               409: "`duplicate_subscription_item`, `idempotency_conflict`"}))
def create_subscription(request: Request, principal: BillingWrite,
                        body: Annotated[Parsed[SubscriptionCreate], Depends(json_body(SubscriptionCreate))],
                        session: WriteSession, runtime: RuntimeDep) -> Response:
    """Start billing a customer now: the first period runs one calendar month from this
    second. Catalogue items (`plan_id`, `pack_id`) take the licensing catalogue's price;
    a camera/device quantity left out is the licensee's allowance."""
    _require_staff(principal)
    tenant, data = principal.tenant_id, body.value
    now = runtime.clock.now_ns()

    def work() -> Response:
        scale = _scale(session, tenant, data.currency)
        sub = billing_service.create_subscription(
            session, tenant, customer_id=data.customer_id, customer_type=data.customer_type,
            currency=data.currency, items=[_spec(i, scale) for i in data.items], now_ns=now)
        return json_response(_sub_out(session, sub), 201)

    return in_transaction(request, tenant, body.raw, session, now, work)


@router.get("/subscriptions", response_model=SubscriptionPage, summary="List subscriptions",
            responses=errors({422: "`validation_error`, `invalid_cursor`"}))
def list_subscriptions(principal: BillingRead, session: ReadSession, customer_id: CustomerFilter = None,
                       status: Annotated[SubscriptionStatus | None, Query()] = None, limit: Limit = 100,
                       cursor: Cursor = None) -> SubscriptionPage:
    """In id (creation) order, filtered by `customer_id` and `status`."""
    customer_id, visible = list_filter(principal, customer_id)
    if not visible:
        return SubscriptionPage(data=[], next_cursor=None)
    page = billing_service.list_subscriptions(session, principal.tenant_id, customer_id=customer_id,
                                              status=status, after=decode_cursor(cursor), limit=limit)
    return SubscriptionPage(data=[_sub_out(session, s) for s in page.items],
                            next_cursor=encode_cursor(page.next_cursor))


@router.get("/subscriptions/{subscription_id}", response_model=SubscriptionOut, summary="Get a subscription",
            responses=errors({404: _SUB_404, 422: "`validation_error`"}))
def get_subscription(subscription_id: SubscriptionIdPath, principal: BillingRead,
                     session: ReadSession) -> SubscriptionOut:
    return _sub_out(session, _subscription(session, principal, subscription_id))


@router.post("/subscriptions/{subscription_id}/cancel", response_model=SubscriptionOut,
             summary="Cancel at the end of the current period", responses=errors(_CHANGE))
def cancel_subscription(subscription_id: SubscriptionIdPath, request: Request, principal: BillingWrite,
                        session: WriteSession, runtime: RuntimeDep) -> Response:
    """The current period is still invoiced in full when it ends; then billing stops. Again is a no-op."""
    sub = _subscription(session, principal, subscription_id)
    _require_staff(principal)

    def work() -> Response:
        done = billing_service.cancel(session, sub.tenant_id, sub.id, runtime.clock)
        return json_response(_sub_out(session, done), 200)

    return in_transaction(request, sub.tenant_id, b"", session, runtime.clock.now_ns(), work)


# -- items ------------------------------------------------------------------------------------
@router.post("/subscriptions/{subscription_id}/items", status_code=201, response_model=SubscriptionChangeOut,
             summary="Add an item (prorated)", openapi_extra=openapi_body(ItemAdd), responses=errors(_CHANGE))
def add_item(subscription_id: SubscriptionIdPath, request: Request, principal: BillingWrite,
             body: Annotated[Parsed[ItemAdd], Depends(json_body(ItemAdd))], session: WriteSession,
             runtime: RuntimeDep) -> Response:
    """Enable a pack or add a plan mid-period: a proration line charges it for the rest of the
    current period (to the second); the next period bills it in full."""
    sub = _subscription(session, principal, subscription_id)
    _require_staff(principal)
    data = body.value

    def work() -> Response:
        change = billing_service.add_item(session, sub.tenant_id, sub.id,
                                          _spec(data, _scale(session, sub.tenant_id, sub.currency)),
                                          runtime.clock, prorate=data.proration_behavior == "create_prorations")
        return json_response(_change_out(session, change), 201)

    return in_transaction(request, sub.tenant_id, body.raw, session, runtime.clock.now_ns(), work)


@router.patch("/subscriptions/{subscription_id}/items/{item_id}", response_model=SubscriptionChangeOut,
              summary="Change an item's quantity (prorated)", openapi_extra=openapi_body(ItemUpdate),
              responses=errors(_CHANGE))
def update_item(subscription_id: SubscriptionIdPath, item_id: ItemIdPath, request: Request,
                principal: BillingWrite, body: Annotated[Parsed[ItemUpdate], Depends(json_body(ItemUpdate))],
                session: WriteSession, runtime: RuntimeDep) -> Response:
    """Cameras added or removed: credits the old quantity and charges the new one for the rest of
    the current period, by the second."""
    sub = _subscription(session, principal, subscription_id)
    _require_staff(principal)
    data = body.value

    def work() -> Response:
        change = billing_service.update_item(session, sub.tenant_id, sub.id, item_id, quantity=data.quantity,
                                             clock=runtime.clock,
                                             prorate=data.proration_behavior == "create_prorations")
        return json_response(_change_out(session, change), 200)

    return in_transaction(request, sub.tenant_id, body.raw, session, runtime.clock.now_ns(), work)


@router.delete("/subscriptions/{subscription_id}/items/{item_id}", response_model=SubscriptionChangeOut,
               summary="Remove an item (prorated)", responses=errors(_CHANGE))
def remove_item(subscription_id: SubscriptionIdPath, item_id: ItemIdPath, request: Request,
                principal: BillingWrite, session: WriteSession, runtime: RuntimeDep,
                proration_behavior: Annotated[ProrationBehavior, Query()] = "create_prorations") -> Response:
    """Credits the rest of the current period; the item is not billed for later periods."""
    sub = _subscription(session, principal, subscription_id)
    _require_staff(principal)

    def work() -> Response:
        change = billing_service.remove_item(session, sub.tenant_id, sub.id, item_id, runtime.clock,
                                             prorate=proration_behavior == "create_prorations")
        return json_response(_change_out(session, change), 200)

    # The query is the request here: hash it, so one key can't stand for both behaviours.
    return in_transaction(request, sub.tenant_id, request.url.query.encode(), session, runtime.clock.now_ns(),
                          work)


# -- invoices of a subscription ----------------------------------------------------------------
@router.get("/subscriptions/{subscription_id}/upcoming-invoice", response_model=InvoiceOut,
            summary="Preview the next invoice", responses=errors({404: _SUB_404, 409: "`subscription_canceled`",
                                                                  422: "`validation_error`"}))
def upcoming_invoice(subscription_id: SubscriptionIdPath, principal: BillingRead, session: ReadSession,
                     runtime: RuntimeDep) -> InvoiceOut:
    """What the subscription's next invoice holds if nothing else changes (status `upcoming`,
    no id, nothing saved): the current period's charges and the prorations so far — or, once
    the current period is invoiced, the next period's."""
    sub = _subscription(session, principal, subscription_id)
    return _invoice_out(session, billing_service.preview(session, sub.tenant_id, sub.id, runtime.clock.now_ns()))


@router.post("/subscriptions/{subscription_id}/invoices", status_code=201, response_model=InvoiceOut,
             summary="Invoice the current period now (draft)",
             responses=errors({403: _STAFF_403, 404: _SUB_404,
                               409: "`invoice_exists` (with `invoice_id`), `subscription_canceled`, "
                                    "`idempotency_conflict`",
                               422: "`invalid_idempotency_key`, `amount_overflow`"}))
def create_invoice(subscription_id: SubscriptionIdPath, request: Request, principal: BillingWrite,
                   session: WriteSession, runtime: RuntimeDep) -> Response:
    """A draft invoice for the current period — its recurring charges at the quantities it began
    with, plus every pending proration — without waiting for the period to end. One invoice per
    period: a second call is 409 `invoice_exists`. Later changes go to the next invoice."""
    sub = _subscription(session, principal, subscription_id)
    _require_staff(principal)

    def work() -> Response:
        doc = billing_service.create_invoice(session, sub.tenant_id, sub.id, runtime.clock)
        return json_response(_invoice_out(session, doc), 201)

    return in_transaction(request, sub.tenant_id, b"", session, runtime.clock.now_ns(), work)


# -- invoices -----------------------------------------------------------------------------------
@router.get("/invoices", response_model=InvoicePage, summary="List invoices",
            responses=errors({422: "`validation_error`, `invalid_cursor`"}))
def list_invoices(principal: BillingRead, session: ReadSession,
                  subscription_id: Annotated[str | None, Query(max_length=40, pattern=BILLING_ID_PATTERN)] = None,
                  customer_id: CustomerFilter = None, status: Annotated[InvoiceStatus | None, Query()] = None,
                  limit: Limit = 100, cursor: Cursor = None) -> InvoicePage:
    """In id (creation) order, with their lines, filtered by subscription, customer and status."""
    customer_id, visible = list_filter(principal, customer_id)
    if not visible:
        return InvoicePage(data=[], next_cursor=None)
    tenant = principal.tenant_id
    page = invoice_service.list_invoices(session, tenant, subscription_id=subscription_id,
                                         customer_id=customer_id, status=status, after=decode_cursor(cursor),
                                         limit=limit)
    rows: list[Invoice] = page.items
    lines = invoice_service.lines_for(session, tenant, [i.id for i in rows])
    return InvoicePage(data=[_invoice_out(session, InvoiceDocument(i, lines[i.id])) for i in rows],
                       next_cursor=encode_cursor(page.next_cursor))


# Declared before `/invoices/{invoice_id}`: both would match "in_….html".
@router.get("/invoices/{invoice_id}.html", response_class=HTMLResponse, summary="The printable invoice",
            responses=errors({404: _INV_404, 422: "`validation_error`"}))
def invoice_html(invoice_id: InvoiceIdPath, principal: BillingRead, session: ReadSession) -> HTMLResponse:
    """A self-contained HTML page (no scripts, inline print styles) — print it, or "Save as PDF"."""
    inv = _invoice(session, principal, invoice_id)
    try:
        seller = identity_service.get_tenant(session, inv.tenant_id).name or inv.tenant_id
    except TenantNotFound:
        seller = inv.tenant_id
    page = render_invoice(invoice_service.document(session, inv), seller=seller,
                          scale=_scale(session, inv.tenant_id, inv.currency))
    return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                                       "X-Content-Type-Options": "nosniff"})


@router.get("/invoices/{invoice_id}", response_model=InvoiceOut, summary="Get an invoice",
            responses=errors({404: _INV_404, 422: "`validation_error`"}))
def get_invoice(invoice_id: InvoiceIdPath, principal: BillingRead, session: ReadSession) -> InvoiceOut:
    return _invoice_out(session, invoice_service.document(session, _invoice(session, principal, invoice_id)))


@router.post("/invoices/{invoice_id}/finalize", response_model=InvoiceOut, summary="Finalize a draft",
             responses=errors(_TRANSITION))
def finalize_invoice(invoice_id: InvoiceIdPath, request: Request, principal: BillingWrite, session: WriteSession,
                     runtime: RuntimeDep) -> Response:
    """Draft → open: assigns the next number (INV-000001, gapless per tenant) and makes it due; the
    worker then collects it from the wallet. A zero total is paid on the spot."""
    inv = _invoice(session, principal, invoice_id)
    _require_staff(principal)

    def work() -> Response:
        done = invoice_service.finalize(session, inv.tenant_id, inv.id, runtime.clock.now_ns())
        return json_response(_invoice_out(session, invoice_service.document(session, done)), 200)

    return in_transaction(request, inv.tenant_id, b"", session, runtime.clock.now_ns(), work)


@router.post("/invoices/{invoice_id}/pay", response_model=InvoiceOut, summary="Pay from the customer's wallet",
             responses=errors({402: "`insufficient_funds`: the wallet does not cover the amount due; nothing was "
                                    "paid and the invoice stays open (`last_payment_error` says why)",
                               403: "`forbidden`", 404: _INV_404,
                               409: "`invalid_invoice_state` (draft, paid or void), `idempotency_conflict`",
                               422: "`validation_error`, `invalid_idempotency_key`"}))
def pay_invoice(invoice_id: InvoiceIdPath, request: Request, principal: BillingWrite, session: WriteSession,
                runtime: RuntimeDep) -> Response:
    """Open → paid: one ledger transfer of the amount due from the customer's wallet
    (`/v1/wallets/{customer_type}/{customer_id}/{currency}`) to platform revenue — in full or
    not at all. The customer's own key may pay its invoices."""
    inv = _invoice(session, principal, invoice_id)

    def work() -> Response:
        outcome = invoice_service.pay(session, inv.tenant_id, inv.id, runtime.clock)
        if outcome.error is not None:
            # Returned, not raised: the failed attempt and its reason are committed on the invoice.
            return from_error(outcome.error, request.url.path)
        return json_response(_invoice_out(session, invoice_service.document(session, outcome.invoice)), 200)

    return in_transaction(request, inv.tenant_id, b"", session, runtime.clock.now_ns(), work)


@router.post("/invoices/{invoice_id}/void", response_model=InvoiceOut, summary="Void a draft or open invoice",
             responses=errors(_TRANSITION))
def void_invoice(invoice_id: InvoiceIdPath, request: Request, principal: BillingWrite, session: WriteSession,
                 runtime: RuntimeDep) -> Response:
    """Nothing is owed any more. A paid invoice cannot be voided (409)."""
    inv = _invoice(session, principal, invoice_id)
    _require_staff(principal)

    def work() -> Response:
        done = invoice_service.void(session, inv.tenant_id, inv.id, runtime.clock.now_ns())
        return json_response(_invoice_out(session, invoice_service.document(session, done)), 200)

    return in_transaction(request, inv.tenant_id, b"", session, runtime.clock.now_ns(), work)
