"""A real HTTP receiver for webhook deliveries, and a dispatcher around the test database."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.events.dispatch import Dispatcher
from meterline.events.outbox import PAYMENTS, USAGE


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers each POST with the next status of `statuses` (the last one repeats)."""

    url: str = ""
    statuses: list[int] = field(default_factory=lambda: [204])
    got: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, received: Received) -> int:
        with self.lock:
            self.got.append(received)
            return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def for_tenant(self, tenant_id: str) -> list[Received]:
        return [r for r in self.got if r.json["tenant"] == tenant_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            status = rec.answer(Received({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"no")

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the dispatcher opens up to 16 connections at once (the default is 5)

    server = Server(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_port}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


SUBJECTS = {USAGE: "test.billing.usage", PAYMENTS: "test.billing.payments"}


@pytest.fixture
def dispatcher(db: Database, clock: FrozenClock) -> Iterator[Dispatcher]:
    d = Dispatcher(db, clock, retry_schedule=(5, 60), timeout_s=2.0, subjects=SUBJECTS)
    yield d
    d.close()


def drain(d: Dispatcher) -> None:
    """Run passes until nothing moves (other tests' events share the database)."""
    for _ in range(50):
        if d.fan_out() + d.deliver() == 0:
            return
    raise AssertionError("the dispatcher never settled")
