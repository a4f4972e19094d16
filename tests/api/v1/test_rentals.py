"""/v1/rentals: a prepaid and a pay-as-you-go flow with exact figures, access, bad input."""

from __future__ import annotations

import pytest

from meterline.rentals import tasks as rental_tasks
from tests.api.conftest import assert_problem

T0 = "2023-11-14T22:13:20.000000Z"  # FrozenClock's start


def prepaid(wallet="W1", hours="2", proof="tx-1", amount="0.002", **extra):
    return {"style": "prepaid", "wallet": wallet, "tier": "M2", "duration_hours": hours,
            "payment": {"proof": proof, "amount": amount}, **extra}


def payg(customer="u1", **extra):
    return {"style": "payg", "customer_id": customer, "gpu_model": "nvidia_rtx_4090", **extra}


def fund(client, headers, customer="u1", amount="1.000000", proof="fund-1"):
    r = client.post(f"/v1/wallets/user/{customer}/DGPU/deposits", json={"amount": amount, "proof": proof},
                    headers=headers)
    assert r.status_code == 201, r.text


def rent(client, headers, body):
    r = client.post("/v1/rentals", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


# -- the prepaid flow ---------------------------------------------------------------------------
def test_prepaid_contract_from_rent_to_settlement(client, market, clock):
    c = rent(client, market.w, prepaid())
    rid = c["id"]
    assert c["id"].startswith("CTR-") and len(c["id"]) == 12
    assert {k: c[k] for k in ("style", "status", "customer_type", "customer_id", "provider_id", "device_id",
                              "tier", "asset", "hourly_rate", "price", "paid", "held", "cost_so_far",
                              "refund_available", "elapsed_s", "started_at", "expires_at", "settlement")} == {
        "style": "prepaid", "status": "ACTIVE", "customer_type": "wallet", "customer_id": "W1",
        "provider_id": "si64", "device_id": "device-m2-001", "tier": "M2", "asset": "SOL",
        "hourly_rate": "0.001000000000", "price": "0.002000000", "paid": "0.002000000", "held": "0.002000000",
        "cost_so_far": "0.000000000", "refund_available": "0.002000000", "elapsed_s": 0,
        "started_at": T0, "expires_at": "2023-11-15T00:13:20.000000Z", "settlement": None,
    }
    assert c["quote"]["tier"] == "M2" and c["quote"]["hourly_rate"] == "0.001"

    clock.advance(1800)
    r = client.get(f"/v1/rentals/{rid}", headers=market.w).json()
    # 0.001 SOL/h for 30 minutes: 500 000 lamports, exactly.
    assert (r["cost_so_far"], r["refund_available"], r["elapsed_s"]) == ("0.000500000", "0.001500000", 1800)

    # Samples: one, then a batch. M2 is all-in (no power rate), so they don't change the cost.
    one = client.post(f"/v1/rentals/{rid}/samples", json={"power_w": 30, "cpu_percent": "12.5"}, headers=market.w)
    assert one.status_code == 201, one.text
    assert one.json() == {"rental_id": rid, "accepted": 1, "sample_count": 1, "accrual": {
        "held": "0.002000000", "cost_so_far": "0.000500000", "refund_available": "0.001500000",
        "elapsed_s": 1800, "as_of": "2023-11-14T22:43:20.000000Z"}}
    batch = client.post(f"/v1/rentals/{rid}/samples", json={"samples": [{"gpu_util_percent": 97},
                                                                       {"memory_mb": 4096.5}]}, headers=market.w)
    assert batch.json()["accepted"] == 2 and batch.json()["sample_count"] == 3
    samples = client.get(f"/v1/rentals/{rid}/samples", headers=market.w).json()["data"]
    assert len(samples) == 3
    assert {"ts": "2023-11-14T22:43:20.000000Z", "power_w": "30.000",
            "values": {"power_w": "30", "cpu_percent": "12.5"}} in samples

    # Extend by an hour without a payment: the simulation rail funds it, labelled as such.
    r = client.post(f"/v1/rentals/{rid}/extend", json={"hours": "1"}, headers=market.w)
    assert r.status_code == 200, r.text
    ext = r.json()
    assert (ext["added_seconds"], ext["added"], ext["held"], ext["expires_at"]) == (
        3600, "0.001000000", "0.003000000", "2023-11-15T01:13:20.000000Z")
    wallet = client.get("/v1/wallets/wallet/W1/SOL", headers=market.w).json()
    assert (wallet["posted"], wallet["pending"], wallet["available"]) == ("0.003000000", "0.003000000", "0.000000000")

    # Settle after 30 minutes: 5% fee, the provider gets the rest, the unused 2.5 hours go back.
    r = client.post(f"/v1/rentals/{rid}/settle", headers=market.w)
    assert r.status_code == 200, r.text
    s = r.json()
    assert (s["status"], s["end_reason"], s["ended_at"], s["settled_at"]) == (
        "SETTLED", "ended", "2023-11-14T22:43:20.000000Z", "2023-11-14T22:43:20.000000Z")
    # (`unpaid` is null: a prepaid contract is never billed past its prepaid price.)
    assert s["settlement"] == {"used": "0.000500000", "unpaid": None, "refund": "0.002500000",
                               "provider_share": "0.000475000", "platform_fee": "0.000025000",
                               "refund_tx": "SIMULATION_MODE"}
    assert (s["cost_so_far"], s["refund_available"]) == ("0.000500000", "0.002500000")
    wallet = client.get("/v1/wallets/wallet/W1/SOL", headers=market.w).json()
    assert (wallet["posted"], wallet["pending"]) == ("0.000000000", "0.000000000")

    # Exactly once; nothing more can happen to it.
    assert_problem(client.post(f"/v1/rentals/{rid}/settle", headers=market.w), 409, "contract_already_settled")
    assert_problem(client.post(f"/v1/rentals/{rid}/samples", json={"power_w": 1}, headers=market.w),
                   409, "contract_already_settled")
    assert_problem(client.post(f"/v1/rentals/{rid}/extend", json={"hours": "1"}, headers=market.w),
                   409, "contract_already_settled")

    totals = client.get("/v1/rentals/totals", headers=market.w).json()
    assert totals["data"] == [{"asset": "SOL", "active_count": 0, "active_held": "0.000000000",
                               "active_used": "0.000000000", "active_refundable": "0.000000000",
                               "settled_count": 1, "settled_used": "0.000500000",
                               "settled_refunded": "0.002500000", "platform_fees": "0.000025000"}]


def test_prepaid_payment_rules(client, market):
    assert_problem(client.post("/v1/rentals", json=prepaid(amount="0.001"), headers=market.w),
                   402, "insufficient_payment")
    rent(client, market.w, prepaid())
    assert_problem(client.post("/v1/rentals", json=prepaid(wallet="W2"), headers=market.w), 409,
                   "payment_proof_reused")
    # Paying more than the price: the rest stays in the wallet. Default amount: exactly the price.
    over = rent(client, market.w, prepaid(wallet="W3", proof="tx-3", amount="0.005"))
    # The whole payment is held; billing stops at the price, so the surplus returns with the refund.
    assert (over["price"], over["paid"], over["held"]) == ("0.002000000", "0.005000000", "0.005000000")
    exact = rent(client, market.w, prepaid(wallet="W4", proof="tx-4", amount=None, hours=1.5))
    assert (exact["price"], exact["paid"]) == ("0.001500000", "0.001500000")


def test_rent_with_idempotency_key_rents_once(client, market):
    h = {**market.w, "Idempotency-Key": "rent-1"}
    first = client.post("/v1/rentals", json=prepaid(), headers=h)
    again = client.post("/v1/rentals", json=prepaid(), headers=h)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert len(client.get("/v1/rentals", headers=market.w).json()["data"]) == 1


def test_extend_with_a_payment_proof(client, market):
    rid = rent(client, market.w, prepaid())["id"]
    r = client.post(f"/v1/rentals/{rid}/extend", json={"hours": "0.5", "payment": {"proof": "tx-ext"}},
                    headers=market.w)
    assert r.status_code == 200, r.text
    assert (r.json()["added"], r.json()["held"]) == ("0.000500000", "0.002500000")
    assert_problem(client.post(f"/v1/rentals/{rid}/extend", json={"hours": "0.5", "payment": {"proof": "tx-ext"}},
                               headers=market.w), 409, "payment_proof_reused")


def test_an_expired_contract_cannot_be_extended_and_settles_at_expiry(client, market, clock):
    rid = rent(client, market.w, prepaid(hours="1", amount="0.001"))["id"]
    clock.advance(2 * 3600)
    assert client.get(f"/v1/rentals/{rid}", headers=market.w).json()["cost_so_far"] == "0.001000000"
    assert_problem(client.post(f"/v1/rentals/{rid}/extend", json={"hours": "1"}, headers=market.w),
                   409, "contract_expired")
    s = client.post(f"/v1/rentals/{rid}/settle", headers=market.w).json()
    assert (s["status"], s["end_reason"], s["settlement"]["used"], s["settlement"]["refund"]) == (
        "SETTLED", "expired", "0.001000000", "0.000000000")


# -- the pay-as-you-go flow ---------------------------------------------------------------------
def test_payg_session_meters_time_and_power(client, market, clock):
    fund(client, market.w)
    s = rent(client, market.w, payg())
    rid = s["id"]
    assert {k: s[k] for k in ("style", "status", "customer_type", "customer_id", "device_id", "gpu_model",
                              "vram_gb", "asset", "hourly_rate", "held", "price", "paid", "expires_at")} == {
        "style": "payg", "status": "ACTIVE", "customer_type": "user", "customer_id": "u1",
        "device_id": "gpu-4090-001", "gpu_model": "nvidia_rtx_4090", "vram_gb": 24, "asset": "DGPU",
        "hourly_rate": "0.500000000",
        # One 5-minute slice ahead: 0.5/h × 300 s, rounded up. No power is metered yet, so the
        # quote's estimated 450 W is not held (power is held as it is metered).
        "held": "0.041667", "price": None, "paid": None, "expires_at": None,
    }
    assert s["quote"]["estimated_power_w"] == 450
    wallet = client.get("/v1/wallets/user/u1/DGPU", headers=market.w).json()
    assert (wallet["posted"], wallet["pending"], wallet["available"]) == ("1.000000", "0.041667", "0.958333")

    # 300 W at the start and 300 W after two minutes: 10 Wh of metered energy.
    assert client.post(f"/v1/rentals/{rid}/samples", json={"power_w": 300}, headers=market.w).status_code == 201
    clock.advance(120)
    r = client.post(f"/v1/rentals/{rid}/samples", json={"power_w": "300"}, headers=market.w).json()
    # time 0.5/h × 120 s = 0.0166666…, power 10 Wh × 0.001 = 0.01 → 0.026667 (half-up, once)
    assert r["accrual"] == {"held": "0.041667", "cost_so_far": "0.026667", "refund_available": "0.015000",
                            "elapsed_s": 120, "as_of": "2023-11-14T22:15:20.000000Z"}
    got = client.get(f"/v1/rentals/{rid}", headers=market.w).json()
    assert (got["cost_so_far"], got["sample_count"]) == ("0.026667", 2)
    totals = client.get("/v1/rentals/totals", headers=market.w).json()["data"]
    assert totals == [{"asset": "DGPU", "active_count": 1, "active_held": "0.041667", "active_used": "0.026667",
                       "active_refundable": "0.015000", "settled_count": 0, "settled_used": "0.000000",
                       "settled_refunded": "0.000000", "platform_fees": "0.000000"}]

    assert_problem(client.post(f"/v1/rentals/{rid}/extend", json={"hours": "1"}, headers=market.w),
                   409, "contract_not_active")

    settled = client.post(f"/v1/rentals/{rid}/settle", json={}, headers=market.w).json()
    # 26 667 split 95/5 by largest remainder: 25 333.65 / 1 333.35 → the leftover unit to the provider.
    assert settled["settlement"] == {"used": "0.026667", "unpaid": "0.000000", "refund": "0.015000",
                                     "provider_share": "0.025334", "platform_fee": "0.001333", "refund_tx": None}
    assert (settled["status"], settled["end_reason"]) == ("SETTLED", "ended")
    wallet = client.get("/v1/wallets/user/u1/DGPU", headers=market.w).json()
    assert (wallet["posted"], wallet["pending"], wallet["available"]) == ("0.973333", "0.000000", "0.973333")


def test_payg_cover_is_renewed_by_the_worker(client, market, clock, db):
    fund(client, market.w)
    rid = rent(client, market.w, payg(device_id="gpu-4090-002", gpu_model=None, vram_gb=12, watts=0))["id"]
    held = client.get(f"/v1/rentals/{rid}", headers=market.w).json()["held"]
    assert held == "0.020834"  # 0.25/h × 300 s = 0.0208333…, rounded up to cover the slice
    clock.advance(200)  # less than two minutes of cover left
    assert rental_tasks.renew_cover(db, clock) >= 1
    r = client.get(f"/v1/rentals/{rid}", headers=market.w).json()
    assert (r["held"], r["cost_so_far"]) == ("0.041668", "0.013889")


def test_payg_needs_a_funded_wallet_and_free_vram(client, market):
    assert_problem(client.post("/v1/rentals", json=payg("u2"), headers=market.w), 402, "insufficient_funds")
    fund(client, market.w)
    assert_problem(client.post("/v1/rentals", json=payg(vram_gb=25), headers=market.w), 409, "no_device_available")
    assert_problem(client.post("/v1/rentals", json=payg(gpu_model="nvidia_b200"), headers=market.w),
                   409, "no_device_available")
    assert_problem(client.post("/v1/rentals", json=payg(gpu_model=None, device_id="nope"), headers=market.w),
                   404, "device_not_found")


# -- listing ------------------------------------------------------------------------------------
def test_list_filters_and_cursor(client, market, key):
    fund(client, market.w, customer="W1")
    ids = {rent(client, market.w, prepaid(proof="a"))["id"],
           rent(client, market.w, prepaid(wallet="W2", proof="b"))["id"],
           rent(client, market.w, payg("W1"))["id"]}
    seen, cursor = [], None
    while True:
        page = client.get("/v1/rentals", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                          headers=market.w).json()
        seen += [r["id"] for r in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == seen and set(seen) == ids
    # One customer id across both styles (its prepaid wallet and its payg user), paged the same way.
    w1 = client.get("/v1/rentals", params={"customer": "W1", "limit": 1}, headers=market.w).json()
    assert len(w1["data"]) == 1 and w1["next_cursor"]
    rest = client.get("/v1/rentals", params={"customer": "W1", "cursor": w1["next_cursor"]}, headers=market.w).json()
    assert {r["customer_type"] for r in w1["data"] + rest["data"]} == {"wallet", "user"}
    assert rest["next_cursor"] is None
    assert client.get("/v1/rentals", params={"status": "SETTLED"}, headers=market.w).json()["data"] == []
    # A customer key lists only its own, whatever it asks for.
    mine = client.get("/v1/rentals", headers=key(market, "customer", "W2")).json()["data"]
    assert [r["customer_id"] for r in mine] == ["W2"]
    assert client.get("/v1/rentals", params={"customer": "W1"},
                      headers=key(market, "customer", "W2")).json()["data"] == []


# -- access ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/rentals"), ("POST", "/v1/rentals"), ("GET", "/v1/rentals/totals"), ("GET", "/v1/rentals/CTR-1"),
    ("POST", "/v1/rentals/CTR-1/samples"), ("GET", "/v1/rentals/CTR-1/samples"),
    ("POST", "/v1/rentals/CTR-1/extend"), ("POST", "/v1/rentals/CTR-1/settle"),
])
def test_every_route_needs_a_key(client, method, path):
    assert_problem(client.request(method, path, json={}), 401, "unauthenticated")


def test_a_customer_only_sees_and_acts_on_its_own_rentals(client, market, other_market, key):
    w1, w2 = key(market, "customer", "W1"), key(market, "customer", "W2")
    mine = rent(client, w1, prepaid())["id"]
    theirs = rent(client, market.w, prepaid(wallet="W2", proof="tx-2"))["id"]
    assert client.get(f"/v1/rentals/{mine}", headers=w1).status_code == 200
    assert client.get(f"/v1/rentals/{theirs}", headers=w2).status_code == 200
    for method, suffix, body in [("GET", "", None), ("GET", "/samples", None),
                                 ("POST", "/samples", {"power_w": 1}), ("POST", "/extend", {"hours": "1"}),
                                 ("POST", "/settle", None)]:
        r = client.request(method, f"/v1/rentals/{theirs}{suffix}", json=body, headers=w1)
        assert_problem(r, 404, "contract_not_found")
        # Another tenant's staff don't see it either.
        r = client.request(method, f"/v1/rentals/{theirs}{suffix}", json=body, headers=other_market.a)
        assert_problem(r, 404, "contract_not_found")
    assert_problem(client.post("/v1/rentals", json=prepaid(wallet="W2", proof="tx-9"), headers=w1),
                   403, "forbidden")
    assert_problem(client.post("/v1/rentals", json=payg("W2"), headers=w1), 403, "forbidden")
    assert_problem(client.get("/v1/rentals/totals", headers=w1), 403, "forbidden")
    # A read-only key can read its own but not rent; a key without an id sees nothing.
    ro = key(market, "customer", "W1", ["ledger:read"])
    assert client.get(f"/v1/rentals/{mine}", headers=ro).status_code == 200
    assert_problem(client.post("/v1/rentals", json=prepaid(proof="tx-ro"), headers=ro), 403, "forbidden")
    assert_problem(client.get(f"/v1/rentals/{mine}", headers=market.r), 404, "contract_not_found")
    assert client.get("/v1/rentals", headers=market.r).json() == {"data": [], "next_cursor": None}
    # A provider or device key carrying the customer's id is another principal: it lists nothing.
    for kind in ("provider", "device"):
        other = key(market, kind, "W1")
        for params in ({}, {"customer": "W1"}):
            assert client.get("/v1/rentals", params=params, headers=other).json()["data"] == [], (kind, params)
    # The theirs rental is untouched.
    assert client.get(f"/v1/rentals/{theirs}", headers=market.w).json()["status"] == "ACTIVE"


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "status", "code"), [
    ({"style": "spot"}, 422, "validation_error"),
    ({"wallet": "W1"}, 422, "validation_error"),
    (prepaid(payment=None), 422, "validation_error"),
    (prepaid(hours="0"), 422, "validation_error"),
    (prepaid(hours="-1"), 422, "validation_error"),
    (prepaid(hours="0.0001"), 422, "validation_error"),
    (prepaid(hours=True), 422, "validation_error"),
    (prepaid(amount="0.0000000001"), 422, "amount_precision"),
    (prepaid(amount="abc"), 422, "invalid_amount"),
    (prepaid(wallet="has space"), 422, "validation_error"),
    (prepaid(tier="Z9"), 404, "tier_not_found"),
    (prepaid(extra=1), 422, "validation_error"),
    ({**prepaid(), "payment": {"proof": "p", "rail": "venmo"}}, 422, "unknown_rail"),
    (payg(gpu_model=None), 422, "validation_error"),
    (payg(vram_gb=0), 422, "validation_error"),
    (payg(watts=-1), 422, "validation_error"),
    (payg(vram_gb="12"), 422, "validation_error"),
    ([prepaid()], 422, "validation_error"),
])
def test_create_bad_input(client, market, body, status, code):
    fund(client, market.w)
    assert_problem(client.post("/v1/rentals", json=body, headers=market.w), status, code)


@pytest.mark.parametrize(("body", "status", "code"), [
    ({}, 422, "validation_error"),
    ({"temperature_c": 50}, 422, "validation_error"),
    ({"cpu_percent": 101}, 422, "invalid_rental_request"),
    ({"power_w": -1}, 422, "invalid_rental_request"),
    ({"power_w": "NaN"}, 422, "invalid_rental_request"),
    ({"power_w": True}, 422, "validation_error"),
    ({"samples": []}, 422, "validation_error"),
    ({"samples": [{"power_w": 1}, {"bogus": 1}]}, 422, "validation_error"),
    ({"samples": [{"power_w": 1}] * 1001}, 413, "batch_too_large"),
    ("power", 422, "validation_error"),
])
def test_samples_bad_input_stores_nothing(client, market, body, status, code):
    rid = rent(client, market.w, prepaid())["id"]
    assert_problem(client.post(f"/v1/rentals/{rid}/samples", json=body, headers=market.w), status, code)
    assert client.get(f"/v1/rentals/{rid}", headers=market.w).json()["sample_count"] == 0


def test_too_many_samples_is_titled_for_samples(client, market):
    rid = rent(client, market.w, prepaid())["id"]
    r = client.post(f"/v1/rentals/{rid}/samples", json={"samples": [{"power_w": 1}] * 1001}, headers=market.w)
    problem = assert_problem(r, 413, "batch_too_large")
    assert (problem["title"], problem["detail"]) == ("The batch has too many samples",
                                                     "a batch holds at most 1000 samples")


@pytest.mark.parametrize(("suffix", "raw", "field"), [
    ("/samples", '{"power_w":1,"power_w":900}', "power_w"),
    ("/samples", '{"samples":[{"power_w":1},{"gpu_util_percent":5,"power_w":1,"power_w":900}]}', "samples.1.power_w"),
    ("/extend", '{"hours":"1","hours":"100"}', "hours"),
    ("/extend", '{"hours":"1","payment":{"proof":"p","proof":"q"}}', "payment.proof"),
    ("/settle", '{"a":1,"a":2}', "a"),
])
def test_a_key_given_twice_is_refused(client, market, suffix, raw, field):
    rid = rent(client, market.w, prepaid())["id"]
    r = client.post(f"/v1/rentals/{rid}{suffix}", content=raw, headers={**market.w, "content-type": "application/json"})
    problem = assert_problem(r, 422, "validation_error")
    assert [(e["field"], e["code"]) for e in problem["errors"]] == [(field, "duplicate_key")]
    after = client.get(f"/v1/rentals/{rid}", headers=market.w).json()
    assert (after["status"], after["sample_count"], after["held"]) == ("ACTIVE", 0, "0.002000000")


def test_other_bad_input(client, market):
    rid = rent(client, market.w, prepaid())["id"]
    for params in ({"status": "DONE"}, {"limit": 0}, {"customer": "a b"}):
        assert_problem(client.get("/v1/rentals", params=params, headers=market.w), 422, "validation_error")
    assert_problem(client.get("/v1/rentals", params={"cursor": "_w"}, headers=market.w), 422, "invalid_cursor")
    assert_problem(client.get("/v1/rentals/CTR-NOPE", headers=market.w), 404, "contract_not_found")
    assert_problem(client.get("/v1/rentals/" + "x" * 33, headers=market.w), 422, "validation_error")
    assert_problem(client.get(f"/v1/rentals/{rid}/samples", params={"limit": 1001}, headers=market.w),
                   422, "validation_error")
    for body in ({}, {"hours": "0"}, {"hours": "1", "payment": {"amount": "1"}}, {"hours": "1", "x": 1}):
        assert_problem(client.post(f"/v1/rentals/{rid}/extend", json=body, headers=market.w), 422, "validation_error")
    assert_problem(client.post(f"/v1/rentals/{rid}/settle", json={"now": True}, headers=market.w),
                   422, "validation_error")
    assert_problem(client.post(f"/v1/rentals/{rid}/settle", content=b"{oops", headers=market.w),
                   422, "validation_error")
    assert client.get(f"/v1/rentals/{rid}", headers=market.w).json()["status"] == "ACTIVE"
