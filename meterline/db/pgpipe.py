"""Statements sent straight through libpq's pipeline mode, for the ledger's PostgreSQL path.

Why not psycopg's cursors: for a group commit of a few single transfers the database work
is a few tens of microseconds, and psycopg's per-statement Python (query conversion,
adapter lookup, result bookkeeping, one `wait` per step) cost 100-150 µs of CPU per
statement — 2 ms per cycle was measured in the writer thread, most of it there, on a
2-core machine where the clients and PostgreSQL need the same cores. Here a statement is
prepared once per connection (named, in the same pipeline as its first use) and then sent
as a Bind/Execute of pre-encoded text parameters, so a whole batch — BEGIN, its writes
and COMMIT — is one round trip and a few tens of microseconds of Python.

Only values are parameters; statements are fixed strings from the ledger engine. Results
come back in text format; `rows()` turns them into Python values by a per-column kind.

A failed statement aborts the rest of the pipeline (PostgreSQL skips everything up to the
sync, COMMIT included): `run()` reads everything back, leaves pipeline mode, and raises
the first error as psycopg's exception class for it. The transaction is then in the
failed state and the caller's usual rollback applies.
"""

from __future__ import annotations

import json
import select
import weakref
from collections.abc import Sequence
from typing import Any

from psycopg import errors as pg_errors
from psycopg import pq
from sqlalchemy import Connection

Param = bytes | None

_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_IDLE = pq.TransactionStatus.IDLE

# Statement text -> its prepared name (the same for every connection), and for each psycopg
# connection the names already prepared on it (prepared statements live as long as the
# session and are not transactional, so a rolled-back batch keeps those it parsed).
_names: dict[str, bytes] = {}
_prepared: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()


def _name(sql: str) -> bytes:
    name = _names.get(sql)
    if name is None:
        name = _names[sql] = f"meterline_{len(_names)}".encode()
    return name


# -- parameter encoding (text format) ------------------------------------------------------


def text(value: str | None) -> Param:
    return None if value is None else value.encode()


def integer(value: int | None) -> Param:
    return None if value is None else str(value).encode()


def _quote(value: str | None) -> str:
    if value is None:
        return "NULL"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def text_array(values: Sequence[str | None]) -> bytes:
    """A text[] literal: every element quoted (so commas, braces and spaces are data).

    The common case — no NULL, no quote or backslash to escape — is one join in C; this
    runs for every column of every batch, a hundred elements per group commit.
    """
    if not values:
        return b"{}"
    if None not in values:
        probe = "".join(values)  # type: ignore[arg-type]
        if '"' not in probe and "\\" not in probe:
            return ('{"' + '","'.join(values) + '"}').encode()  # type: ignore[arg-type]
    return ("{" + ",".join([_quote(v) for v in values]) + "}").encode()


def int_array(values: Sequence[int | None]) -> bytes:
    if None not in values:
        return ("{" + ",".join(map(str, values)) + "}").encode()
    return ("{" + ",".join(["NULL" if v is None else str(v) for v in values]) + "}").encode()


# -- results -------------------------------------------------------------------------------


def _int(b: bytes) -> int:
    return int(b)


def _str(b: bytes) -> str:
    return b.decode()


_KINDS = {"i": _int, "t": _str, "j": lambda b: json.loads(b)}


def rows(result: pq.abc.PGresult, kinds: str) -> list[tuple[Any, ...]]:
    """The rows of a text-format result; `kinds` names each column: i(nt), t(ext), j(son)."""
    convert = [_KINDS[k] for k in kinds]
    get = result.get_value
    out = []
    for r in range(result.ntuples):
        out.append(tuple(None if (v := get(r, c)) is None else f(v) for c, f in enumerate(convert)))
    return out


def _wait(fd: int, events: int) -> None:
    poller = select.poll()
    poller.register(fd, events)
    poller.poll()


class PgPipe:
    """Statements queued for one connection, sent together by `run()` in one round trip.

    With `prepare`, each statement is prepared by name the first time it is sent on a
    connection — only for a connection nothing else prepares or deallocates on (a writer's
    own: `Database.writer_connection`); otherwise each goes as an unnamed statement, parsed
    and planned every time but safe on any pooled connection.

    `add` returns the index of the statement's result in the list `run` returns. A BEGIN is
    sent first when the connection is not in a transaction (as psycopg would before its own
    first statement); `run(commit=True)` ends the pipeline with COMMIT, so the writes and
    their commit travel together.
    """

    def __init__(self, conn: Connection, *, prepare: bool = False) -> None:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        self._raw = raw
        self._pg: Any = raw.pgconn  # type: ignore[attr-defined]
        self._prepare = prepare
        self._queue: list[tuple[str, Sequence[Param]]] = []
        self.round_trips = 0  # sent pipelines (tests and benchmarks count them)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def add(self, sql: str, params: Sequence[Param]) -> int:
        self._queue.append((sql, params))
        return len(self._queue) - 1

    def run(self, *, commit: bool = False) -> list[Any]:
        """Send everything queued (and COMMIT); return one result per `add`, in order."""
        queue, self._queue = self._queue, []
        if not queue and not commit:
            return []
        pg = self._pg
        prepared = _prepared.get(self._raw)
        if prepared is None:
            prepared = _prepared[self._raw] = set()
        # What each result slot is: ("begin"|"commit"|"prepare"|"stmt", name or index).
        slots: list[tuple[str, Any]] = []
        pg.enter_pipeline_mode()
        try:
            if pg.transaction_status == _IDLE:
                pg.send_query_params(b"BEGIN", None)
                slots.append(("begin", None))
            preparing: set[bytes] = set()
            for i, (sql, params) in enumerate(queue):
                if not self._prepare:
                    pg.send_query_params(sql.encode(), params)
                    slots.append(("stmt", i))
                    continue
                name = _name(sql)
                if name not in prepared and name not in preparing:
                    pg.send_prepare(name, sql.encode())
                    preparing.add(name)
                    slots.append(("prepare", name))
                pg.send_query_prepared(name, params)
                slots.append(("stmt", i))
            if commit:
                pg.send_query_params(b"COMMIT", None)
                slots.append(("commit", None))
            pg.pipeline_sync()
            self.round_trips += 1
            results, error = self._collect(slots, prepared)
        finally:
            if pg.pipeline_status:
                pg.exit_pipeline_mode()
        if error is not None:
            raise error
        return results

    def _collect(self, slots: list[tuple[str, Any]], prepared: set[bytes]) -> tuple[list[Any], Exception | None]:
        pg = self._pg
        self._flush()
        results: list[Any] = [None] * sum(1 for kind, _ in slots if kind == "stmt")
        error: Exception | None = None
        for kind, key in slots:
            res = self._next()
            if res is None:
                raise pg_errors.InternalError("pipeline: a result is missing")
            if self._next() is not None:  # each command's results end with a NULL
                raise pg_errors.InternalError("pipeline: more results than commands")
            status = res.status
            if status in _OK:
                if kind == "prepare":
                    prepared.add(key)
                elif kind == "stmt":
                    results[key] = res
                elif kind == "commit" and res.command_status != b"COMMIT":
                    error = error or pg_errors.InFailedSqlTransaction(
                        f"COMMIT answered {res.command_status!r}: the transaction was rolled back")
            elif status != pq.ExecStatus.PIPELINE_ABORTED and error is None:
                error = pg_errors.error_from_result(res, encoding="utf-8")
        sync = self._next()
        if sync is None or sync.status != _SYNC:
            raise pg_errors.InternalError("pipeline: the sync did not come back")
        if error is None and slots[-1][0] == "commit" and pg.transaction_status != _IDLE:
            error = pg_errors.InternalError("pipeline: still in a transaction after COMMIT")
        return results, error

    def _flush(self) -> None:
        pg = self._pg
        while pg.flush():  # non-blocking connection: wait until the socket takes the rest
            _wait(pg.socket, select.POLLIN | select.POLLOUT)
            pg.consume_input()

    def _next(self) -> Any:
        pg = self._pg
        while pg.is_busy():
            _wait(pg.socket, select.POLLIN)
            pg.consume_input()
        return pg.get_result()
