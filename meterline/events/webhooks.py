"""Webhook endpoints, their deliveries, and the event log, per tenant.

An endpoint subscribes a URL to some event types (none listed: all). Each event is
delivered to each matching endpoint as a signed POST (`signing.py`), retried on the
schedule in `dispatch.py`; a delivery that fails every attempt is kept as `failed`
(the dead letter) until someone retries it. Deleting an endpoint or disabling it stops
new deliveries; disabled endpoints' pending deliveries wait, undelivered, for it.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from meterline.errors import Conflict, MeterlineError, NotFound
from meterline.events.models import Event, WebhookDelivery, WebhookEndpoint
from meterline.events.outbox import EVENT_TYPES
from meterline.events.signing import new_secret

MAX_ENDPOINTS = 50  # per tenant: each event fans out to every one of them
MAX_URL = 2000
DELIVERY_STATUSES = ("pending", "delivered", "failed")
_ALPHABET = string.ascii_letters + string.digits
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")


class WebhookError(MeterlineError):
    code = "webhook_error"


class WebhookEndpointNotFound(WebhookError, NotFound):
    code = "webhook_endpoint_not_found"
    title = "No such webhook endpoint"


class WebhookDeliveryNotFound(WebhookError, NotFound):
    code = "webhook_delivery_not_found"
    title = "No such webhook delivery"


class EventNotFound(WebhookError, NotFound):
    code = "event_not_found"
    title = "No such event"


class InvalidWebhookEndpoint(WebhookError):
    status = 422
    code = "invalid_webhook_endpoint"
    title = "The webhook endpoint is not valid"


class TooManyWebhookEndpoints(WebhookError, Conflict):
    code = "too_many_webhook_endpoints"
    title = "The tenant has the most webhook endpoints allowed"


class DeliveryInProgress(WebhookError, Conflict):
    code = "webhook_delivery_pending"
    title = "The delivery is still being attempted"


def new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(20))


def check_url(url: str, *, allow_http: bool) -> str:
    """An absolute https URL (http too when allowed: dev mode, tests), no credentials in it."""
    if not url or len(url) > MAX_URL:
        raise InvalidWebhookEndpoint(f"url must be 1-{MAX_URL} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise InvalidWebhookEndpoint(f"url is not a valid URL: {exc}") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise InvalidWebhookEndpoint(f"url must be an absolute {' or '.join(schemes)} URL")
    if parts.username or parts.password:
        raise InvalidWebhookEndpoint("url must not carry credentials; verify the signature instead")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise InvalidWebhookEndpoint("url must not contain spaces or control characters")
    _check_host(url)
    return url


def _check_host(url: str) -> None:
    """The host as the sender will resolve it: httpx's own parse (IDNA 2008), then DNS's label
    rules. A URL accepted here but refused at send time was a delivery that could never be
    made — and, before sends were guarded one by one, a failed pass for every tenant."""
    try:
        parsed = httpx.URL(url)
        parsed.host  # noqa: B018  (decodes A-labels: raises on a malformed one, as sending would)
        host = parsed.raw_host.decode("ascii")
    except Exception as exc:  # httpx raises InvalidURL, idna its own errors
        raise InvalidWebhookEndpoint(f"url has an invalid host: {exc}") from None
    if ":" in host or _IPV4.fullmatch(host):
        return  # an IP address: nothing to resolve
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(0 < len(label) <= 63 for label in labels):
        raise InvalidWebhookEndpoint("url has an invalid host: a DNS name has labels of 1-63 characters")


def check_types(types: Sequence[str]) -> list[str]:
    unknown = sorted(set(types) - EVENT_TYPES.keys())
    if unknown:
        raise InvalidWebhookEndpoint(f"unknown event type(s): {', '.join(unknown)}; "
                                     f"known: {', '.join(EVENT_TYPES)}")
    return sorted(set(types))


@dataclass(frozen=True, slots=True)
class EndpointChange:
    url: str | None = None
    event_types: list[str] | None = None
    description: str | None = None
    enabled: bool | None = None


class WebhookService:
    # -- endpoints -------------------------------------------------------------------
    def create_endpoint(self, session: Session, tenant_id: str, *, url: str, event_types: Sequence[str],
                        description: str, now_ns: int, allow_http: bool) -> WebhookEndpoint:
        count = len(session.scalars(select(WebhookEndpoint.id).where(
            WebhookEndpoint.tenant_id == tenant_id).limit(MAX_ENDPOINTS + 1)).all())
        if count >= MAX_ENDPOINTS:
            raise TooManyWebhookEndpoints(f"a tenant may have at most {MAX_ENDPOINTS} webhook endpoints")
        row = WebhookEndpoint(
            tenant_id=tenant_id, id=new_id("we_"), url=check_url(url, allow_http=allow_http),
            secret=new_secret(), event_types=check_types(event_types), description=description,
            enabled=True, created_at=now_ns, updated_at=now_ns,
        )
        session.add(row)
        session.flush()
        return row

    def get_endpoint(self, session: Session, tenant_id: str, endpoint_id: str, *,
                     lock: bool = False) -> WebhookEndpoint:
        row = session.get(WebhookEndpoint, (tenant_id, endpoint_id), with_for_update=lock or None)
        if row is None:
            raise WebhookEndpointNotFound(f"webhook endpoint {endpoint_id} does not exist")
        return row

    def list_endpoints(self, session: Session, tenant_id: str) -> list[WebhookEndpoint]:
        return list(session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
                                    .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)))

    def update_endpoint(self, session: Session, tenant_id: str, endpoint_id: str, change: EndpointChange, *,
                        now_ns: int, allow_http: bool) -> WebhookEndpoint:
        row = self.get_endpoint(session, tenant_id, endpoint_id, lock=True)
        if change.url is not None:
            row.url = check_url(change.url, allow_http=allow_http)
        if change.event_types is not None:
            row.event_types = check_types(change.event_types)
        if change.description is not None:
            row.description = change.description
        if change.enabled is not None:
            row.enabled = change.enabled
        row.updated_at = now_ns
        session.flush()
        return row

    def rotate_secret(self, session: Session, tenant_id: str, endpoint_id: str, *, now_ns: int) -> WebhookEndpoint:
        row = self.get_endpoint(session, tenant_id, endpoint_id, lock=True)
        row.secret, row.updated_at = new_secret(), now_ns
        session.flush()
        return row

    def delete_endpoint(self, session: Session, tenant_id: str, endpoint_id: str) -> None:
        row = self.get_endpoint(session, tenant_id, endpoint_id, lock=True)
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id,
                                                      WebhookDelivery.endpoint_id == endpoint_id))
        session.delete(row)
        session.flush()

    # -- deliveries ------------------------------------------------------------------
    def list_deliveries(self, session: Session, tenant_id: str, endpoint_id: str, *, status: str | None,
                        after: tuple[int, str] | None, limit: int) -> list[WebhookDelivery]:
        """Newest first; `after` = (created_at, id) of the last row of the previous page."""
        self.get_endpoint(session, tenant_id, endpoint_id)
        stmt = select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id,
                                             WebhookDelivery.endpoint_id == endpoint_id)
        if status is not None:
            stmt = stmt.where(WebhookDelivery.status == status)
        if after is not None:
            stmt = stmt.where((WebhookDelivery.created_at < after[0])
                              | ((WebhookDelivery.created_at == after[0]) & (WebhookDelivery.id < after[1])))
        stmt = stmt.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(limit)
        return list(session.scalars(stmt))

    def get_delivery(self, session: Session, tenant_id: str, delivery_id: str, *,
                     lock: bool = False) -> WebhookDelivery:
        row = session.get(WebhookDelivery, (tenant_id, delivery_id), with_for_update=lock or None)
        if row is None:
            raise WebhookDeliveryNotFound(f"webhook delivery {delivery_id} does not exist")
        return row

    def retry_delivery(self, session: Session, tenant_id: str, delivery_id: str, *, now_ns: int) -> WebhookDelivery:
        """Send a failed (or delivered: a resend) delivery again, on a fresh retry schedule."""
        row = self.get_delivery(session, tenant_id, delivery_id, lock=True)
        if row.status == "pending":
            raise DeliveryInProgress(f"delivery {delivery_id} is still being attempted")
        row.status, row.attempts, row.next_attempt_at, row.updated_at = "pending", 0, now_ns, now_ns
        row.delivered_at = None
        session.flush()
        return row

    # -- the event log -----------------------------------------------------------------
    def list_events(self, session: Session, tenant_id: str, *, type_: str | None, before_seq: int | None,
                    limit: int) -> list[Event]:
        """Newest first; page on with the last row's seq."""
        stmt = select(Event).where(Event.tenant_id == tenant_id)
        if type_ is not None:
            stmt = stmt.where(Event.type == type_)
        if before_seq is not None:
            stmt = stmt.where(Event.seq < before_seq)
        return list(session.scalars(stmt.order_by(Event.seq.desc()).limit(limit)))

    def get_event(self, session: Session, tenant_id: str, event_id: str) -> Event:
        row = session.scalars(select(Event).where(Event.tenant_id == tenant_id, Event.id == event_id)).first()
        if row is None:
            raise EventNotFound(f"event {event_id} does not exist")
        return row


webhook_service = WebhookService()
