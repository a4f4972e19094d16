"""The Idempotency-Key header: replays, conflicts, scoping, and what is not stored."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.api.conftest import assert_problem, create_account

REPLAYED = "Idempotent-Replayed"


def _k(t, key):
    return {**t.w, "Idempotency-Key": key}


def test_account_create_replays_the_stored_response(client, tenant):
    body = {"asset": "USD", "kind": "customer_wallet"}  # no client id: the key is the only guard
    first = client.post("/v1/accounts", json=body, headers=_k(tenant, "acc-key-1"))
    assert first.status_code == 201 and REPLAYED not in first.headers
    again = client.post("/v1/accounts", json=body, headers=_k(tenant, "acc-key-1"))
    assert again.status_code == 201
    assert again.headers[REPLAYED] == "true"
    assert again.content == first.content
    assert len(client.get("/v1/accounts", headers=tenant.r).json()["data"]) == 1


def test_same_key_different_body_is_409(client, tenant):
    client.post("/v1/accounts", json={"asset": "USD", "kind": "a"}, headers=_k(tenant, "k"))
    r = client.post("/v1/accounts", json={"asset": "USD", "kind": "b"}, headers=_k(tenant, "k"))
    assert_problem(r, 409, "idempotency_conflict")
    # The key names one request of the tenant, whatever the endpoint.
    r = client.post("/v1/assets", json={"code": "KK", "scale": 2}, headers={**tenant.a, "Idempotency-Key": "k"})
    assert_problem(r, 409, "idempotency_conflict")


def test_callers_without_a_principal_id_share_the_tenants_keys(client, tenant):
    """Two service keys of one tenant (an integrator's two workers) are one caller: a request
    retried under the other key replays, as with Stripe's account-wide keys."""
    body = {"asset": "USD", "kind": "a"}
    first = client.post("/v1/accounts", json=body, headers=_k(tenant, "svc"))
    again = client.post("/v1/accounts", json=body, headers={**tenant.a, "Idempotency-Key": "svc"})
    assert again.status_code == 201 and again.headers[REPLAYED] == "true" and again.content == first.content


def test_keys_are_per_tenant(client, tenant, other_tenant):
    body = {"asset": "USD", "kind": "a"}
    a = client.post("/v1/accounts", json=body, headers=_k(tenant, "shared"))
    b = client.post("/v1/accounts", json=body, headers=_k(other_tenant, "shared"))
    assert a.status_code == b.status_code == 201
    assert REPLAYED not in b.headers and a.json()["id"] != b.json()["id"]


def test_errors_are_not_stored(client, tenant):
    r = client.post("/v1/accounts", json={"asset": "NOPE", "kind": "a"}, headers=_k(tenant, "e"))
    assert_problem(r, 404, "asset_not_found")
    # Nothing was stored under the key, so it is free for the corrected request.
    r = client.post("/v1/accounts", json={"asset": "USD", "kind": "a"}, headers=_k(tenant, "e"))
    assert r.status_code == 201 and REPLAYED not in r.headers


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_invalid_keys_are_422(client, tenant, key):
    r = client.post("/v1/accounts", json={"asset": "USD", "kind": "a"}, headers=_k(tenant, key))
    assert_problem(r, 422, "invalid_idempotency_key")
    r = client.post("/v1/transfers", json={"id": "t", "pending_id": "p", "flags": ["void_pending"]},
                    headers=_k(tenant, key))
    assert_problem(r, 422, "invalid_idempotency_key")


def test_longest_key_is_accepted(client, tenant):
    r = client.post("/v1/accounts", json={"asset": "USD", "kind": "a"}, headers=_k(tenant, "k" * 255))
    assert r.status_code == 201


def test_asset_create_replay(client, tenant):
    h = {**tenant.a, "Idempotency-Key": "asset-1"}
    first = client.post("/v1/assets", json={"code": "IDEM", "scale": 2}, headers=h)
    again = client.post("/v1/assets", json={"code": "IDEM", "scale": 2}, headers=h)
    assert first.status_code == again.status_code == 201
    assert again.headers[REPLAYED] == "true" and again.content == first.content


def test_transfer_replay_conflict_and_failed_not_stored(client, tenant):
    create_account(client, tenant, "src", kind="treasury")
    create_account(client, tenant, "w", flags=["debits_must_not_exceed_credits"])
    spend = {"id": "spend", "debit_account_id": "w", "credit_account_id": "src", "amount": "5", "asset": "USD"}
    # Refused (no funds): not stored, so the same key and body are evaluated again later.
    assert_problem(client.post("/v1/transfers", json=spend, headers=_k(tenant, "t-1")), 409, "exceeds_credits")
    fund = {"id": "fund", "debit_account_id": "src", "credit_account_id": "w", "amount": "5", "asset": "USD"}
    assert client.post("/v1/transfers", json=fund, headers=tenant.w).status_code == 201
    first = client.post("/v1/transfers", json=spend, headers=_k(tenant, "t-1"))
    assert first.status_code == 201 and REPLAYED not in first.headers
    again = client.post("/v1/transfers", json=spend, headers=_k(tenant, "t-1"))
    assert again.status_code == 201 and again.headers[REPLAYED] == "true"
    assert again.content == first.content
    # Without the key the transfer id still protects it: `exists`, 200.
    plain = client.post("/v1/transfers", json=spend, headers=tenant.w)
    assert plain.status_code == 200 and plain.json() == first.json()
    r = client.post("/v1/transfers", json={**spend, "id": "spend-2"}, headers=_k(tenant, "t-1"))
    assert_problem(r, 409, "idempotency_conflict")
    acc = client.get("/v1/accounts/w", headers=tenant.r).json()
    assert acc["balances"]["balance"] == "0.00"


def test_batch_replay(client, tenant):
    create_account(client, tenant, "a", kind="treasury")
    create_account(client, tenant, "b")
    batch = {"transfers": [
        {"id": "x1", "debit_account_id": "a", "credit_account_id": "b", "amount": "1", "asset": "USD"},
        {"id": "x2", "debit_account_id": "a", "credit_account_id": "ghost", "amount": "1", "asset": "USD"},
    ]}
    first = client.post("/v1/transfers", json=batch, headers=_k(tenant, "batch-1"))
    again = client.post("/v1/transfers", json=batch, headers=_k(tenant, "batch-1"))
    assert first.status_code == again.status_code == 200
    assert again.headers[REPLAYED] == "true" and again.content == first.content
    assert [r["result"] for r in again.json()["results"]] == ["ok", "credit_account_not_found"]


def test_a_batch_that_applied_nothing_is_not_stored_so_its_retry_runs_again(client, tenant):
    """As for a single transfer refused with a 409: a batch answers 200 even when every
    transfer was refused, but nothing happened, so the key is free and the retry runs."""
    create_account(client, tenant, "src", kind="treasury")
    create_account(client, tenant, "w", flags=["debits_must_not_exceed_credits"])
    batch = {"transfers": [
        {"id": "s1", "debit_account_id": "w", "credit_account_id": "src", "amount": "3", "asset": "USD"},
        {"id": "s2", "debit_account_id": "w", "credit_account_id": "ghost", "amount": "1", "asset": "USD"},
    ]}
    first = client.post("/v1/transfers", json=batch, headers=_k(tenant, "b-none"))
    assert first.status_code == 200
    assert [r["result"] for r in first.json()["results"]] == ["exceeds_credits", "credit_account_not_found"]
    fund = {"id": "fund", "debit_account_id": "src", "credit_account_id": "w", "amount": "5", "asset": "USD"}
    assert client.post("/v1/transfers", json=fund, headers=tenant.w).status_code == 201
    second = client.post("/v1/transfers", json=batch, headers=_k(tenant, "b-none"))
    assert second.status_code == 200 and REPLAYED not in second.headers
    assert [r["result"] for r in second.json()["results"]] == ["ok", "credit_account_not_found"]
    # Now something was applied: stored, replayed, applied once.
    third = client.post("/v1/transfers", json=batch, headers=_k(tenant, "b-none"))
    assert third.headers[REPLAYED] == "true" and third.content == second.content
    assert client.get("/v1/accounts/w", headers=tenant.r).json()["balances"]["balance"] == "2.00"


def test_concurrent_requests_with_one_key_create_one_account(client, tenant):
    body = {"asset": "USD", "kind": "race"}

    def call(_: int) -> tuple[int, str]:
        r = client.post("/v1/accounts", json=body, headers=_k(tenant, "race-key"))
        return r.status_code, r.json().get("id", r.json().get("code"))

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, range(16)))
    ids = {oid for status, oid in outcomes if status == 201}
    assert len(ids) == 1, outcomes
    # Every caller got the account or (mid-flight on another process) a clear 409 — never a 500.
    assert all(status in (201, 409) for status, _ in outcomes), outcomes
    assert len(client.get("/v1/accounts?kind=race", headers=tenant.r).json()["data"]) == 1


def test_one_key_with_two_transfers_at_once_moves_money_once(client, tenant):
    """The key is claimed before posting: of two requests racing with one key and different
    bodies, one posts and the other is refused (it used to post both, and answer 409 only
    to a later retry of the second)."""
    create_account(client, tenant, "src", kind="treasury")
    create_account(client, tenant, "dst")
    for n in range(8):
        bodies = [{"id": f"race-{n}-{i}", "debit_account_id": "src", "credit_account_id": "dst", "amount": "1",
                   "asset": "USD"} for i in range(2)]

        def post(body: dict[str, str], n: int = n) -> int:
            return client.post("/v1/transfers", json=body, headers=_k(tenant, f"race-key-{n}")).status_code

        with ThreadPoolExecutor(2) as pool:
            statuses = sorted(pool.map(post, bodies))
        assert statuses == [201, 409], statuses
    assert client.get("/v1/accounts/dst", headers=tenant.r).json()["balances"]["credits_posted"] == "8.00"


def test_a_claim_left_by_a_request_that_died_is_taken_over_after_a_minute(client, tenant, db, clock):
    """A process killed between posting and storing leaves its claim unfinished: the same
    request is told it is in progress, then runs again once the claim is stale (safely: its
    transfer id answers `exists`); another request under the key is still a conflict."""
    from meterline.api.idempotency import request_hash
    from meterline.db.idempotency import IdempotencyRecord

    create_account(client, tenant, "src", kind="treasury")
    create_account(client, tenant, "dst")
    body = {"id": "orphan", "debit_account_id": "src", "credit_account_id": "dst", "amount": "1", "asset": "USD"}
    raw = json.dumps(body).encode()
    with db.session() as s:
        s.add(IdempotencyRecord(tenant_id=tenant.id, principal="", key="died",
                                request_hash=request_hash("POST", "/v1/transfers", raw),
                                status_code=0, response_body="", created_at=clock.now_ns()))
    headers = {**_k(tenant, "died"), "content-type": "application/json"}
    assert_problem(client.post("/v1/transfers", content=raw, headers=headers), 409, "idempotency_in_progress")
    clock.advance(61)
    other = json.dumps({**body, "id": "other"}).encode()
    assert_problem(client.post("/v1/transfers", content=other, headers=headers), 409, "idempotency_conflict")
    first = client.post("/v1/transfers", content=raw, headers=headers)
    assert first.status_code == 201, first.text
    again = client.post("/v1/transfers", content=raw, headers=headers)
    assert again.status_code == 201 and again.headers[REPLAYED] == "true"
