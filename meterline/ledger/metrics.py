"""Prometheus figures for the posting path."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

from meterline.ledger.types import TransferResult

TRANSFERS = Counter("meterline_transfers_total", "Transfers submitted, by result", ["result"])
BATCH_TRANSFERS = Histogram(
    "meterline_ledger_batch_transfers",
    "Transfers per group-commit transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 8000),
)
BATCH_SEGMENTS = Histogram(
    "meterline_ledger_batch_segments",
    "Caller batches merged into one group-commit transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_SECONDS = Histogram(
    "meterline_ledger_batch_seconds",
    "Time to apply and commit one group-commit transaction",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)


def observe_batch(transfers: int, segments: int, seconds: float) -> None:
    BATCH_TRANSFERS.observe(transfers)
    BATCH_SEGMENTS.observe(segments)
    BATCH_SECONDS.observe(seconds)


# One counter child per result code, resolved once: `labels()` validates and hashes its
# argument on every call, which cost more than the rest of the bookkeeping for a group
# commit of single transfers (this runs once per caller, on the writer thread).
_by_result: dict[str, Any] = {}


def _child(code: str) -> Any:
    child = _by_result.get(code)
    if child is None:
        child = _by_result[code] = TRANSFERS.labels(code)
    return child


def count_results(results: list[TransferResult]) -> None:
    if len(results) == 1:  # a single transfer: the common call from the HTTP API
        _child(results[0].result).inc()
        return
    tally: dict[str, int] = {}
    for r in results:
        tally[r.result] = tally.get(r.result, 0) + 1
    for code, n in tally.items():
        _child(code).inc(n)
