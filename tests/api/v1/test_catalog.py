"""/v1/devices, /v1/gpu-models, /v1/tiers, /v1/providers: access, shapes, filters, bad input."""

from __future__ import annotations

import pytest

from tests.api.conftest import assert_problem

READS = ["/v1/devices", "/v1/devices/device-m2-001", "/v1/gpu-models", "/v1/tiers", "/v1/providers",
         "/v1/providers/si64"]
NEW_DEVICE = {"id": "gpu-4090-099", "provider_id": "demo-provider", "tier": "GPU", "name": "4090-99",
              "gpu_model": "nvidia_rtx_4090", "region": "EU", "ram_gb": 64}
WRITES = [("/v1/devices", NEW_DEVICE), ("/v1/providers", {"id": "p-new", "name": "New"})]


@pytest.mark.parametrize("path", READS)
def test_reads_need_a_key(client, path):
    assert_problem(client.get(path), 401, "unauthenticated")


@pytest.mark.parametrize(("path", "body"), WRITES)
def test_writes_need_an_admin_key(client, market, key, path, body):
    assert_problem(client.post(path, json=body), 401, "unauthenticated")
    assert_problem(client.post(path, json=body, headers=market.r), 403, "forbidden")
    assert_problem(client.post(path, json=body, headers=market.w), 403, "forbidden")  # operator: not admin
    provider = key(market, "provider", "prov-1")
    assert_problem(client.post(path, json=body, headers=provider), 403, "forbidden")
    assert client.post(path, json=body, headers=market.a).status_code == 201


def test_device_shape(client, market):
    r = client.get("/v1/devices/device-m2-001", headers=market.r)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "id": "device-m2-001", "name": "M2-DEV-01", "provider_id": "si64", "tier": "M2", "gpu_model": None,
        "vram_gb": 8, "ram_gb": 8, "power_limit_w": 50, "uri": "node001.si64.network",
        "address": "192.168.1.101", "region": "West Coast", "audited": True, "status": "available",
        "uptime_bp": 9980, "uptime_percent": "99.80", "created_at": "2023-11-14T22:13:20.000000Z",
        "last_heartbeat_at": None,
    }


def test_device_filters(client, market):
    def ids(**params):
        r = client.get("/v1/devices", params=params, headers=market.r)
        assert r.status_code == 200, r.text
        assert r.json()["next_cursor"] is None
        return [d["id"] for d in r.json()["data"]]

    assert len(ids()) == 11
    assert ids(tier="M2") == ["device-m2-001", "device-m2-002", "device-m2-003", "device-m2-004"]
    assert ids(gpu_model="nvidia_a100") == ["gpu-a100-001", "gpu-a100-002"]
    assert ids(tier="GPU", region="East Coast") == ["gpu-4090-003", "gpu-a100-002", "gpu-h100-002"]
    assert ids(status="busy") == []
    assert ids(provider_id="si64", region="West Coast") == ["device-m2-001", "device-m2-002"]


def test_device_cursor_walks_every_device_once(client, market):
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/devices", params=params, headers=market.r).json()
        seen += [d["id"] for d in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 11 and seen == sorted(seen)


@pytest.mark.parametrize("params", [{"status": "exploded"}, {"limit": 0}, {"limit": 1001},
                                    {"tier": "bad tier"}, {"cursor": "!!"}])
def test_device_list_bad_query_is_422(client, market, params):
    assert_problem(client.get("/v1/devices", params=params, headers=market.r), 422, "validation_error")


def test_device_list_garbage_cursor(client, market):
    assert_problem(client.get("/v1/devices", params={"cursor": "_w"}, headers=market.r), 422, "invalid_cursor")


def test_gpu_models_and_tiers(client, market):
    models = client.get("/v1/gpu-models", headers=market.r).json()["data"]
    assert [(m["id"], m["vram_gb"], m["default_power_w"]) for m in models] == [
        ("nvidia_a100", 80, 400), ("nvidia_h100", 80, 700), ("nvidia_rtx_4090", 24, 450)]
    tiers = client.get("/v1/tiers", headers=market.r).json()["data"]
    assert [t["id"] for t in tiers] == ["GPU", "M2"]
    assert set(tiers[0]) == {"id", "name", "description", "created_at"}


def test_create_device_defaults_from_the_gpu_model(client, market):
    r = client.post("/v1/devices", json=NEW_DEVICE, headers=market.a)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["vram_gb"], body["power_limit_w"], body["status"], body["tier"]) == (24, 450, "available", "GPU")
    assert client.get("/v1/devices/gpu-4090-099", headers=market.r).json() == body
    assert_problem(client.post("/v1/devices", json=NEW_DEVICE, headers=market.a), 409, "catalog_entry_exists")


def test_create_device_with_idempotency_key_replays(client, market):
    h = {**market.a, "Idempotency-Key": "dev-1"}
    first = client.post("/v1/devices", json=NEW_DEVICE, headers=h)
    again = client.post("/v1/devices", json=NEW_DEVICE, headers=h)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()


@pytest.mark.parametrize(("change", "status", "code"), [
    ({"provider_id": "nobody"}, 404, "provider_not_found"),
    ({"tier": "Z9"}, 404, "tier_not_found"),
    ({"gpu_model": "nvidia_b200"}, 404, "gpu_model_not_found"),
    ({"vram_gb": 48}, 422, "invalid_catalog_entry"),
    ({"vram_gb": "24"}, 422, "validation_error"),
    ({"vram_gb": 24.0}, 422, "validation_error"),
    ({"uptime_bp": 10_001}, 422, "validation_error"),
    ({"status": "on fire"}, 422, "validation_error"),
    ({"id": "has space"}, 422, "validation_error"),
    ({"id": "x" * 65}, 422, "validation_error"),
    ({"name": "nul\x00"}, 422, "validation_error"),
    ({"colour": "red"}, 422, "validation_error"),
    ({"audited": "yes"}, 422, "validation_error"),
])
def test_create_device_bad_input(client, market, change, status, code):
    r = client.post("/v1/devices", json={**NEW_DEVICE, **change}, headers=market.a)
    body = assert_problem(r, status, code)
    if code == "validation_error":
        assert body["errors"]


def test_create_device_not_json(client, market):
    r = client.post("/v1/devices", content=b"{nope", headers=market.a)
    assert_problem(r, 422, "validation_error")


def test_providers(client, market):
    r = client.post("/v1/providers", json={"id": "p-own", "name": "Own GPUs", "owner_id": "prov-1"},
                    headers=market.a)
    assert r.status_code == 201, r.text
    assert r.json() == {"id": "p-own", "name": "Own GPUs", "owner_id": "prov-1",
                        "created_at": "2023-11-14T22:13:20.000000Z"}
    assert client.get("/v1/providers/p-own", headers=market.r).json() == r.json()
    listed = [p["id"] for p in client.get("/v1/providers", headers=market.r).json()["data"]]
    assert listed == ["demo-provider", "p-own", "si64"]
    assert_problem(client.get("/v1/providers/nobody", headers=market.r), 404, "provider_not_found")
    assert_problem(client.post("/v1/providers", json={"id": "p-own", "name": "again"}, headers=market.a),
                   409, "catalog_entry_exists")
    assert_problem(client.post("/v1/providers", json={"id": "p2"}, headers=market.a), 422, "validation_error")


def test_another_tenants_catalog_is_404(client, market, other_market):
    assert client.post("/v1/devices", json=NEW_DEVICE, headers=market.a).status_code == 201
    assert client.post("/v1/providers", json={"id": "p-a", "name": "A"}, headers=market.a).status_code == 201
    assert_problem(client.get("/v1/devices/gpu-4090-099", headers=other_market.a), 404, "device_not_found")
    assert_problem(client.get("/v1/providers/p-a", headers=other_market.a), 404, "provider_not_found")
    other_ids = [d["id"] for d in client.get("/v1/devices", headers=other_market.r).json()["data"]]
    assert "gpu-4090-099" not in other_ids and len(other_ids) == 11
