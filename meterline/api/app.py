"""The ASGI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from meterline import __version__
from meterline.api import health, problems
from meterline.api.fastpath import FastPathMiddleware, FastRoute
from meterline.api.observability import MetricsMiddleware
from meterline.api.runtime import Runtime
from meterline.payments.rails import configure_rails

log = logging.getLogger(__name__)

DESCRIPTION = """
Meterline's native API. Amounts are decimal strings in the asset's major unit
(`"12.50"` USD, `"0.000000001"` SOL); times are RFC 3339 UTC; lists use cursor
pagination (`next_cursor`). Every error is an RFC 9457 `application/problem+json`
body with a stable `code`. POSTs that create or move money accept an
`Idempotency-Key` header.
"""


class EdgeGuardMiddleware:
    """What is refused before any handler sees a request: a declared Content-Length over the
    limit (413, before anything reads the body) and the NUL character in the path or the
    query (422). PostgreSQL's text cannot hold U+0000 — a lookup by such an id would fail
    as a 500 — and SQLite would match or store it silently; no id or filter contains it.
    (Bodies are checked where they are parsed: `meterline.api.body.loads`.)"""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            response = self._refusal(scope)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        path = scope.get("path", "")
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return problems.problem(413, "payload_too_large", "The request is too large",
                                        f"the body is larger than {self.max_bytes} bytes", path)
        # (The query string is still percent-encoded; "%00" has no letters, so no case to fold.)
        where = "path" if "\x00" in path else "query" if b"%00" in scope.get("query_string", b"") else None
        if where is not None:
            return problems.problem(
                422, "validation_error", "The request is not valid", f"the {where} may not contain the NUL character",
                path,
                errors=[{"field": where, "code": "nul_character", "detail": "text may not contain U+0000 (NUL)"}])
        return None


class MeterlineApp(FastAPI):
    """FastAPI with Meterline's own ASGI layers *outside* Starlette's middleware stack.

    Metrics, the body limit and the fast path (meterline.api.fastpath) wrap the whole
    application, so a hot route costs a dict lookup and its handler — not FastAPI's
    seven middleware layers, router walk and dependency solving. Everything the fast
    path hands on goes through FastAPI exactly as before.
    """

    front: ASGIApp | None = None

    def install_front(self, routes: list[FastRoute], max_body_bytes: int) -> None:
        inner = super().__call__
        self.front = MetricsMiddleware(EdgeGuardMiddleware(FastPathMiddleware(inner, routes), max_body_bytes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.front is not None:
            scope["app"] = self  # what Starlette would set; fast handlers read app.state.runtime
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(runtime: Runtime, *, extra_lifespan: Any = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.ledger.start()
        runtime.sampler.start()
        try:
            if extra_lifespan is not None:
                async with extra_lifespan(runtime):
                    yield
            else:
                yield
        finally:
            runtime.sampler.stop()
            runtime.ledger.stop()
            if runtime.licensing is not None:
                runtime.licensing.audit.flush()  # nothing queued is lost on a clean shutdown

    app = MeterlineApp(
        title="Meterline",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.runtime = runtime
    configure_rails(runtime.settings)
    problems.install(app)
    app.include_router(health.router)
    from meterline.api.v1 import router as v1_router

    app.include_router(v1_router)
    from meterline.api.profiles import ROUTERS

    for profile_router in ROUTERS:
        app.include_router(profile_router)
    from meterline.api.profiles import FAST_ROUTES as PROFILE_FAST_ROUTES
    from meterline.api.v1 import FAST_ROUTES as V1_FAST_ROUTES

    # Outermost first: metrics → body limit → the fast path (hot routes) → FastAPI.
    app.install_front([*V1_FAST_ROUTES, *PROFILE_FAST_ROUTES], runtime.settings.max_body_bytes)

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> JSONResponse:
        return JSONResponse({"name": "meterline", "version": __version__, "docs": "/docs"})

    return app
