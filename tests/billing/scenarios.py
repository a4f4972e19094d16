"""Billing scenarios more than one test module builds on."""

from __future__ import annotations

from meterline.billing.invoices import invoice_service
from meterline.billing.service import billing_service
from meterline.clock import FrozenClock
from meterline.db.engine import Database


def invoice_early_and_pay(db: Database, tenant: str, sid: str, clock: FrozenClock) -> None:
    """Invoice the current period now, finalize it and pay it from the wallet (which must hold it)."""
    with db.session() as s:
        inv = billing_service.create_invoice(s, tenant, sid, clock).invoice
        invoice_service.finalize(s, tenant, inv.id, clock.now_ns())
        assert invoice_service.pay(s, tenant, inv.id, clock).paid


def remove_first_item(db: Database, tenant: str, sid: str, clock: FrozenClock, *, cancel: bool) -> None:
    """Remove the subscription's first item now (a prorated credit), and cancel it if asked."""
    with db.session() as s:
        item = billing_service.items(s, tenant, sid)[0]
        billing_service.remove_item(s, tenant, sid, item.id, clock)
        if cancel:
            billing_service.cancel(s, tenant, sid, clock)
