"""Usage reported through NATS JetStream instead of HTTP (DESIGN §7), taken in by the worker.

A device fleet that already speaks NATS publishes batches to a subject under
`METERLINE_NATS_INGEST_SUBJECT` (e.g. `meterline.usage.>`), one JSON object a message:

    {"tenant": "default", "licensee": "tenant-123", "device": "edge-7",
     "events": [{"event_id": "e-1", "subject": "cam-001", "meter": "frames_processed",
                 "quantity": 1000, "timestamp": "2026-12-04T10:00:00Z"}]}

(a message without `events` is one event, with the batch's fields beside its own). The
worker reads them through a durable consumer, so several workers share the stream and
nothing is lost while none runs; each message is acknowledged only after its events
committed, through the same group commit as the HTTP path. Redelivery is harmless: the
events' ids dedupe them. A message that can never be stored (not JSON, no tenant, too
many events) is terminated and logged rather than redelivered forever; per-event
rejections (an unknown meter, a late event) are logged and counted, since no caller waits
for an answer.

NATS publishers are trusted with the tenant they name: secure the subject with NATS's
own accounts and permissions.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from prometheus_client import Counter

from meterline.clock import Clock
from meterline.db.engine import Database
from meterline.errors import MeterlineError
from meterline.events.nats_client import Inbound, NatsClient
from meterline.metering.ingest import IngestResult, UsageEventIn, Window
from meterline.metering.ingestor import ingestor_for
from meterline.metering.service import MAX_BATCH, metering_service

log = logging.getLogger(__name__)

INGEST_NATS = "metering.ingest_nats"
FETCH_BATCH = 100
MAX_MESSAGES_PER_PASS = 5000

NATS_USAGE = Counter("meterline_nats_usage_events_total", "Usage events read from NATS, by outcome",
                     ["outcome"])  # accepted | duplicate | rejected
NATS_USAGE_MESSAGES = Counter("meterline_nats_usage_messages_total", "Usage messages read from NATS, by outcome",
                              ["outcome"])  # stored | dropped | retried


class BadMessage(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class UsageMessage:
    tenant_id: str
    licensee: str
    device: str
    events: list[UsageEventIn]


def _text(obj: dict[str, Any], key: str, *, required: bool) -> str:
    value = obj.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value) or len(value) > 128:
        raise BadMessage(f"`{key}` must be {'non-empty ' if required else ''}text of at most 128 characters")
    return value


def parse(data: bytes) -> UsageMessage:
    """A message's batch. JSON numbers are read as Decimal: a quantity is never a float."""
    try:
        obj = json.loads(data, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadMessage("a message is a JSON object")
    _check_text(obj)
    raw_events = obj.get("events", [obj] if "meter" in obj else None)
    if not isinstance(raw_events, list) or not raw_events:
        raise BadMessage("`events` must be a non-empty list")
    if len(raw_events) > MAX_BATCH:
        raise BadMessage(f"a message holds at most {MAX_BATCH} events")
    events = [
        UsageEventIn(e.get("event_id"), e.get("subject"), e.get("meter"), e.get("quantity"), e.get("timestamp"),
                     e.get("properties")) if isinstance(e, dict) else UsageEventIn(None, None, None, None, None)
        for e in raw_events
    ]
    return UsageMessage(_text(obj, "tenant", required=True), _text(obj, "licensee", required=False),
                        _text(obj, "device", required=False), events)


def _check_text(value: Any) -> None:
    """No NUL (PostgreSQL's text cannot hold it) and no lone surrogate (not UTF-8) anywhere:
    the HTTP path refuses both as it reads the body; here they failed the insert, and the
    message came back forever."""
    if isinstance(value, str):
        if "\x00" in value:
            raise BadMessage("a string holds a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadMessage("a string holds a lone surrogate") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k)
            _check_text(v)
    elif isinstance(value, list):
        for v in value:
            _check_text(v)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def ingest_from_nats(db: Database, clock: Clock, client: NatsClient, *, subject: str, durable: str,
                     lateness_s: int, future_skew_s: int, max_messages: int = MAX_MESSAGES_PER_PASS) -> int:
    """Take in what is waiting (up to `max_messages`); returns how many messages were handled."""
    handled = 0
    while handled < max_messages:
        inbound = client.fetch(subject, durable, batch=min(FETCH_BATCH, max_messages - handled))
        if not inbound:
            break
        handled += len(inbound)
        window = Window(clock.now_ns(), lateness_s, future_skew_s)
        pending: list[tuple[Inbound, Future[IngestResult]]] = []
        drop: list[Inbound] = []
        for m in inbound:
            try:
                msg = parse(m.data)
                metering_service.check_batch(msg.licensee, msg.device, len(msg.events))
            except (BadMessage, MeterlineError) as exc:
                log.warning("dropping usage message on %s: %s", m.subject, exc)
                drop.append(m)
                continue
            pending.append((m, ingestor_for(db).submit(msg.tenant_id, msg.licensee, msg.device, msg.events,
                                                        window)))
        ack: list[Inbound] = []
        retry: list[Inbound] = []
        for m, future in pending:
            try:
                result = future.result()
            except MeterlineError as exc:  # refused whole (a total out of range): never storable
                log.warning("dropping usage message on %s: %s", m.subject, exc)
                drop.append(m)
                continue
            except Exception:  # the database, not the message (what a message can break is checked)
                log.exception("could not store a usage message from %s (delivery %d); it will be redelivered",
                              m.subject, m.deliveries)
                retry.append(m)
                continue
            ack.append(m)
            NATS_USAGE.labels("accepted").inc(result.accepted)
            NATS_USAGE.labels("duplicate").inc(result.duplicates)
            if result.rejected:
                NATS_USAGE.labels("rejected").inc(len(result.rejected))
                first = result.rejected[0]
                log.warning("%d usage event(s) from %s rejected, first %s: %s %s", len(result.rejected),
                            m.subject, first.event_id, first.code, first.detail)
        client.settle(ack=ack, retry=retry, drop=drop)
        NATS_USAGE_MESSAGES.labels("stored").inc(len(ack))
        NATS_USAGE_MESSAGES.labels("dropped").inc(len(drop))
        NATS_USAGE_MESSAGES.labels("retried").inc(len(retry))
    return handled
