"""/v1/webhook_endpoints, /v1/webhook_deliveries, /v1/events: the admin's view of the outbox."""

from __future__ import annotations

import pytest

from meterline.events.dispatch import Dispatcher
from tests.api.conftest import assert_problem
from tests.events.conftest import SUBJECTS, drain

ALICE = "/v1/wallets/customer/alice/USD"
HOOK = "https://hooks.example.com/meterline"


def create(client, t, **body):
    return client.post("/v1/webhook_endpoints", json={"url": HOOK, **body}, headers=t.a)


def test_an_endpoint_is_created_listed_changed_and_deleted(client, market):
    r = create(client, market, event_types=["rental.settled", "wallet.deposited"], description="ops")
    assert r.status_code == 201, r.text
    ep = r.json()
    assert ep["id"].startswith("we_") and ep["secret"].startswith("whsec_")
    assert (ep["url"], ep["event_types"], ep["enabled"], ep["description"]) == (
        HOOK, ["rental.settled", "wallet.deposited"], True, "ops")
    # The secret is shown on creation, on rotation and on request — never in reads and lists.
    got = client.get(f"/v1/webhook_endpoints/{ep['id']}", headers=market.a).json()
    assert "secret" not in got and got["id"] == ep["id"]
    assert [e["id"] for e in client.get("/v1/webhook_endpoints", headers=market.a).json()["data"]] == [ep["id"]]
    assert client.get(f"/v1/webhook_endpoints/{ep['id']}/secret", headers=market.a).json()["secret"] == ep["secret"]
    rotated = client.post(f"/v1/webhook_endpoints/{ep['id']}/rotate_secret", headers=market.a).json()
    assert rotated["secret"] != ep["secret"]

    r = client.patch(f"/v1/webhook_endpoints/{ep['id']}", json={"enabled": False, "event_types": []}, headers=market.a)
    assert r.status_code == 200, r.text
    assert (r.json()["enabled"], r.json()["event_types"], r.json()["url"]) == (False, [], HOOK)

    assert client.delete(f"/v1/webhook_endpoints/{ep['id']}", headers=market.a).status_code == 204
    assert_problem(client.get(f"/v1/webhook_endpoints/{ep['id']}", headers=market.a), 404,
                   "webhook_endpoint_not_found")


@pytest.mark.parametrize(("body", "code"), [
    ({"url": "http://hooks.example.com/x"}, "invalid_webhook_endpoint"),   # plain http outside dev mode
    ({"url": "ftp://hooks.example.com/x"}, "invalid_webhook_endpoint"),
    ({"url": "https://user:pw@hooks.example.com/x"}, "invalid_webhook_endpoint"),
    ({"url": "https://hooks.example.com:99999/x"}, "invalid_webhook_endpoint"),
    ({"url": "/relative"}, "invalid_webhook_endpoint"),
    # Hosts httpx refuses when sending (IDNA) or DNS cannot hold: refused here, not at send time.
    ({"url": "https://\u2603.example/x"}, "invalid_webhook_endpoint"),
    ({"url": "https://xn--/"}, "invalid_webhook_endpoint"),
    ({"url": "https://xn--ls8h.la/"}, "invalid_webhook_endpoint"),
    ({"url": "https://a..b/"}, "invalid_webhook_endpoint"),
    ({"url": "https://" + "a" * 64 + ".example/"}, "invalid_webhook_endpoint"),
    ({"url": "https://a\u00adb.example/"}, "invalid_webhook_endpoint"),
    ({"url": "https://a\u202eb.example/"}, "invalid_webhook_endpoint"),
    ({"url": HOOK, "event_types": ["wallet.exploded"]}, "invalid_webhook_endpoint"),
    ({"url": HOOK, "event_types": ["Not A Type"]}, "validation_error"),
    ({"url": HOOK, "event_types": "wallet.deposited"}, "validation_error"),
    ({"url": HOOK, "surprise": 1}, "validation_error"),
    ({"url": "https://x.example/" + "a" * 2000}, "validation_error"),
    ({}, "validation_error"),
])
def test_bad_endpoints_are_refused_with_their_code(client, market, body, code):
    assert_problem(client.post("/v1/webhook_endpoints", json=body, headers=market.a), 422, code)


def test_plain_http_is_allowed_when_configured(make_client, market):
    client = make_client(webhook_allow_http=True)
    assert create(client, market, url="http://127.0.0.1:9000/hook").status_code == 201


def test_only_admin_keys_manage_webhooks(client, market, key):
    ep = create(client, market).json()
    for headers in (market.w, market.r, key(market, "provider", "prov-1")):
        assert_problem(client.post("/v1/webhook_endpoints", json={"url": HOOK}, headers=headers), 403, "forbidden")
        assert_problem(client.post(f"/v1/webhook_endpoints/{ep['id']}/rotate_secret", headers=headers), 403,
                       "forbidden")
        for path in ("/v1/webhook_endpoints", f"/v1/webhook_endpoints/{ep['id']}",
                     f"/v1/webhook_endpoints/{ep['id']}/secret", "/v1/events"):
            assert_problem(client.get(path, headers=headers), 403, "forbidden")


def test_a_tenant_never_sees_another_tenants_endpoints_or_events(client, market, other_market, db, clock):
    ep = create(client, market).json()
    assert client.post(f"{ALICE}/deposits", json={"amount": "5.00", "proof": "p-1"}, headers=market.a).status_code == 201
    [evt] = client.get("/v1/events", headers=market.a).json()["data"]
    b = other_market.a
    assert client.get("/v1/webhook_endpoints", headers=b).json()["data"] == []
    assert client.get("/v1/events", headers=b).json()["data"] == []
    assert_problem(client.get(f"/v1/webhook_endpoints/{ep['id']}", headers=b), 404, "webhook_endpoint_not_found")
    assert_problem(client.get(f"/v1/webhook_endpoints/{ep['id']}/secret", headers=b), 404,
                   "webhook_endpoint_not_found")
    assert_problem(client.patch(f"/v1/webhook_endpoints/{ep['id']}", json={"enabled": False}, headers=b), 404,
                   "webhook_endpoint_not_found")
    assert_problem(client.delete(f"/v1/webhook_endpoints/{ep['id']}", headers=b), 404, "webhook_endpoint_not_found")
    assert_problem(client.get(f"/v1/events/{evt['id']}", headers=b), 404, "event_not_found")
    assert client.get(f"/v1/webhook_endpoints/{ep['id']}", headers=market.a).json()["enabled"] is True


def test_a_deposit_is_in_the_event_log_with_exact_amounts(client, market):
    r = client.post(f"{ALICE}/deposits", json={"amount": "25.50", "proof": "tx-9"}, headers=market.a)
    assert r.status_code == 201, r.text
    [evt] = client.get("/v1/events?type=wallet.deposited", headers=market.a).json()["data"]
    assert evt["type"] == "wallet.deposited" and evt["tenant"] == market.id
    assert {k: evt["data"][k] for k in ("owner_type", "owner_id", "asset", "amount", "rail")} == {
        "owner_type": "customer", "owner_id": "alice", "asset": "USD", "amount": "25.50", "rail": "simulation"}
    assert client.get(f"/v1/events/{evt['id']}", headers=market.a).json() == evt
    # A replayed deposit (same proof) is no new event.
    client.post(f"{ALICE}/deposits", json={"amount": "25.50", "proof": "tx-9"}, headers=market.a)
    assert len(client.get("/v1/events", headers=market.a).json()["data"]) == 1


def test_events_page_newest_first(client, market):
    for i in range(5):
        client.post(f"{ALICE}/deposits", json={"amount": "1.00", "proof": f"tx-{i}"}, headers=market.a)
    first = client.get("/v1/events?limit=2", headers=market.a).json()
    second = client.get(f"/v1/events?limit=2&cursor={first['next_cursor']}", headers=market.a).json()
    third = client.get(f"/v1/events?limit=2&cursor={second['next_cursor']}", headers=market.a).json()
    ids = [e["data"]["transfer_id"] for page in (first, second, third) for e in page["data"]]
    assert ids == [f"dep:simulation:tx-{i}" for i in (4, 3, 2, 1, 0)]
    assert third["next_cursor"] is None


@pytest.mark.parametrize("query", ["cursor=%%%", "cursor=Zm9v", "limit=0", "limit=1001", "type=NOPE"])
def test_bad_event_queries_are_422(client, market, query):
    r = client.get(f"/v1/events?{query}", headers=market.a)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")


def test_failed_deliveries_are_listed_and_retried(make_client, market, db, clock):
    client = make_client(webhook_allow_http=True)
    ep = create(client, market, url="http://127.0.0.1:9/nobody").json()
    client.post(f"{ALICE}/deposits", json={"amount": "1.00", "proof": "tx-1"}, headers=market.a)
    d = Dispatcher(db, clock, retry_schedule=(), timeout_s=1.0, subjects=SUBJECTS)
    try:
        drain(d)
    finally:
        d.close()
    [dead] = client.get(f"/v1/webhook_endpoints/{ep['id']}/deliveries?status=failed", headers=market.a).json()["data"]
    assert (dead["status"], dead["attempts"], dead["next_attempt_at"]) == ("failed", 1, None)
    assert client.get(f"/v1/webhook_endpoints/{ep['id']}/deliveries?status=delivered",
                      headers=market.a).json()["data"] == []
    r = client.post(f"/v1/webhook_deliveries/{dead['id']}/retry", headers=market.a)
    assert r.status_code == 200 and r.json()["status"] == "pending" and r.json()["attempts"] == 0
    assert_problem(client.post(f"/v1/webhook_deliveries/{dead['id']}/retry", headers=market.a), 409,
                   "webhook_delivery_pending")
    assert_problem(client.post("/v1/webhook_deliveries/whd_nope/retry", headers=market.a), 404,
                   "webhook_delivery_not_found")
    assert_problem(client.get(f"/v1/webhook_endpoints/{ep['id']}/deliveries?cursor=Zm9v", headers=market.a), 422,
                   "invalid_cursor")


def test_creating_an_endpoint_is_idempotent(client, market):
    h = {**market.a, "Idempotency-Key": "ep-1"}
    a = client.post("/v1/webhook_endpoints", json={"url": HOOK}, headers=h)
    b = client.post("/v1/webhook_endpoints", json={"url": HOOK}, headers=h)
    assert a.status_code == b.status_code == 201 and a.json() == b.json()
    assert_problem(client.post("/v1/webhook_endpoints", json={"url": HOOK + "/2"}, headers=h), 409,
                   "idempotency_conflict")
    assert len(client.get("/v1/webhook_endpoints", headers=market.a).json()["data"]) == 1


@pytest.mark.parametrize("url", ["https://b\u00fccher.example/hook", "https://[::1]:8443/hook", "https://10.0.0.7/hook",
                                 "https://hooks.example.com./x"])
def test_unusual_but_valid_hosts_are_accepted(client, market, url):
    assert create(client, market, url=url).status_code == 201


def test_a_usage_event_is_read_by_its_id(client, market, db, clock):
    from meterline.events.outbox import emit

    with db.session() as s:
        eid = emit(s, market.id, "rental.usage", {"rental_id": "CTR-AB12"}, now_ns=clock.now_ns(),
                   event_id="evt_usage_CTR-AB12_29940420")
    r = client.get(f"/v1/events/{eid}", headers=market.a)
    assert r.status_code == 200 and r.json()["data"] == {"rental_id": "CTR-AB12"}
