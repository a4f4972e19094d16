"""The server's connection protocol: one write per event-loop turn, nothing lost or reordered."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from meterline.api.server import FLUSH_BYTES, CorkedTransport, HttpProtocol


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.eof = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5555)}.get(name, default)


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test body on a fresh event loop (the suite has no async test plugin)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


def _corked() -> tuple[FakeTransport, CorkedTransport]:
    """A fake socket transport and the corked transport over it, on the running loop."""
    fake = FakeTransport()
    return fake, CorkedTransport(fake, asyncio.get_running_loop())  # type: ignore[arg-type]


async def _turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


@in_loop
async def test_writes_of_one_turn_go_out_as_one_in_order() -> None:
    fake, corked = _corked()
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    corked.write(head)
    corked.write(b"{}")
    assert fake.writes == []  # nothing until the turn ends
    assert corked.get_write_buffer_size() == len(head) + 2 + 7  # gathered + the transport's own
    await _turn()
    assert fake.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    corked.write(b"next")
    await _turn()
    assert fake.writes[1:] == [b"next"]


@in_loop
async def test_close_sends_what_was_written_first_and_abort_drops_it() -> None:
    fake, corked = _corked()
    corked.write(b"answer")
    corked.close()
    assert fake.writes == [b"answer"] and fake.closed
    await _turn()  # the scheduled flush finds nothing left and writes nothing after the close
    assert fake.writes == [b"answer"]

    fake, corked = _corked()
    corked.write(b"half an answer")
    corked.abort()
    await _turn()
    assert fake.writes == [] and fake.aborted


@in_loop
async def test_a_large_answer_goes_out_without_waiting_for_the_turn() -> None:
    fake, corked = _corked()
    corked.write(b"h")
    corked.write(b"x" * FLUSH_BYTES)
    assert fake.writes == [b"h" + b"x" * FLUSH_BYTES]
    corked.write(b"tail")
    await _turn()
    assert fake.writes[1:] == [b"tail"]


@in_loop
async def test_write_eof_flushes_and_the_rest_is_the_transport_s() -> None:
    fake, corked = _corked()
    corked.write(b"last")
    corked.write_eof()
    assert fake.writes == [b"last"] and fake.eof
    assert corked.get_extra_info("peername") == ("127.0.0.1", 5555)
    assert corked.is_closing() is False


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":  # a chunked answer in several body messages
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(3):
            await send({"type": "http.response.body", "body": f"part{i};".encode(), "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"end"})
        return
    message = await receive()
    body = message.get("body", b"")
    size = int(scope["query_string"] or b"0")
    payload = body + b"y" * size
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/octet-stream")]})
    await send({"type": "http.response.body", "body": payload})


@pytest.fixture
def server_url() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, http=HttpProtocol, log_level="warning",
                            lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.02)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_a_real_server_answers_keep_alive_large_streamed_and_closing_requests(server_url: str) -> None:
    with httpx.Client(base_url=server_url) as client:
        for i in range(20):  # one keep-alive connection: each answer whole and in order
            r = client.post("/echo", content=f"request {i}".encode())
            assert r.status_code == 201 and r.content == f"request {i}".encode()
        big = client.post(f"/echo?{FLUSH_BYTES * 3}", content=b"b")
        assert big.status_code == 201 and big.content == b"b" + b"y" * FLUSH_BYTES * 3
        streamed = client.get("/stream")
        assert streamed.text == "part0;part1;part2;end"
        closing = client.post("/echo", content=b"bye", headers={"Connection": "close"})
        assert closing.content == b"bye"
        again = client.post("/echo", content=b"new connection")
        assert again.content == b"new connection"
