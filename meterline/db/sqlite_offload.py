"""A helper thread that runs a SQLite writer's big statements while the writer goes on in Python.

Why: SQLite runs a statement without holding the GIL (the driver releases it around each
step), so on a machine with a second core a long statement can run while the writer's
thread does the Python that does not depend on it — the hash chain, the result objects.
It pays only for statements that do a lot of work per step: `executemany` takes the GIL
back after every row, and each time it waits for the Python thread to give it up (up to a
switch interval), so rows go out as multi-row statements instead (`multi_row`).

The rules that keep it safe:

- the statements run in the writer's own open transaction, on its own connection, strictly
  in the order they were handed over;
- while anything is handed over, the writer touches the connection only through `drain`,
  which waits for all of it and raises the first failure (what was queued behind a failure
  is skipped); the writer drains before its next statement, before committing, and —
  whatever happens — before it lets an exception reach the code that rolls back.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

_TOP = 512  # rows per statement at most (x 12 parameters stays far under SQLite's 32,766)


def chunk_sizes(n: int, top: int = _TOP) -> Iterator[int]:
    """Split `n` rows into statements of power-of-two sizes (at most `top`), so a handful
    of statement texts — each prepared once and kept by the driver's cache — cover every
    batch size."""
    while n:
        size = top
        while size > n:
            size //= 2
        yield size
        n -= size


@lru_cache(maxsize=256)
def multi_row(head: str, row: str, tail: str, size: int) -> str:
    """`head` + `size` copies of the `row` placeholder tuple + `tail`."""
    return head + ", ".join([row] * size) + tail


class StatementRunner:
    """One helper thread; `run` hands it a statement, `drain` waits for everything handed."""

    def __init__(self, name: str = "sqlite-offload") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Any, str, Sequence[Any]] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._pending = 0
        self._failed = False
        self._thread: threading.Thread | None = None

    def run(self, raw: Any, statement: str, params: Sequence[Any]) -> None:
        """Run `statement` on the DBAPI connection `raw` on the helper thread, after
        everything handed over before it."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()
        self._pending += 1
        self._jobs.put((raw, statement, params))

    def drain(self) -> None:
        """Wait for every statement handed over; raise the first one's failure."""
        first: BaseException | None = None
        while self._pending:
            outcome = self._done.get()
            self._pending -= 1
            if outcome is not None and first is None:
                first = outcome
        self._failed = False
        if first is not None:
            raise first

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            raw, statement, params = job
            if self._failed:  # skipped: the transaction is rolled back anyway
                self._done.put(None)
                continue
            try:
                raw.execute(statement, params)
            except BaseException as exc:  # handed to the writer by `drain`
                self._failed = True
                self._done.put(exc)
            else:
                self._done.put(None)
