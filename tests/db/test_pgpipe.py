"""The raw libpq pipeline under the ledger's PostgreSQL path: encoding, round trips, failures."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterline.db.engine import Database
from meterline.db.pgpipe import PgPipe, int_array, integer, rows, text, text_array

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

# PostgreSQL text cannot hold NUL; everything else must survive the array literal.
_texts = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)


@pytest.fixture
def raw(db: Database):  # type: ignore[no-untyped-def]
    with db.engine.connect() as conn:
        yield conn
        conn.rollback()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(st.one_of(st.none(), _texts), max_size=6),
    ints=st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=6),
)
def test_array_literals_round_trip_as_psycopg_reads_them(db, values, ints):
    with db.engine.connect() as conn:
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cur.execute("SELECT (%s::text)::text[], (%s::text)::bigint[]",
                    (text_array(values).decode(), int_array(ints).decode()))
        assert cur.fetchone() == (values, ints)
        conn.rollback()


def test_one_round_trip_begins_writes_and_commits(db: Database, raw) -> None:  # type: ignore[no-untyped-def]
    pipe = PgPipe(raw)
    raw.exec_driver_sql("DROP TABLE IF EXISTS pg_temp.pipe_t")
    raw.exec_driver_sql("CREATE TEMP TABLE pipe_t (k text PRIMARY KEY, v bigint)")
    raw.commit()
    pg = raw.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
    assert pg.transaction_status == psycopg.pq.TransactionStatus.IDLE
    pipe.add("INSERT INTO pipe_t SELECT * FROM unnest($1::text[], $2::bigint[])",
             [text_array(["a", "b"]), int_array([1, 2])])
    read = pipe.add("SELECT k, v FROM pipe_t WHERE k = $1", [text("b")])
    results = pipe.run(commit=True)
    assert pipe.round_trips == 1
    assert rows(results[read], "ti") == [("b", 2)]
    assert pg.transaction_status == psycopg.pq.TransactionStatus.IDLE  # committed, nothing left open
    assert raw.exec_driver_sql("SELECT count(*) FROM pipe_t").scalar() == 2


@pytest.fixture
def writer(db: Database):  # type: ignore[no-untyped-def]
    """A writer's own connection: the only kind a pipe may prepare statements on."""
    conn = db.writer_connection()
    yield conn
    conn.close()


def _pipe_with_a_duplicate(raw, table: str) -> PgPipe:  # type: ignore[no-untyped-def]
    """A new temp `table` (committed) and a pipe holding two inserts of the same key "x"."""
    raw.exec_driver_sql(f"CREATE TEMP TABLE {table} (k text PRIMARY KEY)")
    raw.commit()
    pipe = PgPipe(raw, prepare=True)
    pipe.add(f"INSERT INTO {table} VALUES ($1)", [text("x")])
    pipe.add(f"INSERT INTO {table} VALUES ($1)", [text("x")])  # duplicate key
    return pipe


def test_a_failed_statement_skips_the_rest_and_the_commit(db: Database, writer) -> None:  # type: ignore[no-untyped-def]
    raw = writer
    pipe = _pipe_with_a_duplicate(raw, "pipe_f")
    pipe.add("INSERT INTO pipe_f VALUES ($1)", [text("y")])
    with pytest.raises(psycopg.errors.UniqueViolation):
        pipe.run(commit=True)
    pg = raw.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
    assert not pg.pipeline_status  # left pipeline mode
    assert pg.transaction_status == psycopg.pq.TransactionStatus.INERROR  # COMMIT never ran
    raw.connection.dbapi_connection.rollback()  # type: ignore[union-attr]
    assert raw.exec_driver_sql("SELECT count(*) FROM pipe_f").scalar() == 0
    # The statement prepared before the failure is reused; the connection works on.
    pipe.add("INSERT INTO pipe_f VALUES ($1)", [text("z")])
    pipe.run(commit=True)
    assert raw.exec_driver_sql("SELECT k FROM pipe_f").scalars().all() == ["z"]


def test_the_writer_connection_is_its_own_and_never_auto_prepared(db: Database, writer) -> None:  # type: ignore[no-untyped-def]
    # psycopg answers a rollback on a connection where it prepared statements with DEALLOCATE
    # ALL, which would silently drop the pipe's: on the writer's connection it never prepares.
    dbapi = writer.connection.dbapi_connection
    assert dbapi.prepare_threshold is None
    with db.engine.connect() as pooled:
        assert pooled.connection.dbapi_connection.prepare_threshold is not None
        assert pooled.connection.dbapi_connection is not dbapi


def test_integer_and_text_parameters_keep_null(db: Database, raw) -> None:  # type: ignore[no-untyped-def]
    pipe = PgPipe(raw)
    i = pipe.add("SELECT $1::bigint, $2::text", [integer(None), text(None)])
    j = pipe.add("SELECT $1::bigint, $2::text", [integer(-5), text("ü")])
    results = pipe.run()
    assert rows(results[i], "it") == [(None, None)]
    assert rows(results[j], "it") == [(-5, "ü")]


def test_a_transaction_sent_behind_an_unread_commit(db: Database, writer) -> None:  # type: ignore[no-untyped-def]
    raw = writer
    raw.exec_driver_sql("CREATE TEMP TABLE pipe_s (k text PRIMARY KEY)")
    raw.commit()
    pg = raw.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
    first = PgPipe(raw, prepare=True)
    first.add("INSERT INTO pipe_s VALUES ($1)", [text("a")])
    a = first.send(commit=True)
    second = PgPipe(raw, prepare=True)  # the same statement: prepared once, in the first pipeline
    second.add("INSERT INTO pipe_s VALUES ($1)", [text("b")])
    b = second.send(commit=True)
    b.wait()  # reads the first answer on the way
    assert a.done and len(a.wait()) == 1
    assert not pg.pipeline_status and pg.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # If the first fails, the second ran in its aborted transaction: it fails too, whatever
    # rows it touched, and neither commits.
    first.add("INSERT INTO pipe_s VALUES ($1)", [text("a")])  # duplicate
    a = first.send(commit=True)
    second.add("INSERT INTO pipe_s VALUES ($1)", [text("c")])
    b = second.send(commit=True)
    with pytest.raises(psycopg.errors.UniqueViolation):
        a.wait()
    with pytest.raises(psycopg.errors.InFailedSqlTransaction):
        b.wait()
    raw.connection.dbapi_connection.rollback()  # type: ignore[union-attr]
    assert sorted(raw.exec_driver_sql("SELECT k FROM pipe_s").scalars().all()) == ["a", "b"]


def test_a_commit_behind_a_failed_part_of_its_transaction_raises_that_failure(db: Database, writer) -> None:  # type: ignore[no-untyped-def]
    raw = writer
    pipe = _pipe_with_a_duplicate(raw, "pipe_p")
    pipe.send()  # the transaction's first part, unanswered
    pipe.add("INSERT INTO pipe_p VALUES ($1)", [text("b")])
    last = pipe.send(commit=True)  # the rest, and a COMMIT PostgreSQL skips
    with pytest.raises(psycopg.errors.UniqueViolation):
        last.wait()
    raw.connection.dbapi_connection.rollback()  # type: ignore[union-attr]
    assert raw.exec_driver_sql("SELECT count(*) FROM pipe_p").scalar() == 0
