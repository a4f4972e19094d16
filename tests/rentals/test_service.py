"""The rental service's own rules: samples and the power integral, accrual on read, totals in SQL."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from meterline.catalog.service import catalog_service
from meterline.clock import FrozenClock
from meterline.db.base import BIGINT_MAX
from meterline.db.engine import Database
from meterline.ledger.service import ledger_service
from meterline.pricing.service import pricing_service
from meterline.rentals import accrual
from meterline.rentals.contracts import contract_service
from meterline.rentals.models import Rental
from meterline.rentals.service import (
    ACTIVE,
    PAYG,
    InvalidRentalRequest,
    RentalExpired,
    rental_service,
)
from meterline.rentals.sessions import session_service
from meterline.wallets.service import wallet_service
from tests.factories import make_demo_tenant

NS = 1_000_000_000
E6 = accrual.E6
USER = "bob"


@pytest.fixture
def tenant(db: Database, tenant_id: str, clock: FrozenClock) -> str:
    with db.session() as s:
        make_demo_tenant(s, tenant_id, clock)
        wallet_service.deposit(s, tenant_id, owner_type="user", owner_id=USER, asset="DGPU",
                               amount_minor=100_000_000, rail="simulation", proof="fund-bob", clock=clock)
    return tenant_id


def open_session(db: Database, tenant: str, clock: FrozenClock, *, hold: int = 10_000_000,
                 device_id: str = "gpu-4090-001") -> str:
    """A 4090 session (0.5 DGPU/h + 0.001 DGPU/Wh metered) with a large first hold, so the
    power figures below are never capped by the cover."""
    with db.session() as s:
        device = catalog_service.get_device(s, tenant, device_id)
        quote = pricing_service.quote_for_device(s, tenant, device, utilisation=Decimal(0))
        now = clock.now_ns()
        wallet = wallet_service.wallet_account(s, tenant, owner_type="user", owner_id=USER, asset="DGPU", now_ns=now)
        escrow = wallet_service.system_account(s, tenant, "escrow", "DGPU", now)
        r = rental_service.create(
            s, tenant, style=PAYG, customer_type="user", customer_id=USER, wallet_account_id=wallet.id,
            escrow_account_id=escrow.id, asset="DGPU", scale=6, quote=quote, duration_s=None,
            initial_hold_minor=hold, payment_rail="wallet", payment_proof=None, refund_to_rail=False,
            provider_id=device.provider_id, device_id=device.id, tier=device.tier_id,
            gpu_model=device.gpu_model_id, vram_gb=device.vram_gb, clock=clock,
        )
        return r.id


def sample(db: Database, tenant: str, rid: str, clock: FrozenClock, **values: object) -> None:
    with db.session() as s:
        rental_service.record_sample(s, tenant, rid, dict(values), clock)


def get(db: Database, tenant: str, rid: str) -> Rental:
    with db.session(write=False) as s:
        return rental_service.get(s, tenant, rid)


def cost(db: Database, tenant: str, rid: str, clock: FrozenClock) -> int:
    return rental_service.accrual(get(db, tenant, rid), clock.now_ns()).cost_minor


# -- samples -------------------------------------------------------------------------


def test_a_sample_stores_every_metric_exactly(db, tenant, clock):
    rid = open_session(db, tenant, clock)
    values = {"cpu_percent": "37.5", "memory_mb": 8192, "disk_io_mbps": "120.25", "network_io_mbps": Decimal("9.5"),
              "gpu_util_percent": 99, "vram_used_gb": "11.75", "power_w": "312.4"}
    sample(db, tenant, rid, clock, **values)
    clock.advance(5)
    sample(db, tenant, rid, clock, cpu_percent=1, gpu_util_percent=None)  # a missing metric is just absent
    with db.session(write=False) as s:
        latest, first = rental_service.samples(s, tenant, rid)
    assert first.values == {k: str(v) for k, v in values.items()} and first.power_mw == 312_400
    assert latest.values == {"cpu_percent": "1"} and latest.power_mw is None
    assert latest.ts - first.ts == 5 * NS
    assert get(db, tenant, rid).sample_count == 2


@pytest.mark.parametrize("values", [
    {"cpu_percent": 101}, {"cpu_percent": -1}, {"gpu_util_percent": "100.1"}, {"power_w": "NaN"},
    {"power_w": "Infinity"}, {"power_w": 10**7}, {"memory_mb": 1.5}, {"memory_mb": True}, {"vram_used_gb": "abc"},
    {"vram_used_gb": [1]}, {"temperature_c": 50}, {"cpu_percent": 5, "bogus": 1},
])
def test_invalid_samples_are_refused_and_nothing_is_stored(db, tenant, clock, values):
    rid = open_session(db, tenant, clock)
    with pytest.raises(InvalidRentalRequest) as err, db.session() as s:
        rental_service.record_sample(s, tenant, rid, values, clock)
    assert (err.value.status, err.value.code) == (422, "invalid_rental_request")
    assert get(db, tenant, rid).sample_count == 0


def test_constant_power_for_an_hour_costs_exactly_its_energy(db, tenant, clock):
    rid = open_session(db, tenant, clock)
    for minute in range(61):  # 450 W every minute for an hour: 450 Wh at 0.001 DGPU/Wh = 0.45 DGPU
        if minute:
            clock.advance(60)
        sample(db, tenant, rid, clock, power_w=450)
    r = get(db, tenant, rid)
    assert r.power_cost_e6 == 450_000 * E6
    assert r.energy2_mw_ms == 2 * 450_000 * 3_600_000
    # 0.50 DGPU of time + 0.45 DGPU of power, to the micro-DGPU.
    assert rental_service.accrual(r, clock.now_ns()).cost_minor == 950_000


def test_power_between_two_samples_is_a_trapezoid(db, tenant, clock):
    rid = open_session(db, tenant, clock)
    sample(db, tenant, rid, clock, power_w=100)
    clock.advance(60)
    sample(db, tenant, rid, clock, power_w=300)
    # (100 + 300) / 2 W × 60 s = 3.333… Wh → 3,333.33 micro-DGPU; time 8,333.33; 11,666.67 → 11,667.
    r = get(db, tenant, rid)
    assert r.power_cost_e6 == 3_333_333_333
    assert rental_service.accrual(r, clock.now_ns()).cost_minor == 11_667


def test_sub_millisecond_gaps_never_drift(db, tenant, clock):
    rid = open_session(db, tenant, clock)
    start = clock.now_ns()
    for _ in range(10):
        sample(db, tenant, rid, clock, power_w=1000)
        clock.advance(ns=1_000_999_999)  # 1.000999999 s apart
    last = get(db, tenant, rid).last_sample_at
    # The integral covers exactly the whole milliseconds between first and last sample.
    assert get(db, tenant, rid).energy2_mw_ms == 2 * 1_000_000 * ((last - start) // 1_000_000) == 2 * 10**6 * 9008


def test_a_sample_stamped_before_the_last_one_is_stored_but_not_integrated_twice(db, tenant, clock):
    rid = open_session(db, tenant, clock)
    t0 = clock.now_ns()
    sample(db, tenant, rid, clock, power_w=100)
    clock.set(t0 + 60 * NS)
    sample(db, tenant, rid, clock, power_w=100)
    clock.set(t0 + 30 * NS)  # another API process whose clock is behind
    sample(db, tenant, rid, clock, power_w=1000)
    clock.set(t0 + 120 * NS)
    sample(db, tenant, rid, clock, power_w=100)
    r = get(db, tenant, rid)
    assert r.sample_count == 4
    assert r.energy2_mw_ms == 2 * 100_000 * 120_000  # 100 W for 120 s, each second counted once


def test_samples_after_a_contracts_expiry_are_refused(db, tenant, clock):
    with db.session() as s:
        rid = contract_service.rent(s, tenant, wallet="w1", tier="M2", duration_s=60, paid_minor=None, proof="p1",
                                    rail=None, clock=clock).rental.id
    clock.advance(60)
    with pytest.raises(RentalExpired), db.session() as s:
        rental_service.record_sample(s, tenant, rid, {"cpu_percent": 1}, clock)


# -- accrual ---------------------------------------------------------------------------


def test_cost_plus_refund_is_what_was_held_at_every_step(db, tenant, clock):
    rid = open_session(db, tenant, clock, hold=60_000)
    for step in range(40):
        sample(db, tenant, rid, clock, power_w=200 + 37 * step)
        r = get(db, tenant, rid)
        acc = rental_service.accrual(r, clock.now_ns())
        assert acc.cost_minor + acc.refund_minor == r.held_minor
        assert 0 <= acc.cost_minor <= r.held_minor
        clock.advance(13)
    assert cost(db, tenant, rid, clock) == 60_000  # capped by the hold, never above


# -- totals -------------------------------------------------------------------------------


def test_totals_in_sql_equal_the_sum_of_the_figures_shown(db, tenant, clock):
    ids = []
    for i, hours in enumerate(["0.25", "1", "0.1", "2"]):
        with db.session() as s:
            seconds = int(Decimal(hours) * 3600)
            ids.append(contract_service.rent(s, tenant, wallet=f"w{i}", tier="M2", duration_s=seconds,
                                             paid_minor=None, proof=f"p{i}", rail=None, clock=clock).rental.id)
        clock.advance(ns=123_456_789 * (i + 1))
    ids.append(open_session(db, tenant, clock, device_id="gpu-a100-001"))
    with db.session() as s:
        ids.append(session_service.start(s, tenant, customer_id=USER, device_id="gpu-h100-001", gpu_model=None,
                                         vram_gb=40, watts=None, clock=clock).id)
    for rid in ids[-2:]:
        for w in (310, 295, 402):
            sample(db, tenant, rid, clock, power_w=w)
            clock.advance(7, ns=3_000_001)
    with db.session() as s:
        rental_service.settle(s, tenant, ids[2], clock)  # settled: leaves the active figures

    for t in (0, 59, 361, 901, 3599, 7300):
        now = clock.now_ns() + t * NS
        with db.session(write=False) as s:
            rows = list(s.query(Rental).filter(Rental.tenant_id == tenant))
            for asset in ("SOL", "DGPU"):
                active = [r for r in rows if r.status == ACTIVE and r.asset == asset]
                totals = rental_service.totals(s, tenant, now, asset=asset)
                shown = [rental_service.accrual(r, now) for r in active]
                assert totals["active_count"] == len(active)
                assert totals["active_used"] == sum(a.cost_minor for a in shown)
                assert totals["active_held"] == sum(r.held_minor for r in active)
                assert totals["active_refundable"] == sum(a.refund_minor for a in shown)
            sol = rental_service.totals(s, tenant, now, asset="SOL")
            settled = rental_service.get(s, tenant, ids[2])
            assert (sol["settled_count"], sol["settled_used"], sol["settled_refunded"], sol["platform_fees"]) == (
                1, settled.used_minor, settled.refund_minor, settled.fee_minor)
    with db.session(write=False) as s:
        counts = [rental_service.totals(s, tenant, clock.now_ns(), asset=a)["active_count"] for a in ("SOL", "DGPU")]
    assert counts == [3, 2]


def test_totals_are_per_tenant(db, tenant, clock):
    open_session(db, tenant, clock)
    other = f"t-{uuid.uuid4().hex[:12]}"
    with db.session() as s:
        make_demo_tenant(s, other, clock)
        assert rental_service.totals(s, other, clock.now_ns())["active_count"] == 0
        assert rental_service.totals(s, tenant, clock.now_ns())["active_count"] == 1


def test_the_locked_rate_is_stored_as_an_exact_fraction(db, tenant, clock):
    # The SQL accrual needs the rate as integers; the stored fraction must be the quote's exactly.
    rid = open_session(db, tenant, clock)
    r = get(db, tenant, rid)
    assert (r.rate_num, r.rate_den) == (1250, 9)  # 0.5 DGPU/h = 500,000 / 3600 micro per second
    with db.session(write=False) as s:
        assert ledger_service.get_asset(s, tenant, "DGPU").scale == r.scale == 6


# -- sample validation ------------------------------------------------------------------------


def test_validate_sample_keeps_exact_decimals_and_skips_unmeasured():
    clean = rental_service.validate_sample({"power_w": Decimal("450.125"), "cpu_percent": 12,
                                            "memory_mb": "3500", "gpu_util_percent": None})
    assert clean == {"power_w": Decimal("450.125"), "cpu_percent": Decimal(12), "memory_mb": Decimal(3500)}
    assert all(type(v) is Decimal for v in clean.values())


@pytest.mark.parametrize("values", [
    {"cpu_percent": True}, {"cpu_percent": 1.5}, {"cpu_percent": [1]}, {"cpu_percent": "abc"},
    {"cpu_percent": Decimal("NaN")}, {"cpu_percent": Decimal(-1)}, {"cpu_percent": 101},
    {"power_w": Decimal("Infinity")}, {"power_w": 10_001},
])
def test_validate_sample_refuses_what_is_not_an_exact_number_in_range(values):
    with pytest.raises(InvalidRentalRequest):
        rental_service.validate_sample(values)
    with pytest.raises(InvalidRentalRequest):
        rental_service.validate_sample(values, ignore_unknown=True)


def test_validate_sample_unknown_names_refused_or_ignored():
    """A bare metrics dict must name metrics only; a request body's other fields are ignored."""
    with pytest.raises(InvalidRentalRequest, match="unknown metric"):
        rental_service.validate_sample({"cpu_percent": 5, "gpu_temp_c": 61})
    assert rental_service.validate_sample({"cpu_percent": 5, "gpu_temp_c": 61, "note": [1]},
                                          ignore_unknown=True) == {"cpu_percent": Decimal(5)}


def test_an_energy_total_past_64_bits_is_refused_not_stored(db, tenant, clock):
    """At most 10 kW a sample keeps the integral in range for 14 years; past that the sample is
    refused with a clear error instead of failing in the database (and every sample after it)."""
    rental = get(db, tenant, open_session(db, tenant, clock))
    rental_service.fold_sample(rental, {"power_w": Decimal(10_000)}, clock.now_ns())
    rental.energy2_mw_ms = BIGINT_MAX - 10**6
    before = (rental.energy2_mw_ms, rental.last_sample_at, rental.sample_count)
    with pytest.raises(InvalidRentalRequest, match="out of range"):
        rental_service.fold_sample(rental, {"power_w": Decimal(10_000)}, clock.now_ns() + 10**9)
    assert (rental.energy2_mw_ms, rental.last_sample_at, rental.sample_count) == before
