"""The posting path's Prometheus counters count every result once, by its code."""

from __future__ import annotations

from prometheus_client import REGISTRY

from meterline.ledger import metrics
from meterline.ledger.types import TransferResult


def _count(code: str) -> float:
    return REGISTRY.get_sample_value("meterline_transfers_total", {"result": code}) or 0.0


def test_a_single_result_and_a_mixed_batch_are_counted_by_code() -> None:
    before = {c: _count(c) for c in ("ok", "exists", "exceeds_credits")}
    metrics.count_results([TransferResult(0, "a", "ok")])
    metrics.count_results([
        TransferResult(0, "b", "ok"), TransferResult(1, "c", "exceeds_credits"),
        TransferResult(2, "d", "ok"), TransferResult(3, "e", "exists"),
    ])
    metrics.count_results([])
    assert _count("ok") - before["ok"] == 3
    assert _count("exists") - before["exists"] == 1
    assert _count("exceeds_credits") - before["exceeds_credits"] == 1
