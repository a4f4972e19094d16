"""Native metering API: access matrix, meters, usage batch, usage queries."""

from __future__ import annotations

import pytest

from meterline.metering.ingest import HOUR_NS
from meterline.metering.service import metering_service
from tests.api.conftest import ApiTenant, assert_problem
from tests.factories import make_key

NS = 1_000_000_000


@pytest.fixture
def usage_tenant(db, clock, tenant):
    with db.session() as s:
        metering_service.seed_demo(s, tenant.id, clock.now_ns())
        w = make_key(s, tenant.id, clock, kind="device", scopes=["usage:write"]).secret
        r = make_key(s, tenant.id, clock, kind="customer", scopes=["usage:read"]).secret
    return tenant, ApiTenant.auth(w), ApiTenant.auth(r)


def _iso(ns: int) -> str:
    from meterline.clock import to_rfc3339

    return to_rfc3339(ns)


def test_access_matrix(client, usage_tenant, other_tenant):
    t, w, r = usage_tenant
    assert_problem(client.get("/v1/meters"), 401, "unauthenticated")
    assert_problem(client.get("/v1/meters", headers=w), 403, "forbidden")
    assert client.get("/v1/meters", headers=r).status_code == 200
    assert_problem(client.post("/v1/usage/events", json={"events": []}, headers=r), 403, "forbidden")
    assert_problem(client.post("/v1/meters", json={"id": "x", "aggregation": "sum"}, headers=w), 403, "forbidden")
    # another tenant's meter is a 404
    client.post("/v1/meters", json={"id": "mine", "aggregation": "sum"}, headers=t.a)
    assert_problem(client.get("/v1/meters/mine/usage?from=2023-11-14T00:00:00Z&to=2023-11-15T00:00:00Z",
                              headers=other_tenant.a), 404, "meter_not_found")


def test_meters_create_and_list(client, usage_tenant):
    t, _, r = usage_tenant
    res = client.post("/v1/meters", json={"id": "viewers", "aggregation": "unique_count", "field": "user",
                                          "unit": "users"}, headers=t.a)
    assert res.status_code == 201, res.text
    assert res.json()["field"] == "user"
    assert_problem(client.post("/v1/meters", json={"id": "viewers", "aggregation": "sum"}, headers=t.a),
                   409, "meter_exists")
    assert_problem(client.post("/v1/meters", json={"id": "u2", "aggregation": "unique_count"}, headers=t.a),
                   422, "invalid_meter")
    assert_problem(client.post("/v1/meters", json={"id": "u3", "aggregation": "median"}, headers=t.a),
                   422, "validation_error")
    ids = [m["id"] for m in client.get("/v1/meters", headers=r).json()["data"]]
    assert ids == ["detections", "events_uploaded", "frames_processed", "inference_seconds", "viewers"]


def test_ingest_and_query(client, usage_tenant, clock):
    _t, w, r = usage_tenant
    now = clock.now_ns()
    h = now - now % HOUR_NS
    body = {"licensee": "acme", "device": "dev-1", "events": [
        {"event_id": "a", "subject": "cam-1", "meter": "inference_seconds", "quantity": 0.1,
         "timestamp": _iso(h + 1)},
        {"event_id": "b", "subject": "cam-2", "meter": "inference_seconds", "quantity": "0.2",
         "timestamp": (h + 2 * NS) // NS},
        {"event_id": "c", "subject": "cam-2", "meter": "inference_seconds", "quantity": 0.0000001,
         "timestamp": _iso(h)},
        "not an event",
        {"event_id": "a", "subject": "cam-1", "meter": "inference_seconds", "quantity": 5, "timestamp": _iso(h)},
    ]}
    res = client.post("/v1/usage/events", json=body, headers=w)
    assert res.status_code == 200, res.text
    out = res.json()
    assert (out["accepted"], out["duplicates"]) == (2, 1)
    assert [(x["index"], x["code"]) for x in out["rejected"]] == [(2, "invalid_quantity"), (3, "invalid_event")]
    q = f"/v1/meters/inference_seconds/usage?from={_iso(h)}&to={_iso(h + HOUR_NS)}"
    got = client.get(q, headers=r).json()
    assert got["data"] == [{"value": "0.3", "events": 2, "subject": None, "period_start": None, "period_end": None}]
    assert got["from"] == _iso(h)
    by = client.get(q + "&group_by=subject&licensee=acme", headers=r).json()["data"]
    assert [(d["subject"], d["value"]) for d in by] == [("cam-1", "0.1"), ("cam-2", "0.2")]
    hourly = client.get(q + "&group_by=hour&subject=cam-2", headers=r).json()["data"]
    assert [(d["period_start"], d["value"]) for d in hourly] == [(_iso(h), "0.2")]
    assert_problem(client.get(f"/v1/meters/inference_seconds/usage?from={_iso(h + 60 * NS)}&to={_iso(h + HOUR_NS)}",
                              headers=r), 422, "invalid_period")
    assert_problem(client.get(f"/v1/meters/inference_seconds/usage?from=soon&to={_iso(h)}", headers=r),
                   422, "validation_error")
    assert_problem(client.get(q + "&group_by=week", headers=r), 422, "validation_error")


def test_bad_envelopes(client, usage_tenant):
    _, w, _ = usage_tenant
    assert_problem(client.post("/v1/usage/events", content=b"{nope", headers=w), 422, "validation_error")
    assert_problem(client.post("/v1/usage/events", json=[1], headers=w), 422, "validation_error")
    assert_problem(client.post("/v1/usage/events", json={"events": "x"}, headers=w), 422, "validation_error")
    assert_problem(client.post("/v1/usage/events", json={"events": [], "licensee": 5}, headers=w),
                   422, "validation_error")
    too_many = {"events": [{"event_id": str(i)} for i in range(1001)]}
    assert_problem(client.post("/v1/usage/events", json=too_many, headers=w), 413, "batch_too_large")


def test_text_postgresql_cannot_store_is_refused_naming_the_field(client, usage_tenant):
    """A meter's body goes through the exact parser like every other (it once went through
    FastAPI's own, and a NUL in `unit` reached PostgreSQL as a 500); a usage batch with a lone
    surrogate in one event is refused whole before anything is claimed."""
    t, w, _ = usage_tenant
    r = client.post("/v1/meters", content='{"id": "m", "aggregation": "sum", "unit": "a\\u0000"}',
                    headers={**t.a, "content-type": "application/json"})
    assert assert_problem(r, 422, "validation_error")["errors"][0] == {
        "field": "unit", "code": "nul_character", "detail": "text may not contain U+0000 (NUL)"}
    body = ('{"events": [{"event_id": "ok-1", "subject": "cam", "meter": "frames_processed", "quantity": 1}, '
            '{"event_id": "bad-1", "subject": "cam\\ud800", "meter": "frames_processed", "quantity": 1}]}')
    r = client.post("/v1/usage/events", content=body, headers={**w, "content-type": "application/json"})
    assert [(e["field"], e["code"]) for e in assert_problem(r, 422, "validation_error")["errors"]] == [
        ("events.1.subject", "invalid_unicode")]
    # An emoji written as an escaped surrogate pair is ordinary text.
    r = client.post("/v1/meters", content='{"id": "m", "aggregation": "sum", "unit": "\\ud83d\\ude80"}',
                    headers={**t.a, "content-type": "application/json"})
    assert r.status_code == 201 and r.json()["unit"] == "\U0001F680"


@pytest.mark.parametrize(("start", "end"), [
    ("9999-11-01T00:00:00Z", "9999-12-31T23:00:00Z"), ("2023-11-14T00:00:00Z", "9999-12-31T23:00:00-01:00"),
    ("0001-01-01T00:00:00+01:00", "2023-11-14T00:00:00Z"), ("1969-12-31T23:00:00Z", "2023-11-14T00:00:00Z"),
    ("2023-11-14T00:00:00Z", "2200-01-01T01:00:00Z"),
])
def test_a_period_outside_1970_to_2200_is_refused(client, usage_tenant, start, end):
    _, _, r = usage_tenant
    res = client.get(f"/v1/meters/frames_processed/usage?from={start}&to={end}&group_by=month",
                     headers=r)
    problem = assert_problem(res, 422, "validation_error")
    assert problem["errors"][0]["code"] == "invalid_timestamp"
