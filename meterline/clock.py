"""Injected time.

Domain code asks a `Clock` for the time instead of calling `time.time()`, so
tests move time forward (`FrozenClock.advance`) instead of sleeping, and the
ledger's strictly increasing timestamps can be checked deterministically.
"""

from __future__ import annotations

import functools
import threading
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Unix time in nanoseconds."""
        ...


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()


class FrozenClock:
    """A clock that only moves when told to. Thread-safe, for concurrent tests."""

    def __init__(self, start_ns: int = 1_700_000_000 * 1_000_000_000) -> None:
        self._now = start_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0, *, ns: int = 0) -> None:
        with self._lock:
            self._now += int(seconds * 1_000_000_000) + ns

    def set(self, ns: int) -> None:
        with self._lock:
            self._now = ns


# Times a client may name (a license's validity, a usage query's period): from 1970 to 2200.
# Every time is stored as Unix nanoseconds in a 64-bit integer, which reaches from 1677 to
# 2262; a bound well inside that keeps the arithmetic done on a time — a month added to a
# period, a year to a license — representable too, and the range is what RFC 3339 renders.
EARLIEST_NS = 0
LATEST_NS = 7_258_118_400 * 1_000_000_000  # 2200-01-01T00:00:00Z


def in_range(ns: int) -> bool:
    return EARLIEST_NS <= ns < LATEST_NS


def to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1_000_000_000, tz=UTC)


def to_rfc3339(ns: int) -> str:
    """RFC 3339 UTC with microseconds; the wire form of every native timestamp."""
    seconds, rem = divmod(ns, 1_000_000_000)
    return f"{_second(seconds)}.{rem // 1000:06d}Z"


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    # Cached per whole second: every answer renders timestamps, and most of those in a busy
    # second share it — formatting a datetime costs more than the rest of the rendering.
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


system_clock = SystemClock()
