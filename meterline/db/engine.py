"""Engines and sessions for SQLite (embedded default) and PostgreSQL (production).

SQLite runs in WAL mode with ``synchronous=FULL`` (a committed transfer survives
power loss) and foreign keys on. A transaction that will write must start with
``BEGIN IMMEDIATE``: a plain deferred ``BEGIN`` that reads and then writes fails
with ``SQLITE_BUSY`` under load instead of waiting. Readers keep the deferred
``BEGIN`` so they never queue behind the writer (WAL lets them read a snapshot).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

WRITE = {"sqlite_begin": "IMMEDIATE"}
# A long-lived SQLite writer (a group committer) keeps this much of the file in its own
# page cache (KiB): the ledger's account rows and index pages it rewrites every batch.
# At the default 2 MiB a batch of 1,000 transfers over 10,000 accounts re-reads most of
# them from the OS each time (about a fifth of SQLite's CPU per batch, measured).
WRITER_CACHE_KIB = 64 * 1024
_DEFAULT_CACHE_KIB = 2000


def make_engine(url: str, *, busy_timeout_ms: int = 30_000, pool_size: int = 10) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
            pool_size=pool_size,
            max_overflow=20,
        )
        _configure_sqlite(engine, busy_timeout_ms)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return create_engine(url, pool_size=pool_size, max_overflow=20, pool_pre_ping=True)


def make_nullpool_engine(url: str) -> Engine:
    """An engine that keeps no connections open (CLI one-shots, migrations)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    engine = create_engine(url, poolclass=NullPool)
    if url.startswith("sqlite"):
        _configure_sqlite(engine, 30_000)
    return engine


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the driver so we can say BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        # On the driver connection: SQLAlchemy's statement machinery (events, cursor wrapping,
        # result setup) cost more than the BEGIN itself — a tenth of a group-commit writer's
        # time per batch of single transfers.
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.execute(_BEGIN[mode])


_BEGIN = {mode: f"BEGIN {mode}" for mode in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")}


def tune_sqlite_writer(conn: Connection, *, writer: bool = True) -> None:
    """Give a long-lived writer connection its larger page cache (or take it back before the
    connection returns to the pool). On the DBAPI connection: no transaction is begun."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    kib = WRITER_CACHE_KIB if writer else _DEFAULT_CACHE_KIB
    raw.execute(f"PRAGMA cache_size=-{kib}")


class Database:
    """One engine plus the two session factories every edge uses.

    `write_session()` / `read_session()` are the one-transaction-per-unit-of-work
    boundary: they commit on success and roll back on any exception. Services
    only ever `flush()`.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 30_000, pool_size: int = 10) -> None:
        self.url = url
        self.engine = make_engine(url, busy_timeout_ms=busy_timeout_ms, pool_size=pool_size)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writer_engine: Engine | None = None

    def new_session(self, *, write: bool) -> Session:
        session = self._sessions()
        if write and self.is_sqlite:
            session.connection(execution_options=WRITE)
        return session

    @contextmanager
    def session(self, *, write: bool = True) -> Iterator[Session]:
        session = self.new_session(write=write)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """A Core connection in one write transaction (the ledger batcher's unit)."""
        with self.engine.connect() as conn:
            if self.is_sqlite:
                conn = conn.execution_options(**WRITE)
            with conn.begin():
                yield conn

    def writer_connection(self) -> Connection:
        """A connection for a long-lived writer (a group committer), which keeps it across
        batches and closes it after a failure.

        On PostgreSQL it is a new connection of its own, outside the pool, on which psycopg
        never prepares statements (`prepare_threshold=None`): the ledger's writer prepares
        its own, by name, and psycopg answers a rollback on a connection where it prepared
        anything with DEALLOCATE ALL, which would drop them unseen. Never pooled, so no other
        user inherits them, and a writer reconnecting after a failure starts clean.
        """
        if self.is_sqlite:
            return self.engine.connect()
        if self._writer_engine is None:
            self._writer_engine = create_engine(
                self.engine.url, poolclass=NullPool, connect_args={"prepare_threshold": None}
            )
        return self._writer_engine.connect()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._writer_engine is not None:
            self._writer_engine.dispose()
