"""Native metering API: access matrix, meters, usage batch, usage queries, and whose usage a
key may report and read (a customer key only its own licensee's)."""

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
        r = make_key(s, tenant.id, clock, kind="operator", scopes=["usage:read"]).secret
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


# -- whose usage: a customer key reports and reads only its own licensee's -------------------
A, B = "cust-a", "cust-b"


@pytest.fixture
def usage_keys(db, clock, tenant):
    """Keys with usage:write and usage:read: customers A and B, a device, an operator, a
    provider and a customer key without a principal id."""
    with db.session() as s:
        metering_service.seed_demo(s, tenant.id, clock.now_ns())
        both = ["usage:write", "usage:read"]
        keys = {who: make_key(s, tenant.id, clock, kind="customer", principal_id=who, scopes=both).secret
                for who in (A, B)}
        for kind in ("device", "operator"):
            keys[kind] = make_key(s, tenant.id, clock, kind=kind, scopes=both).secret
        keys["provider"] = make_key(s, tenant.id, clock, kind="provider", principal_id=A, scopes=both).secret
        keys["nameless"] = make_key(s, tenant.id, clock, kind="customer", scopes=both).secret
    return {who: ApiTenant.auth(secret) for who, secret in keys.items()}


def _events(clock, prefix: str, n: int = 3, quantity: int = 10) -> list[dict]:
    now = clock.now_ns()
    return [{"event_id": f"{prefix}-{i}", "subject": f"cam-{i}", "meter": "frames_processed",
             "quantity": quantity, "timestamp": _iso(now - i * NS)} for i in range(n)]


def _total(client, clock, headers, query: str = "", group_by: str = "none"):
    now = clock.now_ns()
    h = now - now % HOUR_NS
    r = client.get(f"/v1/meters/frames_processed/usage?from={_iso(h - HOUR_NS)}&to={_iso(h + HOUR_NS)}"
                   f"&group_by={group_by}{query}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_a_customer_reports_usage_only_for_itself(client, clock, usage_keys):
    k = usage_keys
    post = lambda body, who: client.post("/v1/usage/events", json=body, headers=k[who])  # noqa: E731
    theirs = post({"licensee": B, "events": _events(clock, "x")}, A)
    assert theirs.status_code == 200, theirs.text
    out = theirs.json()
    assert (out["accepted"], out["duplicates"]) == (0, 0)
    assert [(r["index"], r["event_id"], r["code"]) for r in out["rejected"]] == [
        (i, f"x-{i}", "licensee_forbidden") for i in range(3)]
    # the same answer whether or not the licensee exists: nothing about B leaks
    assert post({"licensee": "nobody", "events": _events(clock, "x")}, A).json() == out
    # nothing was stored, and no id was claimed: B's own events with those ids still count
    assert _total(client, clock, k["operator"], f"&licensee={B}")[0]["value"] == "0"
    assert post({"licensee": B, "events": _events(clock, "x")}, "device").json()["accepted"] == 3
    # a provider key, or a customer key without a principal id, reports for no licensee
    for who in ("provider", "nameless"):
        for licensee in (A, ""):
            got = post({"licensee": licensee, "events": _events(clock, "p")}, who).json()
            assert {r["code"] for r in got["rejected"]} == {"licensee_forbidden"} and got["accepted"] == 0
    # its own: named, or left out (a customer's usage is its own)
    assert post({"licensee": A, "events": _events(clock, "a")}, A).json()["accepted"] == 3
    assert post({"events": _events(clock, "a2", n=2)}, A).json()["accepted"] == 2
    assert _total(client, clock, k["operator"], f"&licensee={A}")[0] == {
        "value": "50", "events": 5, "subject": None, "period_start": None, "period_end": None}
    assert _total(client, clock, k["operator"], "&licensee=")[0]["value"] == "0"
    # staff and device keys report for any licensee (and for none)
    assert post({"licensee": B, "events": _events(clock, "o")}, "operator").json()["accepted"] == 3
    assert post({"events": _events(clock, "d")}, "device").json()["accepted"] == 3


def test_the_profile_batch_shares_the_rule(client, clock, usage_keys):
    """BrinkByte's `POST /api/v1/usage/batch` runs the same ingestion: a customer naming another
    licensee is refused there too (as a licensee without a license, that route's answer)."""
    events = [{**e, "camera_id": e.pop("subject")} for e in _events(clock, "bb")]
    got = client.post("/api/v1/usage/batch", json={"tenant_id": B, "device_id": "d", "events": events},
                      headers=usage_keys[A]).json()
    assert got["accepted"] == 0 and {r["code"] for r in got["rejected"]} == {"license_not_found"}


def test_a_customer_reads_only_its_own_usage(client, clock, usage_keys):
    k = usage_keys
    assert client.post("/v1/usage/events", json={"licensee": A, "events": _events(clock, "a", n=2)},
                       headers=k["operator"]).json()["accepted"] == 2
    assert client.post("/v1/usage/events", json={"licensee": B, "events": _events(clock, "b", quantity=7)},
                       headers=k["operator"]).json()["accepted"] == 3
    assert client.post("/v1/usage/events", json={"events": _events(clock, "t", n=1, quantity=1000)},
                       headers=k["operator"]).json()["accepted"] == 1
    # another licensee answers exactly like one without usage, whatever the grouping
    for group_by in ("none", "subject", "hour", "day", "month"):
        nobody = _total(client, clock, k[A], "&licensee=nobody", group_by)
        assert _total(client, clock, k[A], f"&licensee={B}", group_by) == nobody
        assert _total(client, clock, k[A], f"&licensee={B}&subject=cam-0", group_by) == nobody
        assert _total(client, clock, k[A], "&licensee=", group_by) == nobody  # the tenant's unattributed
    assert _total(client, clock, k[A], f"&licensee={B}")[0] == {
        "value": "0", "events": 0, "subject": None, "period_start": None, "period_end": None}
    # its own, asked for or implied (a query without `licensee` is not the whole tenant's)
    assert _total(client, clock, k[A], f"&licensee={A}")[0]["value"] == "20"
    assert _total(client, clock, k[A])[0]["value"] == "20"
    assert _total(client, clock, k[A], "&subject=cam-0")[0]["value"] == "10"
    assert [(d["subject"], d["value"]) for d in _total(client, clock, k[A], group_by="subject")] == [
        ("cam-0", "10"), ("cam-1", "10")]
    assert _total(client, clock, k[B])[0]["value"] == "21"
    # a provider key, or a customer key without a principal id, reads no one's
    for who in ("provider", "nameless"):
        assert _total(client, clock, k[who])[0]["value"] == "0"
        assert _total(client, clock, k[who], f"&licensee={A}")[0]["value"] == "0"
    # staff and device keys read the whole tenant, or any licensee
    for who in ("operator", "device"):
        assert _total(client, clock, k[who])[0]["value"] == "1041"
        assert _total(client, clock, k[who], f"&licensee={B}")[0]["value"] == "21"
    # a missing meter or a bad period is still an error for a customer (the same checks first)
    assert_problem(client.get(f"/v1/meters/nope/usage?from={_iso(0)}&to={_iso(HOUR_NS)}&licensee={B}",
                              headers=k[A]), 404, "meter_not_found")
