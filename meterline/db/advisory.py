"""PostgreSQL advisory locks, one class per purpose so that keys of different purposes
never collide (a key is the class and `hashtext` of a name; two names hashing alike only
serialise a little more, never less).

- transaction locks (`xact_lock`) end with the transaction: block sealing per tenant,
  usage ingestion per tenant;
- session locks (`try_lock` / `unlock`) last while the connection does — the scheduler
  holds one for each job it runs, so a worker that dies releases its jobs at once.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

SEAL = 0x4D4C424B  # "MLBK": sealing a tenant's blocks
USAGE = 0x4D4C5553  # "MLUS": ingesting a tenant's usage
JOB = 0x4D4C4A42  # "MLJB": running a scheduled job


def xact_lock(conn: Connection, cls: int, name: str) -> None:
    """Wait for and take the lock until this transaction ends."""
    conn.execute(text("SELECT pg_advisory_xact_lock(CAST(:cls AS integer), hashtext(:name))"),
                 {"cls": cls, "name": name})


def try_lock(conn: Connection, cls: int, name: str) -> bool:
    """Take the session lock if it is free; False if another session holds it."""
    return bool(conn.execute(text("SELECT pg_try_advisory_lock(CAST(:cls AS integer), hashtext(:name))"),
                             {"cls": cls, "name": name}).scalar_one())


def unlock(conn: Connection, cls: int, name: str) -> None:
    conn.execute(text("SELECT pg_advisory_unlock(CAST(:cls AS integer), hashtext(:name))"),
                 {"cls": cls, "name": name})
