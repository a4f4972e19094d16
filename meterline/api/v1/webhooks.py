"""Webhook endpoints, their deliveries, and the event log: /v1/webhook_endpoints, /v1/events.

Admin keys only: an endpoint receives every matching event of the whole tenant.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from meterline.api.body import Parsed, json_body, openapi_body
from meterline.api.deps import ReadSession, RuntimeDep, WriteSession
from meterline.api.idempotency import in_transaction, json_response
from meterline.api.v1.common import (
    Admin,
    Cursor,
    Limit,
    decode_seq_cursor,
    decode_time_id_cursor,
    encode_cursor,
    errors,
)
from meterline.api.v1.webhook_schemas import (
    DeliveryStatus,
    EventOut,
    EventPage,
    EventType,
    WebhookDeliveryOut,
    WebhookDeliveryPage,
    WebhookEndpointCreate,
    WebhookEndpointList,
    WebhookEndpointOut,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
)
from meterline.events.webhooks import EndpointChange, webhook_service

router = APIRouter(tags=["webhooks"])

_ID = r"^[A-Za-z0-9_]+$"
EndpointIdPath = Annotated[str, Path(min_length=1, max_length=40, pattern=_ID)]
DeliveryIdPath = Annotated[str, Path(min_length=1, max_length=40, pattern=_ID)]
EventIdPath = Annotated[str, Path(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_-]+$")]  # (usage: a contract id)
_NOT_FOUND = {404: "`webhook_endpoint_not_found`", 422: "`validation_error`"}


@router.post(
    "/webhook_endpoints", status_code=201, response_model=WebhookEndpointWithSecret,
    summary="Subscribe a URL to events", openapi_extra=openapi_body(WebhookEndpointCreate),
    responses=errors({
        409: "`too_many_webhook_endpoints`, `idempotency_conflict`",
        413: "`payload_too_large`",
        422: "`validation_error`, `invalid_webhook_endpoint` (not https, unknown event type)",
    }),
)
def create_endpoint(
    request: Request, principal: Admin, session: WriteSession, runtime: RuntimeDep,
    body: Annotated[Parsed[WebhookEndpointCreate], Depends(json_body(WebhookEndpointCreate))],
) -> Response:
    """The answer carries the endpoint's signing secret: verify each delivery's
    `webhook-signature` with it (Standard Webhooks). Accepts `Idempotency-Key`."""
    data, now = body.value, runtime.clock.now_ns()

    def work() -> Response:
        row = webhook_service.create_endpoint(
            session, principal.tenant_id, url=data.url, event_types=data.event_types,
            description=data.description, now_ns=now, allow_http=runtime.settings.webhook_http_allowed)
        return json_response(WebhookEndpointWithSecret.of(row), 201)

    return in_transaction(request, principal.tenant_id, body.raw, session, now, work)


@router.get("/webhook_endpoints", response_model=WebhookEndpointList, summary="List webhook endpoints",
            responses=errors())
def list_endpoints(principal: Admin, session: ReadSession) -> WebhookEndpointList:
    return WebhookEndpointList(data=[WebhookEndpointOut.of(r)
                                     for r in webhook_service.list_endpoints(session, principal.tenant_id)])


@router.get("/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointOut, summary="Get a webhook endpoint",
            responses=errors(_NOT_FOUND))
def get_endpoint(endpoint_id: EndpointIdPath, principal: Admin, session: ReadSession) -> WebhookEndpointOut:
    return WebhookEndpointOut.of(webhook_service.get_endpoint(session, principal.tenant_id, endpoint_id))


@router.get("/webhook_endpoints/{endpoint_id}/secret", response_model=WebhookEndpointWithSecret,
            summary="Reveal an endpoint's signing secret", responses=errors(_NOT_FOUND))
def get_secret(endpoint_id: EndpointIdPath, principal: Admin, session: ReadSession) -> WebhookEndpointWithSecret:
    return WebhookEndpointWithSecret.of(webhook_service.get_endpoint(session, principal.tenant_id, endpoint_id))


@router.patch(
    "/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointOut, summary="Change a webhook endpoint",
    openapi_extra=openapi_body(WebhookEndpointUpdate),
    responses=errors({404: "`webhook_endpoint_not_found`",
                      422: "`validation_error`, `invalid_webhook_endpoint`"}),
)
def update_endpoint(
    endpoint_id: EndpointIdPath, principal: Admin, session: WriteSession, runtime: RuntimeDep,
    body: Annotated[Parsed[WebhookEndpointUpdate], Depends(json_body(WebhookEndpointUpdate))],
) -> WebhookEndpointOut:
    """Only the fields given change. A disabled endpoint gets no deliveries for the events
    made while it is disabled; its pending ones wait for it to be enabled again."""
    data = body.value
    row = webhook_service.update_endpoint(
        session, principal.tenant_id, endpoint_id,
        EndpointChange(url=data.url, event_types=data.event_types, description=data.description,
                       enabled=data.enabled),
        now_ns=runtime.clock.now_ns(), allow_http=runtime.settings.webhook_http_allowed)
    return WebhookEndpointOut.of(row)


@router.post("/webhook_endpoints/{endpoint_id}/rotate_secret", response_model=WebhookEndpointWithSecret,
             summary="Replace an endpoint's signing secret", responses=errors(_NOT_FOUND))
def rotate_secret(endpoint_id: EndpointIdPath, principal: Admin, session: WriteSession,
                  runtime: RuntimeDep) -> WebhookEndpointWithSecret:
    """Deliveries from now on are signed with the new secret (retries included)."""
    return WebhookEndpointWithSecret.of(
        webhook_service.rotate_secret(session, principal.tenant_id, endpoint_id, now_ns=runtime.clock.now_ns()))


@router.delete("/webhook_endpoints/{endpoint_id}", status_code=204, summary="Delete a webhook endpoint",
               responses=errors(_NOT_FOUND))
def delete_endpoint(endpoint_id: EndpointIdPath, principal: Admin, session: WriteSession) -> Response:
    """The endpoint and its deliveries go; events stay in the event log."""
    webhook_service.delete_endpoint(session, principal.tenant_id, endpoint_id)
    return Response(status_code=204)


@router.get(
    "/webhook_endpoints/{endpoint_id}/deliveries", response_model=WebhookDeliveryPage,
    summary="An endpoint's deliveries, newest first",
    responses=errors({404: "`webhook_endpoint_not_found`", 422: "`validation_error`, `invalid_cursor`"}),
)
def list_deliveries(
    endpoint_id: EndpointIdPath, principal: Admin, session: ReadSession,
    status: Annotated[DeliveryStatus | None, Query(description="`failed` lists the dead letters.")] = None,
    limit: Limit = 100, cursor: Cursor = None,
) -> WebhookDeliveryPage:
    rows = webhook_service.list_deliveries(session, principal.tenant_id, endpoint_id, status=status,
                                           after=decode_time_id_cursor(cursor), limit=limit)
    nxt = f"{rows[-1].created_at}:{rows[-1].id}" if len(rows) == limit else None
    return WebhookDeliveryPage(data=[WebhookDeliveryOut.of(r) for r in rows], next_cursor=encode_cursor(nxt))


@router.post(
    "/webhook_deliveries/{delivery_id}/retry", response_model=WebhookDeliveryOut,
    summary="Send a failed (or delivered) delivery again",
    responses=errors({404: "`webhook_delivery_not_found`", 409: "`webhook_delivery_pending`",
                      422: "`validation_error`"}),
)
def retry_delivery(delivery_id: DeliveryIdPath, principal: Admin, session: WriteSession,
                   runtime: RuntimeDep) -> WebhookDeliveryOut:
    """Due at once, on a fresh retry schedule; with the same `webhook-id`, so a receiver
    that already took it deduplicates."""
    return WebhookDeliveryOut.of(
        webhook_service.retry_delivery(session, principal.tenant_id, delivery_id, now_ns=runtime.clock.now_ns()))


@router.get("/events", response_model=EventPage, summary="The event log, newest first",
            responses=errors({422: "`validation_error`, `invalid_cursor`"}))
def list_events(
    principal: Admin, session: ReadSession, type: Annotated[EventType | None, Query()] = None,
    limit: Limit = 100, cursor: Cursor = None,
) -> EventPage:
    rows = webhook_service.list_events(session, principal.tenant_id, type_=type,
                                       before_seq=decode_seq_cursor(cursor), limit=limit)
    nxt = str(rows[-1].seq) if len(rows) == limit else None
    return EventPage(data=[EventOut.of(r) for r in rows], next_cursor=encode_cursor(nxt))


@router.get("/events/{event_id}", response_model=EventOut, summary="Get an event",
            responses=errors({404: "`event_not_found`", 422: "`validation_error`"}))
def get_event(event_id: EventIdPath, principal: Admin, session: ReadSession) -> EventOut:
    return EventOut.of(webhook_service.get_event(session, principal.tenant_id, event_id))
