"""/v1 licenses: who may read and change which license inside a tenant.

A customer key reads only the license whose licensee id is its principal id, even when
it was given `licenses:write`: another customer's license answers 404 `license_not_found`
word for word like a missing one, and is neither read nor changed. Changes (issue, PATCH,
camera release) are staff-only: a customer key gets 403 `forbidden` even on its own
license. Staff keys (admin, operator) act on every license of the tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from tests.api.conftest import ApiTenant, assert_problem, create_tenant
from tests.factories import make_key, make_license, make_licensing_catalogue

A, B = "cust-a", "cust-b"
ALL_LICENSING = ["licenses:read", "licenses:write", "licenses:validate"]


@dataclass
class Customers:
    t: ApiTenant
    a: dict[str, str]  # customer A's key: every licensing scope, explicitly given
    b: dict[str, str]
    operator: dict[str, str]
    others: list[dict[str, str]]  # a customer key without a principal id, a provider key named like A


@pytest.fixture
def cust(db: Database, clock: FrozenClock, tenant_id: str) -> Customers:
    t = create_tenant(db, clock, tenant_id)
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
        for who in (A, B):
            make_license(s, tenant_id, clock, licensee_id=who, cameras_allowed=5, devices_allowed=2)
        a = make_key(s, tenant_id, clock, kind="customer", principal_id=A, scopes=ALL_LICENSING).secret
        b = make_key(s, tenant_id, clock, kind="customer", principal_id=B, scopes=ALL_LICENSING).secret
        op = make_key(s, tenant_id, clock, kind="operator", scopes=ALL_LICENSING).secret
        others = [make_key(s, tenant_id, clock, kind="customer", scopes=ALL_LICENSING).secret,
                  make_key(s, tenant_id, clock, kind="provider", principal_id=A, scopes=ALL_LICENSING).secret]
    return Customers(t, ApiTenant.auth(a), ApiTenant.auth(b), ApiTenant.auth(op),
                     [ApiTenant.auth(k) for k in others])


def _like_missing(r: Any, licensee: str) -> None:
    """404 `license_not_found` with exactly the body a licensee without a license gets."""
    body = assert_problem(r, 404, "license_not_found")
    assert body["detail"] == f"no license for {licensee}", body


def _missing_body(client: TestClient, headers: dict[str, str], path: str) -> dict[str, Any]:
    r = client.get(path, headers=headers)
    return dict(assert_problem(r, 404, "license_not_found"))


def test_reads_of_another_customers_license_are_404_like_a_missing_one(client: TestClient, cust: Customers) -> None:
    for path in (f"/v1/licenses/{B}", f"/v1/licenses/{B}/cameras", f"/v1/licenses/{B}/devices"):
        r = client.get(path, headers=cust.a)
        _like_missing(r, B)
        missing = _missing_body(client, cust.a, path.replace(B, "nobody-here"))
        assert r.json()["detail"].replace(B, "X") == missing["detail"].replace("nobody-here", "X")
    # their own, and staff any
    assert client.get(f"/v1/licenses/{A}", headers=cust.a).json()["tenant_id"] == A
    for headers in (cust.t.a, cust.operator):
        for path in (f"/v1/licenses/{B}", f"/v1/licenses/{B}/cameras", f"/v1/licenses/{B}/devices"):
            assert client.get(path, headers=headers).status_code == 200, path


def test_a_customer_lists_only_its_own_license(client: TestClient, cust: Customers) -> None:
    assert [x["tenant_id"] for x in client.get("/v1/licenses", headers=cust.a).json()["data"]] == [A]
    assert [x["tenant_id"] for x in client.get("/v1/licenses", headers=cust.b).json()["data"]] == [B]
    staff = {x["tenant_id"] for x in client.get("/v1/licenses", headers=cust.operator).json()["data"]}
    assert staff == {A, B, "tenant-123"}
    # a customer key without a principal id, or a provider key, owns no license
    for headers in cust.others:
        assert client.get("/v1/licenses", headers=headers).json()["data"] == []
        _like_missing(client.get(f"/v1/licenses/{A}", headers=headers), A)
        _like_missing(client.patch(f"/v1/licenses/{A}", json={"status": "suspended"}, headers=headers), A)


def test_changes_to_another_customers_license_are_404_and_change_nothing(client: TestClient,
                                                                          cust: Customers) -> None:
    # B has an activated camera (validated by staff) that A must not be able to release
    assert client.post(f"/v1/licenses/{B}/cameras/cam-b/validation", headers=cust.t.a).json()["valid"]
    before = client.get(f"/v1/licenses/{B}", headers=cust.t.a).json()
    _like_missing(client.patch(f"/v1/licenses/{B}", json={"status": "suspended"}, headers=cust.a), B)
    _like_missing(client.patch(f"/v1/licenses/{B}", json={"cameras_allowed": 500, "growth_packs": ["intelligence"]},
                               headers=cust.a), B)
    _like_missing(client.delete(f"/v1/licenses/{B}/cameras/cam-b", headers=cust.a), B)
    # a missing camera of B's is not told apart either (no camera_not_activated)
    _like_missing(client.delete(f"/v1/licenses/{B}/cameras/nope", headers=cust.a), B)
    assert client.get(f"/v1/licenses/{B}", headers=cust.t.a).json() == before
    assert [c["camera_id"] for c in client.get(f"/v1/licenses/{B}/cameras", headers=cust.t.a).json()] == ["cam-b"]
    # staff change B's
    r = client.patch(f"/v1/licenses/{B}", json={"status": "suspended"}, headers=cust.operator)
    assert r.status_code == 200 and r.json()["status"] == "suspended", r.text
    assert client.delete(f"/v1/licenses/{B}/cameras/cam-b", headers=cust.t.a).status_code == 204


def test_a_customer_issues_no_license(client: TestClient, cust: Customers) -> None:
    r = client.post("/v1/licenses", json={"tenant_id": "cust-c", "plan_id": "trial"}, headers=cust.a)
    assert_problem(r, 403, "forbidden")
    assert client.get("/v1/licenses/cust-c", headers=cust.t.a).status_code == 404
    # not for itself either (a license is sold: staff issue it), and nothing else leaks first
    assert_problem(client.post("/v1/licenses", json={"tenant_id": A, "plan_id": "trial"}, headers=cust.a),
                   403, "forbidden")
    r = client.post("/v1/licenses", json={"tenant_id": "cust-c", "plan_id": "trial"}, headers=cust.operator)
    assert r.status_code == 201, r.text
    assert_problem(client.post("/v1/licenses", json={"tenant_id": "cust-c", "plan_id": "trial"},
                               headers=cust.t.a), 409, "license_exists")


# Each change a customer key might make to its own license, and what staff get for it.
_OWN_CHANGES = [
    {"status": "active"},  # resume a license staff suspended
    {"status": "suspended"},
    {"cameras_allowed": 50},
    {"devices_allowed": 9},
    {"growth_packs": ["advanced_analytics", "intelligence"]},
    {"plan_id": "base_license"},
    {"valid_until": "2199-01-01T00:00:00Z"},
]


@pytest.mark.parametrize("change", _OWN_CHANGES, ids=lambda c: next(iter(c)))
def test_a_customer_changes_not_even_its_own_license(client: TestClient, cust: Customers,
                                                     change: dict[str, Any]) -> None:
    # staff suspended A's license: A must not lift the suspension or grow its allowances
    assert client.patch(f"/v1/licenses/{A}", json={"status": "suspended"}, headers=cust.operator).status_code == 200
    before = client.get(f"/v1/licenses/{A}", headers=cust.a).json()
    r = client.patch(f"/v1/licenses/{A}", json=change, headers=cust.a)
    assert "operator or admin" in assert_problem(r, 403, "forbidden")["detail"]
    assert client.get(f"/v1/licenses/{A}", headers=cust.a).json() == before
    # staff make the same change (operator and admin alike)
    for staff in (cust.operator, cust.t.a):
        r = client.patch(f"/v1/licenses/{A}", json=change, headers=staff)
        assert r.status_code == 200, r.text


def test_a_customer_releases_no_camera_of_its_own(client: TestClient, cust: Customers) -> None:
    assert client.post(f"/v1/licenses/{A}/cameras/cam-a/validation", headers=cust.a).json()["valid"]
    assert_problem(client.delete(f"/v1/licenses/{A}/cameras/cam-a", headers=cust.a), 403, "forbidden")
    # a camera it never activated: the same 403, so the route tells it nothing
    assert_problem(client.delete(f"/v1/licenses/{A}/cameras/nope", headers=cust.a), 403, "forbidden")
    assert [c["camera_id"] for c in client.get(f"/v1/licenses/{A}/cameras", headers=cust.a).json()] == ["cam-a"]
    assert client.get(f"/v1/licenses/{A}", headers=cust.a).json()["cameras_active"] == 1
    assert client.delete(f"/v1/licenses/{A}/cameras/cam-a", headers=cust.operator).status_code == 204
    assert client.get(f"/v1/licenses/{A}/cameras", headers=cust.a).json() == []


def test_a_customer_still_reads_its_own_license(client: TestClient, cust: Customers) -> None:
    assert client.get(f"/v1/licenses/{A}", headers=cust.a).json()["tenant_id"] == A
    assert client.get(f"/v1/licenses/{A}/cameras", headers=cust.a).status_code == 200
    assert client.get(f"/v1/licenses/{A}/devices", headers=cust.a).status_code == 200
    assert [x["tenant_id"] for x in client.get("/v1/licenses", headers=cust.a).json()["data"]] == [A]


def test_validation_and_entitlement_resources_answer_as_for_no_license(client: TestClient,
                                                                       cust: Customers) -> None:
    # warm B's cache entry first: the cached answer must not leak through either
    assert client.post(f"/v1/licenses/{B}/cameras/cam-1/validation", headers=cust.t.a).json()["valid"]
    unknown = client.post("/v1/licenses/ghost/cameras/cam-2/validation", headers=cust.a).json()
    assert unknown["code"] == "license_not_found"
    for cam in ("cam-1", "cam-2"):
        r = client.post(f"/v1/licenses/{B}/cameras/{cam}/validation", headers=cust.a)
        assert r.status_code == 200 and r.json() == unknown, r.text
    # cam-2 was not activated under B's license
    assert [c["camera_id"] for c in client.get(f"/v1/licenses/{B}/cameras", headers=cust.t.a).json()] == ["cam-1"]
    ghost = client.get("/v1/licenses/ghost/entitlements/heatmaps", headers=cust.a).json()
    assert ghost == {"allowed": False, "feature": "heatmaps", "growth_pack": "advanced_analytics",
                     "code": "license_not_found"}
    assert client.get(f"/v1/licenses/{B}/entitlements/heatmaps", headers=cust.a).json() == ghost
    assert client.get(f"/v1/licenses/{B}/entitlements/heatmaps?camera_id=cam-1", headers=cust.a).json() == ghost
    # its own license, and staff on B's
    assert client.post(f"/v1/licenses/{A}/cameras/cam-a/validation", headers=cust.a).json()["valid"]
    assert client.get(f"/v1/licenses/{A}/entitlements/heatmaps", headers=cust.a).json()["allowed"]
    assert client.get(f"/v1/licenses/{B}/entitlements/heatmaps", headers=cust.operator).json()["allowed"]
