"""Pricing service: versioned books, validation, provider minimums, device quotes, isolation."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from meterline.catalog.service import catalog_service
from meterline.pricing.engine import TierRate, cost_minor
from meterline.pricing.service import (
    InvalidPriceBook,
    InvalidRate,
    PriceBookMissing,
    PriceBookVersionNotFound,
    UnknownProvider,
    pricing_service,
)
from tests.factories import make_tenant


@pytest.fixture
def tenant(session, tenant_id, clock) -> str:
    return make_tenant(session, tenant_id, clock)


@pytest.fixture
def seeded(session, tenant, clock) -> str:
    catalog_service.seed_demo(session, tenant, clock.now_ns())
    pricing_service.seed_demo(session, tenant, clock.now_ns())
    return tenant


def test_no_book_is_a_clear_error(session, tenant):
    with pytest.raises(PriceBookMissing) as exc:
        pricing_service.current_book(session, tenant)
    assert exc.value.code == "price_book_missing" and exc.value.status == 404


def test_seed_demo_is_version_one_with_the_seeds_figures_and_idempotent(session, seeded, clock):
    book = pricing_service.seed_demo(session, seeded, clock.now_ns())
    assert book.version == 1
    assert book.asset == "DGPU"
    assert dict(book.base_rates) == {"nvidia_rtx_4090": D("0.50"), "nvidia_a100": D("2.00"), "nvidia_h100": D("4.00")}
    assert dict(book.tier_rates) == {"M2": TierRate("SOL", D("0.001"))}
    assert (book.power_multiplier, book.platform_fee_percent, book.minimum_session_minutes, book.granularity) == (
        D("0.001"), D("5.0"), 1, "second")
    assert len(pricing_service.list_books(session, seeded)) == 1


def test_publish_creates_a_new_version_and_leaves_the_old_one(session, seeded, clock):
    clock.advance(60)
    v2 = pricing_service.publish_book(session, seeded, {"base_rates": {"nvidia_h100": "5.00"},
                                                        "platform_fee_percent": "7.5"}, "admin:alice", clock.now_ns())
    assert v2.version == 2
    assert v2.base_rates["nvidia_h100"] == D("5.00")
    assert v2.base_rates["nvidia_a100"] == D("2.00")  # merged, not replaced
    assert v2.platform_fee_percent == D("7.5")
    assert pricing_service.current_book(session, seeded) == v2
    v1 = pricing_service.get_book(session, seeded, 1)
    assert v1.base_rates["nvidia_h100"] == D("4.00") and v1.platform_fee_percent == D("5.0")
    rows = pricing_service.list_books(session, seeded)
    assert [(r.version, r.created_by) for r in rows] == [(2, "admin:alice"), (1, "system:seed")]
    with pytest.raises(PriceBookVersionNotFound):
        pricing_service.get_book(session, seeded, 3)


def test_a_null_rate_removes_a_model(session, seeded, clock):
    v2 = pricing_service.publish_book(session, seeded, {"base_rates": {"nvidia_a100": None}}, "a", clock.now_ns())
    assert "nvidia_a100" not in v2.base_rates


@pytest.mark.parametrize(("changes", "field"), [
    ({"base_rates": {"nvidia_h100": "-1"}}, "base_rates.nvidia_h100"),
    ({"base_rates": {"nvidia_h100": "0.0000000000000000001"}}, "base_rates.nvidia_h100"),
    ({"platform_fee_percent": "101"}, "platform_fee_percent"),
    ({"platform_fee_percent": "-1"}, "platform_fee_percent"),
    ({"granularity": "hour"}, "granularity"),
    ({"demand_curve": [["0.5", "1"], ["0.5", "2"]]}, "demand_curve.1.0"),
    ({"demand_curve": [["0", "1"], ["1.2", "2"]]}, "demand_curve.1.0"),
    ({"asset": "NOPE"}, "asset"),
    ({"tier_rates": {"M3": {"asset": "XYZ", "hourly": "1"}}}, "tier_rates.M3.asset"),
    ({"version": 9}, "version"),
])
def test_publish_validates_and_writes_nothing_on_error(session, seeded, clock, changes, field):
    with pytest.raises(InvalidPriceBook) as exc:
        pricing_service.publish_book(session, seeded, changes, "a", clock.now_ns())
    assert exc.value.status == 422
    assert field in [e["field"] for e in exc.value.extra["errors"]]
    assert pricing_service.current_book(session, seeded).version == 1


def test_the_first_book_can_be_published_from_scratch(session, tenant, clock):
    book = pricing_service.publish_book(session, tenant, {"asset": "USDC", "base_rates": {"gpu": "1.5"}}, "a",
                                        clock.now_ns())
    assert (book.version, book.asset, book.granularity, book.platform_fee_percent) == (1, "USDC", "second", 0)


def test_provider_minimum_set_get_replace_and_use(session, seeded, clock):
    assert pricing_service.get_provider_min(session, seeded, "demo-provider", "nvidia_rtx_4090", asset="DGPU") is None
    pricing_service.set_provider_min(session, seeded, "demo-provider", "nvidia_rtx_4090", D("0.40"), clock.now_ns())
    pricing_service.set_provider_min(session, seeded, "demo-provider", "nvidia_rtx_4090", D("0.45"), clock.now_ns())
    assert pricing_service.get_provider_min(session, seeded, "demo-provider", "nvidia_rtx_4090",
                                            asset="DGPU") == D("0.45")
    device = catalog_service.get_device(session, seeded, "gpu-4090-001")
    q = pricing_service.quote_for_device(session, seeded, device, vram_gb_requested=12, utilisation=D("0.5"))
    assert q.hourly_rate == D("0.45")  # the floor beats 0.25
    assert q.estimated_power_w == 450  # defaults to the device's power limit


def test_provider_minimum_validation(session, seeded, clock):
    with pytest.raises(UnknownProvider) as exc:
        pricing_service.set_provider_min(session, seeded, "ghost", "nvidia_rtx_4090", D("1"), clock.now_ns())
    assert exc.value.code == "provider_not_found"
    with pytest.raises(InvalidRate):
        pricing_service.set_provider_min(session, seeded, "demo-provider", "nvidia_a100", D("-1"), clock.now_ns())
    # The session is still usable after the refused insert.
    pricing_service.set_provider_min(session, seeded, "demo-provider", "nvidia_a100", D("1"), clock.now_ns())


def test_quote_for_device_gpu_and_tier(session, seeded):
    h100 = catalog_service.get_device(session, seeded, "gpu-h100-001")
    util = catalog_service.utilisation(session, seeded, gpu_model="nvidia_h100", busy_device_ids={"gpu-h100-002"})
    assert util == D("0.5")
    q = pricing_service.quote_for_device(session, seeded, h100, utilisation=util)
    assert (q.hourly_rate, q.estimated_hourly_total, q.vram_gb) == (D("4.00"), D("4.700"), 80)

    m2 = catalog_service.get_device(session, seeded, "device-m2-001")
    q = pricing_service.quote_for_device(session, seeded, m2, utilisation=D(0))
    assert (q.asset, q.tier, q.hourly_rate) == ("SOL", "M2", D("0.001"))
    assert cost_minor(q, 9, seconds=D("15.12"), billable=False) == 4200


def test_tenants_have_separate_books(session, seeded, clock):
    other = make_tenant(session, seeded + "-b", clock)
    with pytest.raises(PriceBookMissing):
        pricing_service.current_book(session, other)
    pricing_service.publish_book(session, other, {"asset": "USD", "base_rates": {"nvidia_a100": "3"}}, "b",
                                 clock.now_ns())
    assert pricing_service.current_book(session, other).asset == "USD"
    assert pricing_service.current_book(session, seeded).asset == "DGPU"
    assert pricing_service.current_book(session, seeded).version == 1
    # A provider minimum in one tenant is invisible in the other.
    pricing_service.set_provider_min(session, seeded, "demo-provider", "nvidia_a100", D("9"), clock.now_ns())
    assert pricing_service.get_provider_min(session, other, "demo-provider", "nvidia_a100", asset="DGPU") is None
