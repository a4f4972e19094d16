"""Fixtures for the marketplace routers: a tenant with the demo catalog and price book v1,
and keys for principals with ids (a customer, a provider, an operator)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.identity.service import identity_service
from tests.api.conftest import ApiTenant
from tests.factories import make_demo_tenant, make_key

KeyMaker = Callable[..., dict[str, str]]
READ_WRITE = ["ledger:read", "ledger:write"]


def create_market(db: Database, clock: FrozenClock, tenant_id: str) -> ApiTenant:
    with db.session() as s:
        make_demo_tenant(s, tenant_id, clock)
        admin = make_key(s, tenant_id, clock, kind="admin").secret
        writer = make_key(s, tenant_id, clock, kind="operator").secret
        reader = make_key(s, tenant_id, clock, kind="customer").secret
    return ApiTenant(tenant_id, admin, writer, reader)


@pytest.fixture
def market(db: Database, clock: FrozenClock, tenant_id: str) -> ApiTenant:
    """admin (every scope), writer (an operator), reader (a customer key with no id: sees nothing of
    anyone's)."""
    return create_market(db, clock, tenant_id)


@pytest.fixture
def other_market(db: Database, clock: FrozenClock, tenant_id: str) -> ApiTenant:
    return create_market(db, clock, f"{tenant_id}-b")


@pytest.fixture
def key(db: Database, clock: FrozenClock) -> KeyMaker:
    """`key(tenant, kind, principal_id, scopes=READ_WRITE)` → auth headers for a new key."""

    def make(tenant: ApiTenant, kind: str, principal_id: str | None = None,
             scopes: list[str] | None = None) -> dict[str, str]:
        with db.session() as s:
            created = identity_service.create_key(
                s, tenant_id=tenant.id, kind=kind, scopes=READ_WRITE if scopes is None else scopes,
                principal_id=principal_id, now_ns=clock.now_ns(),
            )
        return ApiTenant.auth(created.secret)

    return make
