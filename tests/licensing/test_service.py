"""Licensing rules through the runtime (cache + service) on both backends: every answer code,
activation at the allowance edge under concurrency, trial expiry, devices, audit, isolation."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from meterline.clock import FrozenClock
from meterline.config import Settings
from meterline.db.engine import Database
from meterline.licensing import tasks
from meterline.licensing.audit import AuditBuffer
from meterline.licensing.cache import LicenseCache
from meterline.licensing.models import License, LicenseAuditEntry, LicensePlan
from meterline.licensing.runtime import LicensingRuntime
from meterline.licensing.service import (
    DAY_NS,
    DEMO_FEATURES,
    AllowanceBelowActive,
    GrowthPackNotFound,
    InvalidLicenseRequest,
    LicenseCode,
    LicenseExists,
    LicenseNotFound,
    PlanNotFound,
    licensing_service,
)
from tests.factories import make_license, make_licensing_catalogue


@pytest.fixture
def rt(db: Database) -> Iterator[LicensingRuntime]:
    settings = Settings(database_url=db.url, device_dead_after_s=60, license_audit_retention_days=30)
    runtime = LicensingRuntime(db, settings, cache=LicenseCache(), audit=AuditBuffer(db, interval_s=3600))
    yield runtime
    runtime.close()


@pytest.fixture
def tenant(db: Database, clock: FrozenClock, tenant_id: str) -> str:
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
    return tenant_id


def _license(db: Database, rt: LicensingRuntime, tenant: str, clock: FrozenClock, **kw: object) -> str:
    with db.session() as s:
        rt.bind(s)
        return make_license(s, tenant, clock, **kw)  # type: ignore[arg-type]


def _update(db: Database, rt: LicensingRuntime, tenant: str, licensee: str, clock: FrozenClock, **kw: object) -> None:
    with db.session() as s:
        rt.bind(s)
        licensing_service.update_license(s, tenant, licensee, now_ns=clock.now_ns(), **kw)  # type: ignore[arg-type]


def test_demo_catalogue_matches_the_seed(db: Database, tenant: str) -> None:
    with db.session(write=False) as s:
        plans = {p.id: p for p in licensing_service.list_plans(s, tenant)}
        packs = {p.id: p for p in licensing_service.list_packs(s, tenant)}
        features = licensing_service.feature_map(s, tenant)
        lic = licensing_service.get_license(s, tenant, "tenant-123")
        assert (lic.mode, lic.cameras_allowed, lic.packs) == ("base", 100, ["advanced_analytics", "active_transport"])
    assert plans["base_license"].price_minor == 6000 and plans["base_license"].unit == "camera"
    assert (plans["trial"].trial_cameras, plans["trial"].trial_days) == (2, 90)
    assert plans["edge_device_basic"].price_minor == 5000 and plans["edge_device_managed"].price_minor == 6500
    assert packs["advanced_analytics"].price_minor == 2000 and packs["intelligence"].price_minor == 40000
    assert packs["intelligence"].unit == "tenant"
    assert len(features) == 33 == sum(len(v) for v in DEMO_FEATURES.values())
    assert set(features.values()) == set(packs)


def test_every_validation_code(db: Database, rt: LicensingRuntime, tenant: str, clock: FrozenClock) -> None:
    now = clock.now_ns()
    assert rt.validate(tenant, "nobody", "cam", None, now).code == LicenseCode.LICENSE_NOT_FOUND
    lic = _license(db, rt, tenant, clock, cameras_allowed=1)
    ok = rt.validate(tenant, lic, "cam-1", "dev-1", now)
    assert ok.allowed and ok.code == LicenseCode.OK and ok.snapshot is not None and ok.snapshot.mode == "base"
    full = rt.validate(tenant, lic, "cam-2", "dev-1", now)
    assert (full.allowed, full.code) == (False, LicenseCode.CAMERA_LIMIT_EXCEEDED)
    assert rt.validate(tenant, lic, "cam-1", "dev-1", now).allowed  # activated cameras stay valid
    _update(db, rt, tenant, lic, clock, status="suspended")
    assert rt.validate(tenant, lic, "cam-1", None, now).code == LicenseCode.LICENSE_SUSPENDED
    _update(db, rt, tenant, lic, clock, status="active", valid_until=now + 10 * 10**9)
    assert rt.validate(tenant, lic, "cam-1", None, now).allowed
    clock.advance(10)
    assert rt.validate(tenant, lic, "cam-1", None, clock.now_ns()).code == LicenseCode.LICENSE_EXPIRED
    with db.session() as s:
        rt.bind(s)
        future = make_license(s, tenant, clock, valid_until=None)
        licensing_service.get_license(s, tenant, future).valid_from = clock.now_ns() + DAY_NS
    assert rt.validate(tenant, future, "c", None, clock.now_ns()).code == LicenseCode.LICENSE_NOT_YET_VALID


def test_trial_is_two_cameras_for_ninety_days(db: Database, rt: LicensingRuntime, tenant: str,
                                              clock: FrozenClock) -> None:
    lic = _license(db, rt, tenant, clock, plan_id="trial")
    now = clock.now_ns()
    assert [rt.validate(tenant, lic, f"c{i}", None, now).code for i in range(3)] == [
        "ok", "ok", "camera_limit_exceeded"]
    clock.advance(90 * 86_400 - 1)
    assert rt.validate(tenant, lic, "c0", None, clock.now_ns()).allowed  # answered from cache, still in time
    clock.advance(1)
    answer = rt.validate(tenant, lic, "c0", None, clock.now_ns())  # same cache entry: time decides
    assert (answer.allowed, answer.code, answer.snapshot and answer.snapshot.mode) == (
        False, "trial_expired", "trial")


def test_releasing_a_camera_frees_its_slot(db: Database, rt: LicensingRuntime, tenant: str,
                                           clock: FrozenClock) -> None:
    lic = _license(db, rt, tenant, clock, cameras_allowed=1)
    now = clock.now_ns()
    assert rt.validate(tenant, lic, "a", None, now).allowed
    assert not rt.validate(tenant, lic, "b", None, now).allowed  # refusal is cached...
    with db.session() as s:
        rt.bind(s)
        licensing_service.release_camera(s, tenant, lic, "a")
    assert rt.validate(tenant, lic, "b", None, now).allowed  # ...and dies with the release
    assert not rt.validate(tenant, lic, "a", None, now).allowed


@pytest.mark.parametrize("allowed", [100])
def test_the_100th_and_101st_camera_concurrently(db: Database, rt: LicensingRuntime, tenant: str,
                                                 clock: FrozenClock, allowed: int) -> None:
    lic = _license(db, rt, tenant, clock, cameras_allowed=allowed)
    for i in range(allowed - 2):
        assert rt.validate(tenant, lic, f"pre-{i}", None, clock.now_ns()).allowed
    # Two separate runtimes (two processes' caches) race for the last two slots with 8 new cameras,
    # plus one camera requested from both at once.
    other = LicensingRuntime(db, rt.settings, cache=LicenseCache(), audit=rt.audit)
    barrier = threading.Barrier(10)

    def go(i: int) -> tuple[str, bool]:
        runtime = rt if i % 2 else other
        cam = "twin" if i >= 8 else f"new-{i}"
        barrier.wait()
        return cam, runtime.validate(tenant, lic, cam, None, clock.now_ns()).allowed

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(go, range(10)))
    winners = {cam for cam, ok in results if ok}
    assert len(winners) == 2, results
    if "twin" in winners:
        assert all(ok for cam, ok in results if cam == "twin")  # both requests for it agree
    with db.session(write=False) as s:
        row = licensing_service.get_license(s, tenant, lic)
        assert row.cameras_active == allowed == len(licensing_service.list_cameras(s, tenant, lic))
    assert rt.validate(tenant, lic, "pre-0", None, clock.now_ns()).allowed
    assert rt.validate(tenant, lic, "late", None, clock.now_ns()).code == "camera_limit_exceeded"


def test_warm_validation_does_not_touch_the_database(db: Database, rt: LicensingRuntime, tenant: str,
                                                     clock: FrozenClock, monkeypatch: pytest.MonkeyPatch) -> None:
    lic = _license(db, rt, tenant, clock)
    assert rt.validate(tenant, lic, "cam", None, clock.now_ns()).allowed

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("database used on a warm validation")

    monkeypatch.setattr(rt.db, "session", boom)
    for _ in range(3):
        answer = rt.validate_cached(tenant, lic, "cam", clock.now_ns())
        assert answer is not None and answer.allowed
        assert rt.validate(tenant, lic, "cam", None, clock.now_ns()).allowed


def test_entitlement_codes(db: Database, rt: LicensingRuntime, tenant: str, clock: FrozenClock) -> None:
    lic = _license(db, rt, tenant, clock, packs=["advanced_analytics"])
    now = clock.now_ns()
    got = rt.entitlement(tenant, lic, None, "heatmaps", now)
    assert (got.allowed, got.code, got.growth_pack) == (True, "ok", "advanced_analytics")
    got = rt.entitlement(tenant, lic, None, "anomaly_detection", now)
    assert (got.allowed, got.code, got.growth_pack) == (False, "growth_pack_not_enabled", "intelligence")
    assert rt.entitlement(tenant, lic, None, "teleportation", now).code == "feature_not_found"
    assert rt.entitlement(tenant, lic, "cam-x", "heatmaps", now).code == "camera_not_activated"
    assert rt.validate(tenant, lic, "cam-x", None, now).allowed
    assert rt.entitlement(tenant, lic, "cam-x", "heatmaps", now).allowed
    assert rt.entitlement(tenant, "nobody", None, "heatmaps", now).code == "license_not_found"
    _update(db, rt, tenant, lic, clock, packs=["advanced_analytics", "intelligence"])
    assert rt.entitlement(tenant, lic, None, "anomaly_detection", now).allowed  # invalidated at once


def test_a_new_pack_feature_invalidates_the_feature_cache(db: Database, rt: LicensingRuntime, tenant: str,
                                                          clock: FrozenClock) -> None:
    lic = _license(db, rt, tenant, clock, packs=["intelligence"])
    assert rt.entitlement(tenant, lic, None, "mind_reading", clock.now_ns()).code == "feature_not_found"
    with db.session() as s:
        rt.bind(s)
        licensing_service.add_feature(s, tenant, id="mind_reading", pack_id="intelligence", now_ns=clock.now_ns())
    assert rt.entitlement(tenant, lic, None, "mind_reading", clock.now_ns()).allowed


def test_management_errors(db: Database, tenant: str, clock: FrozenClock) -> None:
    now = clock.now_ns()
    with db.session() as s:
        with pytest.raises(PlanNotFound):
            licensing_service.create_license(s, tenant, licensee_id="x", plan_id="nope", now_ns=now,
                                             cameras_allowed=1)
        with pytest.raises(GrowthPackNotFound):
            licensing_service.create_license(s, tenant, licensee_id="x", plan_id="base_license", now_ns=now,
                                             cameras_allowed=1, packs=["nope"])
        with pytest.raises(InvalidLicenseRequest):
            licensing_service.create_license(s, tenant, licensee_id="x", plan_id="base_license", now_ns=now)
        with pytest.raises(InvalidLicenseRequest):
            licensing_service.create_license(s, tenant, licensee_id="bad|id", plan_id="trial", now_ns=now)
        with pytest.raises(InvalidLicenseRequest):
            licensing_service.create_license(s, tenant, licensee_id="x", plan_id="edge_device_basic", now_ns=now)
        with pytest.raises(LicenseExists):
            licensing_service.create_license(s, tenant, licensee_id="tenant-123", plan_id="trial", now_ns=now)
        with pytest.raises(LicenseNotFound):
            licensing_service.update_license(s, tenant, "nobody", now_ns=now, status="suspended")
    with db.session() as s:
        lic = make_license(s, tenant, clock, cameras_allowed=2)
    with db.session() as s:
        licensing_service.activate_camera(s, tenant, lic, "a", None, now)
        licensing_service.activate_camera(s, tenant, lic, "b", None, now)
    with db.session() as s, pytest.raises(AllowanceBelowActive):
        licensing_service.update_license(s, tenant, lic, now_ns=now, cameras_allowed=1)


def test_tenants_never_see_each_others_licensees(db: Database, rt: LicensingRuntime, tenant: str,
                                                 clock: FrozenClock) -> None:
    other = tenant + "-other"
    with db.session() as s:
        make_licensing_catalogue(s, other, clock)
        licensing_service.update_license(s, other, "tenant-123", now_ns=clock.now_ns(), status="suspended")
    lic = _license(db, rt, tenant, clock)
    now = clock.now_ns()
    assert rt.validate(tenant, "tenant-123", "cam", None, now).allowed
    assert rt.validate(other, "tenant-123", "cam", None, now).code == "license_suspended"
    assert rt.validate(other, lic, "cam", None, now).code == "license_not_found"
    with db.session(write=False) as s, pytest.raises(LicenseNotFound):
        licensing_service.get_license(s, other, lic)


def test_devices_register_within_allowance_and_die_when_silent(db: Database, rt: LicensingRuntime, tenant: str,
                                                               clock: FrozenClock) -> None:
    lic = _license(db, rt, tenant, clock, cameras_allowed=3, devices_allowed=1)

    def beat(device: str) -> str:
        with db.session() as s:
            rt.bind(s)
            return licensing_service.heartbeat(s, tenant, lic, device, software_version="1.0", cameras=["a"],
                                               now_ns=clock.now_ns()).code

    assert beat("d1") == "ok"
    assert beat("d2") == "device_limit_exceeded"
    assert rt.validate(tenant, lic, "cam-on-d1", "d1", clock.now_ns()).allowed
    assert rt.validate(tenant, lic, "cam-on-d3", "d3", clock.now_ns()).allowed
    def states() -> list[str]:
        with db.session(write=False) as s:
            return [d.state for d in licensing_service.list_devices(s, tenant, lic)]

    # (The sweep is across tenants: other tests' devices in this database may die with it.)
    clock.advance(30)
    tasks.cull_dead_devices(rt, clock, rt.settings)
    assert states() == ["alive"]
    clock.advance(31)
    assert tasks.cull_dead_devices(rt, clock, rt.settings) >= 1
    with db.session(write=False) as s:
        assert [d.state for d in licensing_service.list_devices(s, tenant, lic)] == ["dead"]
        assert [c.camera_id for c in licensing_service.list_cameras(s, tenant, lic)] == ["cam-on-d3"]
    assert beat("d2") == "ok"  # the dead device's slot is free
    assert beat("d1") == "device_limit_exceeded"


def test_one_device_racing_its_own_first_heartbeat_takes_one_slot(db: Database, rt: LicensingRuntime, tenant: str,
                                                                  clock: FrozenClock) -> None:
    """A device retrying (or two gateways) sends its first heartbeat several times at once;
    later, after it died, its revival races the same way. Each time: every request answers
    ok, and the device holds one slot of the allowance."""
    lic = _license(db, rt, tenant, clock, cameras_allowed=3, devices_allowed=5)
    racers = 8

    def race() -> list[str]:
        barrier = threading.Barrier(racers)

        def beat(_: int) -> str:
            barrier.wait()
            with db.session() as s:
                rt.bind(s)
                return licensing_service.heartbeat(s, tenant, lic, "twin", software_version="1.0", cameras=[],
                                                   now_ns=clock.now_ns()).code

        with ThreadPoolExecutor(racers) as pool:
            return list(pool.map(beat, range(racers)))

    def slots() -> tuple[int, list[str]]:
        with db.session(write=False) as s:
            row = licensing_service.get_license(s, tenant, lic)
            return row.devices_active, [d.state for d in licensing_service.list_devices(s, tenant, lic)]

    assert race() == ["ok"] * racers
    assert slots() == (1, ["alive"])
    clock.advance(61)
    assert tasks.cull_dead_devices(rt, clock, rt.settings) >= 1
    assert slots() == (0, ["dead"])
    assert race() == ["ok"] * racers
    assert slots() == (1, ["alive"])


def test_a_heartbeat_arriving_while_the_cull_marks_its_device_dead_revives_it(
        db: Database, rt: LicensingRuntime, tenant: str, clock: FrozenClock) -> None:
    """The heartbeat read the device as alive while the cull's uncommitted transaction was
    marking it dead, then only touched its timestamps: it answered alive, and the device
    stayed dead with its slot freed (a new device took it, and this one was refused next)."""
    lic = _license(db, rt, tenant, clock, cameras_allowed=3, devices_allowed=1)

    def beat() -> str:
        with db.session() as s:
            rt.bind(s)
            return licensing_service.heartbeat(s, tenant, lic, "d1", software_version="1.0", cameras=[],
                                               now_ns=clock.now_ns()).code

    assert beat() == "ok"
    clock.advance(61)
    with ThreadPoolExecutor(1) as pool, db.session() as culling:
        rt.bind(culling)
        dead = licensing_service.cull_dead_devices(culling, clock.now_ns(), dead_after_ns=60 * 10**9,
                                                   release_cameras=True)
        assert [d.device_id for d in dead] == ["d1"]
        answer = pool.submit(beat)  # arrives now, while the cull is not yet committed
        time.sleep(0.3)
    assert answer.result(timeout=30) == "ok"
    with db.session(write=False) as s:
        assert [d.state for d in licensing_service.list_devices(s, tenant, lic)] == ["alive"]
        assert licensing_service.get_license(s, tenant, lic).devices_active == 1


def test_audit_log_is_batched_and_pruned(db: Database, rt: LicensingRuntime, tenant: str, clock: FrozenClock) -> None:
    lic = _license(db, rt, tenant, clock)
    for i in range(5):
        answer = rt.validate(tenant, lic, f"c{i}", None, clock.now_ns())
        rt.record(tenant, "key_1", "validate", lic, answer, clock.now_ns(), camera_id=f"c{i}")
    assert rt.audit.pending() == 5
    assert tasks.flush_audit() >= 5
    with db.session(write=False) as s:
        rows = licensing_service.audit_entries(s, tenant, lic)
    assert len(rows) == 5 and {(r.principal, r.action, r.allowed, r.code) for r in rows} == {
        ("key_1", "validate", True, "ok")}
    clock.advance(31 * 86_400)
    answer = rt.validate(tenant, lic, "c0", None, clock.now_ns())
    rt.record(tenant, "key_1", "validate", lic, answer, clock.now_ns(), camera_id="c0")
    rt.audit.flush()
    tasks.prune_audit(rt, clock, rt.settings)
    with db.session(write=False) as s:
        assert len(licensing_service.audit_entries(s, tenant, lic)) == 1


def test_audit_queue_is_bounded_and_counts_drops(db: Database) -> None:
    buf = AuditBuffer(db, max_queue=2, interval_s=3600)
    from meterline.licensing.service import AuditRecord

    rec = AuditRecord("t", 1, "p", "validate", "l", None, None, None, True, "ok")
    for _ in range(5):
        buf.append(rec)
    assert (buf.pending(), buf.dropped) == (2, 3)
    buf._queue.clear()
    buf.close()


def test_migration_created_every_table(db: Database) -> None:
    with db.session(write=False) as s:
        for model in (License, LicensePlan, LicenseAuditEntry):
            assert s.scalar(select(func.count()).select_from(model)) is not None
