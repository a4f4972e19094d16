"""The Dante profile against the real server (`meterline serve --dev`), following
docs/profiles/dante.md: dev-mode loopback calls act as the default tenant's admin and
name the user or provider they act for. The in-process worker runs too, so a payout
requested here is executed through the simulation rail.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.e2e.conftest import Server


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def money(amount: str) -> dict[str, str]:
    return {"amount": amount, "asset": "DGPU"}


def test_dante_flow(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        book = _ok(http.get("/api/v1/pricing/rates"))
        assert book["asset"] == "DGPU" and book["platform_fee_percent"] == "5.0"
        assert {m["gpu_model"]: m["base_hourly"]["amount"] for m in book["gpu_models"]} == {
            "nvidia_rtx_4090": "0.50", "nvidia_a100": "2.00", "nvidia_h100": "4.00"}

        calc = _ok(http.post("/api/v1/pricing/calculate", json={"gpu_model": "nvidia_rtx_4090", "vram_gb": 12,
                                                                "watts": 300, "hours": "2.5"}))
        assert calc["estimated_cost"] == money("1.375000")

        dep = _ok(http.post("/api/v1/wallet/deposit", json={"user_id": "alice", "amount": "10.00",
                                                             "tx_signature": "5sim-demo-0001"}), 201)
        assert dep["balance"]["available"] == money("10.000000") and dep["simulated"] is True
        again = http.post("/api/v1/wallet/deposit", json={"user_id": "alice", "amount": "10.00",
                                                          "tx_signature": "5sim-demo-0001"})
        assert again.status_code == 409 and again.json()["code"] == "payment_proof_reused"
        assert again.headers["content-type"].startswith("application/problem+json")

        ses = _ok(http.post("/api/v1/billing/start-session", json={"user_id": "alice", "gpu_model": "nvidia_rtx_4090",
                                                                    "vram_gb": 12}), 201)
        sid = ses["session_id"]
        assert ses["quote"]["hourly_rate"]["amount"] == "0.25" and ses["held"] == money("0.020834")
        assert ses["balance"]["available"] == money("9.979166")

        time.sleep(1.1)
        usage = _ok(http.get("/api/v1/billing/current-usage", params={"user_id": "alice"}))
        [u] = usage["data"]
        assert u["session_id"] == sid and u["elapsed_seconds"] >= 1
        # The shown cost is the exact accrual at 625/9 minor units a second, rounded half-up.
        expected = (u["elapsed_seconds"] * 625 * 2 + 9) // 18
        assert u["cost_so_far"] == money(f"0.{expected:06d}")

        end = _ok(http.post("/api/v1/billing/end-session", json={"user_id": "alice", "session_id": sid}))
        assert end["status"] == "settled" and end["billed_seconds"] == 60  # the one-minute minimum
        assert end["cost"] == money("0.004167")
        assert end["provider_earnings"] == money("0.003959") and end["platform_fee"] == money("0.000208")
        assert end["balance"]["balance"] == money("9.995833") and end["balance"]["held"] == money("0.000000")
        r = http.post("/api/v1/billing/end-session", json={"user_id": "alice", "session_id": sid})
        assert r.status_code == 409 and r.json()["code"] == "session_not_active"

        hist = _ok(http.get("/api/v1/billing/history", params={"user_id": "alice"}))
        assert [h["session_id"] for h in hist["data"]] == [sid]
        tx = _ok(http.get("/api/v1/wallet/transactions", params={"user_id": "alice", "limit": 10}))
        assert [(t["type"], t["amount"]["amount"]) for t in tx["data"]] == [
            ("deposit", "10.000000"), ("rental_hold", "-0.020834"), ("rental_settle", "-0.004167")]

        wd = _ok(http.post("/api/v1/wallet/withdraw", headers={"Idempotency-Key": "wd-demo-0001"},
                           json={"user_id": "alice", "amount": "1.5", "destination": "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"}),
                 201)
        assert wd["balance"]["balance"] == money("8.495833")

        earn = _ok(http.get("/api/v1/provider/earnings", params={"provider_id": "demo-provider"}))
        assert earn["earned"] == money("0.003959") and earn["available"] == money("0.003959")
        po = _ok(http.post("/api/v1/provider/payout", headers={"Idempotency-Key": "po-demo-0001"},
                           json={"provider_id": "demo-provider", "amount": "0.002", "destination": "ProvSo1Addr3ss111"}),
                 201)
        assert po["status"] == "approved"
        deadline = time.monotonic() + 15
        while True:  # the in-process worker executes due payouts
            [listed] = _ok(http.get("/api/v1/provider/payout", params={"provider_id": "demo-provider"}))["data"]
            if listed["status"] == "paid" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert listed["status"] == "paid" and listed["tx_signature"] == "SIMULATION_MODE"
        earn = _ok(http.get("/api/v1/provider/earnings", params={"provider_id": "demo-provider"}))
        assert earn["paid_out"] == money("0.002000") and earn["available"] == money("0.001959")

        rates = _ok(http.put("/api/v1/provider/rates", json={"provider_id": "demo-provider",
                                                             "rates": {"nvidia_rtx_4090": "0.30", "nvidia_a100": None}}))
        assert {r["gpu_model"]: r["min_hourly"] for r in rates["data"]}["nvidia_rtx_4090"]["amount"] == "0.30"
        floored = _ok(http.post("/api/v1/pricing/calculate", json={"device_id": "gpu-4090-001", "vram_gb": 12,
                                                                   "watts": 0}))
        assert floored["quote"]["hourly_rate"]["amount"] == "0.30"
        assert floored["estimated_cost"] == money("0.300000")

    # The ledger still proves itself after the whole flow.
    verify = server.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
