"""Subscriptions follow their license: one change to a license, one prorated change to its bill.

Why: in BrinkByte's model the license *is* what the customer buys — cameras
allowed, devices allowed, the plan and the growth packs. When an operator raises
the camera allowance or enables a pack (PATCH /v1/licenses/{id}), the licensee's
active subscriptions change with it in the same transaction, prorated by the
second exactly as an item change made through the billing API would be:

- catalogue items billed per camera / per device take the new allowance;
- a pack the license no longer grants is removed (credit for the rest of the
  period), a newly granted pack is added (charge for the rest of the period);
- a plan change replaces the plan item.

Custom-priced items are the operator's own and are never touched. A subscription
that is canceled, or set to cancel at the end of its period, is left alone.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from meterline.billing.models import InvoiceLine, Subscription
from meterline.billing.service import LICENSEE, ItemSpec, billing_service
from meterline.clock import Clock
from meterline.db.scoping import scoped
from meterline.licensing.models import License


def follow_license(session: Session, lic: License, clock: Clock) -> list[InvoiceLine]:
    """Bring every active subscription of `lic`'s licensee in line with it; returns the
    proration lines written (empty when nothing billed changed)."""
    stmt = scoped(select(Subscription.id), Subscription, lic.tenant_id).where(
        Subscription.customer_type == LICENSEE, Subscription.customer_id == lic.licensee_id,
        Subscription.status == "active", Subscription.cancel_at_period_end.is_(False))
    lines: list[InvoiceLine] = []
    for sub_id in session.scalars(stmt.order_by(Subscription.id)).all():
        lines.extend(_follow(session, lic, sub_id, clock))
    return lines


def _follow(session: Session, lic: License, sub_id: str, clock: Clock) -> list[InvoiceLine]:
    tenant = lic.tenant_id
    # Locked before its items are read: an item change racing this one (DELETE or PATCH
    # through the billing API) is then either seen committed or waits — read before the
    # lock, a removed item was credited twice, or a changed quantity prorated from the old.
    sub = billing_service.lock(session, tenant, sub_id)
    if sub.status != "active" or sub.cancel_at_period_end:
        return []  # (canceled, or set to cancel, since it was listed)
    lines: list[InvoiceLine] = []
    granted_packs = set(lic.packs or [])
    billed_packs: set[str] = set()
    for item in billing_service.items(session, tenant, sub_id):
        if item.pack_id is not None:
            if item.pack_id not in granted_packs:
                lines += billing_service.remove_item(session, tenant, sub_id, item.id, clock).prorations
                continue
            billed_packs.add(item.pack_id)
        elif item.plan_id is not None and item.plan_id != lic.plan_id:
            lines += billing_service.remove_item(session, tenant, sub_id, item.id, clock).prorations
            lines += billing_service.add_item(session, tenant, sub_id, ItemSpec(plan_id=lic.plan_id),
                                              clock).prorations
            continue
        elif item.plan_id is None:
            continue  # a custom item: the operator's own
        wanted = {"camera": lic.cameras_allowed, "device": lic.devices_allowed}.get(item.basis)
        if wanted is not None and wanted != item.quantity:
            lines += billing_service.update_item(session, tenant, sub_id, item.id, quantity=wanted,
                                                 clock=clock).prorations
    for pack_id in sorted(granted_packs - billed_packs):
        lines += billing_service.add_item(session, tenant, sub_id, ItemSpec(pack_id=pack_id), clock).prorations
    return lines
