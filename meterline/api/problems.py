"""RFC 9457 problem+json: the one renderer for every error the API returns."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from meterline.errors import MeterlineError

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"


def problem(status: int, code: str, title: str, detail: str, instance: str | None = None,
            **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://meterline.dev/problems/{code}",
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def from_error(exc: MeterlineError, instance: str | None = None) -> JSONResponse:
    return problem(exc.status, exc.code, exc.title, exc.detail, instance, **exc.extra)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def field_errors(errors: list[Any]) -> list[dict[str, Any]]:
    return [{"field": _loc(e.get("loc", ())), "code": e.get("type", "invalid"), "detail": e.get("msg", "")}
            for e in errors]


def render(exc: Exception, instance: str | None) -> JSONResponse:
    """The problem response for any exception — the one mapping from errors to HTTP, shared by
    the app's exception handlers and the fast path (meterline.api.fastpath)."""
    if isinstance(exc, MeterlineError):
        return from_error(exc, instance)
    if isinstance(exc, RequestValidationError):
        return problem(422, "validation_error", "The request is not valid",
                       "one or more fields are invalid", instance,
                       errors=field_errors(list(exc.errors())))
    if isinstance(exc, StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthenticated"}.get(
            exc.status_code, "http_error")
        return problem(exc.status_code, code, str(exc.detail), str(exc.detail), instance)
    log.error("unhandled error on %s", instance, exc_info=exc)
    return problem(500, "internal_error", "Internal error", "an unexpected error occurred; it was logged",
                   instance)


def install(app: FastAPI) -> None:
    async def _handler(request: Request, exc: Exception) -> JSONResponse:
        return render(exc, request.url.path)

    for kind in (MeterlineError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, _handler)
