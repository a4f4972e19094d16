"""Lean reads of one rental by primary key: one SELECT, a plain row, no ORM object graph.

Why: a contract's status is polled while its device streams samples, thousands of
times a second across a fleet. Through the ORM a status read costs a session, an
identity map, a `Rental` with its JSON quote decoded and an instance state — some
hundreds of microseconds. The figures a status shows need none of that: they are
computed from a dozen scalar columns (`rental_service.accrual`, the one definition of
the running cost). `ContractReader.status_row` selects exactly those columns by
primary key and returns a `ContractRow`.

On SQLite the read is a few microseconds of C, shorter than the hop to a threadpool
worker that would run it, so the caller may run it inline (on the event loop): each
thread keeps one connection of its own, outside the pool, in autocommit mode. A
single SELECT is its own consistent read in WAL mode and never waits for the writer;
the statement is stepped to completion at once (`fetchall`), so no read snapshot is
left open to hold back a checkpoint. On PostgreSQL the read is a network round trip:
`status_row` then uses a pooled connection and belongs on a worker thread.

Tenant scoping: the key is (tenant_id, id) — another tenant's contract is not found.
Kind: the read names the rental style it addresses (`prepaid` for the SI64 profile), and the
style is part of the WHERE clause, so a pay-as-you-go session read through a contract route
is not found either — in the same single statement, at no extra cost.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, fields
from typing import Any, cast

from sqlalchemy import Table, bindparam, select

from meterline.db.engine import Database
from meterline.rentals.models import Rental


@dataclass(slots=True)
class ContractRow:
    """What a contract's status shows: satisfies `rental_service.AccrualState`."""

    id: str
    status: str
    customer_id: str
    tier: str | None
    device_id: str | None
    asset: str
    scale: int
    held_minor: int
    duration_s: int | None
    created_at: int
    started_at: int
    expires_at: int | None
    ended_at: int | None
    settled_at: int | None
    used_minor: int | None
    refund_minor: int | None
    refund_tx: str | None
    rate_num: int
    rate_den: int
    rounding: str
    power_cost_e6: int


_T = cast(Table, Rental.__table__)
# The row is built positionally from ContractRow's fields, so the column list lives there only.
_COLUMNS = tuple(f.name for f in fields(ContractRow))
# (The bind parameters appear in this order, which the SQLite path's positional tuple follows.)
_BY_KEY = select(*(_T.c[c] for c in _COLUMNS)).where(_T.c.tenant_id == bindparam("tenant_id"),
                                                     _T.c.id == bindparam("rental_id"),
                                                     _T.c.style == bindparam("style"))


class ContractReader:
    """Primary-key reads of rentals for one `Database` (get it with `contract_reader(db)`)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.inline = db.is_sqlite  # cheap enough to run on the caller's thread (see module doc)
        self._local = threading.local()
        self._sql = str(_BY_KEY.compile(dialect=db.engine.dialect)) if db.is_sqlite else ""

    def status_row(self, tenant_id: str, rental_id: str, *, style: str) -> ContractRow | None:
        """The contract's status columns, or None when this tenant has no such rental of this
        `style` (a rental of the other style is not found: ids do not leak across profiles)."""
        if not self.db.is_sqlite:
            with self.db.engine.connect() as conn:
                row = conn.execute(_BY_KEY, {"tenant_id": tenant_id, "rental_id": rental_id, "style": style}).first()
            return None if row is None else ContractRow(*row)
        try:
            rows = self._connection().execute(self._sql, (tenant_id, rental_id, style)).fetchall()
        except Exception:
            self._drop()  # the connection may be broken: the next read opens a fresh one
            raise
        return ContractRow(*rows[0]) if rows else None

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # A pool connection (so the engine's connect-time PRAGMAs apply), detached from the
            # pool: it belongs to this thread for good and is never reset or handed to another.
            fairy = self.db.engine.raw_connection()
            fairy.detach()
            conn = self._local.conn = fairy.dbapi_connection
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: S110 - already failing; the caller sees the original error
                pass


_READERS: weakref.WeakKeyDictionary[Database, ContractReader] = weakref.WeakKeyDictionary()
_READERS_LOCK = threading.Lock()


def contract_reader(db: Database) -> ContractReader:
    """The one reader of `db` (its per-thread SQLite connections are reused across calls)."""
    reader = _READERS.get(db)
    if reader is None:
        with _READERS_LOCK:
            reader = _READERS.get(db)
            if reader is None:
                reader = _READERS[db] = ContractReader(db)
    return reader
