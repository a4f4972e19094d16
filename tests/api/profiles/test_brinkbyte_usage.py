"""BrinkByte profile: POST /api/v1/usage/batch in the seed's shape, end to end."""

from __future__ import annotations

import json

import pytest

from meterline.clock import to_rfc3339
from meterline.metering.ingest import HOUR_NS
from meterline.metering.service import metering_service
from tests.api.conftest import assert_problem
from tests.factories import make_key, make_licensing_catalogue, make_tenant

NS = 1_000_000_000


@pytest.fixture
def dev_client(make_client, db, clock, tenant_id):
    """`meterline serve --dev` as the seed's edge device sees it: no key, loopback (the demo
    meters, and tenant-123's license: usage is reported for a licensed licensee)."""
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        metering_service.seed_demo(s, tenant_id, clock.now_ns())
        make_licensing_catalogue(s, tenant_id, clock)
    return make_client(dev=True, default_tenant=tenant_id)


def _batch(clock, events=None, tenant="tenant-123"):
    now = clock.now_ns()
    return {"tenant_id": tenant, "device_id": "device-001", "events": events if events is not None else [
        {"event_id": "evt-0001", "camera_id": "cam-001", "meter": "frames_processed", "quantity": 900,
         "timestamp": to_rfc3339(now - 60 * NS)},
        {"event_id": "evt-0002", "camera_id": "cam-001", "meter": "detections", "quantity": 42,
         "timestamp": to_rfc3339(now - 30 * NS), "properties": {"class": "person", "confidence": 0.93}},
        {"event_id": "evt-0003", "camera_id": "cam-002", "meter": "events_uploaded", "quantity": 3,
         "timestamp": (now - 10 * NS) // NS},
        {"event_id": "evt-0004", "camera_id": "cam-002", "meter": "inference_seconds", "quantity": 12.75,
         "timestamp": to_rfc3339(now)},
    ]}


def test_seed_documented_call_end_to_end(dev_client, clock, tenant_id):
    res = dev_client.post("/api/v1/usage/batch", json=_batch(clock))
    assert res.status_code == 200, res.text
    assert res.json() == {"accepted": 4, "duplicates": 0, "rejected": []}
    # the edge retries the same batch (lost response): nothing counts twice
    again = dev_client.post("/api/v1/usage/batch", json=_batch(clock)).json()
    assert (again["accepted"], again["duplicates"]) == (0, 4)
    now = clock.now_ns()
    h = now - now % HOUR_NS
    q = (f"/v1/meters/inference_seconds/usage?from={to_rfc3339(h - HOUR_NS)}&to={to_rfc3339(h + HOUR_NS)}"
         "&licensee=tenant-123&group_by=subject")
    data = dev_client.get(q).json()["data"]
    assert data == [{"value": "12.75", "events": 1, "subject": "cam-002", "period_start": None, "period_end": None}]


def test_bad_events_rejected_alone(dev_client, clock):
    now = clock.now_ns()
    events = [
        {"event_id": "ok", "camera_id": "cam-1", "meter": "detections", "quantity": 1, "timestamp": to_rfc3339(now)},
        {"event_id": "m", "camera_id": "cam-1", "meter": "pixels", "quantity": 1, "timestamp": to_rfc3339(now)},
        {"event_id": "q", "camera_id": "cam-1", "meter": "detections", "quantity": -3, "timestamp": to_rfc3339(now)},
        {"event_id": "s", "camera_id": "cam-1", "meter": "detections", "quantity": "many",
         "timestamp": to_rfc3339(now)},
        {"event_id": "late", "camera_id": "cam-1", "meter": "detections", "quantity": 1,
         "timestamp": to_rfc3339(now - 30 * 24 * 3600 * NS)},
        {"event_id": "nocam", "meter": "detections", "quantity": 1, "timestamp": to_rfc3339(now)},
        {"event_id": "ok2", "camera_id": "cam-2", "meter": "detections", "quantity": 2, "timestamp": to_rfc3339(now)},
    ]
    out = dev_client.post("/api/v1/usage/batch", json=_batch(clock, events)).json()
    assert out["accepted"] == 2 and out["duplicates"] == 0
    assert [(r["index"], r["code"]) for r in out["rejected"]] == [
        (1, "unknown_meter"), (2, "invalid_quantity"), (3, "invalid_quantity"), (4, "too_late"), (5, "invalid_event")]
    assert all(r["detail"] for r in out["rejected"])


def test_envelope_errors(dev_client, clock):
    body = _batch(clock)
    del body["tenant_id"]
    assert_problem(dev_client.post("/api/v1/usage/batch", json=body), 422, "validation_error")
    body = _batch(clock)
    body["device_id"] = ""
    assert_problem(dev_client.post("/api/v1/usage/batch", json=body), 422, "validation_error")
    body = _batch(clock, [{"event_id": f"e{i}"} for i in range(1001)])
    assert_problem(dev_client.post("/api/v1/usage/batch", json=body), 413, "batch_too_large")


def test_a_key_given_twice_in_an_event_refuses_the_batch_on_the_fast_path(dev_client, clock, tenant_id):
    from tests.api.test_fastpath import router_disabled

    body = _batch(clock)
    raw = json.dumps(body).replace('"quantity": 42', '"quantity": 42, "quantity": 42000')
    with router_disabled(dev_client):
        r = dev_client.post("/api/v1/usage/batch", content=raw, headers={"content-type": "application/json"})
    problem = assert_problem(r, 422, "validation_error")
    assert [(e["field"], e["code"]) for e in problem["errors"]] == [("events.1.quantity", "duplicate_key")]
    assert dev_client.post("/api/v1/usage/batch", json=body).json()["accepted"] == 4  # nothing was taken


def test_licensees_and_meterline_tenants_are_isolated(make_client, db, clock, tenant_id):
    other = f"{tenant_id}-b"
    keys = {}
    with db.session() as s:
        for t in (tenant_id, other):
            make_tenant(s, t, clock)
            metering_service.seed_demo(s, t, clock.now_ns())
            make_licensing_catalogue(s, t, clock)
            keys[t] = {"Authorization": "Bearer " + make_key(s, t, clock, kind="device",
                                                              scopes=["usage:write", "usage:read"]).secret}
    client = make_client()
    assert_problem(client.post("/api/v1/usage/batch", json=_batch(clock)), 401, "unauthenticated")
    assert client.post("/api/v1/usage/batch", json=_batch(clock), headers=keys[tenant_id]).json()["accepted"] == 4
    # the same body under another Meterline tenant is that tenant's own, first-time usage
    assert client.post("/api/v1/usage/batch", json=_batch(clock), headers=keys[other]).json()["accepted"] == 4
    now = clock.now_ns()
    h = now - now % HOUR_NS
    q = f"/v1/meters/frames_processed/usage?from={to_rfc3339(h - HOUR_NS)}&to={to_rfc3339(h + HOUR_NS)}"
    assert client.get(q, headers=keys[tenant_id]).json()["data"][0]["value"] == "900"
    assert client.get(q + "&licensee=tenant-999", headers=keys[tenant_id]).json()["data"][0]["value"] == "0"


# -- usage needs a licensed licensee ------------------------------------------------------------


def _usage(client, clock, q, headers=None, licensee="tenant-123"):
    now = clock.now_ns()
    h = now - now % HOUR_NS
    path = (f"/v1/meters/frames_processed/usage?from={to_rfc3339(h - HOUR_NS)}&to={to_rfc3339(h + HOUR_NS)}"
            f"&licensee={licensee}")
    return client.get(path, headers=headers).json()["data"][0]["value"]


def test_usage_for_a_licensee_without_a_license_is_rejected_per_event(dev_client, clock):
    """A typo'd tenant_id used to be accepted and stored under a licensee nobody bills."""
    events = [*_batch(clock)["events"], {"event_id": 7, "camera_id": "cam-1", "meter": "nope"}, "junk"]
    out = dev_client.post("/api/v1/usage/batch", json=_batch(clock, events, tenant="tenant-132"))
    assert out.status_code == 200, out.text
    got = out.json()
    assert (got["accepted"], got["duplicates"]) == (0, 0)
    assert [(r["index"], r["event_id"], r["code"]) for r in got["rejected"]] == [
        (0, "evt-0001", "license_not_found"), (1, "evt-0002", "license_not_found"),
        (2, "evt-0003", "license_not_found"), (3, "evt-0004", "license_not_found"),
        (4, None, "license_not_found"), (5, None, "license_not_found")]
    assert got["rejected"][0]["detail"] == "no license exists for this tenant"
    assert _usage(dev_client, clock, "frames_processed", licensee="tenant-132") == "0"  # nothing stored
    # once tenant-132 is issued a license (the cached "no license" is dropped), the same batch is
    # taken: the rejected events' ids were not spent, and the bad events keep their own codes
    assert dev_client.post("/v1/licenses", json={"tenant_id": "tenant-132", "plan_id": "trial"}).status_code == 201
    again = dev_client.post("/api/v1/usage/batch", json=_batch(clock, events, tenant="tenant-132")).json()
    assert again["accepted"] == 4 and [r["code"] for r in again["rejected"]] == ["invalid_event", "invalid_event"]
    assert _usage(dev_client, clock, "frames_processed", licensee="tenant-132") == "900"


def test_usage_is_taken_whatever_the_license_status(dev_client, clock):
    """A device syncs usage it buffered while offline: usage from before a suspension may
    arrive after it, and is kept (billing decides what to charge)."""
    assert dev_client.patch("/v1/licenses/tenant-123", json={"status": "suspended"}).status_code == 200
    assert dev_client.post("/api/v1/usage/batch", json=_batch(clock)).json()["accepted"] == 4


@pytest.fixture
def usage_key(db, clock, tenant_id):
    """A tenant with the demo meters and catalogue, tenant-123's and cust-a's licenses; then
    `usage_key(kind, principal_id=None)` → auth headers of a key with the usage scopes."""
    from tests.factories import make_license

    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        metering_service.seed_demo(s, tenant_id, clock.now_ns())
        make_licensing_catalogue(s, tenant_id, clock)
        make_license(s, tenant_id, clock, licensee_id="cust-a")

    def make(kind: str, principal_id: str | None = None) -> dict[str, str]:
        with db.session() as s:
            return {"Authorization": "Bearer " + make_key(s, tenant_id, clock, kind=kind, principal_id=principal_id,
                                                          scopes=["usage:write", "usage:read"]).secret}
    return make


def test_a_customer_key_reports_usage_only_for_itself(make_client, clock, usage_key):
    a, device = usage_key("customer", "cust-a"), usage_key("device")
    client = make_client()
    theirs = client.post("/api/v1/usage/batch", json=_batch(clock), headers=a).json()  # tenant-123's license
    unknown = client.post("/api/v1/usage/batch", json=_batch(clock, tenant="nobody"), headers=a).json()
    assert theirs == unknown and theirs["accepted"] == 0
    assert {r["code"] for r in theirs["rejected"]} == {"license_not_found"}
    assert _usage(client, clock, "frames_processed", headers=device) == "0"
    mine = client.post("/api/v1/usage/batch", json=_batch(clock, tenant="cust-a"), headers=a).json()
    assert mine == {"accepted": 4, "duplicates": 0, "rejected": []}
    # a device key reports for any licensed licensee of its tenant (ids are the tenant's: new ones)
    events = [{**e, "event_id": "d-" + e["event_id"]} for e in _batch(clock)["events"]]
    assert client.post("/api/v1/usage/batch", json=_batch(clock, events), headers=device).json()["accepted"] == 4
    assert _usage(client, clock, "frames_processed", headers=device) == "900"


def test_the_license_lookup_is_one_cached_read_per_batch(dev_client, clock, tenant_id, monkeypatch):
    """The licensee's license comes from the license cache: once warm, a batch reads no license."""
    from meterline.licensing.service import licensing_service

    loads = []
    real = licensing_service.load_state
    monkeypatch.setattr(licensing_service, "load_state", lambda *a: loads.append(a) or real(*a))
    for i in range(3):
        body = _batch(clock, [{"event_id": f"w{i}-{j}", "camera_id": f"cam-{j}", "meter": "detections",
                               "quantity": 1, "timestamp": to_rfc3339(clock.now_ns())} for j in range(50)])
        assert dev_client.post("/api/v1/usage/batch", json=body).json()["accepted"] == 50
        assert dev_client.post("/api/v1/usage/batch", json=_batch(clock, body["events"], tenant="typo")).json()[
            "accepted"] == 0
    assert sorted({a[2] for a in loads}) == ["tenant-123", "typo"] and len(loads) == 2


def test_a_device_key_bound_to_a_licensee_reports_and_reads_only_its_usage(make_client, clock, usage_key):
    box, fleet = usage_key("device", "cust-a"), usage_key("device")
    client = make_client()
    theirs = client.post("/api/v1/usage/batch", json=_batch(clock), headers=box).json()  # tenant-123's license
    assert theirs["accepted"] == 0 and {r["code"] for r in theirs["rejected"]} == {"license_not_found"}
    events = [{**e, "event_id": "b-" + e["event_id"]} for e in _batch(clock)["events"]]
    assert client.post("/api/v1/usage/batch", json=_batch(clock, events, tenant="cust-a"),
                       headers=box).json()["accepted"] == 4
    assert client.post("/api/v1/usage/batch", json=_batch(clock), headers=fleet).json()["accepted"] == 4
    # Reads: its own licensee's only; the fleet key reads any.
    assert _usage(client, clock, "frames_processed", licensee="tenant-123", headers=box) == "0"
    assert _usage(client, clock, "frames_processed", licensee="cust-a", headers=box) == "900"
    assert _usage(client, clock, "frames_processed", licensee="tenant-123", headers=fleet) == "900"
