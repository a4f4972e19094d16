"""The SQLite statement runner: statements run in the order handed over, on the writer's open
transaction; `drain` waits for all of them and raises the first failure, skipping what was
queued behind it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.db.sqlite_offload import StatementRunner, chunk_sizes, multi_row


@given(st.integers(min_value=0, max_value=5000))
def test_chunk_sizes_cover_every_row_in_few_power_of_two_statements(n: int) -> None:
    sizes = list(chunk_sizes(n))
    assert sum(sizes) == n
    assert all(s & (s - 1) == 0 and 0 < s <= 512 for s in sizes)
    assert sizes == sorted(sizes, reverse=True)
    assert len(sizes) <= n // 512 + 9  # full chunks, then at most one of each smaller size


def test_multi_row_repeats_the_row_placeholders() -> None:
    assert multi_row("INSERT INTO t VALUES ", "(?, ?)", " RETURNING 1", 3) == (
        "INSERT INTO t VALUES (?, ?), (?, ?), (?, ?) RETURNING 1")


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
