"""BrinkByte profile: POST /api/v1/usage/batch in the seed's shape, end to end."""

from __future__ import annotations

import pytest

from meterline.clock import to_rfc3339
from meterline.metering.ingest import HOUR_NS
from meterline.metering.service import metering_service
from tests.api.conftest import assert_problem
from tests.factories import make_key, make_tenant

NS = 1_000_000_000


@pytest.fixture
def dev_client(make_client, db, clock, tenant_id):
    """`meterline serve --dev` as the seed's edge device sees it: no key, loopback."""
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        metering_service.seed_demo(s, tenant_id, clock.now_ns())
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


def test_licensees_and_meterline_tenants_are_isolated(make_client, db, clock, tenant_id):
    other = f"{tenant_id}-b"
    keys = {}
    with db.session() as s:
        for t in (tenant_id, other):
            make_tenant(s, t, clock)
            metering_service.seed_demo(s, t, clock.now_ns())
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
