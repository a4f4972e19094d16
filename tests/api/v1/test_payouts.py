"""/v1/payouts: request, approve, reject, execute; who may do which; bad input."""

from __future__ import annotations

import pytest

from meterline.payouts import tasks as payout_tasks
from tests.api.conftest import assert_problem
from tests.factories import make_earnings


@pytest.fixture
def provider(client, market, key, db, clock):
    """Provider `p1` owned by principal `prov-1`, with 50 DGPU of earnings; its key's headers."""
    r = client.post("/v1/providers", json={"id": "p1", "name": "P1", "owner_id": "prov-1"}, headers=market.a)
    assert r.status_code == 201, r.text
    with db.session() as s:
        make_earnings(s, market.id, clock, provider_id="p1", amount_minor=50_000_000, asset="DGPU")
    return key(market, "provider", "prov-1")


def body(amount="10.000000", provider_id="p1", **extra):
    return {"provider_id": provider_id, "asset": "DGPU", "amount": amount, "destination": "9xQeWv", **extra}


def earnings(db, tenant_id):
    from meterline.ledger.service import ledger_service

    with db.session(write=False) as s:
        acc = ledger_service.get_account(s, tenant_id, "earn:provider:p1:DGPU")
        return acc.credits_posted - acc.debits_posted, acc.debits_pending


def test_under_the_threshold_a_payout_is_approved_and_paid(client, market, provider, db):
    r = client.post("/v1/payouts", json=body(), headers=provider)
    assert r.status_code == 201, r.text
    p = r.json()
    assert {k: p[k] for k in ("provider_id", "asset", "amount", "destination", "rail", "status", "requested_by",
                              "approvals", "required_approvals", "attempts", "next_attempt_at", "tx_signature",
                              "created_at")} == {
        "provider_id": "p1", "asset": "DGPU", "amount": "10.000000", "destination": "9xQeWv",
        "rail": "simulation", "status": "approved", "requested_by": "prov-1", "approvals": [],
        "required_approvals": 0, "attempts": 0, "next_attempt_at": "2023-11-14T22:13:20.000000Z",
        "tx_signature": None, "created_at": "2023-11-14T22:13:20.000000Z",
    }
    assert p["id"].startswith("po_") and p["hold_transfer_id"] == f"{p['id']}:hold"
    assert earnings(db, market.id) == (50_000_000, 10_000_000)  # held, not yet paid
    # Only an admin executes one now (the worker executes the rest).
    assert_problem(client.post(f"/v1/payouts/{p['id']}/execute", headers=provider), 403, "forbidden")
    assert_problem(client.post(f"/v1/payouts/{p['id']}/execute", headers=market.w), 403, "forbidden")
    paid = client.post(f"/v1/payouts/{p['id']}/execute", headers=market.a)
    assert paid.status_code == 200, paid.text
    assert (paid.json()["status"], paid.json()["attempts"], paid.json()["tx_signature"]) == (
        "paid", 1, "SIMULATION_MODE")
    assert earnings(db, market.id) == (40_000_000, 0)
    # Executing a paid payout returns it unchanged.
    assert client.post(f"/v1/payouts/{p['id']}/execute", headers=market.a).json() == paid.json()


def test_the_worker_executes_due_payouts(client, market, provider, db, clock):
    pid = client.post("/v1/payouts", json=body(), headers=provider).json()["id"]
    assert payout_tasks.execute_due(db, clock) >= 1
    assert client.get(f"/v1/payouts/{pid}", headers=provider).json()["status"] == "paid"


def test_above_the_threshold_an_operator_approves(make_client, market, provider, key, db):
    client = make_client(payout_approval_threshold="DGPU=5")
    pid = client.post("/v1/payouts", json=body(), headers=provider).json()["id"]
    p = client.get(f"/v1/payouts/{pid}", headers=provider).json()
    assert (p["status"], p["required_approvals"], p["next_attempt_at"]) == ("requested", 1, None)
    assert_problem(client.post(f"/v1/payouts/{pid}/execute", headers=market.a), 409, "payout_not_executable")
    # Neither the provider nor a customer approves; an operator does.
    assert_problem(client.post(f"/v1/payouts/{pid}/approve", headers=provider), 403, "forbidden")
    assert_problem(client.post(f"/v1/payouts/{pid}/approve", headers=key(market, "customer", "c1")), 403, "forbidden")
    r = client.post(f"/v1/payouts/{pid}/approve", headers=key(market, "operator", "op-1"))
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["approvals"]) == ("approved", ["op-1"])
    # It is approved now: another approval is a conflict, the same one counts once.
    assert_problem(client.post(f"/v1/payouts/{pid}/approve", headers=key(market, "operator", "op-2")),
                   409, "payout_not_approvable")
    assert client.post(f"/v1/payouts/{pid}/approve", headers=key(market, "operator", "op-1")).status_code == 200
    assert client.post(f"/v1/payouts/{pid}/execute", headers=market.a).json()["status"] == "paid"


def test_nobody_approves_their_own_request(make_client, market, provider):
    client = make_client(payout_approval_threshold="DGPU=5")
    pid = client.post("/v1/payouts", json=body(), headers=market.a).json()["id"]  # the admin requests
    assert_problem(client.post(f"/v1/payouts/{pid}/approve", headers=market.a), 403, "self_approval_forbidden")
    assert client.post(f"/v1/payouts/{pid}/approve", headers=market.w).json()["status"] == "approved"


def test_reject_returns_the_earnings(client, market, provider, db):
    pid = client.post("/v1/payouts", json=body(), headers=provider).json()["id"]
    assert_problem(client.post(f"/v1/payouts/{pid}/reject", headers=provider), 403, "forbidden")
    r = client.post(f"/v1/payouts/{pid}/reject", json={"reason": "wrong address"}, headers=market.w)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "rejected" and r.json()["last_error"].endswith(": wrong address")
    assert earnings(db, market.id) == (50_000_000, 0)
    assert client.post(f"/v1/payouts/{pid}/reject", headers=market.w).json()["status"] == "rejected"
    assert_problem(client.post(f"/v1/payouts/{pid}/execute", headers=market.a), 409, "payout_not_executable")
    paid = client.post("/v1/payouts", json=body(), headers=provider).json()["id"]
    client.post(f"/v1/payouts/{paid}/execute", headers=market.a)
    assert_problem(client.post(f"/v1/payouts/{paid}/reject", headers=market.w), 409, "payout_not_rejectable")


def test_more_than_the_earnings_is_402(client, market, provider):
    assert_problem(client.post("/v1/payouts", json=body("50.000001"), headers=provider), 402, "insufficient_funds")
    assert client.post("/v1/payouts", json=body("50"), headers=provider).status_code == 201
    assert_problem(client.post("/v1/payouts", json=body("0.000001"), headers=provider), 402, "insufficient_funds")


def test_list_filters_and_cursor(client, market, provider):
    ids = [client.post("/v1/payouts", json=body("1"), headers=provider).json()["id"] for _ in range(3)]
    client.post(f"/v1/payouts/{ids[1]}/execute", headers=market.a)
    page = client.get("/v1/payouts", params={"limit": 2}, headers=provider).json()
    rest = client.get("/v1/payouts", params={"cursor": page["next_cursor"]}, headers=provider).json()
    assert [p["id"] for p in page["data"] + rest["data"]] == sorted(ids) and rest["next_cursor"] is None
    paid = client.get("/v1/payouts", params={"status": "paid"}, headers=market.w).json()["data"]
    assert [p["id"] for p in paid] == [ids[1]]
    assert len(client.get("/v1/payouts", params={"provider_id": "p1"}, headers=market.w).json()["data"]) == 3


# -- access ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/payouts"), ("POST", "/v1/payouts"), ("GET", "/v1/payouts/po_1"),
    ("POST", "/v1/payouts/po_1/approve"), ("POST", "/v1/payouts/po_1/reject"), ("POST", "/v1/payouts/po_1/execute"),
])
def test_every_route_needs_a_key(client, method, path):
    assert_problem(client.request(method, path), 401, "unauthenticated")


def test_only_the_provider_itself_or_an_admin_requests(client, market, other_market, provider, key):
    assert_problem(client.post("/v1/payouts", json=body(), headers=market.w), 403, "forbidden")  # operator
    assert_problem(client.post("/v1/payouts", json=body(), headers=key(market, "customer", "prov-1")),
                   403, "forbidden")
    assert_problem(client.post("/v1/payouts", json=body(), headers=key(market, "provider", "prov-1", ["ledger:read"])),
                   403, "forbidden")
    other = key(market, "provider", "prov-2")
    assert_problem(client.post("/v1/payouts", json=body(), headers=other), 404, "provider_not_found")
    assert_problem(client.post("/v1/payouts", json=body(), headers=other_market.a), 404, "provider_not_found")
    assert_problem(client.post("/v1/payouts", json=body(provider_id="nobody"), headers=market.a),
                   404, "provider_not_found")
    assert client.post("/v1/payouts", json=body(), headers=market.a).json()["requested_by"].startswith("key:")


def test_payouts_are_visible_to_their_provider_and_staff_only(client, market, other_market, provider, key):
    pid = client.post("/v1/payouts", json=body(), headers=provider).json()["id"]
    client.post("/v1/providers", json={"id": "p2", "name": "P2", "owner_id": "prov-2"}, headers=market.a)
    for outsider in (key(market, "provider", "prov-2"), key(market, "customer", "prov-1"), market.r,
                     other_market.a):
        assert_problem(client.get(f"/v1/payouts/{pid}", headers=outsider), 404, "payout_not_found")
        assert pid not in [p["id"] for p in client.get("/v1/payouts", headers=outsider).json()["data"]]
    assert_problem(client.post(f"/v1/payouts/{pid}/approve", headers=other_market.a), 404, "payout_not_found")
    assert_problem(client.post(f"/v1/payouts/{pid}/reject", headers=other_market.a), 404, "payout_not_found")
    assert_problem(client.post(f"/v1/payouts/{pid}/execute", headers=other_market.a), 404, "payout_not_found")
    assert client.get(f"/v1/payouts/{pid}", headers=provider).status_code == 200
    assert client.get(f"/v1/payouts/{pid}", headers=market.w).status_code == 200
    assert client.get("/v1/payouts", params={"provider_id": "p2"}, headers=provider).json()["data"] == []


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("payload", "status", "code"), [
    (body("abc"), 422, "invalid_amount"),
    (body("0.0000001"), 422, "amount_precision"),
    (body("0"), 422, "amount_not_positive"),
    (body(True), 422, "validation_error"),
    ({"provider_id": "p1", "asset": "DGPU", "amount": "1"}, 422, "validation_error"),
    (body(destination=""), 422, "validation_error"),
    (body(rail="ach"), 422, "unknown_rail"),
    (body(asset="ZZZ"), 404, "asset_not_found"),
    (body(asset="dgpu"), 422, "validation_error"),
    (body(note="x"), 422, "validation_error"),
])
def test_request_bad_input(client, market, provider, payload, status, code):
    assert_problem(client.post("/v1/payouts", json=payload, headers=provider), status, code)


def test_other_bad_input(client, market, provider):
    pid = client.post("/v1/payouts", json=body(), headers=provider).json()["id"]
    assert_problem(client.get("/v1/payouts/po_nope", headers=market.w), 404, "payout_not_found")
    assert_problem(client.get("/v1/payouts/po-bad!", headers=market.w), 422, "validation_error")
    for params in ({"status": "lost"}, {"limit": 5000}, {"provider_id": "a b"}):
        assert_problem(client.get("/v1/payouts", params=params, headers=market.w), 422, "validation_error")
    assert_problem(client.get("/v1/payouts", params={"cursor": "_w"}, headers=market.w), 422, "invalid_cursor")
    assert_problem(client.post(f"/v1/payouts/{pid}/reject", json={"reason": 5}, headers=market.w),
                   422, "validation_error")
    assert_problem(client.post(f"/v1/payouts/{pid}/reject", content=b"{", headers=market.w), 422, "validation_error")
    assert client.get(f"/v1/payouts/{pid}", headers=market.w).json()["status"] == "approved"
