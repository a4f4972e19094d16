"""Payout jobs: execute approved payouts whose next attempt is due.

Each payout runs in its own transaction: it is locked, re-checked (another
worker may have executed it, or a failed attempt pushed it into backoff, since
the list was read) and executed through its rail. A failed send is recorded by
the service (retry with backoff, funds returned after the last attempt), so a
rail outage never stops the sweep.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from meterline.clock import Clock
from meterline.db.engine import Database
from meterline.payouts.models import PayoutRequest
from meterline.payouts.service import PayoutStatus, payout_service

log = logging.getLogger(__name__)

EXECUTE_DUE = "payouts.execute_due"


def execute_due(db: Database, clock: Clock, *, limit: int = 100) -> int:
    """One attempt at every payout due now. Returns how many were attempted."""
    now = clock.now_ns()
    with db.session(write=False) as session:
        due = [(p.tenant_id, p.id) for p in payout_service.due_for_execution(session, now, limit)]
    attempted = 0
    for tenant_id, payout_id in due:
        try:
            with db.session() as session:
                if not _still_due(session, tenant_id, payout_id, clock.now_ns()):
                    continue
                payout_service.execute(session, tenant_id, payout_id, None, clock)
            attempted += 1
        except Exception:
            log.exception("could not execute payout %s/%s", tenant_id, payout_id)
    return attempted


def _still_due(session: Session, tenant_id: str, payout_id: str, now_ns: int) -> bool:
    # Lock first, then re-read: without the lock two workers that listed the same payout
    # would both attempt it (a second send, or a retry before its backoff ran out).
    stmt = (
        select(PayoutRequest)
        .where(PayoutRequest.tenant_id == tenant_id, PayoutRequest.id == payout_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    row = session.scalars(stmt).first()
    return (row is not None and row.status == PayoutStatus.APPROVED and row.next_attempt_at is not None
            and row.next_attempt_at <= now_ns)
