"""Billing jobs: close ended periods, and retry collecting open invoices.

Each subscription (and each invoice) runs in its own transaction: locked,
re-checked, processed, committed — so one failure never stops the sweep, and a
crash mid-way leaves that subscription as it was. Invoicing a period twice is
impossible, not just unlikely: the invoice is keyed by (subscription, period
start), the period advances in the same transaction that creates it, and a
rerun after any crash finds either the old period with no invoice or the new
period with its invoice committed.
"""

from __future__ import annotations

import logging

from meterline.billing.invoices import invoice_service
from meterline.billing.service import billing_service
from meterline.clock import Clock
from meterline.db.engine import Database

log = logging.getLogger(__name__)

CLOSE_PERIODS = "billing.close_periods"
COLLECT_PAYMENTS = "billing.collect_payments"


def close_periods(db: Database, clock: Clock, *, limit: int = 100) -> int:
    """Close every period that has ended (invoice → finalize → try the wallet → advance).
    Returns how many invoices were created or closed."""
    with db.session(write=False) as session:
        due = billing_service.due_subscriptions(session, clock.now_ns(), limit)
    closed = 0
    for tenant_id, subscription_id in due:
        try:
            with db.session() as session:
                closed += len(billing_service.close_due(session, tenant_id, subscription_id, clock))
        except Exception:
            log.exception("could not close the period of subscription %s/%s", tenant_id, subscription_id)
    return closed


def collect_payments(db: Database, clock: Clock, *, limit: int = 100) -> int:
    """Retry open invoices whose next payment attempt is due. Returns how many were paid."""
    with db.session(write=False) as session:
        due = invoice_service.due_for_collection(session, clock.now_ns(), limit)
    paid = 0
    for tenant_id, invoice_id in due:
        try:
            with db.session() as session:
                outcome = invoice_service.collect(session, tenant_id, invoice_id, clock)
            paid += bool(outcome and outcome.paid)
        except Exception:
            log.exception("could not collect invoice %s/%s", tenant_id, invoice_id)
    return paid
