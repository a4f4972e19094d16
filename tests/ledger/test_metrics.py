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


def test_posts_inside_a_request_transaction_are_counted_once_it_commits(db, tenant_id, clock) -> None:
    """Deposits, settlements and payouts post in their request's own transaction, not through
    the batcher: they were never counted. A rolled-back one must not be."""
    from meterline.ledger.service import ledger_service
    from meterline.ledger.types import TransferIn
    from tests.factories import make_account, make_tenant

    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        make_account(s, tenant_id, clock, id="a")
        make_account(s, tenant_id, clock, id="b")
    before = _count("ok")
    with db.session() as s:
        ledger_service.post(s, tenant_id, [TransferIn("t1", "a", "b", 5), TransferIn("t2", "a", "b", 6)], clock)
        assert _count("ok") == before  # not yet committed
    assert _count("ok") - before == 2
    try:
        with db.session() as s:
            ledger_service.post(s, tenant_id, [TransferIn("t3", "a", "b", 7)], clock)
            raise RuntimeError("the request failed after posting")
    except RuntimeError:
        pass
    assert _count("ok") - before == 2
