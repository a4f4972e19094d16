"""Declarative base with a naming convention, so Alembic names constraints stably."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


class Base(DeclarativeBase):
    metadata = metadata


# The largest value a BIGINT column holds (PostgreSQL's int8, SQLite's 64-bit INTEGER).
BIGINT_MAX = 2**63 - 1


def bigint_text(text: str) -> int | None:
    """`text` as a BIGINT if it is one written in ASCII digits, else None. Why not `isdigit`
    alone: it is true of "²" (which `int` refuses) and of 19-digit numbers past the range
    (which the database refuses) — a cursor carrying either was a 500."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    value = int(text)
    return value if value <= BIGINT_MAX else None
