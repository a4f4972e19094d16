"""The SQLite statement runner: statements run in the order handed over, on the writer's open
transaction; `drain` waits for all of them and raises the first failure, skipping what was
queued behind it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.db.sqlite_offload import (
    StatementRunner,
    limited_rows,
    padded_size,
    statement_rows,
    values_statements,
)


@given(st.integers(min_value=1, max_value=2048))
def test_padded_sizes_hold_every_count_from_a_short_list(n: int) -> None:
    size = padded_size(n)
    assert n <= size <= 2048
    assert size - n <= max(size // 5, size - size // 2 - 1)  # a fifth at most past 128; powers of two below


def test_every_size_comes_from_a_list_the_statement_cache_keeps() -> None:
    # Preparing a 2,000-row statement costs ~5 ms: the sizes must repeat.
    assert len({padded_size(n) for n in range(1, 2049)}) == 24


@given(st.integers(min_value=0, max_value=5000), st.integers(min_value=1, max_value=16))
def test_values_statements_carry_every_row_once_in_order(n: int, per_row: int) -> None:
    values = list(range(n * per_row))
    carried: list[int] = []
    for statement, params in values_statements("H ", "(" + ", ".join("?" * per_row) + ")", " T", values, per_row):
        slots = statement.count("(?")
        assert statement == limited_rows("H ", "(" + ", ".join("?" * per_row) + ")", " T", slots)
        assert slots == padded_size(params[-1]) and len(params) == slots * per_row + 1
        assert slots * per_row <= 32_766 - 8
        carried += params[:params[-1] * per_row]  # what the LIMIT keeps; the padding repeats the last row
        assert params[params[-1] * per_row:-1] == params[(params[-1] - 1) * per_row:params[-1] * per_row] * (
            slots - params[-1])
    assert carried == values
    assert statement_rows(per_row) in (2048, 1024)


def test_the_limit_drops_the_padding(raw: sqlite3.Connection) -> None:
    [(statement, params)] = values_statements("INSERT INTO t (k, v) ", "(?, ?)", "", [1, "a", 2, "b", 3, "c"], 2)
    assert params[-1] == 3 and len(params) == 4 * 2 + 1  # padded to 4 rows, the last repeated
    raw.execute(statement, params)
    assert raw.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [(1, "a"), (2, "b"), (3, "c")]


def test_hand_over_returns_once_the_helper_has_taken_the_statement(raw: sqlite3.Connection) -> None:
    runner = StatementRunner()
    raw.execute("BEGIN IMMEDIATE")
    runner.run(raw, "INSERT INTO t VALUES (?, ?)", (1, "a"), hand_over=True)
    assert runner._jobs.empty()  # taken, not queued
    runner.run(raw, "INSERT INTO t VALUES (?, ?)", (2, "b"), hand_over=True)
    runner.drain()
    raw.execute("COMMIT")
    assert raw.execute("SELECT k FROM t ORDER BY k").fetchall() == [(1,), (2,)]
    runner.close()


@pytest.fixture
def raw(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    return conn


def test_statements_run_in_order_inside_the_callers_transaction(raw: sqlite3.Connection) -> None:
    runner = StatementRunner()
    raw.execute("BEGIN IMMEDIATE")
    runner.run(raw, "INSERT INTO t VALUES (?, ?), (?, ?)", (1, "a", 2, "b"))
    runner.run(raw, "UPDATE t SET v = v || ? WHERE k = ?", ("!", 1))
    runner.drain()
    assert raw.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [(1, "a!"), (2, "b")]
    raw.execute("ROLLBACK")  # it was the caller's transaction: nothing committed
    assert raw.execute("SELECT count(*) FROM t").fetchone() == (0,)
    runner.close()


def test_drain_raises_the_first_failure_and_skips_what_was_queued_behind_it(raw: sqlite3.Connection) -> None:
    runner = StatementRunner()
    raw.execute("BEGIN IMMEDIATE")
    runner.run(raw, "INSERT INTO t VALUES (?, ?)", (1, "a"))
    runner.run(raw, "INSERT INTO t VALUES (?, ?)", (1, "duplicate"))
    runner.run(raw, "INSERT INTO t VALUES (?, ?)", (3, "after the failure"))
    with pytest.raises(sqlite3.IntegrityError):
        runner.drain()
    assert raw.execute("SELECT k FROM t ORDER BY k").fetchall() == [(1,)]
    raw.execute("ROLLBACK")
    # The runner is usable again for the next transaction.
    raw.execute("BEGIN IMMEDIATE")
    runner.run(raw, "INSERT INTO t VALUES (?, ?)", (4, "d"))
    runner.drain()
    raw.execute("COMMIT")
    assert raw.execute("SELECT k FROM t").fetchall() == [(4,)]
    runner.close()


def test_drain_with_nothing_handed_over_returns_at_once() -> None:
    runner = StatementRunner()
    runner.drain()
    runner.close()  # never started: nothing to join
