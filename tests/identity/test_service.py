"""Tenants and API keys: creation, hashing, scopes, revocation, authentication."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.identity.models import ApiKey
from meterline.identity.service import (
    InvalidApiKey,
    InvalidKeyRequest,
    TenantExists,
    TenantNotFound,
    hash_key,
    identity_service,
)
from meterline.ledger.service import ledger_service
from meterline.money import STANDARD_ASSETS
from tests.factories import make_key, make_tenant


def test_new_tenant_gets_the_standard_assets(session, tenant_id, clock):
    make_tenant(session, tenant_id, clock)
    codes = {a.code: a.scale for a in ledger_service.list_assets(session, tenant_id)}
    assert codes == {a.code: a.scale for a in STANDARD_ASSETS}
    assert codes["SOL"] == 9 and codes["USD"] == 2 and codes["USDC"] == 6


def test_tenant_ids_are_validated_and_unique(session, tenant_id, clock):
    make_tenant(session, tenant_id, clock)
    with pytest.raises(TenantExists):
        identity_service.create_tenant(session, tenant_id, None, clock.now_ns())
    for bad in ["", "a b", "x" * 65, "semi;colon"]:
        with pytest.raises(InvalidKeyRequest):
            identity_service.create_tenant(session, bad, None, clock.now_ns())


def test_key_is_stored_only_as_its_hash(session, tenant_id, clock):
    make_tenant(session, tenant_id, clock)
    created = make_key(session, tenant_id, clock)
    assert created.secret.startswith("ml_live_") and len(created.secret) > 40
    row = session.scalars(select(ApiKey).where(ApiKey.id == created.key.id)).one()
    assert row.key_hash == hash_key(created.secret)
    assert created.secret not in (row.key_hash, row.prefix)
    assert created.secret.startswith(row.prefix)


def test_test_keys_and_default_scopes_by_kind(session, tenant_id, clock):
    make_tenant(session, tenant_id, clock)
    test_key = identity_service.create_key(session, tenant_id=tenant_id, kind="operator", live=False,
                                           now_ns=clock.now_ns())
    assert test_key.secret.startswith("ml_test_")
    assert sorted(test_key.key.scopes) == ["ledger:read", "ledger:write"]


def test_unknown_scope_kind_or_tenant_is_refused(session, tenant_id, clock):
    make_tenant(session, tenant_id, clock)
    with pytest.raises(InvalidKeyRequest):
        make_key(session, tenant_id, clock, scopes=["ledger:everything"])
    with pytest.raises(InvalidKeyRequest):
        make_key(session, tenant_id, clock, kind="superuser")
    with pytest.raises(TenantNotFound):
        make_key(session, "no-such-tenant", clock)


def test_too_long_principal_ids_and_names_are_refused(session, tenant_id, clock):
    """They once reached PostgreSQL's VARCHAR columns (a traceback from `keys create`)."""
    make_tenant(session, tenant_id, clock)
    longest = identity_service.create_key(session, tenant_id=tenant_id, now_ns=clock.now_ns(), kind="customer",
                                          principal_id="c" * 128)  # as long as a wallet owner's or customer's id
    assert longest.key.principal_id == "c" * 128
    for kw in ({"kind": "customer", "principal_id": "c" * 129}, {"kind": "customer", "principal_id": ""},
               {"name": "n" * 201}):
        with pytest.raises(InvalidKeyRequest):
            identity_service.create_key(session, tenant_id=tenant_id, now_ns=clock.now_ns(), **kw)
    with pytest.raises(InvalidKeyRequest):
        identity_service.create_tenant(session, tenant_id + "-2", "n" * 201, clock.now_ns())


def test_one_new_tenant_ensured_by_many_processes_at_once_is_created_once(db, tenant_id, clock):
    """`meterline keys create --tenant NEW` run eight times at once: each gets its key, the
    tenant and its standard assets exist once."""
    barrier = threading.Barrier(8)

    def ensure_and_key(_: int) -> str:
        barrier.wait()
        with db.session() as s:
            identity_service.ensure_tenant(s, tenant_id, clock.now_ns())
            return identity_service.create_key(s, tenant_id=tenant_id, now_ns=clock.now_ns()).secret

    with ThreadPoolExecutor(8) as pool:
        assert len(set(pool.map(ensure_and_key, range(8)))) == 8
    with db.session(write=False) as s:
        assert {a.code for a in ledger_service.list_assets(s, tenant_id)} == {a.code for a in STANDARD_ASSETS}
        assert len(identity_service.list_keys(s, tenant_id)) == 8


def _factory(db: Database):
    return lambda: db.session(write=False)


def test_authenticate_resolves_principal_and_revocation_takes_effect(db, tenant_id):
    clock = FrozenClock()
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        created = make_key(s, tenant_id, clock, kind="operator", scopes=["ledger:read"])
    principal = identity_service.authenticate(_factory(db), created.secret, ttl=60)
    assert principal.tenant_id == tenant_id
    assert principal.kind == "operator"
    assert principal.has("ledger:read") and not principal.has("ledger:write")
    with db.session() as s:
        identity_service.revoke_key(s, created.key.id, clock.now_ns())
    # Revoking in this process clears the cache at once.
    with pytest.raises(InvalidApiKey):
        identity_service.authenticate(_factory(db), created.secret, ttl=60)


def test_revoked_key_elsewhere_expires_from_cache_within_ttl(db, tenant_id):
    clock = FrozenClock()
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        created = make_key(s, tenant_id, clock)
    identity_service.authenticate(_factory(db), created.secret, ttl=60)
    # Simulate a revocation by another process: the row changes, this cache is not told.
    with db.session() as s:
        row = s.get(ApiKey, created.key.id)
        row.revoked_at = clock.now_ns()
    with pytest.raises(InvalidApiKey):
        identity_service.authenticate(_factory(db), created.secret, ttl=0)


@pytest.mark.parametrize("secret", ["", "nope", "ml_live_", "ml_live_" + "x" * 300, "sk_live_abc"])
def test_malformed_or_unknown_keys_are_refused(db, secret):
    with pytest.raises(InvalidApiKey):
        identity_service.authenticate(_factory(db), secret, ttl=0)


def test_admin_scope_implies_every_scope(session, tenant_id, clock):
    make_tenant(session, tenant_id, clock)
    created = make_key(session, tenant_id, clock, kind="admin")
    assert created.key.scopes == ["admin"]
