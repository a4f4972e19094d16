"""The Dante profile over HTTP (SQLite and PostgreSQL): the full money flow with exact
figures, bad input on every endpoint, and the access matrix.

Demo tenant figures used below: DGPU has 6 decimals; nvidia_rtx_4090 is 0.50 DGPU/h for
the whole 24 GB card, so 12 GB at idle demand is 0.25 DGPU/h = 625/9 minor units a second;
the first hold is five minutes of that (20833.3 → 20834 minor units, rounded up: the
quote's estimated 450 W is not held, power is held as it is metered); the platform fee
is 5 %.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from meterline.catalog.service import catalog_service
from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.identity.service import identity_service
from meterline.pricing.service import pricing_service
from meterline.rentals.service import rental_service
from tests.api.conftest import MakeClient, assert_problem
from tests.factories import make_earnings

HOLD = 20_834  # minor units: the first rolling slice for 12 GB of an RTX 4090 (time only)


@dataclass
class Dante:
    id: str
    admin: str
    operator: str
    alice: str  # customer "alice", ledger:read + ledger:write
    bob: str  # customer "bob"
    alice_ro: str  # customer "alice", default scopes (ledger:read)
    provider: str  # provider "demo-provider", ledger:read + ledger:write
    unbound: str  # customer key without a principal id
    device: str  # a device key (no scopes)

    @staticmethod
    def h(secret: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}", **extra}


def seed_dante(db: Database, clock: FrozenClock, tenant_id: str) -> Dante:
    rw = ["ledger:read", "ledger:write"]
    with db.session() as s:
        now = clock.now_ns()
        identity_service.ensure_tenant(s, tenant_id, now)
        catalog_service.seed_demo(s, tenant_id, now)
        pricing_service.seed_demo(s, tenant_id, now)

        def key(kind: str, pid: str | None = None, scopes: list[str] | None = None) -> str:
            return identity_service.create_key(s, tenant_id=tenant_id, kind=kind, principal_id=pid,
                                               scopes=scopes, now_ns=now).secret

        return Dante(
            id=tenant_id, admin=key("admin"), operator=key("operator", "op-1"), alice=key("customer", "alice", rw),
            bob=key("customer", "bob", rw), alice_ro=key("customer", "alice"),
            provider=key("provider", "demo-provider", rw), unbound=key("customer", None, rw), device=key("device"),
        )


@pytest.fixture
def dante(db: Database, clock: FrozenClock, tenant_id: str) -> Dante:
    return seed_dante(db, clock, tenant_id)


@pytest.fixture
def dante_b(db: Database, clock: FrozenClock, tenant_id: str) -> Dante:
    return seed_dante(db, clock, f"{tenant_id}-b")


def money(amount: str, asset: str = "DGPU") -> dict[str, str]:
    return {"amount": amount, "asset": asset}


def deposit(client: TestClient, d: Dante, amount: str = "10", *, user: str = "alice", proof: str | None = None,
            ) -> Any:
    key = d.alice if user == "alice" else d.bob
    r = client.post("/api/v1/wallet/deposit", json={"amount": amount, "tx_signature": proof or f"tx-{user}-{amount}"},
                    headers=d.h(key))
    assert r.status_code == 201, r.text
    return r.json()


def start(client: TestClient, d: Dante, **body: Any) -> Any:
    return client.post("/api/v1/billing/start-session",
                       json=body or {"gpu_model": "nvidia_rtx_4090", "vram_gb": 12}, headers=d.h(d.alice))


def account(client: TestClient, d: Dante, account_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/accounts/{account_id}", headers=d.h(d.admin))
    assert r.status_code == 200, r.text
    return dict(r.json()["balances"])


# -- the full flow --------------------------------------------------------------------------


def test_full_flow_exact(client: TestClient, dante: Dante, clock: FrozenClock) -> None:
    d = dante
    dep = deposit(client, d, "10.00", proof="5sim-flow-1")
    assert dep["amount"] == money("10.000000")
    assert dep["simulated"] is True and dep["rail"] == "simulation" and dep["tx_signature"] == "5sim-flow-1"
    assert dep["balance"] == {"user_id": "alice", "balance": money("10.000000"), "held": money("0.000000"),
                              "available": money("10.000000")}

    r = start(client, d)
    assert r.status_code == 201, r.text
    ses = r.json()
    sid = ses["session_id"]
    assert ses["status"] == "active" and ses["user_id"] == "alice" and ses["gpu_model"] == "nvidia_rtx_4090"
    assert ses["vram_gb"] == 12 and ses["provider_id"] == "demo-provider" and ses["device_id"] == "gpu-4090-001"
    q = ses["quote"]
    assert q["hourly_rate"] == {"amount": "0.25", "asset": "DGPU", "per": "hour"}
    assert q["power_rate"] == {"amount": "0.001", "asset": "DGPU", "per": "watt_hour"}
    assert q["estimated_power_w"] == 450
    assert q["estimated_hourly_total"]["amount"] == "0.700"
    assert [i["name"] for i in q["line_items"]] == ["gpu_time", "demand", "power"]
    assert q["platform_fee_percent"] == "5.0" and q["minimum_session_minutes"] == 1
    assert ses["held"] == money("0.020834")
    assert ses["elapsed_seconds"] == 0 and ses["cost_so_far"] == money("0.000000")
    assert ses["refund_available"] == money("0.020834")
    assert ses["balance"]["held"] == money("0.020834") and ses["balance"]["available"] == money("9.979166")

    clock.advance(180)
    r = client.get("/api/v1/billing/current-usage", headers=d.h(d.alice))
    assert r.status_code == 200, r.text
    usage = r.json()
    assert usage["next_cursor"] is None and len(usage["data"]) == 1
    u = usage["data"][0]
    # 180 s × 625/9 minor/s = 12500 exactly
    assert u["session_id"] == sid and u["elapsed_seconds"] == 180
    assert u["cost_so_far"] == money("0.012500") and u["refund_available"] == money("0.008334")
    assert u["held"] == money("0.020834")

    r = client.get("/api/v1/billing/current-usage", params={"user_id": "alice"}, headers=d.h(d.alice))
    assert r.json() == usage

    r = client.post("/api/v1/billing/end-session", json={"session_id": sid}, headers=d.h(d.alice))
    assert r.status_code == 200, r.text
    end = r.json()
    assert end["status"] == "settled" and end["end_reason"] == "ended"
    assert end["duration_seconds"] == 180 and end["billed_seconds"] == 180
    assert end["cost"] == money("0.012500") and end["refund"] == money("0.008334")
    assert end["provider_earnings"] == money("0.011875") and end["platform_fee"] == money("0.000625")
    assert end["balance"] == {"user_id": "alice", "balance": money("9.987500"), "held": money("0.000000"),
                              "available": money("9.987500")}

    assert client.get("/api/v1/billing/current-usage", headers=d.h(d.alice)).json()["data"] == []
    r = client.get("/api/v1/wallet/balance", headers=d.h(d.alice))
    assert r.json()["balance"] == money("9.987500")

    hist = client.get("/api/v1/billing/history", headers=d.h(d.alice)).json()
    assert [h["session_id"] for h in hist["data"]] == [sid] and hist["next_cursor"] is None
    assert hist["data"][0]["cost"] == money("0.012500") and hist["data"][0]["platform_fee"] == money("0.000625")

    tx = client.get("/api/v1/wallet/transactions", headers=d.h(d.alice)).json()
    assert [(t["type"], t["status"], t["amount"]["amount"]) for t in tx["data"]] == [
        ("deposit", "posted", "10.000000"),
        ("rental_hold", "pending", "-0.020834"),
        ("rental_settle", "posted", "-0.012500"),
    ]
    assert tx["data"][0]["metadata"]["mode"] == "SIMULATION_MODE"
    assert tx["data"][1]["reference"] == sid

    # Provider 95 %, platform 5 %, exactly; escrow back to zero.
    earn = client.get("/api/v1/provider/earnings", headers=d.h(d.provider)).json()
    assert earn == {"provider_id": "demo-provider", "earned": money("0.011875"), "paid_out": money("0.000000"),
                    "balance": money("0.011875"), "held_for_payouts": money("0.000000"),
                    "available": money("0.011875")}
    assert account(client, d, "sys:platform_fees:DGPU")["balance"] == "0.000625"
    assert account(client, d, "sys:escrow:DGPU")["balance"] == "0.000000"

    r = client.post("/api/v1/provider/payout", json={"amount": "0.01", "destination": "ProvWallet111"},
                    headers=d.h(d.provider, **{"Idempotency-Key": "po-1"}))
    assert r.status_code == 201, r.text
    po = r.json()
    assert po["provider_id"] == "demo-provider" and po["status"] == "approved"
    assert po["amount"] == money("0.010000") and po["required_approvals"] == 0
    again = client.post("/api/v1/provider/payout", json={"amount": "0.01", "destination": "ProvWallet111"},
                        headers=d.h(d.provider, **{"Idempotency-Key": "po-1"}))
    assert again.status_code == 201 and again.json()["payout_id"] == po["payout_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    earn = client.get("/api/v1/provider/earnings", headers=d.h(d.provider)).json()
    assert earn["held_for_payouts"] == money("0.010000") and earn["available"] == money("0.001875")
    lst = client.get("/api/v1/provider/payout", headers=d.h(d.provider)).json()
    assert [p["payout_id"] for p in lst["data"]] == [po["payout_id"]]
    r = client.post("/api/v1/provider/payout", json={"amount": "0.002", "destination": "ProvWallet111"},
                    headers=d.h(d.provider))
    assert_problem(r, 402, "insufficient_funds")

    # The ledger agrees with itself after all of it.
    r = client.get("/v1/accounts/earn:provider:demo-provider:DGPU", headers=d.h(d.admin))
    assert r.json()["balances"]["debits_pending"] == "0.010000"


def test_minimum_session_and_fee_rounding(client: TestClient, dante: Dante, clock: FrozenClock) -> None:
    """Ended after 10 s, the session bills the 1-minute minimum: 60 × 625/9 = 4166.7 → 4167;
    95/5 by largest remainder is 3958.65 / 208.35 → 3959 / 208 (the leftover unit to the provider)."""
    d = dante
    deposit(client, d, "1")
    sid = start(client, d).json()["session_id"]
    clock.advance(2)
    u = client.get("/api/v1/billing/current-usage", headers=d.h(d.alice)).json()["data"][0]
    assert u["cost_so_far"] == money("0.000139")  # 2 × 625/9 = 138.9 → 139 (half-up)
    clock.advance(8)
    u = client.get("/api/v1/billing/current-usage", headers=d.h(d.alice)).json()["data"][0]
    assert u["cost_so_far"] == money("0.000694")  # 10 × 625/9 = 694.4 → 694 (raw accrual, no minimum yet)
    assert u["refund_available"] == money("0.020140")
    end = client.post("/api/v1/billing/end-session", json={"session_id": sid}, headers=d.h(d.alice)).json()
    assert end["duration_seconds"] == 10 and end["billed_seconds"] == 60
    assert end["cost"] == money("0.004167")
    assert end["provider_earnings"] == money("0.003959") and end["platform_fee"] == money("0.000208")
    assert end["balance"]["balance"] == money("0.995833")


def test_admin_acts_for_users_and_dev_loopback(make_client: MakeClient, dante: Dante, clock: FrozenClock) -> None:
    d = dante
    client = make_client()
    r = client.post("/api/v1/wallet/deposit", json={"user_id": "carol", "amount": 2, "tx_signature": "tx-c"},
                    headers=d.h(d.operator))
    assert r.status_code == 201 and r.json()["user_id"] == "carol"
    r = client.get("/api/v1/wallet/balance", headers=d.h(d.admin))
    assert_problem(r, 422, "validation_error")
    assert r.json()["errors"][0]["field"] == "user_id"

    dev = make_client(dev=True, default_tenant=d.id)
    r = dev.get("/api/v1/wallet/balance", params={"user_id": "carol"})
    assert r.status_code == 200 and r.json()["balance"] == money("2.000000")
    r = dev.post("/api/v1/billing/start-session", json={"user_id": "carol", "device_id": "gpu-a100-002",
                                                          "vram_gb": 40, "watts": 300})
    assert r.status_code == 201, r.text
    ses = r.json()
    assert ses["device_id"] == "gpu-a100-002" and ses["quote"]["hourly_rate"]["amount"] == "1"
    r = dev.post("/api/v1/billing/end-session", json={"user_id": "carol", "session_id": ses["session_id"]})
    assert r.status_code == 200 and r.json()["cost"] == money("0.016667")  # 60 s minimum at 1 DGPU/h
    r = dev.get("/api/v1/provider/earnings", params={"provider_id": "demo-provider"})
    assert r.json()["earned"] == money("0.015834")
    # Not loopback: a dev server still wants a key.
    remote = make_client(dev=True, default_tenant=d.id, client=("10.1.2.3", 4000))
    assert_problem(remote.get("/api/v1/wallet/balance", params={"user_id": "carol"}), 401, "unauthenticated")


def test_insufficient_funds_to_start(client: TestClient, dante: Dante) -> None:
    d = dante
    assert_problem(start(client, d), 402, "insufficient_funds")
    deposit(client, d, "0.020833")  # one minor unit short of the first hold (five minutes of time)
    assert_problem(start(client, d), 402, "insufficient_funds")
    bal = client.get("/api/v1/wallet/balance", headers=d.h(d.alice)).json()
    assert bal["held"] == money("0.000000") and bal["available"] == money("0.020833")
    deposit(client, d, "0.000001")
    assert start(client, d).status_code == 201


def test_fractional_vram_shares_a_card(client: TestClient, dante: Dante) -> None:
    d = dante
    deposit(client, d, "5")
    first = start(client, d, device_id="gpu-4090-002", vram_gb=20).json()
    assert first["device_id"] == "gpu-4090-002"
    assert_problem(start(client, d, device_id="gpu-4090-002", vram_gb=8), 409, "no_device_available")
    second = start(client, d, device_id="gpu-4090-002", vram_gb=4)
    assert second.status_code == 201
    usage = client.get("/api/v1/billing/current-usage", headers=d.h(d.alice)).json()
    assert sorted(u["vram_gb"] for u in usage["data"]) == [4, 20]
    page = client.get("/api/v1/billing/current-usage", params={"limit": 1}, headers=d.h(d.alice)).json()
    assert len(page["data"]) == 1 and page["next_cursor"]
    rest = client.get("/api/v1/billing/current-usage", params={"limit": 1, "cursor": page["next_cursor"]},
                      headers=d.h(d.alice)).json()
    assert len(rest["data"]) == 1 and rest["next_cursor"] is None
    assert rest["data"][0]["session_id"] != page["data"][0]["session_id"]


def test_end_session_twice_and_other_users(client: TestClient, dante: Dante) -> None:
    d = dante
    deposit(client, d, "1")
    sid = start(client, d).json()["session_id"]
    r = client.post("/api/v1/billing/end-session", json={"session_id": sid}, headers=d.h(d.bob))
    assert_problem(r, 404, "session_not_found")
    r = client.post("/api/v1/billing/end-session", json={"session_id": sid, "user_id": "bob"}, headers=d.h(d.admin))
    assert_problem(r, 404, "session_not_found")
    assert client.post("/api/v1/billing/end-session", json={"session_id": sid}, headers=d.h(d.alice)).status_code == 200
    r = client.post("/api/v1/billing/end-session", json={"session_id": sid}, headers=d.h(d.alice))
    assert_problem(r, 409, "session_not_active")
    assert_problem(client.post("/api/v1/billing/end-session", json={"session_id": "CTR-NOPE0000"},
                               headers=d.h(d.alice)), 404, "session_not_found")


# -- wallet details -------------------------------------------------------------------------


def test_deposit_proof_replay_and_idempotency(client: TestClient, dante: Dante) -> None:
    d = dante
    deposit(client, d, "1", proof="sig-1")
    r = client.post("/api/v1/wallet/deposit", json={"amount": "1", "tx_signature": "sig-1"}, headers=d.h(d.alice))
    assert_problem(r, 409, "payment_proof_reused")
    r = client.post("/api/v1/wallet/deposit", json={"amount": "2", "tx_signature": "sig-1"}, headers=d.h(d.bob))
    assert_problem(r, 409, "payment_proof_reused")
    h = d.h(d.alice, **{"Idempotency-Key": "dep-2"})
    first = client.post("/api/v1/wallet/deposit", json={"amount": "0.5", "tx_signature": "sig-2"}, headers=h)
    again = client.post("/api/v1/wallet/deposit", json={"amount": "0.5", "tx_signature": "sig-2"}, headers=h)
    assert first.status_code == again.status_code == 201 and first.content == again.content
    other = client.post("/api/v1/wallet/deposit", json={"amount": "0.6", "tx_signature": "sig-3"}, headers=h)
    assert_problem(other, 409, "idempotency_conflict")
    assert client.get("/api/v1/wallet/balance", headers=d.h(d.alice)).json()["balance"] == money("1.500000")
    # A JSON number is taken exactly (never through float).
    r = client.post("/api/v1/wallet/deposit", content=b'{"amount": 0.1, "tx_signature": "sig-4"}',
                    headers=d.h(d.alice, **{"Content-Type": "application/json"}))
    assert r.status_code == 201 and r.json()["amount"] == money("0.100000")


def test_two_customers_choosing_one_idempotency_key_each_get_their_own_withdrawal(
        client: TestClient, dante: Dante) -> None:
    """The route names the user by the key, not in the body: with keys scoped to the tenant
    only, bob was answered alice's stored withdrawal (her balance) and his never ran."""
    d = dante
    deposit(client, d, "3")
    deposit(client, d, "2", user="bob")
    body = {"amount": "1", "destination": "SameDest111"}
    a = client.post("/api/v1/wallet/withdraw", json=body, headers=d.h(d.alice, **{"Idempotency-Key": "wd-k"}))
    b = client.post("/api/v1/wallet/withdraw", json=body, headers=d.h(d.bob, **{"Idempotency-Key": "wd-k"}))
    assert a.status_code == b.status_code == 201, (a.text, b.text)
    assert "Idempotent-Replayed" not in b.headers
    assert (a.json()["user_id"], a.json()["balance"]["balance"]) == ("alice", money("2.000000"))
    assert (b.json()["user_id"], b.json()["balance"]["balance"]) == ("bob", money("1.000000"))
    # Each one's retry replays its own.
    again = client.post("/api/v1/wallet/withdraw", json=body, headers=d.h(d.bob, **{"Idempotency-Key": "wd-k"}))
    assert again.headers["Idempotent-Replayed"] == "true" and again.content == b.content


def test_withdraw(client: TestClient, dante: Dante) -> None:
    d = dante
    deposit(client, d, "3")
    body = {"amount": "1.25", "destination": "AliceSol111", "request_id": "wd-1"}
    r = client.post("/api/v1/wallet/withdraw", json=body, headers=d.h(d.alice))
    assert r.status_code == 201, r.text
    wd = r.json()
    assert wd["withdrawal_id"] == "wd-1" and wd["status"] == "completed" and wd["amount"] == money("1.250000")
    assert wd["tx_signature"] == "SIMULATION_MODE" and wd["simulated"] is True
    assert wd["balance"]["balance"] == money("1.750000")
    # Same request_id: the same withdrawal, not a second debit.
    again = client.post("/api/v1/wallet/withdraw", json=body, headers=d.h(d.alice))
    assert again.status_code == 201 and again.json()["balance"]["balance"] == money("1.750000")
    r = client.post("/api/v1/wallet/withdraw", json={**body, "amount": "1"}, headers=d.h(d.alice))
    assert_problem(r, 409, "idempotency_conflict")
    # Another user may use the same request id: ids are per user.
    deposit(client, d, "1", user="bob")
    r = client.post("/api/v1/wallet/withdraw", json={**body, "amount": "1"}, headers=d.h(d.bob))
    assert r.status_code == 201 and r.json()["balance"]["balance"] == money("0.000000")
    # Header key instead of request_id.
    r = client.post("/api/v1/wallet/withdraw", json={"amount": "0.75", "destination": "AliceSol111"},
                    headers=d.h(d.alice, **{"Idempotency-Key": "wd-h"}))
    assert r.status_code == 201 and r.json()["withdrawal_id"] == "wd-h"
    r = client.post("/api/v1/wallet/withdraw", json={"amount": "5", "destination": "X", "request_id": "wd-2"},
                    headers=d.h(d.alice))
    assert_problem(r, 402, "insufficient_funds")
    tx = client.get("/api/v1/wallet/transactions", headers=d.h(d.alice)).json()["data"]
    assert [(t["type"], t["status"], t["amount"]["amount"]) for t in tx] == [
        ("deposit", "posted", "3.000000"),
        ("withdrawal", "pending", "-1.250000"), ("withdrawal", "posted", "-1.250000"),
        ("withdrawal", "pending", "-0.750000"), ("withdrawal", "posted", "-0.750000"),
    ]
    assert client.get("/api/v1/wallet/balance", headers=d.h(d.alice)).json()["available"] == money("1.000000")


def test_transactions_pagination(client: TestClient, dante: Dante) -> None:
    d = dante
    for i in range(5):
        deposit(client, d, f"0.00000{i + 1}")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/wallet/transactions", params=params, headers=d.h(d.alice)).json()
        seen += [t["amount"]["amount"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"0.00000{i + 1}" for i in range(5)]
    assert client.get("/api/v1/wallet/transactions", headers=d.h(d.bob)).json() == {
        "user_id": "bob", "data": [], "next_cursor": None}


# -- provider -------------------------------------------------------------------------------


def test_provider_rates_floor_new_sessions(client: TestClient, dante: Dante) -> None:
    d = dante
    r = client.get("/api/v1/provider/rates", headers=d.h(d.provider))
    assert r.status_code == 200
    rates = {x["gpu_model"]: x for x in r.json()["data"]}
    assert rates["nvidia_rtx_4090"]["base_hourly"] == {"amount": "0.50", "asset": "DGPU", "per": "hour"}
    assert rates["nvidia_rtx_4090"]["min_hourly"] is None
    r = client.put("/api/v1/provider/rates", json={"rates": {"nvidia_rtx_4090": "0.40", "nvidia_a100": 1.5}},
                   headers=d.h(d.provider))
    assert r.status_code == 200, r.text
    rates = {x["gpu_model"]: x for x in r.json()["data"]}
    assert rates["nvidia_rtx_4090"]["min_hourly"]["amount"] == "0.40"
    assert rates["nvidia_a100"]["min_hourly"]["amount"] == "1.5"
    assert rates["nvidia_h100"]["min_hourly"] is None

    # 12 GB of a 4090 is 0.25/h dynamically; the provider's floor makes it 0.40/h.
    calc = client.post("/api/v1/pricing/calculate", json={"device_id": "gpu-4090-001", "vram_gb": 12, "watts": 0},
                       headers=d.h(d.alice)).json()
    assert calc["quote"]["hourly_rate"]["amount"] == "0.40"
    assert [i["name"] for i in calc["quote"]["line_items"]] == ["gpu_time", "demand", "provider_minimum", "power"]
    deposit(client, d, "1")
    ses = start(client, d).json()
    assert ses["quote"]["hourly_rate"]["amount"] == "0.40"

    r = client.post("/api/v1/provider/rates", json={"rates": {"nvidia_rtx_4090": None, "nvidia_h100": None}},
                    headers=d.h(d.provider))
    assert r.status_code == 200
    rates = {x["gpu_model"]: x for x in r.json()["data"]}
    assert rates["nvidia_rtx_4090"]["min_hourly"] is None and rates["nvidia_a100"]["min_hourly"]["amount"] == "1.5"
    # The running session keeps the rate it locked in.
    usage = client.get("/api/v1/billing/current-usage", headers=d.h(d.alice)).json()["data"][0]
    assert usage["quote"]["hourly_rate"]["amount"] == "0.40"


def test_provider_admin_and_unknown(client: TestClient, dante: Dante) -> None:
    d = dante
    r = client.get("/api/v1/provider/earnings", params={"provider_id": "si64"}, headers=d.h(d.admin))
    assert r.status_code == 200 and r.json()["earned"] == money("0.000000")
    assert_problem(client.get("/api/v1/provider/earnings", params={"provider_id": "nobody"}, headers=d.h(d.admin)),
                   404, "provider_not_found")
    assert_problem(client.get("/api/v1/provider/earnings", params={"provider_id": "si64"},
                              headers=d.h(d.provider)), 403, "subject_forbidden")
    assert_problem(client.get("/api/v1/provider/rates", headers=d.h(d.alice)), 403, "principal_kind_forbidden")
    assert_problem(client.post("/api/v1/provider/payout", json={"amount": "1", "destination": "x"},
                               headers=d.h(d.provider)), 402, "insufficient_funds")


# -- pricing --------------------------------------------------------------------------------


def test_pricing_rates_and_demand(client: TestClient, dante: Dante) -> None:
    d = dante
    r = client.get("/api/v1/pricing/rates", headers=d.h(d.alice))
    assert r.status_code == 200
    book = r.json()
    assert book["asset"] == "DGPU" and book["price_book_version"] == 1
    assert book["power_multiplier"] == {"amount": "0.001", "asset": "DGPU", "per": "watt_hour"}
    assert book["platform_fee_percent"] == "5.0" and book["minimum_session_minutes"] == 1
    assert book["granularity"] == "second"
    models = {m["gpu_model"]: m for m in book["gpu_models"]}
    assert set(models) == {"nvidia_rtx_4090", "nvidia_a100", "nvidia_h100"}
    assert models["nvidia_h100"]["base_hourly"]["amount"] == "4.00" and models["nvidia_h100"]["vram_gb"] == 80
    assert models["nvidia_h100"]["utilisation"] == "0" and models["nvidia_h100"]["current_hourly"]["amount"] == "4"

    # Both H100s busy → utilisation 1 → ×1.5 on the curve.
    deposit(client, d, "10")
    for dev in ("gpu-h100-001", "gpu-h100-002"):
        assert start(client, d, device_id=dev, vram_gb=1).status_code == 201
    h100 = {m["gpu_model"]: m for m in client.get("/api/v1/pricing/rates", headers=d.h(d.alice)).json()["gpu_models"]}
    assert h100["nvidia_h100"]["utilisation"] == "1"
    assert h100["nvidia_h100"]["demand_multiplier"] == "1.5"
    assert h100["nvidia_h100"]["current_hourly"]["amount"] == "6"


def test_calculate(client: TestClient, dante: Dante) -> None:
    d = dante
    r = client.post("/api/v1/pricing/calculate",
                    json={"gpu_model": "nvidia_rtx_4090", "vram_gb": 12, "watts": 300, "hours": "2.5"},
                    headers=d.h(d.alice))
    assert r.status_code == 200, r.text
    c = r.json()
    # time 0.25 × 2.5 = 0.625; power 300 W × 2.5 h × 0.001 = 0.75 → 1.375 DGPU
    assert c["estimated_cost"] == money("1.375000") and c["billed_seconds"] == 9000
    assert c["estimated_provider_earnings"] == money("1.306250") and c["estimated_platform_fee"] == money("0.068750")
    assert c["quote"]["estimated_hourly_total"]["amount"] == "0.550"
    assert c["vram_gb_total"] == 24 and c["hours"] == "2.5" and c["provider_id"] is None
    # Defaults: whole card, the card's power limit, one hour: 0.50 + 450 × 0.001 = 0.95.
    c = client.post("/api/v1/pricing/calculate", json={"gpu_model": "nvidia_rtx_4090"}, headers=d.h(d.alice)).json()
    assert c["estimated_cost"] == money("0.950000") and c["watts"] == 450 and c["vram_gb"] == 24
    # Below the minimum: 30 s bills 60 s of time (0.25/h → 0.004167), power for the 30 s given.
    c = client.post("/api/v1/pricing/calculate", json={"gpu_model": "nvidia_rtx_4090", "vram_gb": 12, "watts": 0,
                                                       "hours": "0.008333333333333333"},
                    headers=d.h(d.alice)).json()
    assert c["billed_seconds"] == 60 and c["estimated_cost"] == money("0.004167")


# -- bad input, endpoint by endpoint ---------------------------------------------------------

BAD_INPUT: list[tuple[str, str, Any, int, str]] = [
    # wallet
    ("GET", "/api/v1/wallet/balance?asset=dgpu", None, 422, "validation_error"),
    ("GET", "/api/v1/wallet/balance?asset=NOPE", None, 404, "asset_not_found"),
    ("POST", "/api/v1/wallet/deposit", {"amount": "1"}, 422, "validation_error"),
    ("POST", "/api/v1/wallet/deposit", {"amount": "1.0000001", "tx_signature": "t"}, 422, "amount_precision"),
    ("POST", "/api/v1/wallet/deposit", {"amount": "-1", "tx_signature": "t"}, 422, "amount_not_positive"),
    ("POST", "/api/v1/wallet/deposit", {"amount": "0", "tx_signature": "t"}, 422, "amount_not_positive"),
    ("POST", "/api/v1/wallet/deposit", {"amount": "abc", "tx_signature": "t"}, 422, "invalid_amount"),
    ("POST", "/api/v1/wallet/deposit", {"amount": True, "tx_signature": "t"}, 422, "validation_error"),
    ("POST", "/api/v1/wallet/deposit", {"amount": "1", "tx_signature": "has space"}, 422, "validation_error"),
    ("POST", "/api/v1/wallet/deposit", {"amount": "1", "tx_signature": "t", "rail": "paypal"}, 422, "unknown_rail"),
    ("POST", "/api/v1/wallet/deposit", {"amount": "1", "tx_signature": "t", "memo": "x"}, 422, "validation_error"),
    ("POST", "/api/v1/wallet/deposit", b"{not json", 422, "validation_error"),
    ("POST", "/api/v1/wallet/withdraw", {"amount": "1", "destination": "d"}, 422, "idempotency_key_required"),
    ("POST", "/api/v1/wallet/withdraw", {"amount": "1", "request_id": "r"}, 422, "validation_error"),
    ("POST", "/api/v1/wallet/withdraw", {"amount": "1e-9", "destination": "d", "request_id": "r"}, 422,
     "amount_precision"),
    ("GET", "/api/v1/wallet/transactions?cursor=!!", None, 422, "validation_error"),
    ("GET", "/api/v1/wallet/transactions?cursor=YWJj", None, 422, "invalid_cursor"),
    ("GET", "/api/v1/wallet/transactions?limit=0", None, 422, "validation_error"),
    # billing
    ("POST", "/api/v1/billing/start-session", {}, 422, "validation_error"),
    ("POST", "/api/v1/billing/start-session", {"gpu_model": "nvidia_rtx_4090", "vram_gb": "12"}, 422,
     "validation_error"),
    ("POST", "/api/v1/billing/start-session", {"gpu_model": "nvidia_rtx_4090", "vram_gb": 12.5}, 422,
     "validation_error"),
    ("POST", "/api/v1/billing/start-session", {"gpu_model": "nvidia_rtx_4090", "vram_gb": 0}, 422,
     "validation_error"),
    ("POST", "/api/v1/billing/start-session", {"gpu_model": "nvidia_rtx_4090", "vram_gb": 25}, 409,
     "no_device_available"),
    ("POST", "/api/v1/billing/start-session", {"gpu_model": "nvidia_rtx_4090", "watts": -1}, 422,
     "validation_error"),
    ("POST", "/api/v1/billing/start-session", {"gpu_model": "rtx_9090"}, 404, "gpu_model_not_found"),
    ("POST", "/api/v1/billing/start-session", {"device_id": "gpu-nope"}, 404, "device_not_found"),
    ("POST", "/api/v1/billing/start-session", {"device_id": "gpu-a100-001", "gpu_model": "nvidia_rtx_4090"}, 422,
     "validation_error"),
    ("POST", "/api/v1/billing/end-session", {}, 422, "validation_error"),
    ("POST", "/api/v1/billing/end-session", {"session_id": "a/b"}, 422, "validation_error"),
    ("GET", "/api/v1/billing/current-usage?limit=1001", None, 422, "validation_error"),
    ("GET", "/api/v1/billing/current-usage?user_id=", None, 422, "validation_error"),
    ("GET", "/api/v1/billing/history?cursor=a.b", None, 422, "validation_error"),
    # provider
    ("GET", "/api/v1/provider/earnings?asset=NOPE", None, 404, "asset_not_found"),
    ("POST", "/api/v1/provider/payout", {"amount": "1"}, 422, "validation_error"),
    ("POST", "/api/v1/provider/payout", {"amount": "0.0000001", "destination": "d"}, 422, "amount_precision"),
    ("POST", "/api/v1/provider/payout", {"amount": "1", "destination": "d", "rail": "nope"}, 422, "unknown_rail"),
    ("GET", "/api/v1/provider/payout?limit=x", None, 422, "validation_error"),
    ("GET", "/api/v1/provider/rates?provider_id=a%2Fb", None, 422, "validation_error"),
    ("PUT", "/api/v1/provider/rates", {"rates": {}}, 422, "validation_error"),
    ("PUT", "/api/v1/provider/rates", {"rates": {"nvidia_rtx_4090": "-1"}}, 422, "invalid_rate"),
    ("PUT", "/api/v1/provider/rates", {"rates": {"nvidia_rtx_4090": "0." + "1" * 19}}, 422, "invalid_rate"),
    ("PUT", "/api/v1/provider/rates", {"rates": {"nvidia_rtx_4090": "cheap"}}, 422, "invalid_rate"),
    ("PUT", "/api/v1/provider/rates", {"rates": {"rtx_9090": "1"}}, 404, "gpu_model_not_found"),
    ("POST", "/api/v1/provider/rates", {"rates": {"nvidia_a100": "1"}, "asset": "NOPE"}, 404, "asset_not_found"),
    # pricing
    ("POST", "/api/v1/pricing/calculate", {}, 422, "validation_error"),
    ("POST", "/api/v1/pricing/calculate", {"gpu_model": "nvidia_rtx_4090", "vram_gb": 48}, 422, "invalid_vram"),
    ("POST", "/api/v1/pricing/calculate", {"gpu_model": "nvidia_rtx_4090", "hours": "0"}, 422, "validation_error"),
    ("POST", "/api/v1/pricing/calculate", {"gpu_model": "nvidia_rtx_4090", "hours": "-2"}, 422, "validation_error"),
    ("POST", "/api/v1/pricing/calculate", {"gpu_model": "nvidia_rtx_4090", "hours": "lots"}, 422,
     "validation_error"),
    ("POST", "/api/v1/pricing/calculate", {"gpu_model": "nvidia_rtx_4090", "hours": "100000"}, 422,
     "validation_error"),
    ("POST", "/api/v1/pricing/calculate", {"gpu_model": "nvidia_rtx_4090", "watts": 1.5}, 422, "validation_error"),
    ("POST", "/api/v1/pricing/calculate", {"gpu_model": "nope"}, 404, "gpu_model_not_found"),
    ("POST", "/api/v1/pricing/calculate", {"device_id": "nope"}, 404, "device_not_found"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_INPUT,
                         ids=[f"{m} {p} {c}" for m, p, _, _, c in BAD_INPUT])
def test_bad_input(client: TestClient, dante: Dante, method: str, path: str, body: Any, status: int,
                   code: str) -> None:
    key = dante.provider if "/provider/" in path else dante.alice
    kwargs: dict[str, Any] = {"headers": dante.h(key)}
    if isinstance(body, bytes):
        kwargs["content"] = body
        kwargs["headers"]["Content-Type"] = "application/json"
    elif body is not None:
        kwargs["json"] = body
    if "/start-session" in path:
        deposit(client, dante, "5")
    assert_problem(client.request(method, path, **kwargs), status, code)


# -- access matrix ---------------------------------------------------------------------------

ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/wallet/balance", None),
    ("POST", "/api/v1/wallet/deposit", {"amount": "1", "tx_signature": "t"}),
    ("POST", "/api/v1/wallet/withdraw", {"amount": "1", "destination": "d", "request_id": "r"}),
    ("GET", "/api/v1/wallet/transactions", None),
    ("POST", "/api/v1/billing/start-session", {"gpu_model": "nvidia_rtx_4090"}),
    ("POST", "/api/v1/billing/end-session", {"session_id": "CTR-X"}),
    ("GET", "/api/v1/billing/current-usage", None),
    ("GET", "/api/v1/billing/history", None),
    ("GET", "/api/v1/provider/earnings", None),
    ("POST", "/api/v1/provider/payout", {"amount": "1", "destination": "d"}),
    ("GET", "/api/v1/provider/payout", None),
    ("GET", "/api/v1/provider/rates", None),
    ("PUT", "/api/v1/provider/rates", {"rates": {"nvidia_a100": "1"}}),
    ("POST", "/api/v1/provider/rates", {"rates": {"nvidia_a100": "1"}}),
    ("GET", "/api/v1/pricing/rates", None),
    ("POST", "/api/v1/pricing/calculate", {"gpu_model": "nvidia_rtx_4090"}),
]
_IDS = [f"{m} {p}" for m, p, _ in ENDPOINTS]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=_IDS)
def test_no_key_is_401(client: TestClient, dante: Dante, method: str, path: str, body: Any) -> None:
    assert_problem(client.request(method, path, json=body), 401, "unauthenticated")
    r = client.request(method, path, json=body, headers={"Authorization": "Bearer ml_live_nope"})
    assert_problem(r, 401, "invalid_api_key")


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=_IDS)
def test_device_key_is_403(client: TestClient, dante: Dante, method: str, path: str, body: Any) -> None:
    assert_problem(client.request(method, path, json=body, headers=dante.h(dante.device)), 403, "forbidden")


_WRITES = [e for e in ENDPOINTS if e[0] != "GET" and e[1] != "/api/v1/pricing/calculate"]


@pytest.mark.parametrize(("method", "path", "body"), _WRITES, ids=[f"{m} {p}" for m, p, _ in _WRITES])
def test_read_only_key_cannot_write(client: TestClient, dante: Dante, method: str, path: str, body: Any) -> None:
    assert_problem(client.request(method, path, json=body, headers=dante.h(dante.alice_ro)), 403, "forbidden")


_USER = [e for e in ENDPOINTS if "/wallet/" in e[1] or "/billing/" in e[1]]
_PROVIDER = [e for e in ENDPOINTS if "/provider/" in e[1]]


def _as(method: str, path: str, body: Any, field: str, value: str) -> dict[str, Any]:
    if method == "GET":
        return {"params": {field: value}}
    return {"json": {**body, field: value}}


@pytest.mark.parametrize(("method", "path", "body"), _USER, ids=[f"{m} {p}" for m, p, _ in _USER])
def test_customer_cannot_act_for_another_user(client: TestClient, dante: Dante, method: str, path: str,
                                              body: Any) -> None:
    d = dante
    r = client.request(method, path, headers=d.h(d.alice), **_as(method, path, body, "user_id", "bob"))
    assert_problem(r, 403, "subject_forbidden")
    assert_problem(client.request(method, path, json=body, headers=d.h(d.unbound)), 403, "key_not_bound")
    assert_problem(client.request(method, path, json=body, headers=d.h(d.provider)), 403, "principal_kind_forbidden")


@pytest.mark.parametrize(("method", "path", "body"), _PROVIDER, ids=[f"{m} {p}" for m, p, _ in _PROVIDER])
def test_provider_endpoints_are_for_providers(client: TestClient, dante: Dante, method: str, path: str,
                                              body: Any) -> None:
    d = dante
    r = client.request(method, path, headers=d.h(d.provider), **_as(method, path, body, "provider_id", "si64"))
    assert_problem(r, 403, "subject_forbidden")
    assert_problem(client.request(method, path, json=body, headers=d.h(d.alice)), 403, "principal_kind_forbidden")
    # Staff read any provider's; a provider's payouts and rates are set by its key or an admin
    # (an operator reviews payouts, it does not request them), as on /v1.
    staff = d.operator if method == "GET" else d.admin
    r = client.request(method, path, headers=d.h(staff), **_as(method, path, body, "provider_id", "ghost"))
    assert_problem(r, 404, "provider_not_found")
    if method != "GET":
        r = client.request(method, path, headers=d.h(d.operator), **_as(method, path, body, "provider_id", "si64"))
        assert_problem(r, 403, "principal_kind_forbidden")


def test_a_provider_key_acts_for_the_providers_it_owns_not_one_it_is_named_after(
        make_client: MakeClient, dante: Dante, db: Database, clock: FrozenClock) -> None:
    """`acme` is owned by `otherco`: the key named `acme` read its earnings and paid them out
    to itself; `otherco`'s own key, which the native API accepts, was refused."""
    client = make_client()
    with db.session() as s:
        catalog_service.create_provider(s, dante.id, id="acme", name="Acme", owner_id="otherco",
                                        now_ns=clock.now_ns())
        make_earnings(s, dante.id, clock, provider_id="acme", amount_minor=5_000_000, asset="DGPU")
        rw = ["ledger:read", "ledger:write"]
        named, owner = (identity_service.create_key(s, tenant_id=dante.id, kind="provider", principal_id=pid,
                                                    scopes=rw, now_ns=clock.now_ns()).secret
                        for pid in ("acme", "otherco"))
    payout = {"provider_id": "acme", "amount": "1", "destination": "W"}
    assert_problem(client.get("/api/v1/provider/earnings?provider_id=acme", headers=dante.h(named)),
                   403, "subject_forbidden")
    assert_problem(client.post("/api/v1/provider/payout", json=payout, headers=dante.h(named)),
                   403, "subject_forbidden")
    r = client.get("/api/v1/provider/earnings", headers=dante.h(owner))  # its only provider, unnamed
    assert r.status_code == 200 and r.json()["provider_id"] == "acme", r.text
    assert client.post("/api/v1/provider/payout", json=payout, headers=dante.h(owner)).status_code == 201
    assert client.get("/v1/payouts?provider_id=acme", headers=dante.h(owner)).json()["data"]


def test_customer_cannot_see_another_users_wallet(client: TestClient, dante: Dante) -> None:
    d = dante
    deposit(client, d, "7", user="bob")
    r = client.get("/api/v1/wallet/balance", params={"user_id": "bob"}, headers=d.h(d.alice))
    assert_problem(r, 403, "subject_forbidden")
    assert client.get("/api/v1/wallet/balance", headers=d.h(d.alice)).json()["balance"] == money("0.000000")
    assert client.get("/api/v1/wallet/balance", headers=d.h(d.bob)).json()["balance"] == money("7.000000")
    assert client.get("/api/v1/wallet/transactions", headers=d.h(d.alice)).json()["data"] == []


def test_tenants_are_isolated(client: TestClient, dante: Dante, dante_b: Dante) -> None:
    a, b = dante, dante_b
    deposit(client, a, "5")
    sid = start(client, a).json()["session_id"]
    # Tenant B's admin, acting for a user of the same name, sees nothing of tenant A.
    r = client.post("/api/v1/billing/end-session", json={"session_id": sid, "user_id": "alice"},
                    headers=b.h(b.admin))
    assert_problem(r, 404, "session_not_found")
    r = client.post("/api/v1/billing/end-session", json={"session_id": sid}, headers=b.h(b.alice))
    assert_problem(r, 404, "session_not_found")
    assert client.get("/api/v1/billing/current-usage", headers=b.h(b.alice)).json()["data"] == []
    assert client.get("/api/v1/wallet/balance", headers=b.h(b.alice)).json()["balance"] == money("0.000000")
    assert client.get("/api/v1/provider/earnings", headers=b.h(b.provider)).json()["earned"] == money("0.000000")
    # The same simulated proof is a different payment in another tenant.
    deposit(client, b, "1", proof="tx-alice-5")
    # A's session is untouched.
    usage = client.get("/api/v1/billing/current-usage", headers=a.h(a.alice)).json()["data"]
    assert [u["session_id"] for u in usage] == [sid]


def test_openapi_lists_the_profile(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for method, path, _ in ENDPOINTS:
        assert method.lower() in paths[path], (method, path)
    assert "requestBody" in paths["/api/v1/billing/start-session"]["post"]


def test_a_payout_requested_through_the_profile_cannot_be_approved_by_the_key_that_asked(
        make_client: MakeClient, dante: Dante, db: Database, clock: FrozenClock) -> None:
    """Four eyes: a key without a principal id was recorded as `key_…` by this route and as
    `key:key_…` by the approval check, so it could approve its own payout."""
    client = make_client(payout_approval_threshold="DGPU=0.01")
    with db.session() as s:
        make_earnings(s, dante.id, clock, provider_id="demo-provider", amount_minor=5_000_000, asset="DGPU")
    r = client.post("/api/v1/provider/payout", headers=dante.h(dante.admin),
                    json={"provider_id": "demo-provider", "amount": "1", "destination": "ProvWallet111"})
    assert r.status_code == 201, r.text
    po = r.json()
    assert po["status"] == "requested" and po["required_approvals"] == 1
    assert_problem(client.post(f"/v1/payouts/{po['payout_id']}/approve", headers=dante.h(dante.admin)),
                   403, "self_approval_forbidden")
    r = client.post(f"/v1/payouts/{po['payout_id']}/approve", headers=dante.h(dante.operator))
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text


def test_a_prepaid_contract_is_not_a_session(client: TestClient, dante: Dante) -> None:
    """An SI64 contract is a `Rental` row like a session: end-session answers its id exactly as an
    unknown id (and leaves it running), and the usage and history lists never show it — even for
    a user whose id is the contract's wallet."""
    d = dante
    r = client.post("/api/rent", json={"wallet": "alice", "tier": "M2", "duration_hours": 1,
                                       "tx_signature": "si64-alice-1", "amount": "0.001"}, headers=d.h(d.admin))
    assert r.status_code == 200, r.text
    cid = r.json()["contract_id"]
    for key, body in ((d.admin, {"user_id": "alice"}), (d.alice, {})):
        unknown = client.post("/api/v1/billing/end-session", json={**body, "session_id": "CTR-UNKNOWN0"},
                              headers=d.h(key))
        assert_problem(unknown, 404, "session_not_found")
        r = client.post("/api/v1/billing/end-session", json={**body, "session_id": cid}, headers=d.h(key))
        assert (r.status_code, r.text.replace(cid, "CTR-UNKNOWN0")) == (404, unknown.text)
    assert client.get(f"/api/contracts/{cid}", headers=d.h(d.admin)).json()["status"] == "ACTIVE"
    for key, query in ((d.admin, "?user_id=alice"), (d.alice, "")):
        usage = client.get(f"/api/v1/billing/current-usage{query}", headers=d.h(key))
        assert usage.status_code == 200 and usage.json()["data"] == [], usage.text
    assert client.post(f"/api/contracts/{cid}/settle", headers=d.h(d.admin)).status_code == 200
    for key, query in ((d.admin, "?user_id=alice"), (d.alice, "")):
        history = client.get(f"/api/v1/billing/history{query}", headers=d.h(key))
        assert history.status_code == 200 and history.json()["data"] == [], history.text


def test_usage_past_the_holds_is_paid_from_the_wallet_and_the_rest_is_shown_unpaid(
        client: TestClient, dante: Dante, clock: FrozenClock, db: Database) -> None:
    """Ten minutes at a metered 1 kW with no worker to renew the 0.020834 hold. current-usage
    showed the accrual capped at the hold (and no power since the sample), and end-session
    billed 0.020834. The committed cost is shown, the wallet pays past the holds, and what it
    cannot pay is `unpaid`."""
    d = dante
    deposit(client, d, "0.05")
    sid = start(client, d).json()["session_id"]
    with db.session() as s:
        rental_service.record_sample(s, d.id, sid, {"power_w": 1000}, clock)
    clock.advance(600)
    u = client.get("/api/v1/billing/current-usage", headers=d.h(d.alice)).json()["data"][0]
    # time 600 × 625/9 = 41,666.7; power since the sample 1 kW × 600 s = 166.7 Wh → 166,666.7
    assert u["cost_so_far"] == money("0.208333") and u["refund_available"] == money("0.000000")
    assert u["held"] == money("0.020834")
    end = client.post("/api/v1/billing/end-session", json={"session_id": sid}, headers=d.h(d.alice)).json()
    # The holds pay 0.020834, the wallet its other 0.029166; 0.158333 is left unpaid.
    assert (end["cost"], end["unpaid"], end["refund"]) == (money("0.208333"), money("0.158333"), money("0.000000"))
    assert end["provider_earnings"] == money("0.047500") and end["platform_fee"] == money("0.002500")
    assert end["balance"]["balance"] == money("0.000000") and end["balance"]["held"] == money("0.000000")
    tx = client.get("/api/v1/wallet/transactions", headers=d.h(d.alice)).json()
    assert [(t["type"], t["status"], t["amount"]["amount"]) for t in tx["data"]][-2:] == [
        ("rental_settle", "posted", "-0.020834"), ("rental_overage", "posted", "-0.029166")]
    hist = client.get("/api/v1/billing/history", headers=d.h(d.alice)).json()["data"][0]
    assert (hist["cost"], hist["unpaid"]) == (money("0.208333"), money("0.158333"))
