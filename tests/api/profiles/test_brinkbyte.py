"""The BrinkByte profile (seeds/002) over HTTP: the seed's calls and shapes, every endpoint's
bad input, the access matrix, tenant isolation, and the /v1 resource twins."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from tests.api.conftest import ApiTenant, MakeClient, assert_problem, create_tenant
from tests.factories import make_key, make_licensing_catalogue

VALIDATE = "/api/v1/licenses/validate"
CHECK = "/api/v1/entitlements/check"
HEARTBEAT = "/api/v1/heartbeat"
SEED_BODY = {"camera_id": "cam-001", "tenant_id": "tenant-123", "device_id": "device-001"}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def t(db: Database, clock: FrozenClock, tenant_id: str) -> ApiTenant:
    tenant = create_tenant(db, clock, tenant_id)
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
    return tenant


@pytest.fixture
def device_key(db: Database, clock: FrozenClock, t: ApiTenant) -> dict[str, str]:
    with db.session() as s:
        return ApiTenant.auth(make_key(s, t.id, clock, kind="device").secret)


def test_seed_validate_call(client: TestClient, t: ApiTenant, device_key: dict[str, str]) -> None:
    r = client.post(VALIDATE, json=SEED_BODY, headers=device_key)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["is_valid"] is True and body["license_mode"] == "base"
    assert body["enabled_growth_packs"] == ["advanced_analytics", "active_transport"]  # the seed's order
    assert body["cameras_allowed"] == 100 and RFC3339.match(body["valid_until"])
    assert "code" not in body


def test_refusals_are_200_with_code_and_detail(client: TestClient, t: ApiTenant) -> None:
    r = client.post(VALIDATE, json={**SEED_BODY, "tenant-id": "x", "tenant_id": "tenant-999"}, headers=t.a)
    assert r.status_code == 200
    assert r.json() == {"is_valid": False, "license_mode": None, "enabled_growth_packs": [], "valid_until": None,
                        "cameras_allowed": 0, "code": "license_not_found",
                        "detail": "no license exists for this tenant"}
    assert client.patch("/v1/licenses/tenant-123", json={"status": "suspended"}, headers=t.a).status_code == 200
    body = client.post(VALIDATE, json=SEED_BODY, headers=t.a).json()
    assert (body["is_valid"], body["code"], body["license_mode"]) == (False, "license_suspended", "base")


def test_camera_limit_over_http(client: TestClient, t: ApiTenant) -> None:
    r = client.post("/v1/licenses", json={"tenant_id": "small", "plan_id": "trial"}, headers=t.a)
    assert r.status_code == 201, r.text
    assert r.json()["cameras_allowed"] == 2 and r.json()["license_mode"] == "trial"
    codes = [client.post(VALIDATE, json={"camera_id": f"c{i}", "tenant_id": "small"}, headers=t.a).json()
             .get("code", "ok") for i in range(3)]
    assert codes == ["ok", "ok", "camera_limit_exceeded"]
    cams = client.get("/v1/licenses/small/cameras", headers=t.a).json()
    assert [c["camera_id"] for c in cams] == ["c0", "c1"]
    assert client.delete("/v1/licenses/small/cameras/c0", headers=t.a).status_code == 204
    assert client.post(VALIDATE, json={"camera_id": "c2", "tenant_id": "small"}, headers=t.a).json()["is_valid"]
    assert_problem(client.delete("/v1/licenses/small/cameras/c0", headers=t.a), 404, "camera_not_activated")


@pytest.mark.parametrize("times", [
    {"valid_until": "2300-01-01T00:00:00Z"}, {"valid_from": "1600-01-01T00:00:00Z"},
    {"valid_until": "9999-12-31T23:59:59-01:00"}, {"valid_from": "0001-01-01T00:00:00+01:00"},
])
def test_license_times_outside_1970_to_2200_are_refused(client: TestClient, t: ApiTenant,
                                                        times: dict[str, str]) -> None:
    """Stored as Unix nanoseconds in 64 bits, they once reached PostgreSQL as a 500."""
    r = client.post("/v1/licenses", json={"tenant_id": "far", "plan_id": "trial", **times}, headers=t.a)
    assert_problem(r, 422, "invalid_license_request")
    if "valid_until" in times:
        assert_problem(client.patch("/v1/licenses/tenant-123", json=times, headers=t.a), 422,
                       "invalid_license_request")


def test_entitlement_check(client: TestClient, t: ApiTenant) -> None:
    r = client.post(CHECK, json={"tenant_id": "tenant-123", "feature": "heatmaps"}, headers=t.a)
    assert r.json() == {"allowed": True, "feature": "heatmaps", "growth_pack": "advanced_analytics", "code": "ok"}
    r = client.post(CHECK, json={"tenant_id": "tenant-123", "feature": "anomaly_detection"}, headers=t.a)
    assert r.json() == {"allowed": False, "feature": "anomaly_detection", "growth_pack": "intelligence",
                        "code": "growth_pack_not_enabled"}
    r = client.post(CHECK, json={"tenant_id": "tenant-123", "camera_id": "cam-9", "feature": "heatmaps"},
                    headers=t.a)
    assert r.json()["code"] == "camera_not_activated"
    client.post(VALIDATE, json={"camera_id": "cam-9", "tenant_id": "tenant-123"}, headers=t.a)
    r = client.post(CHECK, json={"tenant_id": "tenant-123", "camera_id": "cam-9", "feature": "vehicle_counting"},
                    headers=t.a)
    assert r.json() == {"allowed": True, "feature": "vehicle_counting", "growth_pack": "active_transport",
                        "code": "ok"}
    r = client.get("/v1/licenses/tenant-123/entitlements/nope", headers=t.a)
    assert r.json()["code"] == "feature_not_found"


def test_heartbeat(client: TestClient, t: ApiTenant, device_key: dict[str, str], clock: FrozenClock) -> None:
    body = {"device_id": "device-001", "tenant_id": "tenant-123", "version": "1.4.2", "cameras": ["cam-001"]}
    r = client.post(HEARTBEAT, json=body, headers=device_key)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["status"] == "ok" and RFC3339.match(got["server_time"]) and got["device_status"] == "alive"
    assert got["license"]["is_valid"] is True and got["license"]["cameras_allowed"] == 100
    assert client.post(HEARTBEAT, json={**body, "cameras": 3}, headers=device_key).status_code == 200
    devices = client.get("/v1/licenses/tenant-123/devices", headers=t.a).json()
    assert devices[0]["device_id"] == "device-001" and devices[0]["version"] == "1.4.2"
    assert client.post(HEARTBEAT, json={**body, "tenant_id": "nobody"}, headers=device_key).json()[
        "license"]["code"] == "license_not_found"


def test_stats_and_health(client: TestClient, t: ApiTenant) -> None:
    client.post(VALIDATE, json=SEED_BODY, headers=t.a)
    stats = client.get("/stats", headers=t.a).json()
    assert stats["licenses"] == 1 and stats["cameras_active"] == 1 and "cache" in stats and "audit" in stats
    assert client.get("/health").json()["status"] == "ok"


BAD: list[tuple[str, Any]] = [
    (VALIDATE, {}),
    (VALIDATE, {"camera_id": "", "tenant_id": "tenant-123"}),
    (VALIDATE, {"camera_id": "cam", "tenant_id": "x" * 129}),
    (VALIDATE, {"camera_id": "a|b", "tenant_id": "tenant-123"}),
    (VALIDATE, {"camera_id": 7, "tenant_id": "tenant-123"}),
    (VALIDATE, {"camera_id": "cam\n", "tenant_id": "tenant-123"}),
    (VALIDATE, {"camera_id": "cam", "tenant_id": "tenant-123", "device_id": ""}),
    (VALIDATE, [1, 2]),
    (CHECK, {"tenant_id": "tenant-123"}),
    (CHECK, {"tenant_id": "tenant-123", "feature": "bad feature"}),
    (CHECK, {"tenant_id": None, "feature": "heatmaps"}),
    (CHECK, {"tenant_id": "tenant-123", "feature": "f" * 65}),
    (HEARTBEAT, {"tenant_id": "tenant-123"}),
    (HEARTBEAT, {"device_id": "d", "tenant_id": "tenant-123", "cameras": "many"}),
    (HEARTBEAT, {"device_id": "d", "tenant_id": "tenant-123", "version": "v" * 65}),
    ("/v1/licenses", {"tenant_id": "x", "plan_id": "base_license", "cameras_allowed": -1}),
]


@pytest.mark.parametrize(("path", "payload"), BAD)
def test_bad_input_is_422(client: TestClient, t: ApiTenant, path: str, payload: Any) -> None:
    assert_problem(client.post(path, json=payload, headers=t.a), 422, "validation_error")


@pytest.mark.parametrize("path", [VALIDATE, CHECK, HEARTBEAT])
def test_not_json_and_too_large(make_client: MakeClient, t: ApiTenant, path: str) -> None:
    client = make_client(max_body_bytes=200)
    assert_problem(client.post(path, content=b"{nope", headers={**t.a, "content-type": "application/json"}),
                   422, "validation_error")
    assert_problem(client.post(path, json={"camera_id": "x" * 300}, headers=t.a), 413, "payload_too_large")


@pytest.mark.parametrize(("path", "raw", "field"), [
    # Validated as licensee tenant-123 by a check that read the first key; answered for tenant-999.
    (VALIDATE, '{"camera_id":"cam-001","tenant_id":"tenant-123","tenant_id":"tenant-999"}', "tenant_id"),
    (CHECK, '{"tenant_id":"tenant-123","feature":"heatmaps","feature":"lpr"}', "feature"),
])
def test_a_key_given_twice_is_refused_on_the_fast_path(client: TestClient, t: ApiTenant, path: str, raw: str,
                                                       field: str) -> None:
    from tests.api.test_fastpath import router_disabled

    with router_disabled(client):
        for _ in range(2):  # and never kept among the parsed bodies the fast path reuses
            r = client.post(path, content=raw, headers={**t.a, "content-type": "application/json"})
            problem = assert_problem(r, 422, "validation_error")
            assert [(e["field"], e["code"]) for e in problem["errors"]] == [(field, "duplicate_key")]


def test_a_heartbeat_with_a_key_given_twice_is_refused(client: TestClient, t: ApiTenant) -> None:
    raw = '{"device_id":"d1","tenant_id":"tenant-123","cameras":1,"cameras":900}'
    r = client.post(HEARTBEAT, content=raw, headers={**t.a, "content-type": "application/json"})
    assert assert_problem(r, 422, "validation_error")["errors"][0]["code"] == "duplicate_key"


def test_management_errors_over_http(client: TestClient, t: ApiTenant) -> None:
    assert_problem(client.post("/v1/licenses", json={"tenant_id": "x", "plan_id": "nope", "cameras_allowed": 1},
                               headers=t.a), 404, "plan_not_found")
    assert_problem(client.post("/v1/licenses", json={"tenant_id": "tenant-123", "plan_id": "trial"}, headers=t.a),
                   409, "license_exists")
    assert_problem(client.get("/v1/licenses/nobody", headers=t.a), 404, "license_not_found")
    assert client.get("/v1/license-plans", headers=t.a).json()[0]["price_minor"] in (6000, 5000, 6500, 0)
    packs = {p["id"]: p for p in client.get("/v1/growth-packs", headers=t.a).json()}
    assert sum(len(p["features"]) for p in packs.values()) == 33


def test_access_matrix(client: TestClient, t: ApiTenant, device_key: dict[str, str]) -> None:
    for path in (VALIDATE, CHECK, HEARTBEAT):
        assert_problem(client.post(path, json=SEED_BODY), 401, "unauthenticated")
        assert_problem(client.post(path, json=SEED_BODY, headers=t.r), 403, "forbidden")
    assert_problem(client.get("/stats", headers=device_key), 403, "forbidden")
    assert_problem(client.patch("/v1/licenses/tenant-123", json={"status": "suspended"}, headers=device_key),
                   403, "forbidden")


def test_tenant_isolation(client: TestClient, db: Database, clock: FrozenClock, t: ApiTenant) -> None:
    other = create_tenant(db, clock, t.id + "-b")  # no catalogue, no licensees
    assert client.post(VALIDATE, json=SEED_BODY, headers=other.a).json()["code"] == "license_not_found"
    assert_problem(client.get("/v1/licenses/tenant-123", headers=other.a), 404, "license_not_found")
    assert client.get("/v1/licenses", headers=other.a).json()["data"] == []
    assert client.get("/stats", headers=other.a).json()["licenses"] == 0


def test_dev_mode_loopback_uses_the_default_tenant(make_client: MakeClient, db: Database, clock: FrozenClock,
                                                   tenant_id: str) -> None:
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
    client = make_client(dev=True, default_tenant=tenant_id)
    assert client.post(VALIDATE, json=SEED_BODY).json()["is_valid"] is True


def test_warm_answers_are_served_on_the_fast_path_and_match_the_router(
        client: TestClient, t: ApiTenant) -> None:
    from tests.api.test_fastpath import router_disabled

    first = client.post(VALIDATE, json=SEED_BODY, headers=t.a)  # through the router: key not cached yet
    check = client.post(CHECK, json={"tenant_id": "tenant-123", "feature": "heatmaps"}, headers=t.a)
    with router_disabled(client):
        again = client.post(VALIDATE, json=SEED_BODY, headers=t.a)
        assert again.status_code == 200 and again.json() == first.json()
        assert again.headers["content-type"] == "application/json"
        assert client.post(CHECK, json={"tenant_id": "tenant-123", "feature": "heatmaps"},
                           headers=t.a).json() == check.json()
        # A cache miss (a new camera) is answered on the fast path too, through the threadpool.
        assert client.post(VALIDATE, json={"camera_id": "cam-new", "tenant_id": "tenant-123"},
                           headers=t.a).json()["is_valid"] is True
        assert_problem(client.post(VALIDATE, json={"camera_id": ""}, headers=t.a), 422, "validation_error")

def test_a_changed_license_is_rendered_anew(client: TestClient, t: ApiTenant) -> None:
    """Warm answers reuse a rendered body per snapshot; a change makes a new snapshot, so the
    very next answer shows it (and an entitlement for another feature is its own body)."""
    assert client.post(VALIDATE, json=SEED_BODY, headers=t.a).json()["cameras_allowed"] == 100
    assert client.post(VALIDATE, json=SEED_BODY, headers=t.a).json()["cameras_allowed"] == 100
    assert client.patch("/v1/licenses/tenant-123", json={"cameras_allowed": 150}, headers=t.a).status_code == 200
    assert client.post(VALIDATE, json=SEED_BODY, headers=t.a).json()["cameras_allowed"] == 150
    assert client.patch("/v1/licenses/tenant-123", json={"status": "suspended"}, headers=t.a).status_code == 200
    refused = client.post(VALIDATE, json=SEED_BODY, headers=t.a).json()
    assert (refused["is_valid"], refused["code"]) == (False, "license_suspended")
    one = client.post(CHECK, json={"tenant_id": "tenant-123", "feature": "heatmaps"}, headers=t.a).json()
    other = client.post(CHECK, json={"tenant_id": "tenant-123", "feature": "advanced_analytics"}, headers=t.a).json()
    assert (one["feature"], other["feature"]) == ("heatmaps", "advanced_analytics")


def test_rendered_bodies_are_bounded_and_keyed_by_snapshot_identity() -> None:
    from meterline.api.profiles.brinkbyte import _RenderedBodies
    from meterline.licensing.runtime import Answer
    from meterline.licensing.service import LicenseSnapshot

    def snap(cameras: int) -> LicenseSnapshot:
        return LicenseSnapshot("t", "l", "lic", "base_license", "base", "active", 0, 10**18, cameras, 1, (), 1)

    bodies = _RenderedBodies(limit=2)
    a, b = snap(1), snap(2)
    assert b'"cameras_allowed":1' in bodies.license(Answer(True, "ok", a))
    assert b'"cameras_allowed":2' in bodies.license(Answer(True, "ok", b))
    assert b'"code":"license_suspended"' in bodies.license(Answer(False, "license_suspended", a))
    assert len(bodies._bodies) == 1  # cleared when full, then the new body cached
    assert bodies.license(Answer(False, "ok", None)).startswith(b'{"is_valid":false,"license_mode":null')


def test_parsed_bodies_are_remembered_by_their_exact_bytes_and_bounded() -> None:
    import asyncio

    from meterline.api.profiles.brinkbyte import _ParsedBodies, _validate_fields
    from meterline.errors import PayloadTooLarge, ValidationFailed

    memo = _ParsedBodies(_validate_fields, limit=2)
    raw = b'{"camera_id":"cam-1","tenant_id":"t-1","device_id":"d-1"}'
    assert asyncio.run(memo.fields(raw, 1000)) == ("t-1", "cam-1", "d-1")
    assert asyncio.run(memo.fields(bytes(raw), 1000)) == ("t-1", "cam-1", "d-1")  # equal bytes, another object
    assert list(memo._fields) == [raw]
    for bad in (b'{"camera_id":""}', b"{nope"):  # a malformed body is rejected every time, never kept
        for _ in range(2):
            with pytest.raises(ValidationFailed):
                asyncio.run(memo.fields(bad, 1000))
    with pytest.raises(PayloadTooLarge):
        asyncio.run(memo.fields(b'{"camera_id":"c","tenant_id":"' + b"t" * 100 + b'"}', 50))
    long = b'{"camera_id":"c","tenant_id":"t","device_id":null,"x":"' + b"y" * 600 + b'"}'
    assert asyncio.run(memo.fields(long, 10_000)) == ("t", "c", None)
    assert long not in memo._fields  # only short bodies are kept
    for i in range(3):
        asyncio.run(memo.fields(b'{"camera_id":"c%d","tenant_id":"t"}' % i, 1000))
    assert len(memo._fields) <= 2


def test_a_remembered_body_still_needs_a_key_and_its_own_tenant(
        client: TestClient, db: Database, clock: FrozenClock, t: ApiTenant) -> None:
    """The fast path remembers parsed bodies, never answers: auth and the tenant still decide."""
    from tests.api.test_fastpath import router_disabled

    assert client.post(VALIDATE, json=SEED_BODY, headers=t.a).json()["is_valid"] is True
    other = create_tenant(db, clock, t.id + "-c")
    with router_disabled(client):
        assert client.post(VALIDATE, json=SEED_BODY, headers=t.a).json()["is_valid"] is True
        assert_problem(client.post(VALIDATE, json=SEED_BODY), 401, "unauthenticated")
        assert_problem(client.post(VALIDATE, json=SEED_BODY, headers=t.r), 403, "forbidden")
        assert client.post(VALIDATE, json=SEED_BODY, headers=other.a).json()["code"] == "license_not_found"
        r = client.post(VALIDATE, json=SEED_BODY, headers=t.a)
        assert r.headers["content-length"] == str(len(r.content)) and r.headers["content-type"] == "application/json"


# -- customers inside a tenant: a customer key speaks only for itself -------------------------


@pytest.fixture
def customer_keys(db: Database, clock: FrozenClock, t: ApiTenant) -> dict[str, dict[str, str]]:
    """Licenses for cust-a and cust-b (5 cameras, 2 devices), and each one's customer key with
    every licensing scope explicitly given."""
    from tests.factories import make_license

    keys = {}
    with db.session() as s:
        for who in ("cust-a", "cust-b"):
            make_license(s, t.id, clock, licensee_id=who)
            keys[who] = ApiTenant.auth(make_key(s, t.id, clock, kind="customer", principal_id=who, scopes=[
                "licenses:read", "licenses:write", "licenses:validate"]).secret)
    return keys


def test_a_customer_validates_only_its_own_cameras(client: TestClient, t: ApiTenant,
                                                   customer_keys: dict[str, dict[str, str]]) -> None:
    from tests.api.test_fastpath import router_disabled

    a = customer_keys["cust-a"]
    # B's entry is warm in the cache, with cam-1 activated: neither may leak to A
    assert client.post(VALIDATE, json={"tenant_id": "cust-b", "camera_id": "cam-1"}, headers=t.a).json()["is_valid"]
    unknown = client.post(VALIDATE, json={"tenant_id": "nobody", "camera_id": "cam-1"}, headers=a).json()
    assert unknown["code"] == "license_not_found" and unknown["license_mode"] is None
    for cam in ("cam-1", "cam-2"):
        body = {"tenant_id": "cust-b", "camera_id": cam, "device_id": "dev-a"}
        assert client.post(VALIDATE, json=body, headers=a).json() == unknown
        with router_disabled(client):  # the fast path decides the same
            assert client.post(VALIDATE, json=body, headers=a).json() == unknown
    cams = client.get("/v1/licenses/cust-b/cameras", headers=t.a).json()
    assert [c["camera_id"] for c in cams] == ["cam-1"]  # cam-2 took none of B's slots
    assert client.post(VALIDATE, json={"tenant_id": "cust-a", "camera_id": "cam-2"}, headers=a).json()["is_valid"]


def test_a_customer_checks_only_its_own_entitlements(client: TestClient, t: ApiTenant,
                                                     customer_keys: dict[str, dict[str, str]]) -> None:
    from tests.api.test_fastpath import router_disabled

    a = customer_keys["cust-a"]
    assert client.post(CHECK, json={"tenant_id": "cust-b", "feature": "heatmaps"}, headers=t.a).json()["allowed"]
    unknown = client.post(CHECK, json={"tenant_id": "nobody", "feature": "heatmaps"}, headers=a).json()
    assert unknown == {"allowed": False, "feature": "heatmaps", "growth_pack": "advanced_analytics",
                       "code": "license_not_found"}
    for body in ({"tenant_id": "cust-b", "feature": "heatmaps"},
                 {"tenant_id": "cust-b", "feature": "heatmaps", "camera_id": "cam-1"}):
        assert client.post(CHECK, json=body, headers=a).json() == unknown
        with router_disabled(client):
            assert client.post(CHECK, json=body, headers=a).json() == unknown
    assert client.post(CHECK, json={"tenant_id": "cust-a", "feature": "heatmaps"}, headers=a).json()["allowed"]


def test_a_customer_heartbeats_only_its_own_devices(client: TestClient, t: ApiTenant,
                                                    customer_keys: dict[str, dict[str, str]]) -> None:
    a = customer_keys["cust-a"]
    hb = {"device_id": "dev-1", "tenant_id": "cust-b", "version": "1.0", "cameras": ["cam-1"]}
    got = client.post(HEARTBEAT, json=hb, headers=a).json()
    unknown = client.post(HEARTBEAT, json={**hb, "tenant_id": "nobody"}, headers=a).json()
    assert got["device_status"] is None and got["license"] == unknown["license"]
    assert got["license"]["code"] == "license_not_found"
    assert client.get("/v1/licenses/cust-b/devices", headers=t.a).json() == []  # no slot of B's taken
    own = client.post(HEARTBEAT, json={**hb, "tenant_id": "cust-a"}, headers=a).json()
    assert own["device_status"] == "alive" and own["license"]["is_valid"]
    staff = client.post(HEARTBEAT, json=hb, headers=t.a).json()
    assert staff["device_status"] == "alive"


def test_a_customers_stats_count_only_its_own_license(client: TestClient, t: ApiTenant,
                                                      customer_keys: dict[str, dict[str, str]]) -> None:
    client.post(VALIDATE, json={"tenant_id": "cust-b", "camera_id": "cam-1"}, headers=t.a)
    client.post(VALIDATE, json={"tenant_id": "tenant-123", "camera_id": "cam-1"}, headers=t.a)
    mine = client.get("/stats", headers=customer_keys["cust-a"]).json()
    assert (mine["licenses"], mine["cameras_active"]) == (1, 0)
    theirs = client.get("/stats", headers=customer_keys["cust-b"]).json()
    assert (theirs["licenses"], theirs["cameras_active"]) == (1, 1)
    everyone = client.get("/stats", headers=t.a).json()
    assert (everyone["licenses"], everyone["cameras_active"]) == (3, 2)


# -- device keys: the fleet's speak for every licensee, a bound one for its own -------------------


def test_a_device_key_bound_to_a_licensee_speaks_only_for_it(client: TestClient, t: ApiTenant, db: Database,
                                                              clock: FrozenClock,
                                                              customer_keys: dict[str, dict[str, str]]) -> None:
    from tests.api.test_fastpath import router_disabled

    with db.session() as s:
        box_a = ApiTenant.auth(make_key(s, t.id, clock, kind="device", principal_id="cust-a").secret)
        fleet = ApiTenant.auth(make_key(s, t.id, clock, kind="device").secret)
    unknown = client.post(VALIDATE, json={"tenant_id": "nobody", "camera_id": "cam-9"}, headers=box_a).json()
    for body in ({"tenant_id": "cust-b", "camera_id": "cam-9"},):
        assert client.post(VALIDATE, json=body, headers=box_a).json() == unknown
        with router_disabled(client):
            assert client.post(VALIDATE, json=body, headers=box_a).json() == unknown
    assert client.get("/v1/licenses/cust-b/cameras", headers=t.a).json() == []  # none of B's slots
    hb = {"device_id": "box-1", "tenant_id": "cust-b", "version": "1.0", "cameras": 1}
    assert client.post(HEARTBEAT, json=hb, headers=box_a).json()["device_status"] is None
    assert client.post(CHECK, json={"tenant_id": "cust-b", "feature": "heatmaps"}, headers=box_a).json()[
        "code"] == "license_not_found"
    # Its own licensee, and the unbound fleet key for anyone's.
    assert client.post(VALIDATE, json={"tenant_id": "cust-a", "camera_id": "cam-9"}, headers=box_a).json()["is_valid"]
    assert client.post(HEARTBEAT, json={**hb, "tenant_id": "cust-a"}, headers=box_a).json()["device_status"] == "alive"
    assert client.post(VALIDATE, json={"tenant_id": "cust-b", "camera_id": "cam-9"}, headers=fleet).json()["is_valid"]
