"""seeds/002 end to end: `meterline serve --dev` as a subprocess, driven exactly as the seed's
"Test Billing Server Directly" section does (curl → httpx), then the offline license file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.e2e.conftest import Server


def test_the_seeds_documented_calls(server: Server, tmp_path: Path) -> None:
    # curl http://localhost:8081/health
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"

    # curl -X POST .../api/v1/licenses/validate -d '{"camera_id":"cam-001","tenant_id":"tenant-123",...}'
    r = httpx.post(f"{server.url}/api/v1/licenses/validate",
                   headers={"Content-Type": "application/json"},
                   content='{"camera_id":"cam-001","tenant_id":"tenant-123","device_id":"device-001"}')
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["is_valid"] is True
    assert body["license_mode"] == "base"
    assert body["enabled_growth_packs"] == ["advanced_analytics", "active_transport"]
    assert body["cameras_allowed"] == 100
    assert body["valid_until"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())

    check = httpx.post(f"{server.url}/api/v1/entitlements/check",
                       json={"tenant_id": "tenant-123", "camera_id": "cam-001", "feature": "advanced_analytics_heatmaps"})
    assert check.status_code == 200 and check.json()["code"] == "feature_not_found"
    check = httpx.post(f"{server.url}/api/v1/entitlements/check",
                       json={"tenant_id": "tenant-123", "camera_id": "cam-001", "feature": "heatmaps"})
    assert check.json() == {"allowed": True, "feature": "heatmaps", "growth_pack": "advanced_analytics", "code": "ok"}

    beat = httpx.post(f"{server.url}/api/v1/heartbeat", json={
        "device_id": "device-001", "tenant_id": "tenant-123", "version": "1.0.0", "cameras": ["cam-001"]})
    assert beat.status_code == 200 and beat.json()["license"]["is_valid"] is True

    # curl http://localhost:8081/stats
    stats = httpx.get(f"{server.url}/stats")
    assert stats.status_code == 200
    assert stats.json()["licenses"] >= 1 and stats.json()["cameras_active"] == 1

    # The audit log is written in the background: the validation shows up within a moment.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and httpx.get(f"{server.url}/stats").json()["validations"] < 1:
        time.sleep(0.1)
    assert httpx.get(f"{server.url}/stats").json()["validations"] >= 1

    # Offline: export a signed file and verify it without the server.
    out = tmp_path / "tenant-123.license"
    res = server.cli("license", "export", "tenant-123", "--out", str(out))
    assert res.returncode == 0, res.stderr
    public_key = json.loads(out.read_text())["public_key"]
    server.stop()
    res = server.cli("license", "verify", str(out), "--public-key", public_key)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["license"]["cameras_allowed"] == 100
