"""Usage taken in from the real NATS JetStream beside us (METERLINE_TEST_NATS_URL)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal

import nats
import pytest

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.events.nats_client import NatsClient
from meterline.metering.nats_ingest import BadMessage, ingest_from_nats, parse
from meterline.metering.service import metering_service
from tests.conftest import NATS_URL
from tests.factories import make_tenant

HOUR = 3600 * 10**9


def test_a_message_parses_numbers_as_decimals_never_floats():
    msg = parse(b'{"tenant": "t", "licensee": "L", "device": "d", "events": [{"event_id": "e", "subject": "s",'
                b' "meter": "m", "quantity": 1.25, "timestamp": 1700000000}]}')
    assert (msg.tenant_id, msg.licensee, msg.device) == ("t", "L", "d")
    assert msg.events[0].quantity == Decimal("1.25") and isinstance(msg.events[0].quantity, Decimal)


def test_a_message_without_events_is_one_event():
    msg = parse(b'{"tenant": "t", "event_id": "e", "subject": "s", "meter": "m", "quantity": 1, "timestamp": 1}')
    assert len(msg.events) == 1 and msg.events[0].meter == "m" and msg.licensee == ""


@pytest.mark.parametrize("data", [
    b"not json", b"[]", b'{"events": [{"meter": "m"}]}', b'{"tenant": "", "events": [{}]}',
    b'{"tenant": "t", "events": []}', b'{"tenant": "t", "events": {}}',
    b'{"tenant": "t", "licensee": 5, "events": [{}]}', b'{"tenant": "t", "events": [{"quantity": NaN}]}',
    json.dumps({"tenant": "t", "events": [{}] * 1001}).encode(),
    # What PostgreSQL cannot store: refused here instead of failing the insert on every redelivery.
    b'{"tenant": "t", "events": [{"event_id": "bad\\u0000id"}]}',
    b'{"tenant": "t", "licensee": "lic\\u0000a", "events": [{}]}',
    b'{"tenant": "t", "events": [{"event_id": "sur\\ud800"}]}',
    b'{"tenant": "t", "events": [{"properties": {"k\\u0000": 1}}]}',
])
def test_unstorable_messages_are_refused(data):
    with pytest.raises(BadMessage):
        parse(data)


needs_nats = pytest.mark.skipif(not NATS_URL, reason="METERLINE_TEST_NATS_URL not set")


class Topic:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        self.stream, self.subject, self.durable = f"MLTEST_IN_{tag}", f"mltest.{tag}.usage.>", f"ml-{tag}"
        self.publish_to = f"mltest.{tag}.usage.edge"

    def publish(self, *payloads: bytes) -> None:
        async def go() -> None:
            nc = await nats.connect(NATS_URL)
            js = nc.jetstream()
            for p in payloads:
                await js.publish(self.publish_to, p)
            await nc.close()
        asyncio.run(go())

    def delete(self) -> None:
        async def go() -> None:
            nc = await nats.connect(NATS_URL)
            try:
                await nc.jetstream().delete_stream(self.stream)
            except Exception:
                pass
            await nc.close()
        asyncio.run(go())


@pytest.fixture
def topic() -> Iterator[Topic]:
    t = Topic()
    yield t
    t.delete()


@pytest.fixture
def client(topic: Topic) -> Iterator[NatsClient]:
    c = NatsClient(NATS_URL, stream=topic.stream, timeout_s=2.0)
    yield c
    c.close()


def frames(db: Database, tenant: str, clock: FrozenClock, licensee: str) -> tuple[int | None, int]:
    start = clock.now_ns() // HOUR * HOUR - 2 * HOUR
    with db.session(write=False) as s:
        [row] = metering_service.usage(s, tenant, "frames_processed", from_ns=start, to_ns=start + 4 * HOUR,
                                       licensee=licensee).rows
        return row.value_micro, row.events


def batch(tenant: str, ids: list[str], quantity: object = 100) -> bytes:
    return json.dumps({"tenant": tenant, "licensee": "lic-1", "device": "edge-1", "events": [
        {"event_id": i, "subject": "cam-1", "meter": "frames_processed", "quantity": quantity,
         "timestamp": "2023-11-14T22:00:00Z"} for i in ids]}).encode()


@needs_nats
def test_usage_published_to_nats_is_stored_once_and_bad_messages_are_dropped(db, clock, tenant_id, topic, client):
    clock.set(1_700_000_000 * 10**9)  # 2023-11-14T22:13:20Z
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        metering_service.seed_demo(s, tenant_id, clock.now_ns())

    def run() -> int:
        return ingest_from_nats(db, clock, client, subject=topic.subject, durable=topic.durable,
                                lateness_s=7 * 86400, future_skew_s=300)

    assert run() == 0  # creates the stream and the consumer; nothing waits yet
    topic.publish(batch(tenant_id, ["e1", "e2"]), b"{broken", batch(tenant_id, ["e3"], quantity="2.5"),
                  batch(tenant_id, ["e1"]))  # e1 again: a redelivery from the device's side
    assert run() == 4
    assert frames(db, tenant_id, clock, "lic-1") == (202_500_000, 3)  # 100 + 100 + 2.5, in micro-units
    # Everything was settled: the broken message does not come back, nor the stored ones.
    assert run() == 0
    assert frames(db, tenant_id, clock, "lic-1") == (202_500_000, 3)


@needs_nats
def test_a_second_consumer_of_the_same_durable_name_shares_the_work(db, clock, tenant_id, topic, client):
    clock.set(1_700_000_000 * 10**9)
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        metering_service.seed_demo(s, tenant_id, clock.now_ns())
    other = NatsClient(NATS_URL, stream=topic.stream, timeout_s=2.0)
    try:
        kw = {"subject": topic.subject, "durable": topic.durable, "lateness_s": 7 * 86400, "future_skew_s": 300}
        ingest_from_nats(db, clock, client, **kw)
        topic.publish(*(batch(tenant_id, [f"e{i}"]) for i in range(20)))
        a = ingest_from_nats(db, clock, client, max_messages=10, **kw)
        b = ingest_from_nats(db, clock, other, **kw)
        assert a + b == 20 and b > 0
        assert frames(db, tenant_id, clock, "lic-1") == (2_000_000_000, 20)
    finally:
        other.close()


@needs_nats
def test_unreachable_nats_takes_nothing_and_raises_nothing(db, clock, topic):
    c = NatsClient("nats://127.0.0.1:1", stream=topic.stream, timeout_s=0.3)
    try:
        assert ingest_from_nats(db, clock, c, subject=topic.subject, durable=topic.durable, lateness_s=60,
                                future_skew_s=60) == 0
    finally:
        c.close()
