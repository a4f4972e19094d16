"""NATS JetStream for the worker: publishing the outbox, consuming usage (a blocking facade
over nats-py).

nats-py is asyncio; the worker's jobs are plain functions. The publisher owns one
event loop on a daemon thread and one connection, opened on first use and reopened
after a failure. Each message carries `Nats-Msg-Id: <event id>`, so a batch published
again after a crash (the worker died between the acks and marking the rows) is
dropped by JetStream's duplicate window instead of stored twice. Subjects no stream
covers get one (`METERLINE_NATS_STREAM`), or the stream of that name is widened:
a publish to a subject without a stream is never acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import FetchTimeoutError, NotFoundError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Message:
    subject: str
    msg_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message fetched from a durable consumer; settle it with `NatsClient.settle`."""

    subject: str
    data: bytes
    msg: Msg

    @property
    def deliveries(self) -> int:
        """How many times JetStream has delivered this message (1 the first time)."""
        try:
            return int(self.msg.metadata.num_delivered or 1)
        except Exception:  # not a JetStream message (no metadata): first delivery
            return 1


class NatsClient:
    def __init__(self, url: str, *, stream: str, timeout_s: float = 5.0) -> None:
        self.url, self.stream, self.timeout_s = url, stream, timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="meterline-nats", daemon=True)
        self._thread.start()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._covered: set[str] = set()
        self._subs: dict[tuple[str, str], JetStreamContext.PullSubscription] = {}

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def publish(self, messages: Sequence[Message]) -> list[bool]:
        """Publish in order; True for each message JetStream acknowledged."""
        if not messages:
            return []
        try:
            return self._run(self._publish(messages), self.timeout_s * (2 + len(messages) / 100))
        except Exception as exc:  # the server is down or slow: the rows stay pending, tried next tick
            log.warning("NATS publish failed: %s", exc)
            self._run(self._drop(), self.timeout_s)
            return [False] * len(messages)

    async def _connection(self) -> JetStreamContext:
        if self._js is None or self._nc is None or not self._nc.is_connected:
            await self._drop()
            self._nc = await nats.connect(self.url, connect_timeout=self.timeout_s, max_reconnect_attempts=2,
                                          allow_reconnect=True, name="meterline-worker")
            self._js = self._nc.jetstream(timeout=self.timeout_s)
            self._covered, self._subs = set(), {}
        return self._js

    async def _ensure_streams(self, js: JetStreamContext, subjects: set[str]) -> None:
        missing = []
        for subject in sorted(subjects - self._covered):
            try:
                await js.find_stream_name_by_subject(subject)
            except NotFoundError:
                missing.append(subject)
        if missing:
            try:
                info = await js.stream_info(self.stream)
                wanted = sorted(set(info.config.subjects or []) | set(missing))
                await js.update_stream(name=self.stream, subjects=wanted)
            except NotFoundError:
                await js.add_stream(name=self.stream, subjects=missing)
            log.info("NATS stream %s now covers %s", self.stream, ", ".join(missing))
        self._covered |= subjects

    async def _publish(self, messages: Sequence[Message]) -> list[bool]:
        js = await self._connection()
        await self._ensure_streams(js, {m.subject for m in messages})

        async def one(m: Message) -> bool:
            await js.publish(m.subject, m.payload, timeout=self.timeout_s, headers={"Nats-Msg-Id": m.msg_id})
            return True

        results = await asyncio.gather(*(one(m) for m in messages), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning("NATS: %d of %d messages not acknowledged: %s", len(failed), len(messages), failed[0])
        return [r is True for r in results]

    # -- consuming -------------------------------------------------------------------
    def fetch(self, subject: str, durable: str, *, batch: int = 100, wait_s: float = 0.2) -> list[Inbound]:
        """Up to `batch` messages of `subject` for the durable consumer `durable` (created on
        first use, explicit acks): several workers sharing the name share the work. [] when
        there is nothing, or NATS cannot be reached (logged; tried again next pass)."""
        try:
            return self._run(self._fetch(subject, durable, batch, wait_s), self.timeout_s * 2 + wait_s)
        except Exception as exc:
            log.warning("NATS fetch from %s failed: %s", subject, exc)
            self._run(self._drop(), self.timeout_s)
            return []

    async def _fetch(self, subject: str, durable: str, batch: int, wait_s: float) -> list[Inbound]:
        js = await self._connection()
        sub = self._subs.get((subject, durable))
        if sub is None:
            await self._ensure_streams(js, {subject})
            sub = await js.pull_subscribe(subject, durable=durable, config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, ack_wait=max(30.0, self.timeout_s * 6)))
            self._subs[(subject, durable)] = sub
        try:
            msgs = await sub.fetch(batch, timeout=wait_s)
        except (TimeoutError, FetchTimeoutError):
            return []
        return [Inbound(m.subject, m.data, m) for m in msgs]

    def settle(self, *, ack: Sequence[Inbound] = (), retry: Sequence[Inbound] = (),
               drop: Sequence[Inbound] = ()) -> None:
        """Ack what was stored; nak what should come again (5 s later, longer each time it
        comes back, up to 5 min); terminate what can never be stored (a malformed message must
        not come back forever). A lost ack only means a redelivery, which dedup absorbs."""
        async def go() -> None:
            for m in ack:
                await m.msg.ack()
            for m in retry:
                await m.msg.nak(delay=min(5.0 * m.deliveries, 300.0))
            for m in drop:
                await m.msg.term()
        try:
            self._run(go(), self.timeout_s * 2)
        except Exception as exc:
            log.warning("NATS ack failed (the messages will be redelivered): %s", exc)

    async def _drop(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            try:
                await nc.close()
            except Exception:  # closing a broken connection may fail; it is gone either way
                log.debug("NATS close failed", exc_info=True)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._drop(), self.timeout_s)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.timeout_s)
            self._loop.close()
