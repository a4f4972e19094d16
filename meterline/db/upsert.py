"""INSERT … ON CONFLICT for both backends.

Why: "read, then insert or update" races on PostgreSQL — two requests both find no row, and
the loser's insert meets the key as an IntegrityError (or its update finds the row gone).
One statement that inserts or settles the conflict itself has no such window. PostgreSQL
and SQLite spell it alike; SQLAlchemy gives each dialect its own `insert` construct.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session


def insert(session: Session, table: Table) -> Any:
    """The dialect's INSERT for `table`, which has `on_conflict_do_nothing/_do_update`."""
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)
