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

import ctypes
import json
import logging
import select
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from psycopg import errors as pg_errors
from psycopg import pq
from sqlalchemy import Connection

Param = bytes | None
log = logging.getLogger(__name__)

_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_IDLE = pq.TransactionStatus.IDLE

# Statement text -> its prepared name (the same for every connection). Each connection's
# prepared names are in its `_Session` (prepared statements live as long as the session and
# are not transactional, so a rolled-back batch keeps those it parsed).
_names: dict[str, bytes] = {}


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


def _find_sync() -> Callable[[Any], None]:
    """`pipeline_sync` that lets go of the GIL while libpq writes the pipeline to the socket.

    psycopg's binary build calls libpq holding the GIL, and the write that ends a pipeline
    wakes the server's backend: on a busy machine the scheduler then often runs the backend
    at once on this core, and this thread sits preempted *holding the GIL* — every other
    Python thread (the callers preparing the next batch) stalls with it. py-spy put 19% of
    the ledger writer's GIL-holding time on that one call under load (it costs 7 µs on an
    idle machine). A ctypes call releases the GIL for its duration; it must reach the very
    libpq psycopg loaded (a `PGconn*` means nothing to another copy), so it is used only
    when the process has exactly one libpq mapped; otherwise psycopg's own call.
    """
    fallback: Callable[[Any], None] = lambda pg: pg.pipeline_sync()  # noqa: E731
    if pq.__impl__ == "python":  # psycopg's ctypes implementation already releases the GIL
        return fallback
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/libpq" in line and ".so" in line}
        if len(paths) != 1:
            return fallback
        fn = ctypes.CDLL(paths.pop()).PQpipelineSync
    except (OSError, AttributeError):
        return fallback
    fn.argtypes = [ctypes.c_void_p]
    fn.restype = ctypes.c_int

    def sync(pg: Any) -> None:
        if fn(pg.pgconn_ptr) != 1:
            raise pg_errors.OperationalError(f"pipeline sync failed: {pg.get_error_message()}")

    return sync


_sync: Callable[[Any], None] | None = None


def pipeline_sync(pg: Any) -> None:
    global _sync
    if _sync is None:
        _sync = _find_sync()
    _sync(pg)


def _wait(fd: int, events: int) -> None:
    poller = select.poll()
    poller.register(fd, events)
    poller.poll()


class _Session:
    """What one connection carries across pipes: the statements prepared on it, and the
    pipelines sent on it whose results are not read yet (oldest first)."""

    __slots__ = ("ends_transaction", "prepared", "unread")

    def __init__(self) -> None:
        self.prepared: set[bytes] = set()
        self.unread: deque[Sent] = deque()
        self.ends_transaction = False  # the last unread pipeline ends with COMMIT


_sessions: weakref.WeakKeyDictionary[Any, _Session] = weakref.WeakKeyDictionary()


class Sent:
    """A pipeline on the wire. `wait()` reads its results — after those of every pipeline
    sent before it on the connection, which PostgreSQL answers first — and raises its error."""

    def __init__(self, pipe: PgPipe, slots: list[tuple[str, Any]], earlier: Sent | None) -> None:
        self._pipe = pipe
        self._slots = slots
        self._earlier = earlier  # an unread pipeline of the same transaction, sent before this one
        self._results: list[Any] | None = None
        self._error: Exception | None = None

    @property
    def done(self) -> bool:
        return self._results is not None or self._error is not None

    def wait(self) -> list[Any]:
        session = self._pipe._session
        while not self.done:
            session.unread[0]._read()
        if self._earlier is not None and self._earlier._error is not None:
            raise self._earlier._error  # the first failure of the transaction, not "skipped"
        if self._error is not None:
            raise self._error
        assert self._results is not None
        return self._results

    def _read(self) -> None:
        pipe = self._pipe
        session = pipe._session
        try:
            self._results, self._error = pipe._collect(self._slots)
        except Exception as exc:  # the connection is broken: nothing sent behind this will answer
            for sent in session.unread:
                sent._error = sent._error or exc
            session.unread.clear()
        else:
            session.unread.popleft()
        if not session.unread:
            pg = pipe._pg
            if pg.pipeline_status:
                try:
                    pg.exit_pipeline_mode()
                except Exception as exc:  # a broken connection cannot leave it; it is closed next
                    self._error = self._error or pg_errors.InternalError(f"pipeline: {exc}")


class PgPipe:
    """Statements queued for one connection, sent together in one round trip.

    With `prepare`, each statement is prepared by name the first time it is sent on a
    connection — only for a connection nothing else prepares or deallocates on (a writer's
    own: `Database.writer_connection`); otherwise each goes as an unnamed statement, parsed
    and planned every time but safe on any pooled connection.

    `add` returns the index of the statement's result in the list `run` returns. A BEGIN is
    sent first when the connection is not in a transaction (as psycopg would before its own
    first statement); `run(commit=True)` ends the pipeline with COMMIT, so the writes and
    their commit travel together.

    `send(commit=True)` does the same without waiting for the answer: it returns a `Sent`
    to wait on later, and the connection may carry the next transaction meanwhile (its BEGIN
    goes right behind the COMMIT). PostgreSQL runs them strictly in order: if the first
    fails, its transaction is left aborted and everything of the next fails with it, COMMIT
    included. A later `run` or `wait` reads the earlier answers first.
    """

    def __init__(self, conn: Connection, *, prepare: bool = False) -> None:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        self._raw = raw
        self._pg: Any = raw.pgconn  # type: ignore[attr-defined]
        self._prepare = prepare
        self._queue: list[tuple[str, Sequence[Param]]] = []
        session = _sessions.get(raw)
        if session is None:
            session = _sessions[raw] = _Session()
        self._session = session
        self.round_trips = 0  # sent pipelines (tests and benchmarks count them)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def add(self, sql: str, params: Sequence[Param]) -> int:
        self._queue.append((sql, params))
        return len(self._queue) - 1

    def run(self, *, commit: bool = False) -> list[Any]:
        """Send everything queued (and COMMIT); return one result per `add`, in order."""
        if not self._queue and not commit:
            return []
        return self.send(commit=commit).wait()

    def send(self, *, commit: bool = False) -> Sent:
        """Send everything queued (and COMMIT) without reading the answer."""
        queue, self._queue = self._queue, []
        pg = self._pg
        session = self._session
        prepared = session.prepared
        # What each result slot is: ("begin"|"commit"|"prepare"|"stmt", name or index).
        slots: list[tuple[str, Any]] = []
        earlier = None
        if not pg.pipeline_status:
            pg.enter_pipeline_mode()
        try:
            # Behind an unread COMMIT the connection will be idle; otherwise ask libpq.
            if session.ends_transaction if session.unread else pg.transaction_status == _IDLE:
                pg.send_query_params(b"BEGIN", None)
                slots.append(("begin", None))
            elif session.unread:
                earlier = session.unread[-1]
            for i, (sql, params) in enumerate(queue):
                if not self._prepare:
                    pg.send_query_params(sql.encode(), params)
                    slots.append(("stmt", i))
                    continue
                name = _name(sql)
                if name not in prepared:
                    # Counted as prepared from now on, so a pipeline sent behind this one
                    # does not parse it again; `_collect` takes it back if it failed.
                    pg.send_prepare(name, sql.encode())
                    prepared.add(name)
                    slots.append(("prepare", name))
                pg.send_query_prepared(name, params)
                slots.append(("stmt", i))
            if commit:
                pg.send_query_params(b"COMMIT", None)
                slots.append(("commit", None))
            pipeline_sync(pg)
            self._flush()
        except BaseException:
            if not session.unread and pg.pipeline_status:
                try:
                    pg.exit_pipeline_mode()
                except Exception:  # a broken connection: its owner closes it
                    log.debug("pipeline: leaving pipeline mode failed", exc_info=True)
            raise
        self.round_trips += 1
        sent = Sent(self, slots, earlier)
        session.unread.append(sent)
        session.ends_transaction = commit
        return sent

    def _collect(self, slots: list[tuple[str, Any]]) -> tuple[list[Any] | None, Exception | None]:
        pg = self._pg
        prepared = self._session.prepared
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
                if kind == "stmt":
                    results[key] = res
                elif kind == "commit" and res.command_status != b"COMMIT":
                    error = error or pg_errors.InFailedSqlTransaction(
                        f"COMMIT answered {res.command_status!r}: the transaction was rolled back")
            else:
                if kind == "prepare":
                    prepared.discard(key)
                if status != pq.ExecStatus.PIPELINE_ABORTED:
                    error = error or pg_errors.error_from_result(res, encoding="utf-8")
                elif kind == "commit":  # skipped: a statement sent earlier failed
                    error = error or pg_errors.InFailedSqlTransaction("COMMIT skipped: the transaction failed")
        sync = self._next()
        if sync is None or sync.status != _SYNC:
            raise pg_errors.InternalError("pipeline: the sync did not come back")
        if error is None and slots and slots[-1][0] == "commit" and len(self._session.unread) == 1 \
                and pg.transaction_status != _IDLE:
            error = pg_errors.InternalError("pipeline: still in a transaction after COMMIT")
        return (None if error is not None else results), error

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
