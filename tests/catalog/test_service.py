"""Catalog service: create/get/list, filters, utilisation, the demo seed and tenant isolation."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest

from meterline.catalog.service import (
    CatalogEntryExists,
    DeviceCreate,
    DeviceNotFound,
    GpuModelNotFound,
    InvalidCatalogEntry,
    ProviderNotFound,
    TierNotFound,
    catalog_service,
)
from tests.factories import make_tenant


@pytest.fixture
def tenant(session, tenant_id, clock) -> str:
    return make_tenant(session, tenant_id, clock)


def _basics(session, tenant: str, now: int) -> None:
    catalog_service.create_gpu_model(session, tenant, id="nvidia_rtx_4090", name="RTX 4090", vram_gb=24,
                                     default_power_w=450, now_ns=now)
    catalog_service.create_tier(session, tenant, id="GPU", name="GPU", now_ns=now)
    catalog_service.create_provider(session, tenant, id="p1", name="Provider One", owner_id="user-1", now_ns=now)


def test_create_get_list_each_kind(session, tenant, clock):
    now = clock.now_ns()
    _basics(session, tenant, now)
    device = catalog_service.create_device(
        session, tenant,
        DeviceCreate(id="d1", provider_id="p1", tier_id="GPU", name="Box 1", region="West Coast",
                     gpu_model_id="nvidia_rtx_4090", ram_gb=64, uptime_bp=9980, audited=True),
        now,
    )
    # VRAM and power default to the GPU model's.
    assert (device.vram_gb, device.power_limit_w, device.status) == (24, 450, "available")
    assert catalog_service.get_device(session, tenant, "d1").name == "Box 1"
    assert catalog_service.get_gpu_model(session, tenant, "nvidia_rtx_4090").vram_gb == 24
    assert catalog_service.get_tier(session, tenant, "GPU").name == "GPU"
    assert catalog_service.get_provider(session, tenant, "p1").owner_id == "user-1"
    assert [m.id for m in catalog_service.list_gpu_models(session, tenant)] == ["nvidia_rtx_4090"]
    assert [t.id for t in catalog_service.list_tiers(session, tenant)] == ["GPU"]
    assert [p.id for p in catalog_service.list_providers(session, tenant, owner_id="user-1")] == ["p1"]
    assert [d.id for d in catalog_service.list_devices(session, tenant)] == ["d1"]


@pytest.mark.parametrize(("getter", "error", "code"), [
    (catalog_service.get_device, DeviceNotFound, "device_not_found"),
    (catalog_service.get_tier, TierNotFound, "tier_not_found"),
    (catalog_service.get_gpu_model, GpuModelNotFound, "gpu_model_not_found"),
    (catalog_service.get_provider, ProviderNotFound, "provider_not_found"),
])
def test_missing_rows_are_404_states(session, tenant, getter, error, code):
    with pytest.raises(error) as exc:
        getter(session, tenant, "nope")
    assert exc.value.code == code and exc.value.status == 404


def test_a_device_needs_its_provider_tier_and_model(session, tenant, clock):
    now = clock.now_ns()
    _basics(session, tenant, now)
    base: dict[str, Any] = {"id": "d1", "provider_id": "p1", "tier_id": "GPU", "name": "x"}
    with pytest.raises(ProviderNotFound):
        catalog_service.create_device(session, tenant, DeviceCreate(**{**base, "provider_id": "p9"}), now)
    with pytest.raises(TierNotFound):
        catalog_service.create_device(session, tenant, DeviceCreate(**{**base, "tier_id": "M9"}), now)
    with pytest.raises(GpuModelNotFound):
        catalog_service.create_device(session, tenant, DeviceCreate(**base, gpu_model_id="nvidia_b200"), now)


@pytest.mark.parametrize("bad", [
    {"status": "on_fire"},
    {"uptime_bp": 10_001},
    {"uptime_bp": -1},
    {"ram_gb": -8},
    {"vram_gb": 48, "gpu_model_id": "nvidia_rtx_4090"},  # more than the card has
    {"id": "has space"},
    {"id": ""},
])
def test_invalid_devices_are_refused(session, tenant, clock, bad):
    now = clock.now_ns()
    _basics(session, tenant, now)
    data: dict[str, Any] = {"id": "d1", "provider_id": "p1", "tier_id": "GPU", "name": "x", **bad}
    with pytest.raises(InvalidCatalogEntry) as exc:
        catalog_service.create_device(session, tenant, DeviceCreate(**data), now)
    assert exc.value.code == "invalid_catalog_entry" and exc.value.status == 422


def test_duplicate_ids_are_409_and_leave_the_session_usable(session, tenant, clock):
    now = clock.now_ns()
    _basics(session, tenant, now)
    with pytest.raises(CatalogEntryExists) as exc:
        catalog_service.create_tier(session, tenant, id="GPU", name="again", now_ns=now)
    assert exc.value.status == 409
    catalog_service.create_tier(session, tenant, id="M2", name="M2", now_ns=now)
    assert len(catalog_service.list_tiers(session, tenant)) == 2


def test_seed_demo_has_si64_m2_listing_and_dante_gpus_and_is_idempotent(session, tenant, clock):
    now = clock.now_ns()
    catalog_service.seed_demo(session, tenant, now)
    catalog_service.seed_demo(session, tenant, now)

    m2 = catalog_service.list_devices(session, tenant, tier="M2")
    assert len(m2) >= 4
    assert {d.region for d in m2} == {"West Coast", "East Coast"}
    first = catalog_service.get_device(session, tenant, "device-m2-001")
    assert (first.name, first.uri, first.address, first.region, first.ram_gb, first.uptime_bp, first.audited) == (
        "M2-DEV-01", "node001.si64.network", "192.168.1.101", "West Coast", 8, 9980, True)

    models = {m.id: (m.vram_gb, m.default_power_w) for m in catalog_service.list_gpu_models(session, tenant)}
    assert models == {"nvidia_rtx_4090": (24, 450), "nvidia_a100": (80, 400), "nvidia_h100": (80, 700)}
    for model in models:
        devices = catalog_service.list_devices(session, tenant, gpu_model=model)
        assert len(devices) >= 2
        assert all(d.power_limit_w == models[model][1] for d in devices)
    assert catalog_service.get_provider(session, tenant, "demo-provider")


def test_list_devices_filters(session, tenant, clock):
    catalog_service.seed_demo(session, tenant, clock.now_ns())
    east_m2 = catalog_service.list_devices(session, tenant, tier="M2", region="East Coast")
    assert [d.id for d in east_m2] == ["device-m2-003", "device-m2-004"]
    catalog_service.set_device_status(session, tenant, "device-m2-003", "maintenance")
    assert [d.id for d in catalog_service.list_devices(session, tenant, tier="M2", status="maintenance")] == [
        "device-m2-003"]
    assert catalog_service.list_devices(session, tenant, tier="M2", gpu_model="nvidia_a100") == []
    with pytest.raises(InvalidCatalogEntry):
        catalog_service.list_devices(session, tenant, status="melting")


def test_utilisation_counts_busy_in_service_devices(session, tenant, clock):
    catalog_service.seed_demo(session, tenant, clock.now_ns())
    assert catalog_service.utilisation(session, tenant, tier="M2", busy_device_ids=set()) == 0
    assert catalog_service.utilisation(session, tenant, tier="M2", busy_device_ids={"device-m2-001"}) == D("0.25")
    # A device in maintenance is not supply; one marked busy counts as busy.
    catalog_service.set_device_status(session, tenant, "device-m2-004", "maintenance")
    catalog_service.set_device_status(session, tenant, "device-m2-002", "busy")
    assert catalog_service.utilisation(session, tenant, tier="M2", busy_device_ids={"device-m2-001"}) == D(
        "0.666666666666666667")
    busy_4090 = {"gpu-4090-001", "gpu-4090-002", "gpu-4090-003"}
    assert catalog_service.utilisation(session, tenant, gpu_model="nvidia_rtx_4090", busy_device_ids=busy_4090) == 1
    assert catalog_service.utilisation(session, tenant, gpu_model="amd_mi300", busy_device_ids=set()) == 0


def test_heartbeat_records_time_and_uptime(session, tenant, clock):
    catalog_service.seed_demo(session, tenant, clock.now_ns())
    clock.advance(30)
    d = catalog_service.record_heartbeat(session, tenant, "device-m2-001", clock.now_ns(), uptime_bp=9990)
    assert (d.last_heartbeat_at, d.uptime_bp) == (clock.now_ns(), 9990)


def test_tenants_never_see_each_others_catalog(session, tenant, clock):
    other = make_tenant(session, tenant + "-other", clock)
    catalog_service.seed_demo(session, tenant, clock.now_ns())
    assert catalog_service.list_devices(session, other) == []
    assert catalog_service.list_tiers(session, other) == []
    with pytest.raises(DeviceNotFound):
        catalog_service.get_device(session, other, "device-m2-001")
    # Another tenant's provider can't be used either.
    catalog_service.create_tier(session, other, id="M2", name="M2", now_ns=clock.now_ns())
    with pytest.raises(ProviderNotFound):
        catalog_service.create_device(session, other, DeviceCreate(id="x", provider_id="si64", tier_id="M2", name="x"),
                                      clock.now_ns())
    # The same ids can exist in both tenants.
    catalog_service.seed_demo(session, other, clock.now_ns())
    assert len(catalog_service.list_devices(session, other)) == len(catalog_service.list_devices(session, tenant))
