"""Exact JSON bodies: numbers parse as Decimal, never float.

FastAPI's own body parsing goes through `json.loads` with floats, which would
turn ``0.1`` into 0.1000000000000000055… before any validator ran. Routes that
carry money take their body through `parse_json` instead, then validate it with
Pydantic in Python mode, so a JSON number reaches the money parser as the exact
Decimal the client wrote. It also refuses a key given twice in any object (422
`validation_error`, an error `duplicate_key` per repeated key), where `json.loads` keeps
the last value.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from meterline.api.problems import field_errors
from meterline.errors import PayloadTooLarge, ValidationFailed

M = TypeVar("M", bound=BaseModel)
_INLINE_PARSE_BYTES = 64 * 1024


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _DuplicateKey(Exception):
    """An object of the body names a key twice (found while parsing; located afterwards)."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A key given twice must not resolve silently to its last value: a proxy, a signature
    # check or a log may have read the first (`{"amount":"1.00","amount":"2.00"}`). The C
    # scanner hands each object's pairs here (escapes already decoded, so `"\u0061mount"` is
    # `amount` too); a dict of them that comes out shorter had a duplicate. Measured: ~0.4 µs
    # on a single-transfer body (1.25 → 1.65 µs); a pre-check counting the body's colons
    # against a flat object's keys saved only ~0.1 µs of it and cost nested bodies more.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey
    return obj


# One decoder for every body: json.loads with hooks builds a new decoder per call.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant, object_pairs_hook=_object)


class _Pairs(list[tuple[str, Any]]):
    """An object's pairs as written, duplicates kept (only to name them in the error)."""


_PAIRS_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant, object_pairs_hook=_Pairs)


def loads(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
        data = _DECODER.decode(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValidationFailed("the body nests too deeply") from None
    except _DuplicateKey:
        raise _duplicate_problem(text) from None
    # Two characters JSON can carry only as escapes: U+0000 (`\u0000`) and a lone UTF-16
    # surrogate (`\ud800`). PostgreSQL's text cannot hold either (the write fails as a 500,
    # and a usage batch would lose its good events with it) and SQLite would store them
    # silently, so both are refused here, naming the field. One C-speed scan clears every
    # body without such an escape; one with it (an emoji written as a pair) is walked.
    if "\\u0000" in text or "\\ud" in text or "\\uD" in text:
        try:
            bad = _bad_text(data, ())
        except RecursionError:
            raise ValidationFailed("the body nests too deeply") from None
        if bad:
            raise ValidationFailed("text may not contain U+0000 (NUL) or a lone surrogate", errors=[
                {"field": field, "code": code, "detail": _BAD_TEXT[code]} for field, code in bad[:10]])
    return data


_BAD_TEXT = {"nul_character": "text may not contain U+0000 (NUL)",
             "invalid_unicode": "text may not contain a lone UTF-16 surrogate (\\ud800-\\udfff)"}


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "nul_character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid_unicode"
    return None


def _bad_text(node: Any, at: tuple[str | int, ...]) -> list[tuple[str, str]]:
    """Where a parsed body holds text PostgreSQL cannot store — in a key or a string — as
    (field, code), fields named as validation errors name them (`transfers.0.id`)."""
    if isinstance(node, str):
        code = _text_problem(node)
        return [(".".join(map(str, at)) or "body", code)] if code else []
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            code = _text_problem(key)
            found += [(".".join(map(str, (*at, key))), code)] if code else _bad_text(value, (*at, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _bad_text(value, (*at, i))
    return found


def _duplicate_problem(text: str) -> ValidationFailed:
    """The 422 for a body with a repeated key, naming each (rare: the body is parsed again,
    keeping every pair). A body that breaks off after the repeated key is invalid JSON first."""
    try:
        fields = _duplicate_keys(_PAIRS_DECODER.decode(text), ())
    except ValueError as exc:
        return ValidationFailed(f"the body is not valid JSON: {exc}")
    except RecursionError:
        return ValidationFailed("the body nests too deeply")
    return ValidationFailed("a JSON object may not give the same key twice", errors=[
        {"field": field, "code": "duplicate_key", "detail": "this key appears more than once in its object"}
        for field in fields[:10]])


def _duplicate_keys(node: Any, at: tuple[str | int, ...]) -> list[str]:
    """The fields (`transfers.0.amount`) whose key repeats in its object, each once, in order."""
    found: list[str] = []
    if isinstance(node, _Pairs):
        seen: set[str] = set()
        for key, value in node:
            if key in seen:
                field = ".".join(map(str, (*at, key)))
                if field not in found:
                    found.append(field)
            seen.add(key)
            found += _duplicate_keys(value, (*at, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _duplicate_keys(value, (*at, i))
    return found


async def read_json(request: Request, *, max_bytes: int) -> tuple[Any, bytes]:
    """Read, size-check and parse a body (numbers as Decimal). Returns the data and the raw bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
    raw = await request.body()
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
    if len(raw) > _INLINE_PARSE_BYTES:
        # A big body (a batch) is parsed off the event loop so it can't stall other requests.
        return await run_in_threadpool(loads, raw), raw
    return loads(raw), raw


async def parse_json(request: Request, model: type[M], *, max_bytes: int) -> tuple[M, bytes]:
    """Read, size-check, parse and validate a body. Returns the model and the raw bytes."""
    data, raw = await read_json(request, max_bytes=max_bytes)
    return validate(model, data), raw


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed("one or more fields are invalid", errors=field_errors(list(exc.errors()))) from None


@dataclass(frozen=True, slots=True)
class Parsed(Generic[M]):
    """A validated body and the exact bytes it came from (for Idempotency-Key hashing)."""

    value: M
    raw: bytes


def json_body(model: type[M]) -> Callable[[Request], Awaitable[Parsed[M]]]:
    """A dependency that parses the body exactly (`parse_json`), for sync (`def`) handlers.

    Declare it after the principal so a caller without a key gets 401, not 422.
    """

    async def dependency(request: Request) -> Parsed[M]:
        max_bytes: int = request.app.state.runtime.settings.max_body_bytes
        value, raw = await parse_json(request, model, max_bytes=max_bytes)
        return Parsed(value, raw)

    dependency.__name__ = f"{model.__name__}_body"
    return dependency


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON Schema with nested definitions inlined, to stand alone in OpenAPI."""

    def inline(node: Any, defs: dict[str, Any]) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.rsplit("/", 1)[1]], defs)
            return {k: inline(v, defs) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [inline(v, defs) for v in node]
        return node

    schema = model.model_json_schema()
    result: dict[str, Any] = inline(schema, schema.get("$defs", {}))
    return result


def openapi_body(*models: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting a body that FastAPI itself does not parse (see `parse_json`)."""
    schemas = [inline_schema(m) for m in models]
    schema = schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
