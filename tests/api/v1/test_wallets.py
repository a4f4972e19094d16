"""/v1/wallets/{owner_type}/{owner_id}/{asset}: balance, deposits, withdrawals, transactions."""

from __future__ import annotations

import pytest

from tests.api.conftest import assert_problem

ALICE = "/v1/wallets/customer/alice/USD"
BOB = "/v1/wallets/customer/bob/USD"


def deposit(client, headers, path=ALICE, amount="25.00", proof="tx-1", **extra):
    return client.post(f"{path}/deposits", json={"amount": amount, "proof": proof, **extra}, headers=headers)


def withdraw(client, headers, key, path=ALICE, amount="10.00", destination="acct-9"):
    h = {**headers, "Idempotency-Key": key} if key else headers
    return client.post(f"{path}/withdrawals", json={"amount": amount, "destination": destination}, headers=h)


# -- access ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("GET", "/transactions"), ("POST", "/deposits"),
                                                ("POST", "/withdrawals")])
def test_every_route_needs_a_key(client, method, suffix):
    assert_problem(client.request(method, ALICE + suffix, json={}), 401, "unauthenticated")


def test_read_only_keys_cannot_move_money(client, market, key):
    alice_ro = key(market, "customer", "alice", ["ledger:read"])
    assert_problem(deposit(client, alice_ro), 403, "forbidden")
    assert_problem(withdraw(client, alice_ro, "w1"), 403, "forbidden")


def test_a_customer_sees_and_funds_only_its_own_wallets(client, market, key):
    alice = key(market, "customer", "alice")
    assert deposit(client, alice).status_code == 201
    assert deposit(client, market.w, path=BOB, proof="tx-bob").status_code == 201
    assert client.get(ALICE, headers=alice).json()["available"] == "25.00"
    # Bob's wallet does not exist for Alice, whatever she tries.
    for method, suffix in [("GET", ""), ("GET", "/transactions")]:
        assert_problem(client.request(method, BOB + suffix, headers=alice), 404, "wallet_not_found")
    assert_problem(deposit(client, alice, path=BOB, proof="tx-2"), 404, "wallet_not_found")
    assert_problem(withdraw(client, alice, "w-steal", path=BOB), 404, "wallet_not_found")
    # A key without a principal id owns nothing; staff see everything.
    assert_problem(client.get(ALICE, headers=market.r), 404, "wallet_not_found")
    assert client.get(BOB, headers=market.w).json()["posted"] == "25.00"


@pytest.mark.parametrize("kind", ["provider", "device"])
def test_a_key_of_another_kind_carrying_a_customers_id_owns_none_of_its_wallets(client, market, key, kind):
    """A provider `alice` is not the customer `alice`: it read and emptied her wallet."""
    assert deposit(client, key(market, "customer", "alice")).status_code == 201
    other = key(market, kind, "alice")
    assert_problem(client.get(ALICE, headers=other), 404, "wallet_not_found")
    assert_problem(withdraw(client, other, "w-other"), 404, "wallet_not_found")
    assert client.get(ALICE, headers=market.w).json()["posted"] == "25.00"


def test_another_tenant_sees_its_own_empty_wallet(client, market, other_market):
    assert deposit(client, market.w).status_code == 201
    r = client.get(ALICE, headers=other_market.a)
    assert r.status_code == 200
    assert (r.json()["posted"], r.json()["available"]) == ("0.00", "0.00")
    assert client.get(f"{ALICE}/transactions", headers=other_market.a).json() == {"data": [], "next_cursor": None}
    # Proofs are per tenant under the simulation rail: the same proof credits the other tenant once.
    assert deposit(client, other_market.w).status_code == 201


# -- deposits ----------------------------------------------------------------------------------
def test_deposit_shape_and_balance(client, market):
    r = deposit(client, market.w)
    assert r.status_code == 201, r.text
    assert r.json() == {
        "transfer_id": "dep:simulation:tx-1", "account_id": "wal:customer:alice:USD", "asset": "USD",
        "amount": "25.00", "rail": "simulation", "proof": "tx-1", "simulated": True,
        "balance": {"owner_type": "customer", "owner_id": "alice", "asset": "USD",
                    "account_id": "wal:customer:alice:USD", "posted": "25.00", "pending": "0.00",
                    "available": "25.00"},
    }
    assert client.get(ALICE, headers=market.w).json() == r.json()["balance"]


def test_outside_dev_mode_simulated_deposits_are_refused_unless_turned_on(make_client, market):
    """A production server must not let a wallet key mint balance with a claimed payment."""
    off = make_client(simulation=None)  # not dev mode, nothing said: off
    r = deposit(off, market.w)
    assert_problem(r, 422, "rail_disabled")
    assert "METERLINE_SIMULATION=true" in r.json()["detail"]
    assert off.get(ALICE, headers=market.w).json()["posted"] == "0.00"
    on = make_client(simulation=True)
    assert deposit(on, market.w).status_code == 201


def test_a_proof_credits_once(client, market):
    assert deposit(client, market.w).status_code == 201
    assert_problem(deposit(client, market.w), 409, "payment_proof_reused")
    assert_problem(deposit(client, market.w, path=BOB), 409, "payment_proof_reused")
    assert client.get(ALICE, headers=market.w).json()["posted"] == "25.00"


def test_deposit_with_idempotency_key_replays_instead_of_409(client, market):
    h = {**market.w, "Idempotency-Key": "dep-1"}
    first = deposit(client, h)
    again = deposit(client, h)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()


def test_deposit_json_number_is_exact(client, market):
    r = client.post(f"{ALICE}/deposits", content=b'{"amount": 0.10, "proof": "tx-n"}',
                    headers={**market.w, "Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    assert r.json()["amount"] == "0.10"


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    (ALICE, {"amount": "1.001", "proof": "p"}, 422, "amount_precision"),
    (ALICE, {"amount": "0", "proof": "p"}, 422, "amount_not_positive"),
    (ALICE, {"amount": "-5", "proof": "p"}, 422, "amount_not_positive"),
    (ALICE, {"amount": "1e30", "proof": "p"}, 422, "amount_overflow"),
    (ALICE, {"amount": "ten", "proof": "p"}, 422, "invalid_amount"),
    (ALICE, {"amount": True, "proof": "p"}, 422, "validation_error"),
    (ALICE, {"amount": "1", "proof": "has space"}, 422, "validation_error"),
    (ALICE, {"amount": "1", "proof": "x" * 101}, 422, "validation_error"),
    (ALICE, {"amount": "1"}, 422, "validation_error"),
    (ALICE, {"amount": "1", "proof": "p", "memo": "hi"}, 422, "validation_error"),
    (ALICE, {"amount": "1", "proof": "p", "rail": "paypal"}, 422, "unknown_rail"),
    ("/v1/wallets/customer/alice/ZZZ", {"amount": "1", "proof": "p"}, 404, "asset_not_found"),
    ("/v1/wallets/customer/alice/usd", {"amount": "1", "proof": "p"}, 422, "validation_error"),
    ("/v1/wallets/a:b/alice/USD", {"amount": "1", "proof": "p"}, 422, "validation_error"),
])
def test_deposit_bad_input(client, market, path, body, status, code):
    assert_problem(client.post(f"{path}/deposits", json=body, headers=market.w), status, code)


# -- withdrawals -------------------------------------------------------------------------------
def test_withdrawal_needs_an_idempotency_key(client, market):
    deposit(client, market.w)
    assert_problem(withdraw(client, market.w, None), 422, "idempotency_key_required")


def test_withdraw_holds_sends_and_replays(client, market):
    deposit(client, market.w)
    r = withdraw(client, market.w, "wd-1")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["id"], body["amount"], body["destination"], body["tx_signature"], body["simulated"]) == (
        "wd-1", "10.00", "acct-9", "SIMULATION_MODE", True)
    # Withdrawal transfer ids are scoped by wallet: wd:<wallet scope>:<client id>.
    assert body["hold_transfer_id"].startswith("wd:") and body["hold_transfer_id"].endswith(":wd-1")
    assert body["transfer_id"] == body["hold_transfer_id"] + ":sent"
    assert (body["balance"]["posted"], body["balance"]["pending"], body["balance"]["available"]) == (
        "15.00", "0.00", "15.00")
    again = withdraw(client, market.w, "wd-1")
    assert again.status_code == 201 and again.json() == body and again.headers["Idempotent-Replayed"] == "true"
    assert_problem(withdraw(client, market.w, "wd-1", amount="11.00"), 409, "idempotency_conflict")
    assert client.get(ALICE, headers=market.w).json()["posted"] == "15.00"


def test_a_long_idempotency_key_still_withdraws_once(client, market):
    deposit(client, market.w)
    key = "k " * 100  # spaces and 200 characters: not usable as a transfer id, so digested
    assert withdraw(client, market.w, key).status_code == 201
    assert withdraw(client, market.w, key).headers["Idempotent-Replayed"] == "true"
    assert client.get(ALICE, headers=market.w).json()["posted"] == "15.00"


def test_withdraw_more_than_available_is_402(client, market):
    deposit(client, market.w)
    assert_problem(withdraw(client, market.w, "wd-big", amount="25.01"), 402, "insufficient_funds")
    assert_problem(withdraw(client, market.w, "wd-bob", path=BOB), 402, "insufficient_funds")
    assert client.get(ALICE, headers=market.w).json()["available"] == "25.00"


@pytest.mark.parametrize(("body", "code"), [
    ({"amount": "1.005", "destination": "d"}, "amount_precision"),
    ({"amount": "1", "destination": ""}, "validation_error"),
    ({"amount": "1", "destination": "d" * 201}, "validation_error"),
    ({"amount": "1"}, "validation_error"),
    ({"amount": "1", "destination": "d", "rail": "swift"}, "unknown_rail"),
])
def test_withdraw_bad_input(client, market, body, code):
    deposit(client, market.w)
    r = client.post(f"{ALICE}/withdrawals", json=body, headers={**market.w, "Idempotency-Key": "x"})
    assert_problem(r, 422, code)


def test_bad_idempotency_key_is_422(client, market):
    r = client.post(f"{ALICE}/withdrawals", json={"amount": "1", "destination": "d"},
                    headers={**market.w, "Idempotency-Key": "k" * 256})
    assert_problem(r, 422, "invalid_idempotency_key")


# -- transactions ------------------------------------------------------------------------------
def test_transactions_are_signed_and_paginated(client, market):
    deposit(client, market.w)
    withdraw(client, market.w, "wd-1", amount="10.00")
    page = client.get(f"{ALICE}/transactions", params={"limit": 2}, headers=market.w).json()
    hold_id = page["data"][1]["transfer_id"]
    assert hold_id.startswith("wd:") and hold_id.endswith(":wd-1")
    assert [(e["transfer_id"], e["amount"], e["status"], e["code"]) for e in page["data"]] == [
        ("dep:simulation:tx-1", "25.00", "posted", "deposit"),
        (hold_id, "-10.00", "pending", "withdrawal"),
    ]
    assert page["data"][0]["counterparty_account_id"] == "sys:external:simulation:USD"
    assert page["data"][0]["timestamp"] == "2023-11-14T22:13:20.000000Z"
    assert page["data"][0]["metadata"]["mode"] == "SIMULATION_MODE"
    rest = client.get(f"{ALICE}/transactions", params={"cursor": page["next_cursor"]}, headers=market.w).json()
    assert [(e["transfer_id"], e["amount"], e["status"]) for e in rest["data"]] == [
        (hold_id + ":sent", "-10.00", "posted")]
    assert rest["next_cursor"] is None


def test_transactions_bad_cursor(client, market):
    assert_problem(client.get(f"{ALICE}/transactions", params={"cursor": "abc"}, headers=market.w),
                   422, "invalid_cursor")
