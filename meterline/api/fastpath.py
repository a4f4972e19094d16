"""Hot routes answered before FastAPI's router: an exact, indexed dispatch.

Why: FastAPI matches a request by walking every route (and, since 0.16x, every
included router twice) — with ~100 routes that walk, plus dependency solving
and the exception-middleware stack, costs several times more than a warm
license answer or a queued transfer. The few routes that devices and clients
hit thousands of times a second are registered here as `FastRoute`s and
dispatched by a dict lookup on (method, first path segment).

Each route is still declared as a normal FastAPI route, which stays the source
of the OpenAPI schema and the fallback: a fast handler returns ``None`` to hand
the request on (untouched, body replayed) — for any case it does not cover,
such as a path parameter that does not match its pattern (the route renders
the 422) or a cache miss. A handler may return ``None`` only before it has had
any effect. Errors it raises render through `problems.render`, the same
renderer the app's exception handlers use, so both paths answer alike.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterline.api import problems

P = TypeVar("P")
FastHandler = Callable[[Request], Awaitable[Response | None]]
_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class FastRoute:
    """`path` is a route template: literal segments and `{name}` segments (one segment each)."""

    method: str
    path: str
    handler: FastHandler
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    literal: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        segments = [_segment(s) for s in self.path.split("/")]
        object.__setattr__(self, "pattern", re.compile("^" + "/".join(segments) + "$"))
        object.__setattr__(self, "literal", "{" not in self.path)

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path.split("/", 2)[1]


def _segment(text: str) -> str:
    m = _PARAM.fullmatch(text)
    return f"(?P<{m.group(1)}>[^/]+)" if m else re.escape(text)


class _Label:
    """What the metrics middleware reads from scope["route"]: the route template."""

    def __init__(self, path: str) -> None:
        self.path = path


class FastPathMiddleware:
    """Dispatches registered hot routes directly; everything else goes to the app."""

    def __init__(self, app: ASGIApp, routes: Iterable[FastRoute] = ()) -> None:
        self.app = app
        self._exact: dict[tuple[str, str], FastRoute] = {}
        self._templates: dict[tuple[str, str], list[FastRoute]] = {}
        for route in routes:
            if route.literal:
                self._exact[(route.method, route.path)] = route
            else:
                self._templates.setdefault(route.key, []).append(route)
        self._labels = {id(r): _Label(r.path) for r in (*self._exact.values(),
                                                         *(r for rs in self._templates.values() for r in rs))}

    def _find(self, method: str, path: str) -> tuple[FastRoute, dict[str, str]] | None:
        route = self._exact.get((method, path))
        if route is not None:
            return route, {}
        candidates = self._templates.get((method, path.split("/", 2)[1] if path.count("/") else ""))
        for route in candidates or ():
            m = route.pattern.match(path)
            if m is not None:
                return route, m.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._find(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        route, params = found
        body = await _read_body(receive)
        if body is None:
            return  # the client went away mid-body
        raw, more = body
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": more}
            return await receive()

        if more:  # larger than one read: the normal route streams and limits it
            await self.app(scope, replay, send)
            return
        scope["path_params"] = params
        request = Request(scope, replay)
        # The body is already in hand: spare handlers Starlette's receive-and-join stream.
        request._body = raw
        try:
            response = await route.handler(request)
        except Exception as exc:  # rendered exactly as the app's exception handlers would
            response = problems.render(exc, scope["path"])
        if response is None:
            sent = False
            scope.pop("path_params", None)
            await self.app(scope, replay, send)
            return
        scope["route"] = self._labels[id(route)]
        await response(scope, replay, send)


async def _read_body(receive: Receive) -> tuple[bytes, bool] | None:
    """The body of a request sent in one message (the common case), or its first chunk with
    more_body=True; None when the client disconnected."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    return message.get("body", b""), bool(message.get("more_body", False))



def authorized(
    dependency: Callable[[Request], Awaitable[P]],
    endpoint: Callable[[Request, P], Awaitable[Response]],
) -> FastHandler:
    """A fast handler for an ``async def endpoint(request, principal)`` route: the same
    endpoint, called with the same (async) scope dependency FastAPI would have solved."""

    async def handler(request: Request) -> Response:
        return await endpoint(request, await dependency(request))

    return handler
