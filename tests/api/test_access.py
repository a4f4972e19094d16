"""Who may do what: keys, scopes, tenants, dev mode."""

from __future__ import annotations

import pytest

from meterline.identity.service import identity_service
from tests.api.conftest import ApiTenant, MakeClient, assert_problem, create_account, post_transfer
from tests.factories import make_key

READS = [
    "/v1/assets",
    "/v1/accounts",
    "/v1/accounts/acc-a",
    "/v1/accounts/acc-a/transfers",
    "/v1/accounts/acc-a/holds",
    "/v1/transfers/t1",
    "/v1/blocks/latest",
    "/v1/blocks/1",
    "/v1/transfers/t1/proof",
]
WRITES = [
    ("/v1/accounts", {"asset": "USD", "kind": "customer_wallet"}),
    ("/v1/transfers", {"id": "t1", "debit_account_id": "a", "credit_account_id": "b",
                       "amount": "1", "asset": "USD"}),
    ("/v1/assets", {"code": "ZZZ", "scale": 2, "kind": "token", "name": "z"}),
]


@pytest.mark.parametrize("path", READS)
def test_reads_without_key_are_401(client, path):
    assert_problem(client.get(path), 401, "unauthenticated")


@pytest.mark.parametrize(("path", "body"), WRITES)
def test_writes_without_key_are_401_before_the_body_is_looked_at(client, path, body):
    assert_problem(client.post(path, json=body), 401, "unauthenticated")
    assert_problem(client.post(path, content=b"{not json"), 401, "unauthenticated")


def test_unknown_and_malformed_keys_are_401(client):
    assert_problem(client.get("/v1/accounts", headers={"Authorization": "Bearer ml_live_nope"}),
                   401, "invalid_api_key")
    assert_problem(client.get("/v1/accounts", headers={"Authorization": "Basic abc"}), 401, "unauthenticated")
    assert_problem(client.get("/v1/accounts", headers={"X-Api-Key": "garbage"}), 401, "invalid_api_key")


def test_revoked_key_is_401(client, tenant, db, clock):
    assert client.get("/v1/accounts", headers=tenant.r).status_code == 200
    with db.session() as s:
        key = identity_service.authenticate(lambda: db.session(write=False), tenant.reader, ttl=0)
        identity_service.revoke_key(s, key.key_id, clock.now_ns())
    assert_problem(client.get("/v1/accounts", headers=tenant.r), 401, "invalid_api_key")


def test_read_scope_cannot_write(client, tenant):
    for path, body in WRITES:
        assert_problem(client.post(path, json=body, headers=tenant.r), 403, "forbidden")


def test_write_scope_cannot_create_assets(client, tenant):
    r = client.post("/v1/assets", json={"code": "ZZZ", "scale": 2}, headers=tenant.w)
    assert_problem(r, 403, "forbidden")


def test_key_without_ledger_scopes_is_403(client, tenant, db, clock):
    with db.session() as s:
        device = make_key(s, tenant.id, clock, kind="device").secret
    for path in READS[:3]:
        assert_problem(client.get(path, headers=ApiTenant.auth(device)), 403, "forbidden")


def test_another_tenants_rows_are_404_and_never_move(client, tenant, other_tenant):
    create_account(client, tenant, "acc-a")
    create_account(client, tenant, "acc-b")
    r = post_transfer(client, tenant, id="t1", debit_account_id="acc-a", credit_account_id="acc-b",
                      amount="1.00", asset="USD")
    assert r.status_code == 201
    b = other_tenant
    for path in ("/v1/accounts/acc-a", "/v1/accounts/acc-a/transfers", "/v1/accounts/acc-a/holds"):
        assert_problem(client.get(path, headers=b.r), 404, "account_not_found")
    assert_problem(client.get("/v1/transfers/t1", headers=b.r), 404, "transfer_not_found")
    assert_problem(client.get("/v1/transfers/t1/proof", headers=b.r), 404, "transfer_not_found")
    assert client.get("/v1/accounts", headers=b.r).json() == {"data": [], "next_cursor": None}
    # Tenant B tries to move A's money: the accounts do not exist for B.
    r = post_transfer(client, b, id="steal", debit_account_id="acc-a", credit_account_id="acc-b",
                      amount="1.00", asset="USD")
    assert_problem(r, 404, "debit_account_not_found")
    # B may even reuse A's transfer id: ids are per tenant. Still nothing of A's is seen.
    create_account(client, b, "acc-b")
    r = post_transfer(client, b, id="t1", debit_account_id="acc-a", credit_account_id="acc-b",
                      amount="1.00", asset="USD")
    assert_problem(r, 404, "debit_account_not_found")
    # A's balances are untouched.
    acc = client.get("/v1/accounts/acc-a", headers=tenant.r).json()
    assert acc["balances"]["debits_posted"] == "1.00"


def test_dev_mode_loopback_is_default_tenant_admin(make_client, db, clock, tenant):
    client = make_client(dev=True, default_tenant=tenant.id)
    r = client.post("/v1/accounts", json={"id": "dev-acc", "asset": "USD", "kind": "treasury"})
    assert r.status_code == 201, r.text
    # It is the default tenant's data, seen with that tenant's key.
    assert client.get("/v1/accounts/dev-acc", headers=tenant.r).status_code == 200
    assert client.post("/v1/assets", json={"code": "DEVX", "scale": 3}).status_code == 201


def test_dev_mode_still_requires_a_key_off_loopback(make_client: MakeClient, tenant):
    remote = make_client(dev=True, default_tenant=tenant.id, client=("10.1.2.3", 1234))
    assert_problem(remote.get("/v1/accounts"), 401, "unauthenticated")
    assert remote.get("/v1/accounts", headers=tenant.r).status_code == 200


def test_production_mode_loopback_still_needs_a_key(make_client, tenant):
    local = make_client(dev=False, client=("127.0.0.1", 5000))
    assert_problem(local.get("/v1/accounts"), 401, "unauthenticated")


@pytest.mark.parametrize("kind", ["customer", "provider", "device"])
def test_the_raw_ledger_is_for_staff_even_with_ledger_write(client, tenant, db, clock, kind):
    """The raw ledger names any account of the tenant. A customer key with `ledger:write`
    (which the wallet routes need) moved another customer's balance into its own and
    credited itself from the external account; a provider key emptied another provider's
    earnings. Customers and providers reach their money through their scoped routes."""
    create_account(client, tenant, "bank", kind="external")
    create_account(client, tenant, "bob-wallet", flags=["debits_must_not_exceed_credits"])
    assert post_transfer(client, tenant, id="t1", debit_account_id="bank", credit_account_id="bob-wallet",
                         amount="10", asset="USD").status_code == 201
    with db.session() as s:
        secret = identity_service.create_key(s, tenant_id=tenant.id, kind=kind, principal_id="alice",
                                             scopes=["ledger:read", "ledger:write"], now_ns=clock.now_ns()).secret
    h = ApiTenant.auth(secret)
    steal = {"id": "steal", "debit_account_id": "bob-wallet", "credit_account_id": "bank",
             "amount": "10", "asset": "USD"}
    assert_problem(client.post("/v1/transfers", json=steal, headers=h), 403, "forbidden")
    assert_problem(client.post("/v1/transfers", json={"transfers": [steal]}, headers=h), 403, "forbidden")
    assert_problem(client.post("/v1/accounts", json={"asset": "USD", "kind": "customer_wallet"}, headers=h),
                   403, "forbidden")
    for path in ["/v1/accounts", "/v1/accounts/bob-wallet", "/v1/accounts/bob-wallet/transfers",
                 "/v1/accounts/bob-wallet/holds", "/v1/transfers/t1", "/v1/transfers/t1/proof",
                 "/v1/blocks/latest", "/v1/blocks/1"]:  # a block header counts the tenant's transfers
        assert_problem(client.get(path, headers=h), 403, "forbidden")
    assert client.get("/v1/accounts/bob-wallet", headers=tenant.r).json()["balances"]["balance"] == "10.00"
