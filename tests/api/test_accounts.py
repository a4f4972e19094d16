"""Accounts and assets over HTTP: create, get, list with cursors, and the response shape."""

from __future__ import annotations

import pytest

from tests.api.conftest import assert_problem, create_account


def test_create_get_and_shape(client, tenant):
    r = client.post("/v1/accounts", json={"asset": "USD", "kind": "customer_wallet", "owner_type": "customer",
                                          "owner_id": "alice", "flags": ["debits_must_not_exceed_credits"],
                                          "metadata": {"tier": "gold"}}, headers=tenant.w)
    assert r.status_code == 201, r.text
    acc = r.json()
    assert acc["id"].startswith("acc_")
    assert acc == {
        "id": acc["id"], "asset": "USD", "kind": "customer_wallet", "owner_type": "customer", "owner_id": "alice",
        "flags": ["debits_must_not_exceed_credits"],
        "balances": {"debits_pending": "0.00", "debits_posted": "0.00", "credits_pending": "0.00",
                     "credits_posted": "0.00", "balance": "0.00", "available": "0.00"},
        "created_at": "2023-11-14T22:13:20.000000Z", "metadata": {"tier": "gold"},
    }
    assert client.get(f"/v1/accounts/{acc['id']}", headers=tenant.r).json() == acc


def test_client_id_recreate_is_200_and_different_fields_409(client, tenant):
    body = {"id": "w1", "asset": "SOL", "kind": "customer_wallet"}
    first = client.post("/v1/accounts", json=body, headers=tenant.w)
    assert first.status_code == 201
    again = client.post("/v1/accounts", json=body, headers=tenant.w)
    assert again.status_code == 200 and again.json() == first.json()
    assert again.json()["balances"]["balance"] == "0.000000000"
    r = client.post("/v1/accounts", json={**body, "kind": "escrow"}, headers=tenant.w)
    assert_problem(r, 409, "account_exists_with_different_fields")


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"asset": "NOPE", "kind": "x"}, 404, "asset_not_found"),
    ({"asset": "usd", "kind": "x"}, 422, "validation_error"),
    ({"asset": "USD"}, 422, "validation_error"),
    ({"asset": "USD", "kind": ""}, 422, "validation_error"),
    ({"asset": "USD", "kind": "k" * 41}, 422, "validation_error"),
    ({"asset": "USD", "kind": "x", "id": "i" * 65}, 422, "validation_error"),
    ({"asset": "USD", "kind": "x", "id": "a/b"}, 422, "validation_error"),
    ({"asset": "USD", "kind": "x", "id": "a b"}, 422, "validation_error"),
    ({"asset": "USD", "kind": "x", "owner_id": "o\u0000"}, 422, "validation_error"),
    ({"asset": "USD", "kind": "x", "flags": ["overdraft"]}, 422, "validation_error"),
    ({"asset": "USD", "kind": "x", "flags": "debits_must_not_exceed_credits"}, 422, "validation_error"),
    ({"asset": "USD", "kind": "x", "metadata": {"k": "v" * 5000}}, 422, "validation_error"),
    ({"asset": "USD", "kind": "x", "metadata": ["not", "a", "dict"]}, 422, "validation_error"),
    ({"asset": "USD", "kind": "x", "balance": "100"}, 422, "validation_error"),
])
def test_create_errors(client, tenant, body, status, code):
    assert_problem(client.post("/v1/accounts", json=body, headers=tenant.w), status, code)


def test_create_bad_json(client, tenant):
    r = client.post("/v1/accounts", content=b'{"asset": "USD", ', headers={**tenant.w,
                                                                         "content-type": "application/json"})
    assert_problem(r, 422, "validation_error")
    r = client.post("/v1/accounts", content=b'{"asset": "USD", "kind": "x", "metadata": {"n": NaN}}',
                    headers=tenant.w)
    assert_problem(r, 422, "validation_error")


def test_list_pagination_walks_every_row_exactly_once(client, tenant):
    for i in range(17):
        create_account(client, tenant, f"acc-{i:02d}", kind="escrow" if i % 3 == 0 else "customer_wallet",
                       asset="USDC" if i % 2 else "USD")
    seen: list[str] = []
    cursor = None
    while True:
        url = "/v1/accounts?limit=4" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=tenant.r).json()
        assert len(page["data"]) <= 4
        seen += [a["id"] for a in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"acc-{i:02d}" for i in range(17)]

    escrow_usd = client.get("/v1/accounts?kind=escrow&asset=USD", headers=tenant.r).json()
    assert [a["id"] for a in escrow_usd["data"]] == ["acc-00", "acc-06", "acc-12"]
    usdc = client.get("/v1/accounts?asset=USDC&limit=1000", headers=tenant.r).json()
    assert len(usdc["data"]) == 8 and usdc["next_cursor"] is None
    assert usdc["data"][0]["balances"]["balance"] == "0.000000"


def test_list_by_owner(client, tenant):
    client.post("/v1/accounts", json={"id": "o1", "asset": "USD", "kind": "w", "owner_type": "customer",
                                      "owner_id": "bob"}, headers=tenant.w)
    client.post("/v1/accounts", json={"id": "o2", "asset": "USD", "kind": "w", "owner_type": "provider",
                                      "owner_id": "bob"}, headers=tenant.w)
    r = client.get("/v1/accounts?owner_type=customer&owner_id=bob", headers=tenant.r).json()
    assert [a["id"] for a in r["data"]] == ["o1"]
    assert_problem(client.get("/v1/accounts?asset=usd", headers=tenant.r), 422, "validation_error")
    assert_problem(client.get("/v1/accounts?kind=a%00b", headers=tenant.r), 422, "validation_error")


def test_assets_list_and_create(client, tenant):
    codes = [a["code"] for a in client.get("/v1/assets", headers=tenant.r).json()["data"]]
    assert {"SOL", "USDC", "USD", "BTC"} <= set(codes) and codes == sorted(codes)
    r = client.post("/v1/assets", json={"code": "GPUH", "scale": 4, "kind": "token", "name": "GPU hour"},
                    headers=tenant.a)
    assert r.status_code == 201, r.text
    assert r.json()["scale"] == 4 and r.json()["created_at"].endswith("Z")
    assert_problem(client.post("/v1/assets", json={"code": "GPUH", "scale": 4}, headers=tenant.a),
                   409, "asset_exists")
    create_account(client, tenant, "g1", asset="GPUH")
    create_account(client, tenant, "g2", asset="GPUH")
    r = client.post("/v1/transfers", json={"id": "g", "debit_account_id": "g1", "credit_account_id": "g2",
                                           "amount": "0.0001", "asset": "GPUH"}, headers=tenant.w)
    assert r.status_code == 201 and r.json()["amount"] == "0.0001"
    r = client.post("/v1/transfers", json={"id": "g2", "debit_account_id": "g1", "credit_account_id": "g2",
                                           "amount": "0.00001", "asset": "GPUH"}, headers=tenant.w)
    assert_problem(r, 422, "amount_precision")


@pytest.mark.parametrize(("body", "code"), [
    ({"code": "gpu", "scale": 2}, "validation_error"),
    ({"code": "GPU", "scale": 19}, "validation_error"),
    ({"code": "GPU", "scale": -1}, "validation_error"),
    ({"code": "GPU", "scale": "2"}, "validation_error"),
    ({"code": "G" * 17, "scale": 2}, "validation_error"),
    ({"code": "GPU", "scale": 2, "kind": "k" * 17}, "validation_error"),
    ({"code": "GPU", "scale": 2, "precision": 3}, "validation_error"),
])
def test_asset_create_errors(client, tenant, body, code):
    assert_problem(client.post("/v1/assets", json=body, headers=tenant.a), 422, code)
