"""Wire models of webhook endpoints, their deliveries, and the event log (/v1)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from meterline.api.v1.catalog_schemas import Request, text
from meterline.clock import to_rfc3339
from meterline.events.models import Event, WebhookDelivery, WebhookEndpoint
from meterline.events.outbox import envelope

DeliveryStatus = Literal["pending", "delivered", "failed"]
EventType = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_]+\.[a-z_]+$")]
Url = Annotated[str, text(2000, 1)]


def _ts(ns: int | None) -> str | None:
    return None if ns is None else to_rfc3339(ns)


class WebhookEndpointCreate(Request):
    url: Url = Field(description="An https URL (http too in dev mode or with METERLINE_WEBHOOK_ALLOW_HTTP=true).")
    event_types: list[EventType] = Field(default_factory=list, max_length=50,
                                         description="The types to receive; empty: all of them.")
    description: Annotated[str, text(500)] = ""

    model_config = {"json_schema_extra": {"examples": [
        {"url": "https://hooks.example.com/meterline", "event_types": ["rental.settled", "wallet.deposited"]}]}}


class WebhookEndpointUpdate(Request):
    url: Url | None = None
    event_types: list[EventType] | None = Field(default=None, max_length=50)
    description: Annotated[str, text(500)] | None = None
    enabled: bool | None = None


class WebhookEndpointOut(BaseModel):
    id: str
    url: str
    event_types: list[str] = Field(description="Empty: every type.")
    description: str
    enabled: bool
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, row: WebhookEndpoint) -> WebhookEndpointOut:
        return cls(id=row.id, url=row.url, event_types=list(row.event_types), description=row.description,
                   enabled=row.enabled, created_at=to_rfc3339(row.created_at), updated_at=to_rfc3339(row.updated_at))


class WebhookEndpointWithSecret(WebhookEndpointOut):
    secret: str = Field(description="The Standard Webhooks signing secret (`whsec_…`): verify every delivery with it.")

    @classmethod
    def of(cls, row: WebhookEndpoint) -> WebhookEndpointWithSecret:
        return cls(**WebhookEndpointOut.of(row).model_dump(), secret=row.secret)


class WebhookEndpointList(BaseModel):
    data: list[WebhookEndpointOut]


class WebhookDeliveryOut(BaseModel):
    id: str
    endpoint_id: str
    event_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: str | None
    last_status: int | None = Field(description="The HTTP status of the last attempt (null: no response).")
    last_error: str | None
    created_at: str
    delivered_at: str | None

    @classmethod
    def of(cls, row: WebhookDelivery) -> WebhookDeliveryOut:
        return cls(id=row.id, endpoint_id=row.endpoint_id, event_id=row.event_id,
                   status=row.status,  # type: ignore[arg-type]
                   attempts=row.attempts, next_attempt_at=_ts(row.next_attempt_at), last_status=row.last_status,
                   last_error=row.last_error, created_at=to_rfc3339(row.created_at),
                   delivered_at=_ts(row.delivered_at))


class WebhookDeliveryPage(BaseModel):
    data: list[WebhookDeliveryOut]
    next_cursor: str | None


class EventOut(BaseModel):
    id: str
    type: str
    tenant: str
    created_at: str
    data: dict[str, Any]

    @classmethod
    def of(cls, row: Event) -> EventOut:
        return cls(**envelope(row))


class EventPage(BaseModel):
    data: list[EventOut]
    next_cursor: str | None
