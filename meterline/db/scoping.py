"""The one tenant filter. Every list and get of a tenant-owned table goes through here."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select

S = TypeVar("S", bound=Select[Any])


def scoped(stmt: S, model: Any, tenant_id: str) -> S:
    """Add ``model.tenant_id == tenant_id``; refuses an empty tenant so a bug can't read all."""
    if not tenant_id:
        raise ValueError("tenant_id is required for a scoped query")
    return stmt.where(model.tenant_id == tenant_id)
