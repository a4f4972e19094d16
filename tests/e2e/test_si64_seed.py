"""SI64 against the real server (`meterline serve --dev`), driven exactly as seeds/000 drives it.

1. The seed's "Real-Time Simulation Test" script, verbatim except that BASE_URL comes from
   the environment (tests/e2e/si64_simulation.py), run with `requests` in a subprocess —
   then `meterline ledger verify` on the same database.
2. The seed's curl calls 1-7 in order, each response checked against the documented shape.
3. `meterline watch --once` reading that server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).with_name("si64_simulation.py")
WALLET = "5mEvgLUE2MvNTSr9mGRo6zvL2M2Jng132sDCP4411FHZ"
PREPAID = Decimal("0.0001")
SIX_PLACES = Decimal("0.000001")  # the script prints with :.6f


def exact(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return json.loads(r.content, parse_float=Decimal)


def figures(output: str, label: str) -> list[Decimal]:
    return [Decimal(m) for m in re.findall(rf"{label}:? ([0-9.]+) SOL", output)]


def test_seed_simulation_script_runs_unchanged(server: Server):
    env = {**server.env(), "SI64_BASE_URL": server.url, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=180)
    out = proc.stdout
    assert proc.returncode == 0, f"{out}\n{proc.stderr}"

    # Six samples, each showing used + refund = the prepaid 0.0001 (to the printed 6 places).
    used_per_sample = figures(out, "Used")[:6]
    refund_per_sample = [Decimal(m) for m in re.findall(r"\| Refund ([0-9.]+) SOL", out)]
    assert len(used_per_sample) == len(refund_per_sample) == 6, out
    for used, refund in zip(used_per_sample, refund_per_sample, strict=True):
        assert abs(used + refund - PREPAID) <= SIX_PLACES, out
    assert used_per_sample == sorted(used_per_sample) and used_per_sample[-1] > 0  # cost grows with time

    # Final status: Prepaid 0.0001, Used + Refund = Prepaid, and a refund is due.
    assert "Prepaid: 0.0001 SOL" in out, out
    [used] = re.findall(r"^  Used: ([0-9.]+) SOL$", out, re.M)
    [refund] = re.findall(r"^  Refund: ([0-9.]+) SOL$", out, re.M)
    assert abs(Decimal(used) + Decimal(refund) - PREPAID) <= SIX_PLACES, out
    assert Decimal(refund) > 0 and Decimal(used) > 0

    # Settlement: refunded through the simulation rail.
    [refunded] = figures(out, "Settlement")
    assert Decimal(refunded) > 0
    assert "TX Signature: SIMULATION_MODE" in out, out
    assert "Active contracts: 0" in out and "Completed settlements: 1" in out, out
    [revenue] = figures(out, "Total revenue")

    # The printed figures agree with the server's exact ones.
    ledger = exact(httpx.get(f"{server.url}/api/billing/ledger"))
    [settled] = ledger["completed_settlements"]
    assert settled["prepaid"] == PREPAID and settled["used"] + settled["refund"] == PREPAID
    assert settled["refund"].quantize(SIX_PLACES) == refunded
    assert ledger["total_used"].quantize(SIX_PLACES) == revenue
    assert settled["tx_signature"] == "SIMULATION_MODE"
    contract = exact(httpx.get(f"{server.url}/api/contracts/{settled['contract_id']}"))
    assert contract["status"] == "SETTLED" and contract["used_sol"] + contract["refund_available"] == PREPAID

    verify = server.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "ledger OK" in verify.stdout
    # the deposit, the hold and the settlement batch were all checked (not an empty database)
    assert int(re.search(r"(\d+) transfers", verify.stdout).group(1)) >= 5, verify.stdout


def test_seed_curl_calls_in_order(server: Server):
    base = server.url
    with httpx.Client(base_url=base, timeout=10) as http:
        # Test 1: Create a Rental Contract
        created = exact(http.post("/api/rent", json={
            "wallet": WALLET, "tier": "M2", "duration_hours": 1, "tx_signature": "test_tx_sig_12345",
            "amount": 0.001}))
        assert {"contract_id", "status", "cost_sol", "tier", "duration_hours"} <= created.keys()
        cid = created["contract_id"]
        assert re.fullmatch(r"CTR-[A-Z0-9]{8}", cid)
        assert (created["status"], created["cost_sol"], created["tier"], created["duration_hours"]) == (
            "ACTIVE", Decimal("0.001"), "M2", 1)

        # Test 2: Get Contract Status
        status = exact(http.get(f"/api/contracts/{cid}"))
        assert {"contract_id", "wallet", "tier", "status", "prepaid_sol", "used_sol", "refund_available",
                "duration_hours", "elapsed_hours", "remaining_seconds", "created_at", "expires_at"} <= status.keys()
        assert status["prepaid_sol"] == status["used_sol"] + status["refund_available"] == Decimal("0.001")
        assert status["expires_at"] - status["created_at"] == 3600
        assert isinstance(status["remaining_seconds"], int) and 3590 <= status["remaining_seconds"] <= 3600

        # Test 3: Record Metrics
        m = exact(http.post(f"/api/metrics/{cid}", json={
            "cpu_percent": 45.5, "memory_mb": 3500, "disk_io_mbps": 25.1, "network_io_mbps": 5.3}))
        assert {"contract_id", "metrics_recorded", "elapsed_hours", "cost_so_far", "refund_available"} <= m.keys()
        assert m["metrics_recorded"] is True
        assert m["cost_so_far"] + m["refund_available"] == Decimal("0.001")
        assert Decimal(m["elapsed_hours"]) == Decimal(m["elapsed_hours"]).quantize(Decimal("0.0001"))

        # Test 4: Extend Contract
        ext = exact(http.post(f"/api/contracts/{cid}/extend", json={"additional_hours": 1}))
        assert {"contract_id", "extended_hours", "additional_cost_sol", "new_total_cost", "new_expiration"} <= ext.keys()
        assert (ext["extended_hours"], ext["additional_cost_sol"], ext["new_total_cost"]) == (
            1, Decimal("0.001"), Decimal("0.002"))
        assert ext["new_expiration"] == status["expires_at"] + 3600

        # Test 5: List Devices by Tier
        devices = exact(http.get("/api/devices/M2"))
        assert len(devices) == 4
        for d in devices:
            assert {"id", "name", "uri", "address", "region", "ram", "leases", "uptime", "audited"} <= d.keys()
        assert {k: devices[0][k] for k in ("id", "name", "uri", "address", "region", "ram", "uptime", "audited")} == {
            "id": "device-m2-001", "name": "M2-DEV-01", "uri": "node001.si64.network", "address": "192.168.1.101",
            "region": "West Coast", "ram": "8GB", "uptime": "99.8%", "audited": True}
        assert sum(d["leases"] for d in devices) == 1

        # Test 6: Get Billing Ledger
        ledger = exact(http.get("/api/billing/ledger"))
        assert {"active_contracts", "completed_settlements", "total_active_value", "total_used",
                "total_pending_refunds"} <= ledger.keys()
        [row] = ledger["active_contracts"]
        assert {"contract_id", "wallet", "tier", "prepaid", "used", "refund", "status"} <= row.keys()
        assert (row["contract_id"], row["prepaid"], row["status"]) == (cid, Decimal("0.002"), "ACTIVE")
        assert row["used"] + row["refund"] == Decimal("0.002")
        assert ledger["completed_settlements"] == []
        assert ledger["total_active_value"] == ledger["total_used"] + ledger["total_pending_refunds"]

        # Test 7: Settle a Contract
        s = exact(http.post(f"/api/contracts/{cid}/settle"))
        assert {"contract_id", "status", "prepaid_sol", "used_sol", "refund_sol", "tx_signature"} <= s.keys()
        assert (s["contract_id"], s["status"], s["prepaid_sol"], s["tx_signature"]) == (
            cid, "SETTLED", Decimal("0.002"), "SIMULATION_MODE")
        assert s["used_sol"] + s["refund_sol"] == Decimal("0.002") and s["refund_sol"] > 0

        # The documented health call, and the errors a replay or a second settle get.
        assert exact(http.get("/api/stats"))["settled_contracts"] == 1
        again = http.post(f"/api/contracts/{cid}/settle")
        assert again.status_code == 409 and again.json()["code"] == "contract_already_settled"
        replay = http.post("/api/rent", json={"wallet": WALLET, "tier": "M2", "duration_hours": 1,
                                              "tx_signature": "test_tx_sig_12345", "amount": 0.001})
        assert replay.status_code == 409 and replay.json()["code"] == "payment_proof_reused"
        assert http.get("/api/contracts/CTR-TEST").status_code == 404

    verify = server.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_watch_once_reads_the_server(server: Server):
    with httpx.Client(base_url=server.url, timeout=10) as http:
        cid = exact(http.post("/api/rent", json={"wallet": WALLET, "tier": "M2", "duration_hours": 0.1,
                                                 "tx_signature": "watch-sig", "amount": 0.0001}))["contract_id"]
    env = {**server.env(), "COLUMNS": "160", "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-m", "meterline.cli.main", "watch", "--once", "--url", server.url],
                          env=env, capture_output=True, text=True, encoding="utf-8", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert cid in proc.stdout and "Pending refunds" in proc.stdout and "Platform revenue" in proc.stdout
    assert "0.000100000" in proc.stdout  # the prepaid amount, exactly

    down = subprocess.run([sys.executable, "-m", "meterline.cli.main", "watch", "--once", "--url",
                           "http://127.0.0.1:9"], env={**os.environ, "COLUMNS": "160"}, capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 1 and "cannot reach" in down.stdout
