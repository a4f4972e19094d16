"""Publishing the outbox to the real NATS JetStream beside us (METERLINE_TEST_NATS_URL)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import nats
import pytest
from sqlalchemy import select, update

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.events.dispatch import Dispatcher
from meterline.events.models import Event
from meterline.events.nats_client import Message, NatsClient
from meterline.events.outbox import PAYMENTS, USAGE, emit
from tests.conftest import NATS_URL

pytestmark = pytest.mark.skipif(not NATS_URL, reason="METERLINE_TEST_NATS_URL not set")


class Stream:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        self.name = f"MLTEST_{tag}"
        self.subjects = {USAGE: f"mltest.{tag}.usage", PAYMENTS: f"mltest.{tag}.payments"}

    def messages(self) -> list[tuple[str, dict[str, str], dict[str, object]]]:
        async def read() -> list[tuple[str, dict[str, str], dict[str, object]]]:
            nc = await nats.connect(NATS_URL)
            js = nc.jetstream()
            info = await js.stream_info(self.name)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                m = await js.get_msg(self.name, seq)
                out.append((m.subject, dict(m.headers or {}), json.loads(m.data or b"{}")))
            await nc.close()
            return out
        return asyncio.run(read())

    def delete(self) -> None:
        async def drop() -> None:
            nc = await nats.connect(NATS_URL)
            try:
                await nc.jetstream().delete_stream(self.name)
            except Exception:
                pass
            await nc.close()
        asyncio.run(drop())


@pytest.fixture
def stream() -> Iterator[Stream]:
    s = Stream()
    yield s
    s.delete()


def pending(db: Database, tenant: str) -> list[bool]:
    with db.session(write=False) as s:
        return list(s.scalars(select(Event.nats_pending).where(Event.tenant_id == tenant).order_by(Event.seq)))


def publish_all(d: Dispatcher, db: Database, tenant: str) -> None:
    for _ in range(50):
        d.publish()
        if not any(pending(db, tenant)):
            return
    raise AssertionError("events stayed pending")


def test_events_reach_their_subjects_once_each(db, clock: FrozenClock, tenant_id, stream: Stream):
    d = Dispatcher(db, clock, retry_schedule=(), timeout_s=2.0, subjects=stream.subjects,
                   nats=NatsClient(NATS_URL, stream=stream.name, timeout_s=2.0))
    try:
        with db.session() as s:
            usage = emit(s, tenant_id, "rental.usage", {"cost": "0.25"}, now_ns=clock.now_ns())
            paid = emit(s, tenant_id, "wallet.deposited", {"amount": "10.00"}, now_ns=clock.now_ns())
        publish_all(d, db, tenant_id)
        mine = [m for m in stream.messages() if m[2]["tenant"] == tenant_id]
        assert [(subj, h["Nats-Msg-Id"], body["id"]) for subj, h, body in mine] == [
            (stream.subjects[USAGE], usage, usage), (stream.subjects[PAYMENTS], paid, paid)]
        assert mine[1][2]["data"] == {"amount": "10.00"}

        # The worker died after the acks, before marking the rows: published again, and
        # JetStream's duplicate window keeps one copy of each.
        with db.session() as s:
            s.execute(update(Event).where(Event.tenant_id == tenant_id).values(nats_pending=True))
        publish_all(d, db, tenant_id)
        assert len([m for m in stream.messages() if m[2]["tenant"] == tenant_id]) == 2
    finally:
        d.close()


def test_an_unreachable_nats_leaves_events_pending(db, clock: FrozenClock, tenant_id, stream: Stream):
    d = Dispatcher(db, clock, retry_schedule=(), timeout_s=0.5, subjects=stream.subjects,
                   nats=NatsClient("nats://127.0.0.1:1", stream=stream.name, timeout_s=0.5))
    try:
        with db.session() as s:
            emit(s, tenant_id, "wallet.deposited", {"amount": "1.00"}, now_ns=clock.now_ns())
        d.publish()
        assert pending(db, tenant_id) == [True]
    finally:
        d.close()


def test_an_existing_stream_is_widened_not_replaced(stream: Stream):
    async def make() -> None:
        nc = await nats.connect(NATS_URL)
        await nc.jetstream().add_stream(name=stream.name, subjects=[f"{stream.subjects[USAGE]}.other"])
        await nc.close()
    asyncio.run(make())
    pub = NatsClient(NATS_URL, stream=stream.name, timeout_s=2.0)
    try:
        assert pub.publish([Message(stream.subjects[PAYMENTS], "evt_x", b"{}")]) == [True]
    finally:
        pub.close()

    async def subjects() -> list[str]:
        nc = await nats.connect(NATS_URL)
        info = await nc.jetstream().stream_info(stream.name)
        await nc.close()
        return sorted(info.config.subjects or [])
    assert asyncio.run(subjects()) == sorted([f"{stream.subjects[USAGE]}.other", stream.subjects[PAYMENTS]])
