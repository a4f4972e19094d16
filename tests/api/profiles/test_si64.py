"""The SI64 profile (seeds/000) over HTTP: the seed's requests, its response shapes, exact figures.

The demo price book rents tier M2 at 0.001 SOL/h (1,000,000 lamports / 3600 s), bills at
least one minute at settlement and takes a 5 % platform fee. Figures below are derived
from that, with a FrozenClock moved between calls:
    15 s → 4166.67 → 4167 lamports;   30 s → 8333.33 → 8333;   60 s (minimum) → 16667.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, event, insert

from meterline.api.profiles import si64
from meterline.api.profiles.si64_schemas import ContractStatus, MetricsResponse
from meterline.catalog.service import catalog_service
from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.identity.service import identity_service
from meterline.ledger.verify import verify_ledger
from meterline.money import to_major
from meterline.pricing.service import pricing_service
from meterline.rentals.models import Rental
from tests.api.conftest import ApiTenant, MakeClient, assert_problem, create_tenant

WALLET = "5mEvgLUE2MvNTSr9mGRo6zvL2M2Jng132sDCP4411FHZ"
CTR = re.compile(r"^CTR-[A-Z0-9]{8}$")
METRICS = {"cpu_percent": 45.5, "memory_mb": 3500, "disk_io_mbps": 25.1, "network_io_mbps": 5.3}


def D(text: str) -> Decimal:
    return Decimal(text)


def body(r: Any) -> Any:
    """The response parsed the way an exact client parses it: numbers as Decimal."""
    assert r.headers["content-type"].startswith("application/json"), (r.status_code, r.text)
    return json.loads(r.content, parse_float=Decimal)


def seed_si64(db: Database, clock: FrozenClock, tenant_id: str) -> ApiTenant:
    t = create_tenant(db, clock, tenant_id)
    with db.session() as s:
        catalog_service.seed_demo(s, tenant_id, clock.now_ns())
        pricing_service.seed_demo(s, tenant_id, clock.now_ns())
    return t


@pytest.fixture
def t(db: Database, clock: FrozenClock, tenant_id: str) -> ApiTenant:
    return seed_si64(db, clock, tenant_id)


@pytest.fixture
def other(db: Database, clock: FrozenClock, tenant_id: str) -> ApiTenant:
    return seed_si64(db, clock, f"{tenant_id}-b")


def rent(client: TestClient, t: ApiTenant, *, sig: str = "test_tx_sig_12345", hours: Any = 1,
         amount: Any = 0.001, **extra: Any) -> Any:
    payload = {"wallet": WALLET, "tier": "M2", "duration_hours": hours, "tx_signature": sig, "amount": amount,
               **extra}
    return client.post("/api/rent", json=payload, headers=t.w)


def rent_id(client: TestClient, t: ApiTenant, **kw: Any) -> str:
    r = rent(client, t, **kw)
    assert r.status_code == 200, r.text
    return str(r.json()["contract_id"])


# -- the seed's calls 1-7, in order ------------------------------------------------------------


def test_seed_calls_in_order_with_exact_figures(client: TestClient, t: ApiTenant, clock: FrozenClock, db: Database):
    t0 = clock.now_ns() // 10**9

    # Test 1: create
    r = rent(client, t)
    assert r.status_code == 200, r.text
    created = body(r)
    cid = created["contract_id"]
    assert CTR.match(cid)
    assert {k: created[k] for k in ("status", "cost_sol", "tier", "duration_hours")} == {
        "status": "ACTIVE", "cost_sol": D("0.001"), "tier": "M2", "duration_hours": 1}
    assert created["expires_at"] == t0 + 3600 and created["device_id"] == "device-m2-001"

    # Test 2: status, nothing used yet
    status = body(client.get(f"/api/contracts/{cid}", headers=t.r))
    assert status == {
        "contract_id": cid, "wallet": WALLET, "tier": "M2", "status": "ACTIVE", "prepaid_sol": D("0.001"),
        "used_sol": 0, "refund_available": D("0.001"), "duration_hours": 1, "elapsed_hours": 0,
        "remaining_seconds": 3600, "created_at": t0, "expires_at": t0 + 3600,
        "device_id": "device-m2-001", "asset": "SOL", "settled_at": None, "refund_sol": None, "tx_signature": None,
    }

    # Test 3: metrics after 15 s (0.0042 h)
    clock.advance(15)
    m = body(client.post(f"/api/metrics/{cid}", json=METRICS, headers=t.w))
    assert {k: m[k] for k in ("contract_id", "metrics_recorded", "elapsed_hours", "cost_so_far",
                              "refund_available")} == {
        "contract_id": cid, "metrics_recorded": True, "elapsed_hours": D("0.0042"),
        "cost_so_far": D("0.000004167"), "refund_available": D("0.000995833")}
    clock.advance(15)
    m = body(client.post(f"/api/metrics/{cid}", json=METRICS, headers=t.w))
    assert (m["elapsed_hours"], m["cost_so_far"], m["refund_available"]) == (
        D("0.0083"), D("0.000008333"), D("0.000991667"))
    assert m["samples"] == 2 and m["remaining_seconds"] == 3570

    # Test 4: extend by an hour
    ext = body(client.post(f"/api/contracts/{cid}/extend", json={"additional_hours": 1}, headers=t.w))
    assert {k: ext[k] for k in ("contract_id", "extended_hours", "additional_cost_sol", "new_total_cost",
                                "new_expiration")} == {
        "contract_id": cid, "extended_hours": 1, "additional_cost_sol": D("0.001"),
        "new_total_cost": D("0.002"), "new_expiration": t0 + 7200}

    # Test 5: devices of M2 — the seed's first item field for field
    devices = body(client.get("/api/devices/M2", headers=t.r))
    assert [d["id"] for d in devices] == [f"device-m2-00{i}" for i in range(1, 5)]
    first = {k: v for k, v in devices[0].items() if k not in ("status", "tier")}
    assert first == {"id": "device-m2-001", "name": "M2-DEV-01", "uri": "node001.si64.network",
                     "address": "192.168.1.101", "region": "West Coast", "ram": "8GB", "leases": 1,
                     "uptime": "99.8%", "audited": True}
    assert [d["leases"] for d in devices] == [1, 0, 0, 0]

    # Test 6: the billing ledger
    ledger = body(client.get("/api/billing/ledger", headers=t.r))
    assert ledger["active_contracts"] == [{
        "contract_id": cid, "wallet": WALLET, "tier": "M2", "prepaid": D("0.002"), "used": D("0.000008333"),
        "refund": D("0.001991667"), "status": "ACTIVE", "created_at": t0, "expires_at": t0 + 7200,
        "asset": "SOL"}]
    assert ledger["completed_settlements"] == []
    assert (ledger["total_active_value"], ledger["total_used"], ledger["total_pending_refunds"]) == (
        D("0.002"), D("0.000008333"), D("0.001991667"))
    assert ledger["next_cursor"] is None

    # Test 7: settle (30 s used; the book bills at least one minute)
    s = body(client.post(f"/api/contracts/{cid}/settle", headers=t.w))
    assert {k: s[k] for k in ("contract_id", "status", "prepaid_sol", "used_sol", "refund_sol",
                              "tx_signature")} == {
        "contract_id": cid, "status": "SETTLED", "prepaid_sol": D("0.002"), "used_sol": D("0.000016667"),
        "refund_sol": D("0.001983333"), "tx_signature": "SIMULATION_MODE"}
    assert (s["fee_sol"], s["provider_sol"]) == (D("0.000000833"), D("0.000015834"))  # 5 %, largest remainder
    assert s["prepaid_sol"] == s["used_sol"] + s["refund_sol"]

    after = body(client.get("/api/billing/ledger", headers=t.r))
    assert after["active_contracts"] == []
    [done] = after["completed_settlements"]
    assert (done["contract_id"], done["used"], done["refund"], done["tx_signature"]) == (
        cid, D("0.000016667"), D("0.001983333"), "SIMULATION_MODE")
    assert (after["total_active_value"], after["total_used"], after["total_pending_refunds"]) == (
        0, D("0.000016667"), 0)

    stats = body(client.get("/api/stats", headers=t.r))
    assert {k: stats[k] for k in ("active_contracts", "settled_contracts", "total_revenue", "platform_fees",
                                  "provider_earnings", "total_refunded", "total_pending_refunds")} == {
        "active_contracts": 0, "settled_contracts": 1, "total_revenue": D("0.000016667"),
        "platform_fees": D("0.000000833"), "provider_earnings": D("0.000015834"),
        "total_refunded": D("0.001983333"), "total_pending_refunds": 0}

    settled = body(client.get(f"/api/contracts/{cid}", headers=t.r))
    assert (settled["status"], settled["used_sol"], settled["refund_sol"], settled["remaining_seconds"]) == (
        "SETTLED", D("0.000016667"), D("0.001983333"), 0)
    report = verify_ledger(db, t.id)
    assert report.ok, report.problems


def test_outside_dev_mode_the_seeds_simulated_payment_is_refused(make_client: MakeClient, t: ApiTenant,
                                                                 db: Database):
    """`tx_signature` is only a claim on the simulation rail: a production server takes none."""
    off = make_client(simulation=None)
    assert_problem(rent(off, t), 422, "rail_disabled")
    with db.session(write=False) as s:
        assert s.query(Rental).filter(Rental.tenant_id == t.id).count() == 0  # nothing was written
    assert rent(make_client(simulation=True), t).status_code == 200


def test_simulation_script_shape_short_contract(client: TestClient, t: ApiTenant, clock: FrozenClock):
    """The seed's lifecycle script: 0.1 h for 0.0001 SOL, six samples 5 s apart, then settle."""
    cid = rent_id(client, t, sig="test_sig", hours=0.1, amount=0.0001)
    for i in range(6):
        m = body(client.post(f"/api/metrics/{cid}", json={"cpu_percent": 45 + i * 5, "memory_mb": 3500 + i * 100,
                                                          "disk_io_mbps": 25, "network_io_mbps": 5}, headers=t.w))
        assert m["cost_so_far"] + m["refund_available"] == D("0.0001")
        clock.advance(5)
    status = body(client.get(f"/api/contracts/{cid}", headers=t.r))
    assert (status["prepaid_sol"], status["used_sol"], status["refund_available"]) == (
        D("0.0001"), D("0.000008333"), D("0.000091667"))
    assert status["duration_hours"] == D("0.1") and status["remaining_seconds"] == 330
    s = body(client.post(f"/api/contracts/{cid}/settle", headers=t.w))
    assert (s["used_sol"], s["refund_sol"], s["tx_signature"]) == (D("0.000016667"), D("0.000083333"),
                                                                    "SIMULATION_MODE")


def test_expired_contract_caps_cost_and_settles_in_full(client: TestClient, t: ApiTenant, clock: FrozenClock):
    cid = rent_id(client, t, hours=0.1, amount=0.0001, sig="short")
    clock.advance(3600)
    status = body(client.get(f"/api/contracts/{cid}", headers=t.r))
    assert (status["status"], status["used_sol"], status["refund_available"], status["remaining_seconds"]) == (
        "EXPIRED", D("0.0001"), 0, 0)
    assert_problem(client.post(f"/api/metrics/{cid}", json=METRICS, headers=t.w), 409, "contract_expired")
    assert_problem(client.post(f"/api/contracts/{cid}/extend", json={"additional_hours": 1}, headers=t.w),
                   409, "contract_expired")
    s = body(client.post(f"/api/contracts/{cid}/settle", headers=t.w))
    assert (s["used_sol"], s["refund_sol"], s["tx_signature"], s["end_reason"]) == (
        D("0.0001"), 0, None, "expired")


def test_overpayment_and_string_amounts_are_exact(client: TestClient, t: ApiTenant):
    r = body(rent(client, t, amount="0.0015", sig="over"))
    assert (r["cost_sol"], r["paid_sol"]) == (D("0.001"), D("0.0015"))
    # the smallest unit round-trips exactly: 1 lamport more than the price
    raw = json.dumps({"wallet": WALLET, "tier": "M2", "duration_hours": 1, "tx_signature": "lamport"})
    raw = raw[:-1] + ', "amount": 0.001000001}'  # written as the exact JSON number
    r = body(client.post("/api/rent", content=raw, headers={**t.w, "Content-Type": "application/json"}))
    assert r["paid_sol"] == D("0.001000001")
    # no amount: the price is taken as paid
    r = body(rent(client, t, amount=None, sig="no-amount"))
    assert r["paid_sol"] == D("0.001")


def test_extend_with_a_payment_proof(client: TestClient, t: ApiTenant, clock: FrozenClock):
    cid = rent_id(client, t)
    r = client.post(f"/api/contracts/{cid}/extend", json={"additional_hours": 0.5, "tx_signature": "ext-1",
                                                          "amount": 0.0005}, headers=t.w)
    ext = body(r)
    assert (ext["extended_hours"], ext["additional_cost_sol"], ext["new_total_cost"], ext["duration_hours"]) == (
        D("0.5"), D("0.0005"), D("0.0015"), D("1.5"))
    again = client.post(f"/api/contracts/{cid}/extend", json={"additional_hours": 0.5, "tx_signature": "ext-1"},
                        headers=t.w)
    assert_problem(again, 409, "payment_proof_reused")


def test_an_extension_paid_short_is_402_and_the_total_is_the_terms_cost(client: TestClient, t: ApiTenant):
    """As `/api/rent`: an `amount` below the price is refused (it was made up by a simulated
    deposit). And an overpayment is held, but `new_total_cost` is what the term costs."""
    cid = rent_id(client, t, amount=0.002)  # 1 h costs 0.001; 0.002 is held
    r = client.post(f"/api/contracts/{cid}/extend", json={"additional_hours": 1, "tx_signature": "short-1",
                                                          "amount": 0.0005}, headers=t.w)
    assert_problem(r, 402, "insufficient_payment")
    ext = body(client.post(f"/api/contracts/{cid}/extend", json={"additional_hours": 0.5}, headers=t.w))
    assert (ext["additional_cost_sol"], ext["new_total_cost"], ext["duration_hours"]) == (
        D("0.0005"), D("0.0015"), D("1.5"))


# -- errors ---------------------------------------------------------------------------------------


def test_unknown_contract_is_404_everywhere(client: TestClient, t: ApiTenant):
    for r in (client.get("/api/contracts/CTR-TEST", headers=t.r),
              client.post("/api/metrics/CTR-TEST", json=METRICS, headers=t.w),
              client.post("/api/contracts/CTR-TEST/extend", json={"additional_hours": 1}, headers=t.w),
              client.post("/api/contracts/CTR-TEST/settle", headers=t.w)):
        assert_problem(r, 404, "contract_not_found")


def test_a_customer_key_acts_only_on_its_own_contracts(client: TestClient, t: ApiTenant, db: Database,
                                                        clock: FrozenClock):
    """Every /api route checked only the scope: a customer read, fed samples to, extended
    (spending the other's wallet) and settled another customer's contract, rented in its
    name, and read the whole tenant's books."""
    with db.session() as s:
        def customer(wallet: str) -> dict[str, str]:
            return ApiTenant.auth(identity_service.create_key(
                s, tenant_id=t.id, kind="customer", principal_id=wallet, scopes=["ledger:read", "ledger:write"],
                now_ns=clock.now_ns()).secret)
        alice, bob = customer("AliceWa11et"), customer(WALLET)
    theirs = rent_id(client, t)  # WALLET's, rented by an operator
    before = body(client.get(f"/api/contracts/{theirs}", headers=bob))
    for r in (client.get(f"/api/contracts/{theirs}", headers=alice),
              client.post(f"/api/metrics/{theirs}", json=METRICS, headers=alice),
              client.post(f"/api/metrics/{theirs}", json=METRICS, headers={**alice, "Idempotency-Key": "m-1"}),
              client.post(f"/api/contracts/{theirs}/extend", json={"additional_hours": 1}, headers=alice),
              client.post(f"/api/contracts/{theirs}/settle", headers=alice)):
        assert_problem(r, 404, "contract_not_found")
    assert body(client.get(f"/api/contracts/{theirs}", headers=bob)) == before  # untouched
    # Nor through a stored answer: staff settle under a key, then a key without an id (which
    # shared staff's key space) replays it.
    with db.session() as s:
        unbound = ApiTenant.auth(identity_service.create_key(
            s, tenant_id=t.id, kind="customer", scopes=["ledger:read", "ledger:write"], now_ns=clock.now_ns()).secret)
    for path, payload in ((f"/api/metrics/{theirs}", METRICS), (f"/api/contracts/{theirs}/extend",
                                                                  {"additional_hours": 1})):
        assert client.post(path, json=payload, headers={**t.w, "Idempotency-Key": f"k-{path}"}).status_code == 200
        r = client.post(path, json=payload, headers={**unbound, "Idempotency-Key": f"k-{path}"})
        assert_problem(r, 404, "contract_not_found")
        r = client.post(path, json=payload, headers={**alice, "Idempotency-Key": f"k-{path}"})
        assert_problem(r, 404, "contract_not_found")
    before = body(client.get(f"/api/contracts/{theirs}", headers=bob))
    r = client.post("/api/rent", json={"wallet": WALLET, "tier": "M2", "duration_hours": 1, "tx_signature": "a-1",
                                       "amount": 0.001}, headers=alice)
    assert_problem(r, 403, "forbidden")
    for path in ("/api/billing/ledger", "/api/stats"):
        assert_problem(client.get(path, headers=alice), 403, "forbidden")
        assert client.get(path, headers=t.r).status_code == 200
    # Its own: everything works.
    r = client.post("/api/rent", json={"wallet": "AliceWa11et", "tier": "M2", "duration_hours": 1,
                                       "tx_signature": "a-2", "amount": 0.001}, headers=alice)
    assert r.status_code == 200, r.text
    mine = r.json()["contract_id"]
    assert client.post(f"/api/metrics/{mine}", json=METRICS, headers=alice).status_code == 200
    assert client.get(f"/api/contracts/{mine}", headers=alice).status_code == 200
    assert client.post(f"/api/contracts/{mine}/settle", headers=alice).status_code == 200


def test_unknown_tier_is_404(client: TestClient, t: ApiTenant):
    assert_problem(client.get("/api/devices/M9", headers=t.r), 404, "tier_not_found")
    r = client.post("/api/rent", json={"wallet": WALLET, "tier": "M9", "duration_hours": 1, "tx_signature": "x",
                                       "amount": 0.001}, headers=t.w)
    assert_problem(r, 404, "tier_not_found")


@pytest.mark.parametrize(("change", "status", "code"), [
    ({"wallet": None}, 422, "validation_error"),
    ({"tier": None}, 422, "validation_error"),
    ({"duration_hours": None}, 422, "validation_error"),
    ({"tx_signature": None}, 422, "validation_error"),
    ({"wallet": ""}, 422, "validation_error"),
    ({"tx_signature": "x" * 101}, 422, "validation_error"),
    ({"duration_hours": 0}, 422, "invalid_rental_request"),
    ({"duration_hours": -1}, 422, "invalid_rental_request"),
    ({"duration_hours": 0.0001}, 422, "invalid_rental_request"),  # 0.36 s
    ({"duration_hours": "abc"}, 422, "invalid_rental_request"),
    ({"duration_hours": True}, 422, "invalid_rental_request"),
    ({"duration_hours": 100000}, 422, "invalid_rental_request"),
    ({"amount": "abc"}, 422, "invalid_amount"),
    ({"amount": True}, 422, "invalid_amount"),
    ({"amount": 0.0010000001}, 422, "amount_precision"),  # 10 decimals
    ({"amount": -0.001}, 422, "amount_not_positive"),
    ({"amount": 0}, 422, "amount_not_positive"),
    ({"amount": 0.0009}, 402, "insufficient_payment"),
    ({"tx_signature": "not ascii é"}, 422, "invalid_payment_proof"),
])
def test_rent_rejects_bad_input(client: TestClient, t: ApiTenant, change: dict[str, Any], status: int, code: str):
    payload: dict[str, Any] = {"wallet": WALLET, "tier": "M2", "duration_hours": 1, "tx_signature": "bad-input",
                               "amount": 0.001}
    for k, v in change.items():
        if v is None:
            payload.pop(k)
        else:
            payload[k] = v
    assert_problem(client.post("/api/rent", json=payload, headers=t.w), status, code)
    # nothing was written: the proof is still unused
    assert rent(client, t, sig="bad-input").status_code == 200


@pytest.mark.parametrize("raw", [b"{", b"[]", b"null", b'{"wallet": NaN}'])
def test_rent_rejects_malformed_json(client: TestClient, t: ApiTenant, raw: bytes):
    r = client.post("/api/rent", content=raw, headers={**t.w, "Content-Type": "application/json"})
    assert_problem(r, 422, "validation_error")


def test_unknown_fields_are_ignored(client: TestClient, t: ApiTenant):
    r = rent(client, t, note="pasted from curl", priority=3)
    assert r.status_code == 200, r.text
    cid = r.json()["contract_id"]
    m = client.post(f"/api/metrics/{cid}", json={**METRICS, "gpu_temp_c": 61}, headers=t.w)
    assert m.status_code == 200, m.text


def test_hot_answers_are_their_documented_models_field_for_field(client: TestClient, t: ApiTenant,
                                                                   clock: FrozenClock):
    """Status and metrics answers are written directly (no response model on the hot path):
    they must carry exactly the documented models' fields, in order, and validate as them."""
    cid = rent_id(client, t)
    clock.advance(7)
    m = client.post(f"/api/metrics/{cid}", json={**METRICS, "power_w": 123.4}, headers=t.w)
    assert list(body(m)) == list(MetricsResponse.model_fields)
    assert MetricsResponse.model_validate(body(m)).samples == 1
    st = client.get(f"/api/contracts/{cid}", headers=t.r)
    assert list(body(st)) == list(ContractStatus.model_fields)
    assert ContractStatus.model_validate(body(st)).status == "ACTIVE"
    client.post(f"/api/contracts/{cid}/settle", headers=t.w)
    settled = ContractStatus.model_validate(body(client.get(f"/api/contracts/{cid}", headers=t.r)))
    assert settled.status == "SETTLED" and settled.refund_sol is not None
    assert settled.used_sol + settled.refund_available == settled.prepaid_sol


@pytest.mark.parametrize("raw", [b"[]", b"12", b'"x"', b"null"])
def test_metrics_body_that_is_not_an_object_is_422(client: TestClient, t: ApiTenant, raw: bytes):
    cid = rent_id(client, t)
    r = client.post(f"/api/metrics/{cid}", content=raw, headers={**t.w, "content-type": "application/json"})
    assert_problem(r, 422, "validation_error")


@pytest.mark.parametrize(("payload", "code"), [
    ({"cpu_percent": "abc"}, "invalid_rental_request"),
    ({"cpu_percent": -5}, "invalid_rental_request"),
    ({"cpu_percent": 101}, "invalid_rental_request"),
    ({"memory_mb": True}, "invalid_rental_request"),
    ({"memory_mb": [1]}, "invalid_rental_request"),
])
def test_metrics_reject_bad_numbers(client: TestClient, t: ApiTenant, payload: dict[str, Any], code: str):
    cid = rent_id(client, t)
    assert_problem(client.post(f"/api/metrics/{cid}", json=payload, headers=t.w), 422, code)


@pytest.mark.parametrize(("payload", "code"), [
    ({}, "invalid_rental_request"),
    ({"additional_hours": 0}, "invalid_rental_request"),
    ({"additional_hours": -1}, "invalid_rental_request"),
    ({"additional_hours": 0.0001}, "invalid_rental_request"),
    ({"additional_hours": "two"}, "invalid_rental_request"),
    ({"additional_hours": 1, "amount": 0.001}, "invalid_rental_request"),  # an amount without its proof
    ({"additional_hours": 1, "tx_signature": "e", "amount": 0.0010000001}, "amount_precision"),
    ({"additional_hours": 1, "tx_signature": "e", "amount": "x"}, "invalid_amount"),
])
def test_extend_rejects_bad_input(client: TestClient, t: ApiTenant, payload: dict[str, Any], code: str):
    cid = rent_id(client, t)
    status = 422
    r = client.post(f"/api/contracts/{cid}/extend", json=payload, headers=t.w)
    if "additional_hours" not in payload:
        assert_problem(r, status, "validation_error")
    else:
        assert_problem(r, status, code)
    assert body(client.get(f"/api/contracts/{cid}", headers=t.r))["prepaid_sol"] == D("0.001")


def test_settled_contract_refuses_changes(client: TestClient, t: ApiTenant):
    cid = rent_id(client, t)
    assert client.post(f"/api/contracts/{cid}/settle", headers=t.w).status_code == 200
    assert_problem(client.post(f"/api/contracts/{cid}/settle", headers=t.w), 409, "contract_already_settled")
    assert_problem(client.post(f"/api/metrics/{cid}", json=METRICS, headers=t.w), 409, "contract_already_settled")
    assert_problem(client.post(f"/api/contracts/{cid}/extend", json={"additional_hours": 1}, headers=t.w),
                   409, "contract_already_settled")


def test_ledger_rejects_bad_paging(client: TestClient, t: ApiTenant):
    assert_problem(client.get("/api/billing/ledger?cursor=bm9wZQ", headers=t.r), 422, "invalid_cursor")
    assert_problem(client.get("/api/billing/ledger?limit=0", headers=t.r), 422, "validation_error")
    assert_problem(client.get("/api/billing/ledger?limit=abc", headers=t.r), 422, "validation_error")


# -- auth, tenants, replays, races ------------------------------------------------------------------


def test_keys_and_scopes(client: TestClient, t: ApiTenant):
    assert_problem(client.get("/api/billing/ledger"), 401, "unauthenticated")
    assert_problem(client.post("/api/rent", json={}), 401, "unauthenticated")
    # a read-only key reads but cannot rent, extend or settle
    assert_problem(rent(client, ApiTenant(t.id, t.reader, t.reader, t.reader)), 403, "forbidden")
    cid = rent_id(client, t)
    assert client.get(f"/api/contracts/{cid}", headers=t.r).status_code == 200
    assert client.get("/api/stats", headers=t.r).status_code == 200
    assert_problem(client.post(f"/api/contracts/{cid}/settle", headers=t.r), 403, "forbidden")
    assert_problem(client.post(f"/api/metrics/{cid}", json=METRICS, headers=t.r), 403, "forbidden")


def test_dev_mode_loopback_needs_no_key(make_client: MakeClient, t: ApiTenant):
    dev = make_client(dev=True, default_tenant=t.id)
    r = dev.post("/api/rent", json={"wallet": WALLET, "tier": "M2", "duration_hours": 1,
                                    "tx_signature": "dev-sig", "amount": 0.001})
    assert r.status_code == 200, r.text
    cid = r.json()["contract_id"]
    assert dev.get(f"/api/contracts/{cid}").status_code == 200
    assert dev.get(f"/api/contracts/{cid}", headers=t.r).status_code == 200  # the same tenant by key
    remote = make_client(dev=True, default_tenant=t.id, client=("10.1.2.3", 4000))
    assert_problem(remote.get(f"/api/contracts/{cid}"), 401, "unauthenticated")


def test_tenants_cannot_see_each_other(client: TestClient, t: ApiTenant, other: ApiTenant):
    cid = rent_id(client, t)
    assert_problem(client.get(f"/api/contracts/{cid}", headers=other.r), 404, "contract_not_found")
    assert_problem(client.post(f"/api/contracts/{cid}/settle", headers=other.w), 404, "contract_not_found")
    assert_problem(client.post(f"/api/metrics/{cid}", json=METRICS, headers=other.w), 404, "contract_not_found")
    assert_problem(client.post(f"/api/contracts/{cid}/extend", json={"additional_hours": 1}, headers=other.w),
                   404, "contract_not_found")
    theirs = body(client.get("/api/billing/ledger", headers=other.r))
    assert theirs["active_contracts"] == [] and theirs["total_active_value"] == 0
    assert body(client.get("/api/stats", headers=other.r))["active_contracts"] == 0
    assert [d["leases"] for d in body(client.get("/api/devices/M2", headers=other.r))] == [0, 0, 0, 0]
    # a simulated proof is namespaced by tenant: B may use the same test signature
    assert rent(client, other).status_code == 200
    # and A's contract is untouched
    assert body(client.get(f"/api/contracts/{cid}", headers=t.r))["status"] == "ACTIVE"


def test_replayed_tx_signature_is_409(client: TestClient, t: ApiTenant):
    first = rent(client, t, sig="once-only")
    assert first.status_code == 200
    assert_problem(rent(client, t, sig="once-only"), 409, "payment_proof_reused")
    assert_problem(rent(client, t, sig="once-only", hours=2, amount=0.002), 409, "payment_proof_reused")
    assert body(client.get("/api/billing/ledger", headers=t.r))["active_count"] == 1


def test_idempotency_key_replays_a_metrics_sample(client: TestClient, t: ApiTenant, db: Database):
    cid = rent_id(client, t)
    h = {**t.w, "Idempotency-Key": "sample-1"}
    first = client.post(f"/api/metrics/{cid}", json=METRICS, headers=h)
    again = client.post(f"/api/metrics/{cid}", json=METRICS, headers=h)
    assert first.status_code == again.status_code == 200, first.text
    assert body(again) == body(first) and body(first)["samples"] == 1
    assert_problem(client.post(f"/api/metrics/{cid}", json={"cpu_percent": 1}, headers=h), 409,
                   "idempotency_conflict")
    nxt = client.post(f"/api/metrics/{cid}", json=METRICS, headers=t.w)  # no key: a new sample
    assert body(nxt)["samples"] == 2


def test_idempotency_key_replays_the_rent(client: TestClient, t: ApiTenant):
    h = {**t.w, "Idempotency-Key": "rent-1"}
    payload = {"wallet": WALLET, "tier": "M2", "duration_hours": 1, "tx_signature": "idem", "amount": 0.001}
    a = client.post("/api/rent", json=payload, headers=h)
    b = client.post("/api/rent", json=payload, headers=h)
    assert a.status_code == b.status_code == 200 and a.content == b.content
    assert b.headers["Idempotent-Replayed"] == "true"
    assert_problem(client.post("/api/rent", json={**payload, "amount": 0.002}, headers=h), 409,
                   "idempotency_conflict")


def test_concurrent_settle_settles_once(client: TestClient, t: ApiTenant, clock: FrozenClock, db: Database):
    cid = rent_id(client, t)
    clock.advance(120)

    def call(_: int) -> int:
        return client.post(f"/api/contracts/{cid}/settle", headers=t.w).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(call, range(8)))
    assert sorted(codes) == [200] + [409] * 7, codes
    ledger = body(client.get("/api/billing/ledger", headers=t.r))
    assert ledger["settled_count"] == 1 and ledger["settled_used"] == D("0.000033333")
    report = verify_ledger(db, t.id)
    assert report.ok, report.problems


# -- the ledger: pagination and speed -----------------------------------------------------------------


def test_ledger_pages_newest_first(client: TestClient, t: ApiTenant, clock: FrozenClock):
    ids = []
    for i in range(5):
        ids.append(rent_id(client, t, sig=f"page-{i}"))
        clock.advance(1)
    seen, cursor, pages = [], None, 0
    while True:
        q = "/api/billing/ledger?limit=2&settlements_limit=0" + (f"&cursor={cursor}" if cursor else "")
        page = body(client.get(q, headers=t.r))
        seen += [c["contract_id"] for c in page["active_contracts"]]
        assert page["active_count"] == 5 and page["total_active_value"] == D("0.005")
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3
    # totals are over every contract, the page only lists some
    full = body(client.get("/api/billing/ledger?limit=1", headers=t.r))
    assert len(full["active_contracts"]) == 1 and full["total_used"] == sum(
        (c["used"] for c in body(client.get("/api/billing/ledger?limit=10", headers=t.r))["active_contracts"]),
        Decimal(0))


def test_recent_settlements_are_limited_and_newest_first(client: TestClient, t: ApiTenant, clock: FrozenClock):
    ids = [rent_id(client, t, sig=f"s-{i}") for i in range(3)]
    for cid in ids:
        clock.advance(60)
        assert client.post(f"/api/contracts/{cid}/settle", headers=t.w).status_code == 200
    ledger = body(client.get("/api/billing/ledger?settlements_limit=2", headers=t.r))
    assert [s["contract_id"] for s in ledger["completed_settlements"]] == ids[::-1][:2]
    assert ledger["settled_count"] == 3


def _bulk_active(db: Database, tenant: str, clock: FrozenClock, n: int) -> None:
    """n active prepaid contracts written straight into the table (the rent path is not what is timed)."""
    now = clock.now_ns()
    rows = [dict(
        tenant_id=tenant, id=f"CTR-B{i:07d}", style="prepaid", status="ACTIVE", customer_type="wallet",
        customer_id=f"wallet-{i}", wallet_account_id=f"wal:wallet:wallet-{i}:SOL", escrow_account_id="sys:escrow:SOL",
        provider_id="si64", device_id=f"device-m2-00{1 + i % 4}", tier="M2", asset="SOL", scale=9, quote={},
        payment_rail="simulation", payment_proof=f"bulk-{i}", refund_to_rail=True, held_minor=1_000_000,
        duration_s=3600, created_at=now - i * 10**9, started_at=now - i * 10**9,
        expires_at=now - i * 10**9 + 3600 * 10**9, rate_num=2500, rate_den=9, rounding="half_up", power_cost_e6=0,
        energy2_mw_ms=0, sample_count=0, hold_count=1,
    ) for i in range(n)]
    with db.session() as s:
        s.execute(insert(Rental), rows)


@pytest.fixture
def bulk_contracts(db: Database, t: ApiTenant, clock: FrozenClock):
    """10,000 synthetic active contracts, removed afterwards: they have no holds or quote, and
    the database is shared with other tests whose worker sweeps scan every tenant."""
    _bulk_active(db, t.id, clock, 10_000)
    yield
    with db.session() as s:
        s.execute(delete(Rental).where(Rental.tenant_id == t.id, Rental.id.like("CTR-B%")))


def test_ledger_answers_fast_with_10000_active_contracts(client: TestClient, t: ApiTenant, clock: FrozenClock,
                                                           db: Database, bulk_contracts: None):
    r = client.get("/api/billing/ledger", headers=t.r)  # warm up (key cache, statement cache)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    timings = []
    event.listen(db.engine, "before_cursor_execute", count)
    try:
        for _ in range(5):
            start = time.perf_counter()
            r = client.get("/api/billing/ledger", headers=t.r)
            timings.append(time.perf_counter() - start)
            assert r.status_code == 200
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    ledger = body(r)
    assert ledger["active_count"] == 10_000 and len(ledger["active_contracts"]) == 100
    assert ledger["total_active_value"] == D("10")
    # contract i has run min(i, 3600) s at 2500/9 lamports per second, rounded half-up, capped at held
    expected = sum(min(1_000_000, (2500 * min(i, 3600) * 2 + 9) // 18) for i in range(10_000))
    assert ledger["total_used"] == Decimal(expected).scaleb(-9)
    assert ledger["total_pending_refunds"] == D("10") - Decimal(expected).scaleb(-9)
    assert ledger["active_contracts"][0]["contract_id"] == "CTR-B0000000"  # the newest
    print(f"GET /api/billing/ledger, 10,000 active: best {min(timings) * 1000:.1f} ms of {len(timings)}")
    # Totals are aggregated in SQL and the list is one page: a handful of statements per call,
    # however many contracts are active (a per-contract query or a Python scan would show here).
    assert len(statements) <= 5 * 8, statements
    # The < 100 ms target is measured by bench/rentals.py on a quiet machine; here only a bound
    # that a scan of 10,000 contracts in Python would break even on a loaded one.
    assert min(timings) < 0.5, timings
    stats = client.get("/api/stats", headers=t.r)
    assert body(stats)["devices_leased"] == 4


# -- the hot answers' number text, written from integers --------------------------------------


@settings(max_examples=400, deadline=None)
@given(minor=st.integers(min_value=-(10**20), max_value=10**20), scale=st.integers(min_value=0, max_value=18))
def test_minor_text_is_the_exact_number_of_to_major(minor: int, scale: int):
    """The integer writer of amounts gives the same digits as exact_json.number(to_major(...))."""
    assert si64._j_minor(minor, scale) == si64._j_num(to_major(minor, scale))


@settings(max_examples=400, deadline=None)
@given(seconds=st.integers(min_value=0, max_value=10 * 365 * 24 * 3600))
def test_elapsed_hours_text_is_the_quantized_decimal(seconds: int):
    assert si64._j_elapsed_hours(seconds) == si64._j_num(si64._elapsed_hours(seconds))


@pytest.mark.parametrize("seconds", [0, 1, 17, 18, 35, 36, 3599, 3600, 5400, 86_400])
def test_elapsed_hours_text_at_rounding_edges(seconds: int):
    assert si64._j_elapsed_hours(seconds) == si64._j_num(si64._elapsed_hours(seconds))


def test_a_large_metrics_body_takes_the_route_and_is_stored_once(client: TestClient, t: ApiTenant, db: Database):
    """Past the fast path's body size the request is handed to the route (one sample either way)."""
    cid = rent_id(client, t)
    big = {**METRICS, "note": "x" * (si64._FAST_BODY_BYTES + 1)}
    r = client.post(f"/api/metrics/{cid}", json=big, headers=t.w)
    assert r.status_code == 200, r.text
    assert body(r)["samples"] == 1
    assert body(client.post(f"/api/metrics/{cid}", json=METRICS, headers=t.w))["samples"] == 2


# -- a pay-as-you-go session is not a contract -------------------------------------------------


def _dante_session(client: TestClient, t: ApiTenant, user: str = WALLET) -> str:
    """A Dante pay-as-you-go session in the same tenant (a `Rental` row like a contract)."""
    r = client.post("/api/v1/wallet/deposit", json={"user_id": user, "amount": "10", "tx_signature": f"d-{user}"},
                    headers=t.a)
    assert r.status_code == 201, r.text
    r = client.post("/api/v1/billing/start-session",
                    json={"user_id": user, "gpu_model": "nvidia_rtx_4090", "vram_gb": 12}, headers=t.a)
    assert r.status_code == 201, r.text
    return str(r.json()["session_id"])


def _same_as_unknown(r: Any, unknown: Any, rid: str) -> bool:
    """Whether the answer to a wrong-kind id is the answer to an unknown id (404
    `contract_not_found`, problem+json), but for the id itself."""
    assert_problem(unknown, 404, "contract_not_found")
    return bool((r.status_code, r.headers["content-type"]) == (unknown.status_code, unknown.headers["content-type"])
                and r.text.replace(rid, "CTR-UNKNOWN0") == unknown.text)


def test_a_payg_session_id_is_not_found_on_every_contract_route(client: TestClient, t: ApiTenant,
                                                                 clock: FrozenClock):
    """Every /api/contracts and /api/metrics path acted on a Dante session given its id: the status
    showed it (as a contract), samples were stored against it (fast path, Idempotency-Key path and
    the route behind a large body), extend answered 409 `contract_not_active` (so the id was known)
    and settle ended and settled the user's session. Each now answers as an unknown id."""
    sid = _dante_session(client, t)
    clock.advance(30)
    before = client.get(f"/v1/rentals/{sid}", headers=t.r).json()
    big = {**METRICS, "note": "x" * (si64._FAST_BODY_BYTES + 1)}
    calls = [
        ("GET", "/api/contracts/{}", None, {}),
        ("POST", "/api/metrics/{}", METRICS, {}),
        ("POST", "/api/metrics/{}", {**METRICS, "power_w": 450}, {"Idempotency-Key": "payg-m-1"}),
        ("POST", "/api/metrics/{}", big, {}),
        ("POST", "/api/contracts/{}/extend", {"additional_hours": 1}, {}),
        ("POST", "/api/contracts/{}/extend", {"additional_hours": 1, "tx_signature": "payg-x-1"},
         {"Idempotency-Key": "payg-x-1"}),
        ("POST", "/api/contracts/{}/settle", None, {}),
    ]
    wrong = []
    for name, key in (("reader", t.r), ("writer", t.w), ("admin", t.a)):  # staff see every contract
        for method, path, payload, extra in calls:
            if name == "reader" and method == "POST":
                continue  # (a read-only key is refused the scope first, whatever the id)
            headers = {**key, **extra}
            if "Idempotency-Key" in extra:
                headers["Idempotency-Key"] = f"{extra['Idempotency-Key']}-{name}"
            unknown = client.request(method, path.format("CTR-UNKNOWN0"), json=payload, headers=headers)
            r = client.request(method, path.format(sid), json=payload, headers=headers)
            if not _same_as_unknown(r, unknown, sid):
                wrong.append((name, method, path, sorted(extra), r.status_code))
    assert not wrong, wrong
    after = client.get(f"/v1/rentals/{sid}", headers=t.r).json()
    assert {k: after[k] for k in ("status", "held", "sample_count")} == {
        k: before[k] for k in ("status", "held", "sample_count")} and after["status"] == "ACTIVE"
    # The session is still the user's on the Dante routes, and ends there.
    usage = client.get(f"/api/v1/billing/current-usage?user_id={WALLET}", headers=t.a).json()
    assert [s["session_id"] for s in usage["data"]] == [sid]
    r = client.post("/api/v1/billing/end-session", json={"user_id": WALLET, "session_id": sid}, headers=t.a)
    assert r.status_code == 200, r.text


def test_a_payg_session_id_is_not_found_by_a_customer_key_that_owns_it(client: TestClient, t: ApiTenant,
                                                                         db: Database, clock: FrozenClock):
    """The owner check passed for a customer whose id is the session's user: the kind must be
    checked as well, not instead."""
    sid = _dante_session(client, t, user="AliceWa11et")
    with db.session() as s:
        alice = ApiTenant.auth(identity_service.create_key(
            s, tenant_id=t.id, kind="customer", principal_id="AliceWa11et", scopes=["ledger:read", "ledger:write"],
            now_ns=clock.now_ns()).secret)
    wrong = []
    for method, path, payload in (("GET", "/api/contracts/{}", None), ("POST", "/api/metrics/{}", METRICS),
                                  ("POST", "/api/contracts/{}/extend", {"additional_hours": 1}),
                                  ("POST", "/api/contracts/{}/settle", None)):
        unknown = client.request(method, path.format("CTR-UNKNOWN0"), json=payload, headers=alice)
        r = client.request(method, path.format(sid), json=payload, headers=alice)
        if not _same_as_unknown(r, unknown, sid):
            wrong.append((method, path, r.status_code))
    assert not wrong, wrong
    assert client.get(f"/v1/rentals/{sid}", headers=alice).json()["sample_count"] == 0


@pytest.fixture
def payg_in_sol(db: Database, t: ApiTenant, clock: FrozenClock):
    """An active and a settled pay-as-you-go session priced in SOL (a tenant whose GPU price book
    is in SOL), written straight into the table and removed afterwards (see `bulk_contracts`)."""
    now = clock.now_ns()
    base = dict(
        tenant_id=t.id, style="payg", customer_type="user", customer_id="gpu-user",
        wallet_account_id="wal:user:gpu-user:SOL", escrow_account_id="sys:escrow:SOL", provider_id="si64",
        device_id="device-m2-001", tier="M2", asset="SOL", scale=9, quote={}, payment_rail="wallet",
        payment_proof=None, refund_to_rail=False, held_minor=5_000_000, duration_s=None, created_at=now,
        started_at=now, expires_at=None, rate_num=2500, rate_den=9, rounding="half_up", power_cost_e6=0,
        energy2_mw_ms=0, sample_count=0, hold_count=1)
    rows = [{**base, "id": "CTR-PAYGSOL1", "status": "ACTIVE"},
            {**base, "id": "CTR-PAYGSOL2", "status": "SETTLED", "ended_at": now, "settled_at": now,
             "used_minor": 1_000_000, "refund_minor": 4_000_000, "provider_minor": 950_000, "fee_minor": 50_000}]
    with db.session() as s:
        s.execute(insert(Rental), rows)
    yield ["CTR-PAYGSOL1", "CTR-PAYGSOL2"]
    with db.session() as s:
        s.execute(delete(Rental).where(Rental.tenant_id == t.id, Rental.id.like("CTR-PAYGSOL%")))


def test_the_books_and_stats_count_contracts_only(client: TestClient, t: ApiTenant, clock: FrozenClock,
                                                  payg_in_sol: list[str]):
    """Sessions in SOL were listed among the contracts and added to every total."""
    cid = rent_id(client, t)
    clock.advance(60)
    ledger = body(client.get("/api/billing/ledger", headers=t.r))
    assert [c["contract_id"] for c in ledger["active_contracts"]] == [cid]
    assert ledger["completed_settlements"] == []
    assert (ledger["active_count"], ledger["settled_count"], ledger["total_active_value"]) == (1, 0, D("0.001"))
    assert ledger["total_used"] == D("0.000016667") and ledger["platform_fees"] == 0
    stats = body(client.get("/api/stats", headers=t.r))
    assert (stats["active_contracts"], stats["settled_contracts"], stats["total_active_value"],
            stats["total_revenue"]) == (1, 0, D("0.001"), 0)
    for sid in payg_in_sol:
        assert_problem(client.get(f"/api/contracts/{sid}", headers=t.r), 404, "contract_not_found")


@pytest.mark.parametrize(("raw", "field"), [
    ('{"cpu_percent":45.5,"memory_mb":3500,"cpu_percent":99}', "cpu_percent"),
    ('{"cpu_percent":45.5,"note":{"k":1,"k":2}}', "note.k"),
])
def test_metrics_with_a_key_given_twice_are_refused_on_the_fast_path(client: TestClient, t: ApiTenant,
                                                                      raw: str, field: str):
    from tests.api.test_fastpath import router_disabled

    cid = rent_id(client, t)
    with router_disabled(client):
        r = client.post(f"/api/metrics/{cid}", content=raw, headers={**t.w, "content-type": "application/json"})
        problem = assert_problem(r, 422, "validation_error")
        assert [(e["field"], e["code"]) for e in problem["errors"]] == [(field, "duplicate_key")]
    assert body(client.post(f"/api/metrics/{cid}", json=METRICS, headers=t.w))["samples"] == 1  # none stored
