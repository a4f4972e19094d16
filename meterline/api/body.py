"""Exact JSON bodies: numbers parse as Decimal, never float.

FastAPI's own body parsing goes through `json.loads` with floats, which would
turn ``0.1`` into 0.1000000000000000055… before any validator ran. Routes that
carry money take their body through `parse_json` instead, then validate it with
Pydantic in Python mode, so a JSON number reaches the money parser as the exact
Decimal the client wrote.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from meterline.api.problems import field_errors
from meterline.errors import PayloadTooLarge, ValidationFailed

M = TypeVar("M", bound=BaseModel)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"the body is not valid JSON: {exc}") from None


async def parse_json(request: Request, model: type[M], *, max_bytes: int) -> tuple[M, bytes]:
    """Read, size-check, parse and validate a body. Returns the model and the raw bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
    raw = await request.body()
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_bytes} bytes")
    return validate(model, loads(raw)), raw


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed("one or more fields are invalid", errors=field_errors(list(exc.errors()))) from None
