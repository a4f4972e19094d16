"""Request metrics (Prometheus) as a plain ASGI middleware — cheap on the hot path."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("meterline_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "meterline_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Label children resolved once per label set: `labels()` validates and hashes its
        # arguments on every call, a visible share of a hot request.
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._latencies: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            # The route template, not the raw path, keeps label cardinality bounded.
            name = getattr(route, "path", "unmatched")
            method = scope["method"]
            counter = self._counters.get((method, name, status))
            if counter is None:
                counter = self._counters[(method, name, status)] = REQUESTS.labels(method, name, str(status))
            latency = self._latencies.get((method, name))
            if latency is None:
                latency = self._latencies[(method, name)] = LATENCY.labels(method, name)
            counter.inc()
            latency.observe(time.perf_counter() - started)
