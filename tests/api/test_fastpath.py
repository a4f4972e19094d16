"""The fast path: hot routes answered ahead of FastAPI's router, identically to it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from meterline.api.app import MeterlineApp
from meterline.api.fastpath import FastPathMiddleware, FastRoute
from meterline.errors import Conflict
from tests.api.conftest import ApiTenant, assert_problem, create_account, post_transfer


def _fast_layer(client: TestClient) -> FastPathMiddleware:
    app = client.app
    assert isinstance(app, MeterlineApp) and app.front is not None
    layer: Any = app.front
    while not isinstance(layer, FastPathMiddleware):
        layer = layer.app
    return layer


@contextmanager
def router_disabled(client: TestClient) -> Iterator[None]:
    """Within the block, any request that reaches FastAPI's router fails the test."""
    layer = _fast_layer(client)
    inner = layer.app

    async def no_router(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError(f"the router handled {scope['method']} {scope['path']}")

    layer.app = no_router
    try:
        yield
    finally:
        layer.app = inner


# -- the middleware on its own --------------------------------------------------------------------


def _call(mw: FastPathMiddleware, method: str, path: str, chunks: list[bytes]) -> tuple[int, bytes, Any]:
    scope: dict[str, Any] = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    out: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        out.append(message)

    asyncio.run(mw(scope, receive, send))
    return out[0]["status"], b"".join(m.get("body", b"") for m in out[1:]), scope


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    """Stands for FastAPI: echoes the body it receives, so tests see what was replayed."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await PlainTextResponse(b"router:" + body)(scope, receive, send)


async def _echo(request: Request) -> Response | None:
    body = await request.body()
    if body == b"decline":
        return None
    if body == b"conflict":
        raise Conflict("already taken")
    if body == b"boom":
        raise RuntimeError("bug")
    return PlainTextResponse(b"fast:" + request.path_params.get("id", "").encode() + b":" + body)


def _mw() -> FastPathMiddleware:
    return FastPathMiddleware(_inner, [FastRoute("POST", "/v1/things", _echo),
                                       FastRoute("POST", "/v1/things/{id}/poke", _echo)])


def test_exact_and_template_paths_are_dispatched_with_their_params() -> None:
    mw = _mw()
    assert _call(mw, "POST", "/v1/things", [b"x"])[:2] == (200, b"fast::x")
    status, body, scope = _call(mw, "POST", "/v1/things/t-1/poke", [b"y"])
    assert (status, body) == (200, b"fast:t-1:y")
    assert scope["route"].path == "/v1/things/{id}/poke"  # the metrics label is the template


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/things"), ("POST", "/v1/things/"), ("POST", "/v1/things/a/b/poke"), ("POST", "/v1/other"),
    ("POST", "/v2/things"), ("POST", "/"),
])
def test_anything_else_goes_to_the_router(method: str, path: str) -> None:
    assert _call(_mw(), method, path, [b"z"])[:2] == (200, b"router:z")


def test_a_declined_request_reaches_the_router_with_its_body() -> None:
    assert _call(_mw(), "POST", "/v1/things", [b"decline"])[:2] == (200, b"router:decline")


def test_a_body_in_several_chunks_is_replayed_whole_to_the_router() -> None:
    assert _call(_mw(), "POST", "/v1/things", [b"ab", b"cd"])[:2] == (200, b"router:abcd")


def test_errors_render_as_problems() -> None:
    status, body, _ = _call(_mw(), "POST", "/v1/things", [b"conflict"])
    assert status == 409 and b'"code":"conflict"' in body
    status, body, _ = _call(_mw(), "POST", "/v1/things", [b"boom"])
    assert status == 500 and b'"code":"internal_error"' in body and b"bug" not in body


# -- the hot routes of the app --------------------------------------------------------------------


def test_transfers_are_posted_without_the_router_and_answer_as_it_does(client: TestClient,
                                                                        tenant: ApiTenant) -> None:
    create_account(client, tenant, "fp-a")
    create_account(client, tenant, "fp-b")
    with router_disabled(client):
        r = post_transfer(client, tenant, id="fp-1", debit_account_id="fp-a", credit_account_id="fp-b",
                          amount="1.25", asset="USD")
        assert r.status_code == 201, r.text
        assert r.json()["amount"] == "1.25"
        again = post_transfer(client, tenant, id="fp-1", debit_account_id="fp-a", credit_account_id="fp-b",
                              amount="1.25", asset="USD")
        assert again.status_code == 200 and again.json() == r.json()
        assert_problem(post_transfer(client, tenant, id="fp-2", debit_account_id="fp-a",
                                     credit_account_id="nope", amount="1", asset="USD"),
                       404, "credit_account_not_found")
        assert_problem(post_transfer(client, tenant, id="fp-3", debit_account_id="fp-a",
                                     credit_account_id="fp-b", amount="1.234", asset="USD"), 422, "amount_precision")
        assert_problem(client.post("/v1/transfers", json={"id": "fp-4"}), 401, "unauthenticated")
        assert_problem(client.post("/v1/transfers", json={"id": "fp-4"}, headers=tenant.r), 403, "forbidden")
    assert client.get("/v1/transfers/fp-1", headers=tenant.r).json()["amount"] == "1.25"


def test_every_fast_route_is_also_a_documented_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    layer = _fast_layer(client)
    routes = [*layer._exact.values(), *(r for rs in layer._templates.values() for r in rs)]
    assert len(routes) >= 6
    for route in routes:
        assert route.method.lower() in paths.get(route.path, {}), route.path
