"""The outbox on its way out: fan-out, signed delivery, retries, the dead letter, pruning."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.events import signing
from meterline.events.dispatch import Dispatcher
from meterline.events.models import Event, WebhookDelivery
from meterline.events.outbox import emit
from meterline.events.webhooks import EndpointChange, webhook_service
from tests.events.conftest import Receiver, drain
from tests.factories import make_tenant


def endpoint(db: Database, tenant: str, clock: FrozenClock, url: str, types: list[str] | None = None) -> tuple[str, str]:
    with db.session() as s:
        make_tenant(s, tenant, clock)
        row = webhook_service.create_endpoint(s, tenant, url=url, event_types=types or [], description="",
                                              now_ns=clock.now_ns(), allow_http=True)
        return row.id, row.secret


def event(db: Database, tenant: str, clock: FrozenClock, type_: str = "wallet.deposited", **data: object) -> str:
    with db.session() as s:
        return emit(s, tenant, type_, {"amount": "1.00", **data}, now_ns=clock.now_ns())


def deliveries(db: Database, tenant: str) -> list[WebhookDelivery]:
    with db.session(write=False) as s:
        rows = list(s.scalars(select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant)
                              .order_by(WebhookDelivery.event_seq)))
        s.expunge_all()
        return rows


def test_an_event_is_delivered_signed_to_its_endpoint(db, clock, tenant_id, receiver: Receiver, dispatcher):
    _, secret = endpoint(db, tenant_id, clock, receiver.url)
    eid = event(db, tenant_id, clock, rental="R1")
    drain(dispatcher)
    [got] = receiver.for_tenant(tenant_id)
    # The receiver verifies it as any Standard Webhooks library would.
    signing.verify(secret, got.headers, got.body, now_s=clock.now_ns() // 10**9)
    assert got.headers["webhook-id"] == eid
    assert got.json["type"] == "wallet.deposited" and got.json["data"] == {"amount": "1.00", "rental": "R1"}
    [d] = deliveries(db, tenant_id)
    assert (d.status, d.attempts, d.last_status) == ("delivered", 1, 204)


def test_an_event_of_a_rolled_back_transaction_is_never_sent(db, clock, tenant_id, receiver, dispatcher):
    endpoint(db, tenant_id, clock, receiver.url)
    with pytest.raises(RuntimeError), db.session() as s:
        emit(s, tenant_id, "wallet.deposited", {"amount": "9.99"}, now_ns=clock.now_ns())
        raise RuntimeError("the change failed")
    drain(dispatcher)
    assert receiver.for_tenant(tenant_id) == []


def test_endpoints_get_only_their_types_and_their_tenant(db, clock, tenant_id, receiver, dispatcher):
    endpoint(db, tenant_id, clock, receiver.url, ["rental.settled"])
    endpoint(db, f"{tenant_id}-b", clock, receiver.url)
    event(db, tenant_id, clock, "wallet.deposited")
    settled = event(db, tenant_id, clock, "rental.settled")
    other = event(db, f"{tenant_id}-b", clock, "wallet.deposited")
    drain(dispatcher)
    assert [r.json["id"] for r in receiver.for_tenant(tenant_id)] == [settled]
    assert [r.json["id"] for r in receiver.for_tenant(f"{tenant_id}-b")] == [other]


def test_a_failing_endpoint_is_retried_on_the_schedule_then_dead_lettered(db, clock, tenant_id, receiver,
                                                                          dispatcher):
    receiver.statuses = [500]
    endpoint(db, tenant_id, clock, receiver.url)
    eid = event(db, tenant_id, clock)
    drain(dispatcher)
    [d] = deliveries(db, tenant_id)
    assert (d.status, d.attempts, d.last_status) == ("pending", 1, 500)
    assert d.next_attempt_at == clock.now_ns() + 5 * 10**9 and "HTTP 500" in (d.last_error or "")
    clock.advance(4)
    drain(dispatcher)
    assert len(receiver.for_tenant(tenant_id)) == 1  # not due yet
    clock.advance(1)
    drain(dispatcher)
    clock.advance(60)
    drain(dispatcher)
    [d] = deliveries(db, tenant_id)
    assert (d.status, d.attempts, d.next_attempt_at) == ("failed", 3, None)  # 1 + len(schedule)
    got = receiver.for_tenant(tenant_id)
    assert len(got) == 3 and {g.headers["webhook-id"] for g in got} == {eid}  # one id: receivers dedupe

    # The dead letter is retried on request, and the endpoint has recovered.
    receiver.statuses = [200]
    with db.session() as s:
        webhook_service.retry_delivery(s, tenant_id, d.id, now_ns=clock.now_ns())
    drain(dispatcher)
    [d] = deliveries(db, tenant_id)
    assert (d.status, d.attempts) == ("delivered", 1)


def test_an_unreachable_endpoint_is_a_failed_attempt(db, clock, tenant_id, dispatcher):
    endpoint(db, tenant_id, clock, "http://127.0.0.1:9/nothing-listens")
    event(db, tenant_id, clock)
    drain(dispatcher)
    [d] = deliveries(db, tenant_id)
    assert d.status == "pending" and d.attempts == 1 and d.last_status is None and d.last_error


def test_a_disabled_endpoint_gets_nothing_until_enabled(db, clock, tenant_id, receiver, dispatcher):
    ep, _ = endpoint(db, tenant_id, clock, receiver.url)
    event(db, tenant_id, clock)
    dispatcher.fan_out()
    with db.session() as s:
        webhook_service.update_endpoint(s, tenant_id, ep, EndpointChange(enabled=False), now_ns=clock.now_ns(),
                                        allow_http=True)
    event(db, tenant_id, clock)  # made while disabled: not for this endpoint
    drain(dispatcher)
    assert receiver.for_tenant(tenant_id) == []
    with db.session() as s:
        webhook_service.update_endpoint(s, tenant_id, ep, EndpointChange(enabled=True), now_ns=clock.now_ns(),
                                        allow_http=True)
    drain(dispatcher)
    assert len(receiver.for_tenant(tenant_id)) == 1  # the one pending from before


def test_fan_out_twice_makes_one_delivery(db, clock, tenant_id, receiver, dispatcher):
    """A crash after the deliveries were written but before the event was marked: the
    next pass fans the event out again, and the unique key keeps one delivery."""
    endpoint(db, tenant_id, clock, receiver.url)
    event(db, tenant_id, clock)
    dispatcher.fan_out()
    with db.session() as s:
        for e in s.scalars(select(Event).where(Event.tenant_id == tenant_id)):
            e.webhooks_pending = True
    dispatcher.fan_out()
    assert len(deliveries(db, tenant_id)) == 1


def test_a_crash_between_send_and_record_sends_again_with_the_same_id(db, clock, tenant_id, receiver,
                                                                      dispatcher, monkeypatch):
    endpoint(db, tenant_id, clock, receiver.url)
    eid = event(db, tenant_id, clock)
    dispatcher.fan_out()

    def crash(*args: object) -> None:
        raise RuntimeError("killed before recording")

    monkeypatch.setattr(dispatcher, "_record", crash)
    with pytest.raises(RuntimeError):
        dispatcher.deliver()
    monkeypatch.undo()
    drain(dispatcher)
    assert len(receiver.for_tenant(tenant_id)) == 1  # leased: not again before the lease ends
    clock.advance(dispatcher.lease_s + 1)
    drain(dispatcher)
    got = receiver.for_tenant(tenant_id)
    assert [g.headers["webhook-id"] for g in got] == [eid, eid]
    [d] = deliveries(db, tenant_id)
    assert d.status == "delivered"


def test_a_retry_or_deletion_during_an_attempt_wins_over_its_outcome(db, clock, tenant_id, receiver, dispatcher,
                                                                     monkeypatch):
    receiver.statuses = [500]
    ep, _ = endpoint(db, tenant_id, clock, receiver.url)
    event(db, tenant_id, clock)
    dispatcher.fan_out()
    record = dispatcher._record

    def delete_first(due, outcomes):  # the endpoint is deleted while the POST is in flight
        with db.session() as s:
            webhook_service.delete_endpoint(s, tenant_id, ep)
        record(due, outcomes)

    monkeypatch.setattr(dispatcher, "_record", delete_first)
    dispatcher.deliver()
    assert deliveries(db, tenant_id) == []


def test_prune_forgets_old_dispatched_events_and_finished_deliveries(db, clock, tenant_id, receiver, dispatcher):
    receiver.statuses = [500]
    endpoint(db, tenant_id, clock, receiver.url)
    event(db, tenant_id, clock)
    drain(dispatcher)
    dispatcher.publish()  # no NATS configured: marks them done
    clock.advance(31 * 86400)
    dispatcher.prune(30)
    with db.session(write=False) as s:
        # A delivery still being retried keeps its event.
        assert s.scalars(select(Event).where(Event.tenant_id == tenant_id)).all()
    with db.session() as s:
        for d in s.scalars(select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)):
            d.status, d.updated_at = "failed", clock.now_ns() - 31 * 86400 * 10**9
    dispatcher.prune(30)
    with db.session(write=False) as s:
        assert s.scalars(select(Event).where(Event.tenant_id == tenant_id)).all() == []
    assert deliveries(db, tenant_id) == []


def test_events_wait_for_nats_only_when_it_is_configured(db, clock, tenant_id, dispatcher: Dispatcher):
    event(db, tenant_id, clock)
    while dispatcher.publish():
        pass
    with db.session(write=False) as s:
        [e] = s.scalars(select(Event).where(Event.tenant_id == tenant_id)).all()
        assert e.nats_pending is False


def test_usage_events_are_written_once_per_period(db, clock, tenant_id):
    with db.session() as s:
        a = emit(s, tenant_id, "rental.usage", {}, now_ns=clock.now_ns(), event_id="evt_usage_R_1")
        b = emit(s, tenant_id, "rental.usage", {}, now_ns=clock.now_ns(), event_id="evt_usage_R_1")
    assert a == b
    with db.session(write=False) as s:
        assert len(s.scalars(select(Event).where(Event.tenant_id == tenant_id)).all()) == 1


def test_unknown_event_types_are_a_programming_error(db, clock, tenant_id):
    with pytest.raises(ValueError, match="unknown event type"), db.session() as s:
        emit(s, tenant_id, "wallet.exploded", {}, now_ns=clock.now_ns())


def test_two_dispatchers_never_send_one_delivery_twice(db, clock, tenant_id, receiver, dispatcher):
    """Each claims its deliveries with a lease: two workers delivering at once split them."""
    from tests.events.conftest import SUBJECTS
    from tests.threads import run_concurrently

    endpoint(db, tenant_id, clock, receiver.url)
    for _ in range(30):
        event(db, tenant_id, clock)
    dispatcher.run()
    other = Dispatcher(db, clock, retry_schedule=(5,), timeout_s=2.0, subjects=SUBJECTS)
    try:
        run_concurrently(lambda n: (dispatcher, other)[n % 2].deliver(), 4)
        drain(dispatcher)
    finally:
        other.close()
    ids = [r.headers["webhook-id"] for r in receiver.for_tenant(tenant_id)]
    assert len(ids) == 30 == len(set(ids))


def test_a_claimed_delivery_whose_worker_died_is_sent_after_its_lease(db, clock, tenant_id, receiver, dispatcher):
    endpoint(db, tenant_id, clock, receiver.url)
    event(db, tenant_id, clock)
    dispatcher.run()
    assert len(dispatcher._claim()) == 1  # claimed, then the worker died before sending
    assert dispatcher.deliver() == 0  # leased: nobody sends it meanwhile
    clock.advance(dispatcher.lease_s + 1)
    assert dispatcher.deliver() == 1
    assert len(receiver.for_tenant(tenant_id)) == 1


def test_the_worker_delivers_on_a_thread_of_its_own(db, clock, tenant_id, receiver):
    import time

    from meterline.worker.runner import BackgroundLoop
    from tests.events.conftest import SUBJECTS

    endpoint(db, tenant_id, clock, receiver.url)
    event(db, tenant_id, clock)
    d = Dispatcher(db, clock, retry_schedule=(), timeout_s=2.0, subjects=SUBJECTS)
    loop = BackgroundLoop("webhooks", d.deliver, 0.05).start()
    try:
        d.run()  # the scheduled fan-out
        deadline = time.monotonic() + 10
        while not receiver.for_tenant(tenant_id) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        loop.stop(5)
        d.close()
    assert len(receiver.for_tenant(tenant_id)) == 1


def test_a_huge_error_answer_is_cut_short(db, clock, tenant_id, dispatcher):
    import http.server
    import threading

    class Big(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(500)
            self.send_header("content-length", str(50_000_000))
            self.end_headers()
            try:
                for _ in range(50):
                    self.wfile.write(b"x" * 1_000_000)
            except OSError:
                pass  # the dispatcher hung up after reading the start

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Big)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint(db, tenant_id, clock, f"http://127.0.0.1:{server.server_port}/")
        event(db, tenant_id, clock)
        drain(dispatcher)
    finally:
        server.shutdown()
        server.server_close()
    [d] = deliveries(db, tenant_id)
    assert d.last_status == 500 and d.last_error is not None and len(d.last_error) < 300


def test_a_retried_dead_letter_still_has_its_event_after_the_retention(db, clock, tenant_id, receiver, dispatcher):
    """Prune used to delete the event and keep the dead letter; retrying it then failed every
    delivery pass, for every tenant (and on SQLite sent another tenant's event)."""
    receiver.statuses = [500, 500, 500, 204]
    endpoint(db, tenant_id, clock, receiver.url)
    eid = event(db, tenant_id, clock)
    drain(dispatcher)
    clock.advance(5)
    drain(dispatcher)
    clock.advance(60)
    drain(dispatcher)
    [d] = deliveries(db, tenant_id)
    assert d.status == "failed"
    clock.advance(29 * 86400)  # the event is past the retention; the dead letter is not
    dispatcher.publish()
    dispatcher.prune(30)
    with db.session() as s:
        webhook_service.retry_delivery(s, tenant_id, d.id, now_ns=clock.now_ns())
    drain(dispatcher)
    [d] = deliveries(db, tenant_id)
    assert d.status == "delivered" and receiver.for_tenant(tenant_id)[-1].headers["webhook-id"] == eid


def test_a_delivery_whose_event_is_gone_fails_alone(db, clock, tenant_id, receiver, dispatcher):
    from sqlalchemy import delete

    endpoint(db, tenant_id, clock, receiver.url)
    gone = event(db, tenant_id, clock)
    kept = event(db, tenant_id, clock)
    dispatcher.run()
    with db.session() as s:  # deleted by hand
        s.execute(delete(Event).where(Event.tenant_id == tenant_id, Event.id == gone))
    drain(dispatcher)
    by_event = {d.event_id: d for d in deliveries(db, tenant_id)}
    assert by_event[gone].status == "failed" and by_event[gone].last_error == "the event no longer exists"
    assert by_event[kept].status == "delivered"
    assert [r.headers["webhook-id"] for r in receiver.for_tenant(tenant_id)] == [kept]


def test_a_delivery_sends_its_own_tenants_event_whatever_its_seq_says(db, clock, tenant_id, receiver, dispatcher):
    from sqlalchemy import update

    endpoint(db, tenant_id, clock, receiver.url)
    mine = event(db, tenant_id, clock)
    theirs = event(db, f"{tenant_id}-b", clock, secret_of="tenant B")
    dispatcher.run()
    with db.session() as s:
        other_seq = s.scalars(select(Event.seq).where(Event.id == theirs)).one()
        s.execute(update(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id).values(event_seq=other_seq))
    drain(dispatcher)
    [got] = receiver.for_tenant(tenant_id)
    assert got.headers["webhook-id"] == mine and "secret_of" not in got.json["data"]


def test_a_send_that_raises_fails_only_its_own_delivery(db, clock, tenant_id, receiver, dispatcher):
    """A URL httpx refuses at send time (here written past the validation) used to fail the
    whole round, which was then sent again every lease — to every other endpoint too."""
    from sqlalchemy import update

    from meterline.events.models import WebhookEndpoint

    bad, _ = endpoint(db, tenant_id, clock, "http://example.com/x")
    endpoint(db, tenant_id, clock, receiver.url)
    with db.session() as s:
        s.execute(update(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == bad)
                  .values(url="http://\u2603.example/x"))
    event(db, tenant_id, clock)
    drain(dispatcher)
    by_endpoint = {d.endpoint_id: d for d in deliveries(db, tenant_id)}
    assert by_endpoint[bad].status == "pending" and by_endpoint[bad].attempts == 1
    assert "IDNA" in (by_endpoint[bad].last_error or "") or "URL" in (by_endpoint[bad].last_error or "")
    assert len(receiver.for_tenant(tenant_id)) == 1
    assert [d.status for k, d in by_endpoint.items() if k != bad] == ["delivered"]


def test_an_endpoint_that_drips_its_answer_is_cut_off_at_the_deadline(db, clock, tenant_id, monkeypatch):
    import http.server
    import threading
    import time

    from tests.events.conftest import SUBJECTS

    stop = threading.Event()

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(500)
            self.send_header("content-length", "1000")
            self.end_headers()
            while not stop.is_set():  # a byte every 0.3 s: no single read ever times out
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.3)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    d = Dispatcher(db, clock, retry_schedule=(5,), timeout_s=1.0, subjects=SUBJECTS)
    try:
        endpoint(db, tenant_id, clock, f"http://127.0.0.1:{server.server_port}/")
        event(db, tenant_id, clock)
        d.run()
        started = time.monotonic()
        assert d.deliver() == 1
        assert time.monotonic() - started < 3
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        d.close()
    [row] = deliveries(db, tenant_id)
    assert (row.status, row.last_error) == ("pending", "timeout")
