"""A helper thread that runs a SQLite writer's big statements while the writer goes on in Python.

Why: SQLite runs a statement without holding the GIL (the driver releases it around each
step), so on a machine with a second core a long statement can run while the writer's
thread does the Python that does not depend on it — the hash chain, the result objects.
It pays only for statements that do a lot of work per step: `executemany` takes the GIL
back after every row, and each time it waits for the Python thread to give it up (up to a
switch interval), so rows go out as multi-row statements instead (`values_statements`).
The same holds for every hand-over between the threads: the helper needs the GIL to take a
statement and bind its parameters, and while the writer runs Python it waits up to a switch
interval for it each time. So a batch's rows go out in as few statements as possible — one
for up to 2,048 rows — and the first is handed over with `hand_over=True`: the writer waits
the moment it takes for the helper to pick the statement up, instead of the helper waiting
for the writer's next switch (measured in one process, alternating batch by batch: a spread
batch of 1,000 transfers 25.1 -> 23.0 ms, 22.2 -> 19.9 and 18.8 -> 17.1 ms in three runs;
1.2 ms of it from the fewer statements, the rest from the hand-over).

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

_TOP = 2048  # rows per statement at most
_MAX_VARIABLES = 32_766  # SQLite's SQLITE_MAX_VARIABLE_NUMBER (the default since 3.32)


def padded_size(n: int) -> int:
    """The statement size that holds `n` rows: a power of two up to 128, then a quarter-octave
    step (160, 192, 224, 256, 320, ...). Preparing a statement of 2,000 rows costs about 5 ms,
    so every size must come from a short list the driver's statement cache keeps (24 sizes
    up to 2,048), and a step of a quarter octave pads at most a fifth of the rows."""
    if n <= 128:
        return 1 << (n - 1).bit_length()
    step = 1 << ((n - 1).bit_length() - 3)
    return -(-n // step) * step


def statement_rows(per_row: int) -> int:
    """The most rows of `per_row` parameters one statement takes (a power of two)."""
    top = _TOP
    while top * per_row > _MAX_VARIABLES - 8:  # a few left for the statement's own parameters
        top //= 2
    return top


@lru_cache(maxsize=256)
def limited_rows(head: str, row: str, tail: str, slots: int) -> str:
    """`head` + a VALUES list of `slots` copies of `row`, cut by a bound LIMIT + `tail`."""
    return head + "SELECT * FROM (VALUES " + ", ".join([row] * slots) + ") LIMIT ?" + tail


def values_statements(head: str, row: str, tail: str, values: list[Any], per_row: int) -> Iterator[tuple[str, list[Any]]]:
    """`values` (flat, `per_row` to a row) as statements of `limited_rows` with their
    parameters — each padded to its size with copies of its last row, which the LIMIT drops
    — up to the LIMIT's; the caller appends those of `tail`."""
    n = len(values) // per_row
    top = statement_rows(per_row)
    i = 0
    while i < n:
        rows = min(n - i, top)
        slots = padded_size(rows)
        params = values[i * per_row:(i + rows) * per_row]
        params += params[-per_row:] * (slots - rows)
        params.append(rows)
        yield limited_rows(head, row, tail, slots), params
        i += rows


class StatementRunner:
    """One helper thread; `run` hands it a statement, `drain` waits for everything handed."""

    def __init__(self, name: str = "sqlite-offload") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Any, str, Sequence[Any], bool] | None] = queue.SimpleQueue()
        self._taken = threading.Event()
        self._done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._pending = 0
        self._failed = False
        self._thread: threading.Thread | None = None

    def run(self, raw: Any, statement: str, params: Sequence[Any], *, hand_over: bool = False) -> None:
        """Run `statement` on the DBAPI connection `raw` on the helper thread, after
        everything handed over before it. With `hand_over`, return only once the helper
        has taken it (for a statement handed to an idle helper: see the module's text)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()
        self._pending += 1
        if hand_over:
            self._taken.clear()
            self._jobs.put((raw, statement, params, True))
            self._taken.wait()
        else:
            self._jobs.put((raw, statement, params, False))

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
            raw, statement, params, hand_over = job
            if hand_over:
                self._taken.set()
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
