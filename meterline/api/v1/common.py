"""What the /v1 routers share: scopes, error docs, path and query types, cursors."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import Depends, Path, Query
from pydantic import BaseModel, Field

from meterline.api.body import inline_schema
from meterline.api.deps import require, require_async
from meterline.api.problems import PROBLEM
from meterline.db.base import bigint_text
from meterline.errors import MeterlineError
from meterline.identity.service import Principal
from meterline.ledger.schemas import ASSET_PATTERN, ID_PATTERN, TEXT_PATTERN

# -- scopes (`admin` implies every scope) ---------------------------------------------
LedgerRead = Annotated[Principal, Depends(require("ledger:read"))]
LedgerWrite = Annotated[Principal, Depends(require("ledger:write"))]
Admin = Annotated[Principal, Depends(require("admin"))]
# For the async hot paths (POST /v1/transfers, …): no threadpool hop when the key is cached.
# The raw ledger (accounts, transfers, holds, inclusion proofs) names any account of the
# tenant, so it is for staff; everyone else reaches their money through scoped routes.
LedgerStaffRead = Annotated[Principal, Depends(require("ledger:read", staff=True))]
LedgerStaffWrite = Annotated[Principal, Depends(require("ledger:write", staff=True))]
ledger_staff_write_async = require_async("ledger:write", staff=True)
LedgerStaffWriteAsync = Annotated[Principal, Depends(ledger_staff_write_async)]
ledger_write_async = require_async("ledger:write")
ledger_read_async = require_async("ledger:read")
LedgerWriteAsync = Annotated[Principal, Depends(ledger_write_async)]
LedgerReadAsync = Annotated[Principal, Depends(ledger_read_async)]

# -- path and query parameters ----------------------------------------------------------
AccountIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]
TransferIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN)]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size (1-1000).")]
Cursor = Annotated[str | None, Query(max_length=400, pattern=r"^[A-Za-z0-9_-]*$",
                                     description="`next_cursor` of the previous page.")]
TextFilter = Annotated[str | None, Query(max_length=128, pattern=TEXT_PATTERN)]
AssetFilter = Annotated[str | None, Query(pattern=ASSET_PATTERN)]


# -- error documentation ----------------------------------------------------------------
class FieldError(BaseModel):
    field: str
    code: str
    detail: str


class Problem(BaseModel):
    """RFC 9457 problem details; `code` is the stable machine-readable reason."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = Field(default=None, description="Field errors (422 validation_error).")


_PROBLEM_SCHEMA = inline_schema(Problem)
_AUTH = {
    401: "`unauthenticated`, `invalid_api_key`: no key, or an unknown or revoked key",
    403: "`forbidden`: the key lacks the scope this route needs",
}


def errors(extra: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the auth errors plus its own, each as problem+json."""
    merged = {**_AUTH, **(extra or {})}
    return {
        status: {"description": text, "content": {PROBLEM: {"schema": _PROBLEM_SCHEMA}}}
        for status, text in sorted(merged.items())
    }


# -- cursors ----------------------------------------------------------------------------
class InvalidCursor(MeterlineError):
    status = 422
    code = "invalid_cursor"
    title = "The cursor is not valid"


def encode_cursor(raw: str | None) -> str | None:
    """Opaque to clients: what a cursor holds may change without breaking them."""
    return None if raw is None else base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("use the next_cursor of a previous page") from None
    # What a cursor holds is compared with ids in the database: a control character (NUL,
    # which PostgreSQL's text cannot hold) can only come from a forged one.
    if not raw.isprintable():
        raise InvalidCursor("use the next_cursor of a previous page")
    return raw


def decode_seq_cursor(cursor: str | None) -> int | None:
    raw = decode_cursor(cursor)
    if raw is None:
        return None
    seq = bigint_text(raw)
    if seq is None:
        raise InvalidCursor("use the next_cursor of a previous page")
    return seq


def decode_time_id_cursor(cursor: str | None) -> tuple[int, str] | None:
    """A `<time ns>:<id>` cursor (pages ordered by creation time, then id) as (time, id)."""
    raw = decode_cursor(cursor)
    if raw is None:
        return None
    at, _, row_id = raw.partition(":")
    at_ns = bigint_text(at)
    if at_ns is None or not row_id:
        raise InvalidCursor("use the next_cursor of a previous page")
    return at_ns, row_id
