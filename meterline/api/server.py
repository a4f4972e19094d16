"""The HTTP connection protocol `meterline serve` runs: uvicorn's, with each answer sent in
one write.

Why: an ASGI answer is (at least) two messages — the status and headers, then the body —
and uvicorn writes each to the socket as it comes, so every answer cost two `send`
system calls. On the hot routes (a license check, a metrics sample, a single transfer)
that second call was a measurable share of the event loop's time. `CorkedTransport`
keeps what is written during one turn of the event loop and sends it with one call at
the end of that turn: the same bytes, in the same order, microseconds later.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Past this many gathered bytes a write goes out at once (a large streamed answer).
FLUSH_BYTES = 64 * 1024


class CorkedTransport:
    """A transport that gathers the writes of one event-loop turn into one.

    Everything but writing and closing is the wrapped transport's own (flow control,
    addresses, reading), so the protocol behaves exactly as on the bare transport.
    """

    __slots__ = ("_loop", "_pending", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()  # an answer written just before a close still goes out first
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = []
        self._size = 0
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._size + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `CorkedTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport, self.loop))  # type: ignore[arg-type]
