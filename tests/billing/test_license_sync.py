"""A license change and the billing API's item changes racing on one subscription: whatever
the interleaving, each item's proration lines add up to the change it went through once, and
a subscription created while the license changes bills one allowance (real commits; the
races are PostgreSQL's — SQLite's single writer serialises them)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select

from meterline.billing.license_sync import follow_license
from meterline.billing.models import InvoiceLine, SubscriptionItem
from meterline.billing.service import ItemSpec, billing_service
from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.licensing.service import licensing_service
from tests.factories import make_licensing_catalogue, make_subscription

LICENSEE = "tenant-123"  # the catalogue's demo licensee: 100 cameras, advanced_analytics + active_transport


@pytest.fixture
def tenant(db: Database, clock: FrozenClock, tenant_id: str) -> str:
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
    return tenant_id


def _race(*calls: Any) -> None:
    barrier = threading.Barrier(len(calls))

    def run(call: Any) -> None:
        barrier.wait()
        call()

    with ThreadPoolExecutor(len(calls)) as pool:
        for f in [pool.submit(run, c) for c in calls]:
            f.result()


def _change_license(db: Database, tenant: str, clock: FrozenClock, **changes: Any) -> None:
    """What PATCH /v1/licenses/{id} does: change the license, then its subscriptions with it."""
    with db.session() as s:
        lic = licensing_service.update_license(s, tenant, LICENSEE, now_ns=clock.now_ns(), **changes)
        follow_license(s, lic, clock)


def _items(db: Database, tenant: str, sub_id: str) -> dict[str, SubscriptionItem]:
    with db.session(write=False) as s:
        return {i.pack_id or i.plan_id or i.id: i for i in billing_service.items(s, tenant, sub_id,
                                                                                include_removed=True)}


def _net_prorated(db: Database, tenant: str, item_id: str) -> tuple[int, int]:
    """(charged − credited quantity, number of lines) of an item's proration lines."""
    with db.session(write=False) as s:
        rows = s.scalars(select(InvoiceLine).where(InvoiceLine.tenant_id == tenant, InvoiceLine.item_id == item_id,
                                                   InvoiceLine.kind == "proration")).all()
    return sum(r.quantity if r.amount_minor > 0 else -r.quantity for r in rows), len(rows)


def _billing_change_then_license_change(db: Database, tenant: str, clock: FrozenClock,
                                        billing_change: Any, **license_changes: Any) -> None:
    """The interleaving that broke it: the billing API's change holds the subscription's lock,
    uncommitted, while the license change starts; it commits a moment later."""
    changed = threading.Event()

    def billing() -> None:
        with db.session() as s:
            billing_change(s)
            changed.set()
            time.sleep(0.2)  # the license change reads the subscription meanwhile

    def license_change() -> None:
        changed.wait(10)
        _change_license(db, tenant, clock, **license_changes)

    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(billing), pool.submit(license_change)]:
            f.result()


def test_a_pack_removed_by_both_the_license_and_the_billing_api_is_credited_once(db, tenant, clock):
    with db.session() as s:
        sub_id = make_subscription(s, tenant, clock, items=[ItemSpec(plan_id="base_license"),
                                                            ItemSpec(pack_id="advanced_analytics")])
    pack = _items(db, tenant, sub_id)["advanced_analytics"]
    clock.advance(3600)
    _billing_change_then_license_change(
        db, tenant, clock, lambda s: billing_service.remove_item(s, tenant, sub_id, pack.id, clock),
        packs=["active_transport"])
    after = _items(db, tenant, sub_id)["advanced_analytics"]
    assert (after.status, after.quantity) == ("removed", 0)
    net, count = _net_prorated(db, tenant, pack.id)
    assert (after.period_quantity + net, count) == (0, 1)  # one credit, not two


def test_an_allowance_and_a_quantity_changed_at_once_prorate_from_what_the_other_committed(db, tenant, clock):
    with db.session() as s:
        sub_id = make_subscription(s, tenant, clock, items=[ItemSpec(plan_id="base_license")])
    base = _items(db, tenant, sub_id)["base_license"]
    clock.advance(3600)
    _billing_change_then_license_change(
        db, tenant, clock, lambda s: billing_service.update_item(s, tenant, sub_id, base.id, quantity=120,
                                                                 clock=clock),
        cameras_allowed=150)
    after = _items(db, tenant, sub_id)["base_license"]
    net, count = _net_prorated(db, tenant, base.id)
    # 100 → 120 by the billing API, then 120 → 150 by the license: credit 100, charge 120,
    # credit 120, charge 150 — never a second credit of 100.
    assert (after.quantity, after.period_quantity + net, count) == (150, 150, 4)


@pytest.mark.parametrize("rounds", [6])
def test_a_subscription_created_during_a_license_change_bills_one_allowance(db, tenant, clock, rounds):
    for n in range(rounds):
        _change_license(db, tenant, clock, cameras_allowed=100)
        made: list[str] = []

        def create() -> None:
            with db.session() as s:
                made.append(make_subscription(s, tenant, clock, items=[ItemSpec(plan_id="base_license"),
                                                                       ItemSpec(pack_id="advanced_analytics")]))

        _race(create, lambda: _change_license(db, tenant, clock, cameras_allowed=150))
        items = _items(db, tenant, made[0])
        assert {i.quantity for i in items.values()} == {150}, (n, {k: i.quantity for k, i in items.items()})
        with db.session() as s:
            billing_service.cancel(s, tenant, made[0], clock)  # (out of the next round's way)
