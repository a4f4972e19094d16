"""/v1/price-book, /v1/providers/{id}/rates, /v1/quotes: access, shapes, exact figures, bad input."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.api.conftest import assert_problem

DEMO_BOOK = {
    "version": 1, "asset": "DGPU",
    "base_rates": {"nvidia_a100": "2.00", "nvidia_h100": "4.00", "nvidia_rtx_4090": "0.50"},
    "tier_rates": {"M2": {"asset": "SOL", "hourly": "0.001"}},
    "power_multiplier": "0.001", "platform_fee_percent": "5.0", "minimum_session_minutes": 1,
    "granularity": "second", "rounding": "half_up",
    "demand_curve": [["0", "1.0"], ["0.5", "1.0"], ["0.8", "1.25"], ["1.0", "1.5"]],
}


def _own_provider(client, market, key, provider_id="p-own", owner="prov-1"):
    r = client.post("/v1/providers", json={"id": provider_id, "name": provider_id, "owner_id": owner},
                    headers=market.a)
    assert r.status_code == 201, r.text
    return key(market, "provider", owner)


# -- access ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/price-book"), ("GET", "/v1/price-book/versions"), ("GET", "/v1/price-book/versions/1"),
    ("POST", "/v1/price-book"), ("POST", "/v1/quotes"), ("PUT", "/v1/providers/si64/rates/nvidia_a100"),
    ("GET", "/v1/providers/si64/rates"),
])
def test_every_route_needs_a_key(client, method, path):
    assert_problem(client.request(method, path, json={}), 401, "unauthenticated")


def test_publishing_needs_admin(client, market, key):
    body = {"platform_fee_percent": "6"}
    assert_problem(client.post("/v1/price-book", json=body, headers=market.r), 403, "forbidden")
    assert_problem(client.post("/v1/price-book", json=body, headers=market.w), 403, "forbidden")
    assert_problem(client.post("/v1/price-book", json=body, headers=key(market, "provider", "prov-1")),
                   403, "forbidden")


# -- price book --------------------------------------------------------------------------------
def test_current_book_shape(client, market):
    r = client.get("/v1/price-book", headers=market.r)
    assert r.status_code == 200, r.text
    assert r.json() == DEMO_BOOK


def test_publish_makes_a_new_version_and_keeps_the_old(client, market):
    r = client.post("/v1/price-book", headers=market.a, json={
        "base_rates": {"nvidia_h100": "4.50", "nvidia_a100": None}, "platform_fee_percent": 7.5,
        "tier_rates": {"M3": {"asset": "SOL", "hourly": "0.002"}},
    })
    assert r.status_code == 201, r.text
    book = r.json()
    assert book["version"] == 2
    assert book["base_rates"] == {"nvidia_h100": "4.50", "nvidia_rtx_4090": "0.50"}
    assert book["platform_fee_percent"] == "7.5"  # a JSON number, read exactly
    assert book["tier_rates"] == {"M2": {"asset": "SOL", "hourly": "0.001"}, "M3": {"asset": "SOL", "hourly": "0.002"}}
    assert client.get("/v1/price-book", headers=market.r).json() == book
    assert client.get("/v1/price-book/versions/1", headers=market.r).json() == DEMO_BOOK
    versions = client.get("/v1/price-book/versions", headers=market.r).json()["data"]
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[1]["created_by"] == "system:seed" and versions[0]["created_by"].startswith("key:")
    assert_problem(client.get("/v1/price-book/versions/3", headers=market.r), 404, "price_book_version_not_found")


def test_publish_with_idempotency_key_publishes_once(client, market):
    h = {**market.a, "Idempotency-Key": "pb-1"}
    first = client.post("/v1/price-book", json={"granularity": "minute"}, headers=h)
    again = client.post("/v1/price-book", json={"granularity": "minute"}, headers=h)
    assert first.status_code == again.status_code == 201 and again.json() == first.json()
    assert client.get("/v1/price-book", headers=market.r).json()["version"] == 2
    assert_problem(client.post("/v1/price-book", json={"granularity": "second"}, headers=h), 409,
                   "idempotency_conflict")


@pytest.mark.parametrize(("body", "field", "code"), [
    ({"platform_fee_percent": "150"}, "platform_fee_percent", "invalid_fee"),
    ({"base_rates": {"nvidia_h100": "-1"}}, "base_rates.nvidia_h100", "invalid_rate"),
    ({"power_multiplier": "0.0000000000000000001"}, "power_multiplier", "invalid_rate"),
    ({"tier_rates": {"M2": {"asset": "NOPE", "hourly": "1"}}}, "tier_rates.M2.asset", "asset_not_found"),
    ({"demand_curve": [["0.5", "1"], ["0.4", "2"]]}, "demand_curve.1.0", "invalid_curve"),
    ({"demand_curve": [["1.5", "1"]]}, "demand_curve.0.0", "invalid_curve"),
])
def test_publish_refuses_a_bad_book_with_field_errors(client, market, body, field, code):
    r = client.post("/v1/price-book", json=body, headers=market.a)
    problem = assert_problem(r, 422, "invalid_price_book")
    assert {"field": field, "code": code} in [{k: e[k] for k in ("field", "code")} for e in problem["errors"]]
    assert client.get("/v1/price-book", headers=market.r).json()["version"] == 1


@pytest.mark.parametrize("body", [
    {}, {"version": 3}, {"granularity": "hour"}, {"rounding": "nearest"}, {"minimum_session_minutes": -1},
    {"minimum_session_minutes": "5"}, {"power_multiplier": True}, {"base_rates": ["nvidia_h100"]},
    {"demand_curve": [["0", "1", "2"]]}, {"tier_rates": {"M2": {"hourly": "1"}}}, [1, 2], "book",
])
def test_publish_malformed_is_422_validation_error(client, market, body):
    assert_problem(client.post("/v1/price-book", json=body, headers=market.a), 422, "validation_error")


def test_version_path_must_be_a_positive_int(client, market):
    assert_problem(client.get("/v1/price-book/versions/0", headers=market.r), 422, "validation_error")
    assert_problem(client.get("/v1/price-book/versions/x", headers=market.r), 422, "validation_error")


# -- quotes (exact figures) ----------------------------------------------------------------------
def test_quote_a_fraction_of_a_gpu_model_for_two_hours(client, market):
    r = client.post("/v1/quotes", json={"gpu_model": "nvidia_rtx_4090", "vram_gb": 12, "hours": "2"},
                    headers=market.r)
    assert r.status_code == 200, r.text
    q = r.json()
    # 0.50/h × 12/24 GB, idle pool (×1), plus 450 W × 0.001/Wh estimated.
    assert (q["asset"], q["price_book_version"], q["hourly_rate"], q["estimated_power_w"]) == ("DGPU", 1, "0.25", 450)
    assert q["estimated_hourly_total"] == "0.700"
    assert [(i["name"], i["amount_per_hour"]) for i in q["line_items"]] == [
        ("gpu_time", "0.25"), ("demand", "0.00"), ("power", "0.450")]
    assert q["utilisation"] == "0" and q["device_id"] is None and q["vram_gb"] == 12
    assert q["estimate"] == {"hours": "2", "billable_seconds": 7200, "time_cost": "0.500000",
                             "power_cost": "0.900000", "total": "1.400000", "asset": "DGPU"}


def test_quote_a_tier_term(client, market):
    q = client.post("/v1/quotes", json={"tier": "M2", "hours": 1.5}, headers=market.r).json()
    assert (q["asset"], q["hourly_rate"], q["tier"]) == ("SOL", "0.001", "M2")
    assert q["estimate"] == {"hours": "1.5", "billable_seconds": 5400, "time_cost": "0.001500000",
                             "power_cost": "0.000000000", "total": "0.001500000", "asset": "SOL"}


def test_quote_applies_the_minimum_session(client, market):
    q = client.post("/v1/quotes", json={"gpu_model": "nvidia_a100", "watts": 0, "hours": "0.005"},
                    headers=market.r).json()  # 18 s, billed as the 1-minute minimum
    assert q["estimate"]["billable_seconds"] == 60
    assert q["estimate"]["time_cost"] == "0.033333"  # 2.00/h × 60 s = 0.0333…, half-up
    assert q["estimate"]["power_cost"] == "0.000000"


def test_device_quote_uses_the_providers_minimum(client, market):
    r = client.put("/v1/providers/demo-provider/rates/nvidia_h100", json={"min_hourly": "6.00"}, headers=market.a)
    assert r.status_code == 200, r.text
    assert r.json() == {"provider_id": "demo-provider", "gpu_model": "nvidia_h100", "asset": "DGPU",
                        "min_hourly": "6.00", "updated_at": "2023-11-14T22:13:20.000000Z"}
    q = client.post("/v1/quotes", json={"device_id": "gpu-h100-001", "watts": 500}, headers=market.r).json()
    assert q["hourly_rate"] == "6.00" and q["estimated_hourly_total"] == "6.500"
    assert [(i["name"], i["amount_per_hour"]) for i in q["line_items"]] == [
        ("gpu_time", "4"), ("demand", "0"), ("provider_minimum", "2.00"), ("power", "0.500")]
    # A model-level quote is before any provider's minimum.
    q = client.post("/v1/quotes", json={"gpu_model": "nvidia_h100"}, headers=market.r).json()
    assert q["hourly_rate"] == "4" and q["estimate"] is None


@pytest.mark.parametrize(("body", "status", "code"), [
    ({}, 422, "validation_error"),
    ({"gpu_model": "nvidia_a100", "tier": "M2"}, 422, "validation_error"),
    ({"tier": "M2", "watts": 10}, 422, "validation_error"),
    ({"gpu_model": "nvidia_a100", "vram_gb": 0}, 422, "validation_error"),
    ({"gpu_model": "nvidia_a100", "vram_gb": "8"}, 422, "validation_error"),
    ({"gpu_model": "nvidia_a100", "hours": "0"}, 422, "validation_error"),
    ({"gpu_model": "nvidia_a100", "hours": "0.0001"}, 422, "validation_error"),  # not whole seconds
    ({"gpu_model": "nvidia_a100", "hours": "NaN"}, 422, "validation_error"),
    ({"gpu_model": "nvidia_a100", "hours": True}, 422, "validation_error"),
    ({"gpu_model": "nvidia_a100", "hours": "1e9"}, 422, "validation_error"),
    ({"gpu_model": "nvidia_a100", "vram_gb": 81}, 422, "invalid_vram"),
    ({"device_id": "gpu-4090-001", "vram_gb": 25}, 422, "invalid_vram"),
    ({"device_id": "nope"}, 404, "device_not_found"),
    ({"gpu_model": "nvidia_b200"}, 404, "gpu_model_not_found"),
    ({"tier": "Z9"}, 404, "tier_not_found"),
])
def test_quote_bad_input(client, market, body, status, code):
    assert_problem(client.post("/v1/quotes", json=body, headers=market.r), status, code)


def test_quote_for_an_unpriced_model(client, market):
    client.post("/v1/price-book", json={"base_rates": {"nvidia_a100": None}}, headers=market.a)
    assert_problem(client.post("/v1/quotes", json={"gpu_model": "nvidia_a100"}, headers=market.r),
                   422, "gpu_model_not_priced")


# -- provider minimums: who may set them ------------------------------------------------------------
def test_a_provider_sets_and_reads_only_its_own_rates(client, market, other_market, key):
    mine = _own_provider(client, market, key)
    r = client.put("/v1/providers/p-own/rates/nvidia_a100", json={"min_hourly": 2.5}, headers=mine)
    assert r.status_code == 200, r.text
    assert r.json()["min_hourly"] == "2.5"
    rates = client.get("/v1/providers/p-own/rates", headers=mine).json()["data"]
    assert [(x["gpu_model"], x["min_hourly"]) for x in rates] == [("nvidia_a100", "2.5")]
    # Another provider's rates do not exist for this key.
    assert_problem(client.put("/v1/providers/demo-provider/rates/nvidia_a100", json={"min_hourly": "1"},
                              headers=mine), 404, "provider_not_found")
    assert_problem(client.get("/v1/providers/demo-provider/rates", headers=mine), 404, "provider_not_found")
    # A second provider principal does not see the first one's.
    theirs = _own_provider(client, market, key, "p-two", "prov-2")
    assert_problem(client.get("/v1/providers/p-own/rates", headers=theirs), 404, "provider_not_found")
    # Operators read them but may not set them; read-only keys may not set them either.
    assert client.get("/v1/providers/p-own/rates", headers=market.w).status_code == 200
    assert_problem(client.put("/v1/providers/p-own/rates/nvidia_a100", json={"min_hourly": "1"},
                              headers=market.w), 403, "forbidden")
    assert_problem(client.put("/v1/providers/p-own/rates/nvidia_a100", json={"min_hourly": "1"},
                              headers=key(market, "provider", "prov-1", ["ledger:read"])), 403, "forbidden")
    # Another tenant's admin: no such provider.
    assert_problem(client.put("/v1/providers/p-own/rates/nvidia_a100", json={"min_hourly": "1"},
                              headers=other_market.a), 404, "provider_not_found")


def test_rates_written_with_zeros_past_eighteen_places_keep_eighteen(client, market):
    """A JSON number 1.5000…0 of any length is exact and within 18 places; stored as written,
    it outgrew its column (a 500) and, in a published book, made every later quote and
    publish fail."""
    zeros = "0" * 80
    r = client.put("/v1/providers/si64/rates/nvidia_a100", content=f'{{"min_hourly": 1.5{zeros}}}',
                   headers={**market.a, "content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["min_hourly"] == "1.500000000000000000"
    r = client.post("/v1/price-book", content=f'{{"base_rates": {{"nvidia_a100": 2.0{zeros}}}}}',
                    headers={**market.a, "content-type": "application/json"})
    assert r.status_code == 201, r.text
    assert client.get("/v1/price-book", headers=market.r).json()["base_rates"]["nvidia_a100"] == \
        "2.000000000000000000"
    quote = client.post("/v1/quotes", json={"gpu_model": "nvidia_a100", "hours": "1"}, headers=market.r)
    assert quote.status_code == 200, quote.text


def test_a_floor_set_by_many_requests_at_once_never_fails(client, market):
    """One statement each: no request finds the row gone under it or meets another's insert."""
    def put(i: int) -> int:
        return client.put("/v1/providers/si64/rates/nvidia_h100", json={"min_hourly": f"{i}.5"},
                          headers=market.a).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(put, range(16))) == {200}
    rates = client.get("/v1/providers/si64/rates", headers=market.a).json()["data"]
    assert [x["gpu_model"] for x in rates].count("nvidia_h100") == 1


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/v1/providers/si64/rates/nvidia_a100", {"min_hourly": "-1"}, 422, "invalid_rate"),
    ("/v1/providers/si64/rates/nvidia_a100", {"min_hourly": "abc"}, 422, "invalid_rate"),
    ("/v1/providers/si64/rates/nvidia_a100", {"min_hourly": "0.1234567890123456789"}, 422, "invalid_rate"),
    ("/v1/providers/si64/rates/nvidia_a100", {"min_hourly": True}, 422, "validation_error"),
    ("/v1/providers/si64/rates/nvidia_a100", {}, 422, "validation_error"),
    ("/v1/providers/si64/rates/nvidia_a100", {"min_hourly": "1", "asset": "NOPE"}, 422, "invalid_price_book"),
    ("/v1/providers/si64/rates/nvidia_b200", {"min_hourly": "1"}, 404, "gpu_model_not_found"),
    ("/v1/providers/nobody/rates/nvidia_a100", {"min_hourly": "1"}, 404, "provider_not_found"),
])
def test_set_rate_bad_input(client, market, path, body, status, code):
    assert_problem(client.put(path, json=body, headers=market.a), status, code)
