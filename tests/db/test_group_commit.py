"""GroupCommitter's shared rules, on a minimal committer (real commits on each backend)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg import errors as pg_errors
from sqlalchemy import Connection, exc, text

from meterline.db.engine import Database
from meterline.db.group_commit import GroupCommitter


class _Notes(GroupCommitter[str, str]):
    """Writes each item as a row of a scratch table; `fail` makes the next applies raise."""

    name = "notes"

    def __init__(self, db: Database, fail: list[BaseException]) -> None:
        super().__init__(db)
        self.fail = fail
        self.applies = 0

    def apply(self, conn: Connection, items: list[str]) -> list[str | Exception]:
        self.applies += 1
        for item in items:
            conn.execute(text("INSERT INTO gc_notes (tenant, note) VALUES ('t', :n)"), {"n": item})
        if self.fail:
            raise self.fail.pop(0)
        return [f"stored {item}" for item in items]


@pytest.fixture
def notes_db(db: Database) -> Iterator[Database]:
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE gc_notes (tenant VARCHAR(8), note VARCHAR(64))"))
    yield db
    with db.engine.begin() as conn:  # (the schema checks share this database)
        conn.execute(text("DROP TABLE gc_notes"))


def _stored(db: Database) -> list[str]:
    with db.engine.connect() as conn:
        return sorted(conn.execute(text("SELECT note FROM gc_notes")).scalars())


@pytest.mark.parametrize("error", [
    pg_errors.DeadlockDetected("deadlock detected"),
    exc.OperationalError("INSERT …", {}, pg_errors.SerializationFailure("could not serialize access")),
], ids=["deadlock", "serialization-wrapped"])
def test_a_deadlock_victim_runs_again_and_its_caller_never_sees_it(notes_db, error):
    """Several API processes upserting the same rows in different orders deadlock now and
    then; PostgreSQL aborts one transaction, and the same work run again succeeds."""
    committer = _Notes(notes_db, fail=[error]).start()
    try:
        assert committer.submit_item("a").result(timeout=30) == "stored a"
    finally:
        committer.stop()
    assert committer.applies == 2
    assert _stored(notes_db) == ["a"]  # the aborted attempt left nothing behind


def test_any_other_failure_of_a_lone_item_reaches_its_caller(notes_db):
    committer = _Notes(notes_db, fail=[RuntimeError("poisoned")]).start()
    try:
        with pytest.raises(RuntimeError, match="poisoned"):
            committer.submit_item("a").result(timeout=30)
    finally:
        committer.stop()
    assert committer.applies == 1
    assert _stored(notes_db) == []


def test_a_deadlock_twice_in_a_row_is_the_callers(notes_db):
    """Bounded: one more run, not a loop."""
    committer = _Notes(notes_db, fail=[pg_errors.DeadlockDetected("one"), pg_errors.DeadlockDetected("two")]).start()
    try:
        with pytest.raises(pg_errors.DeadlockDetected, match="two"):
            committer.submit_item("a").result(timeout=30)
    finally:
        committer.stop()
    assert committer.applies == 2
