"""Writing events: `emit` adds one to the outbox inside the caller's transaction.

Every event type is listed here with the NATS channel it goes to (None: webhooks
only), so a consumer can read the whole catalogue in one place (docs/events.md).
Amounts in `data` are decimal strings with their asset, as everywhere in the API.
"""

from __future__ import annotations

import secrets
import string
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.orm import Session

from meterline.clock import to_rfc3339
from meterline.db import upsert
from meterline.events.models import Event
from meterline.money import format_amount

USAGE, PAYMENTS = "usage", "payments"

# type → NATS channel (METERLINE_NATS_USAGE_SUBJECT / METERLINE_NATS_PAYMENTS_SUBJECT).
EVENT_TYPES: dict[str, str | None] = {
    "wallet.deposited": PAYMENTS,
    "wallet.withdrawn": PAYMENTS,
    "rental.started": USAGE,
    "rental.usage": USAGE,
    "rental.extended": PAYMENTS,
    "rental.settled": PAYMENTS,
    "payout.requested": PAYMENTS,
    "payout.paid": PAYMENTS,
    "payout.failed": PAYMENTS,
    "payout.rejected": PAYMENTS,
    "invoice.finalized": None,
    "invoice.paid": PAYMENTS,
    "invoice.payment_failed": None,
    "invoice.voided": None,
    "invoice.credit_applied": None,
    "invoice.credit_refunded": PAYMENTS,
}

_ALPHABET = string.ascii_letters + string.digits


def new_event_id() -> str:
    return "evt_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def amount(minor: int, scale: int) -> str:
    """An amount as the API writes it: an exact decimal string in major units."""
    return format_amount(minor, scale)


def emit(session: Session, tenant_id: str, type_: str, data: dict[str, Any], *, now_ns: int,
         event_id: str | None = None) -> str:
    """Record `type_` in this transaction; it is delivered after the transaction commits.

    `event_id`: a deterministic id for an event a retried job may emit twice (the second
    insert is ignored). Returns the event id.
    """
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")  # a programming error, not input
    eid = event_id or new_event_id()
    stmt = upsert.insert(session, cast(Table, Event.__table__)).values(
        tenant_id=tenant_id, id=eid, type=type_, data=data, created_at=now_ns,
        webhooks_pending=True, nats_pending=True,
    )
    session.execute(stmt.on_conflict_do_nothing(index_elements=["tenant_id", "id"]))
    return eid


def envelope(event: Event) -> dict[str, Any]:
    """The message every destination receives (the webhook body, the NATS payload)."""
    return {
        "id": event.id,
        "type": event.type,
        "tenant": event.tenant_id,
        "created_at": to_rfc3339(event.created_at),
        "data": event.data,
    }
