"""The worker's side of the outbox: fan out, deliver webhooks, publish to NATS, prune.

Fan-out (one delivery row per event and subscribed endpoint) is a scheduled job: it
only touches the database. Webhook delivery and NATS publishing wait on the network,
so the worker runs them on threads of their own (`worker/runner.py`), never in the
scheduler's loop: an endpoint that hangs must not hold back hold expiry or settlement.
Every attempt has a total deadline (`METERLINE_WEBHOOK_TIMEOUT_S`, enforced by
cancelling it, so an endpoint that drips its answer a byte at a time is cut off too),
and a round sends at most `DELIVERY_BATCH` at `CONCURRENCY` at once, so a round is
bounded. Several workers may deliver at once: each claims a round's deliveries with a
lease longer than the round can last (their next attempt pushed past it, under
`SKIP LOCKED` on PostgreSQL), does the network calls outside any transaction, and
records the outcomes in a short one — a slow endpoint never holds a lock or the
SQLite writer. A crash between a send
and its record sends again when the lease ends: delivery is at least once, and
receivers deduplicate by event id (Standard Webhooks' `webhook-id`; JetStream drops
the repeat itself through `Nats-Msg-Id`).

Retries follow `METERLINE_WEBHOOK_RETRY_SCHEDULE` (seconds to wait after each failed
attempt: Standard Webhooks' recommended 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h — eight
attempts over about a day and a half). After the last one the delivery is `failed`: the
dead letter, kept and listed until an operator retries it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import httpx
from prometheus_client import Counter
from sqlalchemy import Table, and_, delete, exists, select, tuple_, update

from meterline.clock import Clock
from meterline.db import upsert
from meterline.db.engine import Database
from meterline.events import signing
from meterline.events.models import Event, WebhookDelivery, WebhookEndpoint
from meterline.events.nats_client import Message, NatsClient
from meterline.events.outbox import EVENT_TYPES, PAYMENTS, USAGE, envelope
from meterline.events.webhooks import new_id

log = logging.getLogger(__name__)

# In the process running the worker (`serve --dev`, or `meterline worker` for its own logs).
WEBHOOK_ATTEMPTS = Counter("meterline_webhook_attempts_total", "Webhook delivery attempts, by outcome",
                           ["outcome"])  # delivered | retrying | failed
NATS_MESSAGES = Counter("meterline_nats_messages_total", "Events published to NATS, by result",
                        ["result"])  # acked | unacked

_NS = 1_000_000_000
FAN_OUT_BATCH = 500
DELIVERY_BATCH = 64
CONCURRENCY = 16
PUBLISH_BATCH = 500
PRUNE_BATCH = 5000
_MAX_ERROR = 500
_LEASE_MARGIN_S = 30  # a claimed delivery is not claimed again for its round's longest time plus this
_MAX_RESPONSE_EXCERPT = 200


def body_of(event: Event) -> bytes:
    """The exact bytes signed and sent: compact, keys sorted, the same on every attempt."""
    return json.dumps(envelope(event), separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    status: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class _Due:
    tenant_id: str
    delivery_id: str
    attempts: int
    url: str
    secret: str
    event: Event


class Dispatcher:
    def __init__(self, db: Database, clock: Clock, *, retry_schedule: Sequence[int], timeout_s: float,
                 subjects: dict[str, str], nats: NatsClient | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.db, self.clock = db, clock
        self.retry_schedule = tuple(retry_schedule)
        self.subjects = subjects  # channel (usage, payments) → NATS subject
        self.nats = nats
        self.timeout_s = timeout_s
        self._transport = transport

    @property
    def lease_s(self) -> float:
        """How long a claimed round may take at most, and then some."""
        return math.ceil(DELIVERY_BATCH / CONCURRENCY) * self.timeout_s + _LEASE_MARGIN_S

    def close(self) -> None:
        if self.nats is not None:
            self.nats.close()

    def run(self) -> int:
        """The scheduled part: fan-out (the thread does the rest). Returns events fanned out."""
        moved = total = self.fan_out()
        while moved == FAN_OUT_BATCH:
            moved = self.fan_out()
            total += moved
        return total

    # -- fan-out ---------------------------------------------------------------------
    def fan_out(self) -> int:
        """One delivery row per (event, enabled endpoint subscribed to its type)."""
        now = self.clock.now_ns()
        with self.db.session(write=False) as s:  # (on SQLite, take the writer only when needed)
            if s.scalars(select(Event.seq).where(Event.webhooks_pending.is_(True)).limit(1)).first() is None:
                return 0
        with self.db.session(write=True) as s:
            stmt = select(Event).where(Event.webhooks_pending.is_(True)).order_by(Event.seq).limit(FAN_OUT_BATCH)
            if s.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            events = list(s.scalars(stmt))
            if not events:
                return 0
            endpoints: dict[str, list[WebhookEndpoint]] = {}
            for ep in s.scalars(select(WebhookEndpoint).where(
                    WebhookEndpoint.tenant_id.in_({e.tenant_id for e in events}), WebhookEndpoint.enabled.is_(True))):
                endpoints.setdefault(ep.tenant_id, []).append(ep)
            rows = [
                {"tenant_id": e.tenant_id, "id": new_id("whd_"), "endpoint_id": ep.id, "event_id": e.id,
                 "event_seq": e.seq, "status": "pending", "attempts": 0, "next_attempt_at": now,
                 "created_at": now, "updated_at": now}
                for e in events for ep in endpoints.get(e.tenant_id, ())
                if not ep.event_types or e.type in ep.event_types
            ]
            if rows:
                s.execute(upsert.insert(s, cast(Table, WebhookDelivery.__table__)).values(rows).on_conflict_do_nothing(
                    index_elements=["tenant_id", "endpoint_id", "event_id"]))
            s.execute(update(Event).where(Event.seq.in_([e.seq for e in events])).values(webhooks_pending=False))
            return len(events)

    # -- webhooks --------------------------------------------------------------------
    def deliver(self) -> int:
        """One round: claim due deliveries, send them (in parallel), record the outcomes."""
        due = self._claim()
        if not due:
            return 0
        outcomes = asyncio.run(self._send_all(due))
        self._record(due, outcomes)
        return len(due)

    def _claim(self) -> list[_Due]:
        now = self.clock.now_ns()
        due_now = (WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        with self.db.session(write=False) as s:
            if s.scalars(select(WebhookDelivery.id).where(*due_now).limit(1)).first() is None:
                return []
        with self.db.session(write=True) as s:
            stmt = (
                select(WebhookDelivery.tenant_id, WebhookDelivery.id, WebhookDelivery.attempts,
                       WebhookEndpoint.url, WebhookEndpoint.secret, WebhookDelivery.event_id)
                .join(WebhookEndpoint, and_(WebhookEndpoint.tenant_id == WebhookDelivery.tenant_id,
                                            WebhookEndpoint.id == WebhookDelivery.endpoint_id))
                .where(*due_now, WebhookEndpoint.enabled.is_(True))
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.event_seq)
                .limit(DELIVERY_BATCH)
            )
            if s.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True, of=WebhookDelivery)
            rows = s.execute(stmt).all()
            if not rows:
                return []
            lease = now + int(self.lease_s * _NS)
            for tenant_id, delivery_id, *_ in rows:
                s.execute(update(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id,
                                                        WebhookDelivery.id == delivery_id)
                          .values(next_attempt_at=lease))
            # By the delivery's own tenant and event id: never another tenant's event.
            events = {(e.tenant_id, e.id): e for e in s.scalars(select(Event).where(
                tuple_(Event.tenant_id, Event.id).in_([(r[0], r[5]) for r in rows])))}
            s.expunge_all()
            due = []
            for tenant_id, delivery_id, attempts, url, secret, event_id in rows:
                event = events.get((tenant_id, event_id))
                if event is None:  # (prune keeps every event a delivery names; deleted by hand)
                    log.error("webhook delivery %s/%s: its event %s no longer exists", tenant_id, delivery_id,
                              event_id)
                    s.execute(update(WebhookDelivery).where(
                        WebhookDelivery.tenant_id == tenant_id, WebhookDelivery.id == delivery_id).values(
                        status="failed", next_attempt_at=None, last_status=None,
                        last_error="the event no longer exists", updated_at=now))
                    continue
                due.append(_Due(tenant_id, delivery_id, attempts, url, secret, event))
            return due

    async def _send_all(self, due: Sequence[_Due]) -> list[Outcome]:
        gate = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(timeout=self.timeout_s, transport=self._transport, follow_redirects=False,
                                     headers={"user-agent": "meterline-webhooks/1"}) as client:
            async def one(item: _Due) -> Outcome:
                async with gate:
                    try:
                        return await asyncio.wait_for(self._send(client, item), self.timeout_s)
                    except TimeoutError:
                        return Outcome(False, None, "timeout")
                    except Exception as exc:  # anything one send raises is that delivery's failed attempt
                        return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:_MAX_ERROR])
            return list(await asyncio.gather(*(one(item) for item in due)))

    async def _send(self, client: httpx.AsyncClient, item: _Due) -> Outcome:
        body = body_of(item.event)
        headers = signing.headers(item.secret, item.event.id, self.clock.now_ns() // _NS, body)
        async with client.stream("POST", item.url, content=body, headers=headers) as resp:
            if 200 <= resp.status_code < 300:
                return Outcome(True, resp.status_code, None)
            # Only the start of an error answer is kept (and read): it may be any size.
            excerpt = b""
            async for chunk in resp.aiter_bytes():
                excerpt += chunk
                if len(excerpt) >= _MAX_RESPONSE_EXCERPT:
                    break
        text = excerpt[:_MAX_RESPONSE_EXCERPT].decode("utf-8", "replace")
        return Outcome(False, resp.status_code, f"HTTP {resp.status_code}: {text}"[:_MAX_ERROR])

    def next_attempt(self, attempts: int, now_ns: int) -> int | None:
        """When to try again after `attempts` failed attempts; None: give up (failed)."""
        if attempts > len(self.retry_schedule):
            return None
        return now_ns + self.retry_schedule[attempts - 1] * _NS

    def _record(self, due: Iterable[_Due], outcomes: Iterable[Outcome]) -> None:
        now = self.clock.now_ns()
        with self.db.session(write=True) as s:
            for item, out in zip(due, outcomes, strict=True):
                attempts = item.attempts + 1
                values: dict[str, object] = {"attempts": attempts, "last_status": out.status,
                                             "last_error": out.error, "updated_at": now}
                if out.ok:
                    values.update(status="delivered", next_attempt_at=None, delivered_at=now)
                    WEBHOOK_ATTEMPTS.labels("delivered").inc()
                else:
                    nxt = self.next_attempt(attempts, now)
                    values.update(status="pending" if nxt is not None else "failed", next_attempt_at=nxt)
                    WEBHOOK_ATTEMPTS.labels("retrying" if nxt is not None else "failed").inc()
                    log.info("webhook %s to %s failed (attempt %d): %s", item.delivery_id, item.url, attempts,
                             out.error)
                # Only the attempt we made: a retry or deletion in between wins.
                s.execute(update(WebhookDelivery).where(
                    WebhookDelivery.tenant_id == item.tenant_id, WebhookDelivery.id == item.delivery_id,
                    WebhookDelivery.status == "pending", WebhookDelivery.attempts == item.attempts,
                ).values(**values))

    # -- NATS ------------------------------------------------------------------------
    def subject_of(self, event_type: str) -> str | None:
        channel = EVENT_TYPES.get(event_type)
        return self.subjects.get(channel) if channel in (USAGE, PAYMENTS) else None

    def publish(self) -> int:
        with self.db.session(write=False) as s:
            events = list(s.scalars(select(Event).where(Event.nats_pending.is_(True))
                                    .order_by(Event.seq).limit(PUBLISH_BATCH)))
            for e in events:
                s.expunge(e)
        if not events:
            return 0
        done: list[int] = []
        if self.nats is None:
            done = [e.seq for e in events]  # no NATS configured: nothing to publish, ever
        else:
            out = [(e, self.subject_of(e.type)) for e in events]
            done = [e.seq for e, subject in out if subject is None]
            sendable = [(e, subject) for e, subject in out if subject is not None]
            acked = self.nats.publish([Message(subject, e.id, body_of(e)) for e, subject in sendable])
            NATS_MESSAGES.labels("acked").inc(sum(acked))
            NATS_MESSAGES.labels("unacked").inc(len(acked) - sum(acked))
            done += [e.seq for (e, _), ok in zip(sendable, acked, strict=True) if ok]
        if done:
            with self.db.session(write=True) as s:
                s.execute(update(Event).where(Event.seq.in_(done)).values(nats_pending=False))
        return len(done)

    # -- retention ---------------------------------------------------------------------
    def prune(self, retention_days: int) -> int:
        """Forget finished deliveries, then dispatched events, older than the retention. An
        event outlives every delivery that names it, so a delivery retried on the last day of
        the retention still has its event."""
        cutoff = self.clock.now_ns() - retention_days * 86_400 * _NS
        with self.db.session(write=True) as s:
            done = s.execute(delete(WebhookDelivery).where(WebhookDelivery.status != "pending",
                                                           WebhookDelivery.updated_at < cutoff))
            removed: int = done.rowcount or 0  # type: ignore[attr-defined]
            named = exists().where(WebhookDelivery.tenant_id == Event.tenant_id,
                                   WebhookDelivery.event_id == Event.id)
            seqs = list(s.scalars(select(Event.seq).where(
                Event.created_at < cutoff, Event.webhooks_pending.is_(False), Event.nats_pending.is_(False),
                ~named).limit(PRUNE_BATCH)))
            if seqs:
                s.execute(delete(Event).where(Event.seq.in_(seqs)))
            return removed + len(seqs)
