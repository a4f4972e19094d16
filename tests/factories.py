"""Plain typed factories for test data."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from meterline.clock import Clock
from meterline.identity.service import CreatedKey, identity_service
from meterline.ledger.models import Account
from meterline.ledger.service import AccountCreate, ledger_service
from meterline.ledger.types import AccountFlags, TransferIn
from meterline.wallets.service import Deposit, wallet_service


def make_tenant(session: Session, tenant_id: str, clock: Clock) -> str:
    identity_service.ensure_tenant(session, tenant_id, clock.now_ns())
    return tenant_id


def make_account(
    session: Session,
    tenant_id: str,
    clock: Clock,
    *,
    id: str | None = None,
    asset: str = "USD",
    kind: str = "customer_wallet",
    flags: int = 0,
    owner_type: str | None = None,
    owner_id: str | None = None,
) -> Account:
    row, _ = ledger_service.create_account(
        session, tenant_id,
        AccountCreate(asset=asset, kind=kind, id=id, flags=flags, owner_type=owner_type, owner_id=owner_id),
        clock.now_ns(),
    )
    return row


def make_wallet(session: Session, tenant_id: str, clock: Clock, *, id: str, asset: str = "USD") -> Account:
    """A customer wallet that cannot go below zero."""
    return make_account(session, tenant_id, clock, id=id, asset=asset,
                        flags=int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS))


def make_key(session: Session, tenant_id: str, clock: Clock, *, kind: str = "admin",
             scopes: list[str] | None = None, principal_id: str | None = None) -> CreatedKey:
    return identity_service.create_key(session, tenant_id=tenant_id, kind=kind, scopes=scopes,
                                       principal_id=principal_id, now_ns=clock.now_ns())


def make_deposit(
    session: Session,
    tenant_id: str,
    clock: Clock,
    *,
    owner_id: str,
    amount_minor: int,
    owner_type: str = "customer",
    asset: str = "USD",
    proof: str | None = None,
) -> Deposit:
    """A simulated wallet deposit (creates the wallet)."""
    return wallet_service.deposit(
        session, tenant_id, owner_type=owner_type, owner_id=owner_id, asset=asset, amount_minor=amount_minor,
        rail="simulation", proof=proof or f"sim-{uuid.uuid4().hex}", clock=clock,
    )


def make_earnings(
    session: Session, tenant_id: str, clock: Clock, *, provider_id: str, amount_minor: int, asset: str = "USDC"
) -> Account:
    """Credit a provider's earnings account from external:simulation (as a settlement would)."""
    now = clock.now_ns()
    earnings = wallet_service.provider_earnings_account(session, tenant_id, provider_id, asset, now)
    external = wallet_service.external_account(session, tenant_id, "simulation", asset, now)
    [result] = ledger_service.post(session, tenant_id, [TransferIn(
        f"earn-test:{uuid.uuid4().hex}", external.id, earnings.id, amount_minor, asset, code="test_earnings",
    )], clock)
    assert result.result == "ok", result.result
    return earnings


def make_demo_tenant(session: Session, tenant_id: str, clock: Clock) -> str:
    """A tenant with the demo catalog (SI64's M2 devices, Dante's GPUs) and price book v1."""
    from meterline.catalog.service import catalog_service
    from meterline.pricing.service import pricing_service

    make_tenant(session, tenant_id, clock)
    catalog_service.seed_demo(session, tenant_id, clock.now_ns())
    pricing_service.seed_demo(session, tenant_id, clock.now_ns())
    return tenant_id


def make_licensing_catalogue(session: Session, tenant_id: str, clock: Clock) -> None:
    """The BrinkByte demo plans, packs and 33 features (and its tenant-123 license) in `tenant_id`."""
    from meterline.licensing.service import licensing_service

    identity_service.ensure_tenant(session, tenant_id, clock.now_ns())
    licensing_service.seed_demo(session, tenant_id, clock.now_ns())


def make_license(session: Session, tenant_id: str, clock: Clock, *, licensee_id: str | None = None,
                 plan_id: str = "base_license", cameras_allowed: int | None = 5, devices_allowed: int | None = 2,
                 packs: list[str] | None = None, valid_until: int | None = None) -> str:
    """A license for a fresh licensee (catalogue must exist: `make_licensing_catalogue`)."""
    from meterline.licensing.service import licensing_service

    licensee = licensee_id or f"lic-{uuid.uuid4().hex[:10]}"
    licensing_service.create_license(
        session, tenant_id, licensee_id=licensee, plan_id=plan_id, now_ns=clock.now_ns(),
        cameras_allowed=None if plan_id == "trial" else cameras_allowed, devices_allowed=devices_allowed,
        packs=packs if packs is not None else ["advanced_analytics"], valid_until=valid_until)
    return licensee


def make_subscription(session: Session, tenant_id: str, clock: Clock, *, customer_id: str = "tenant-123",
                      items: list[Any] | None = None, customer_type: str = "licensee") -> str:
    """A subscription starting now (default: the licensee's base license at 100 cameras and the
    advanced_analytics pack; needs `make_licensing_catalogue` for catalogue items)."""
    from meterline.billing.service import ItemSpec, billing_service

    specs = items if items is not None else [ItemSpec(plan_id="base_license"), ItemSpec(pack_id="advanced_analytics")]
    sub = billing_service.create_subscription(session, tenant_id, customer_id=customer_id, items=specs,
                                              customer_type=customer_type, now_ns=clock.now_ns())
    return sub.id
