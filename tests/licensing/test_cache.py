"""Cache invalidation: locally at once, and across processes sharing Redis (two runtimes here,
each with its own local cache, subscriber and Redis connection — as two server processes)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from meterline.clock import FrozenClock
from meterline.config import Settings
from meterline.db.engine import Database
from meterline.licensing.audit import AuditBuffer
from meterline.licensing.cache import LicenseCache
from meterline.licensing.runtime import LicensingRuntime
from meterline.licensing.service import licensing_service
from tests.conftest import REDIS_URL
from tests.factories import make_license, make_licensing_catalogue

needs_redis = pytest.mark.skipif(not REDIS_URL, reason="METERLINE_TEST_REDIS_URL not set")


def _runtime(db: Database, redis_url: str | None) -> LicensingRuntime:
    cache = LicenseCache(redis_url=redis_url)
    assert cache.wait_ready()
    return LicensingRuntime(db, Settings(database_url=db.url), cache=cache, audit=AuditBuffer(db, interval_s=3600))


@pytest.fixture
def pair(db: Database) -> Iterator[tuple[LicensingRuntime, LicensingRuntime]]:
    a, b = _runtime(db, REDIS_URL), _runtime(db, REDIS_URL)
    yield a, b
    a.close()
    b.close()


def _eventually(check: object, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@needs_redis
def test_a_change_in_one_process_invalidates_the_other(pair: tuple[LicensingRuntime, LicensingRuntime],
                                                       db: Database, clock: FrozenClock, tenant_id: str) -> None:
    a, b = pair
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
        lic = make_license(s, tenant_id, clock, cameras_allowed=1)
    now = clock.now_ns()
    assert a.validate(tenant_id, lic, "cam", None, now).allowed
    assert not b.validate(tenant_id, lic, "cam-2", None, now).allowed  # b caches a refusal
    assert a.validate_cached(tenant_id, lic, "cam", now) is not None  # warm in a
    with db.session() as s:
        b.bind(s)
        licensing_service.update_license(s, tenant_id, lic, now_ns=now, status="suspended", cameras_allowed=2)
    # b (the writer) sees it at once; a as soon as the published message arrives.
    assert b.validate(tenant_id, lic, "cam", None, now).code == "license_suspended"
    assert _eventually(lambda: a.validate_cached(tenant_id, lic, "cam", now) is None)
    assert a.validate(tenant_id, lic, "cam", None, now).code == "license_suspended"
    with db.session() as s:
        a.bind(s)
        licensing_service.update_license(s, tenant_id, lic, now_ns=now, status="active")
    assert _eventually(lambda: b.validate_cached(tenant_id, lic, "cam-2", now) is None)
    assert b.validate(tenant_id, lic, "cam-2", None, now).allowed  # the cached refusal died too


@needs_redis
def test_a_cold_process_fills_from_redis(pair: tuple[LicensingRuntime, LicensingRuntime], db: Database,
                                         clock: FrozenClock, tenant_id: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pair
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
        lic = make_license(s, tenant_id, clock)
    assert a.validate(tenant_id, lic, "cam", None, clock.now_ns()).allowed
    a.cache.invalidate([])  # no-op
    # a shared its state (before activation) in Redis: b needs the database only to activate "cam"
    # for itself, which finds it already activated.
    assert b.validate(tenant_id, lic, "cam", None, clock.now_ns()).allowed
    monkeypatch.setattr(b.db, "session", lambda *a, **k: (_ for _ in ()).throw(AssertionError("db used")))
    assert b.validate(tenant_id, lic, "cam", None, clock.now_ns()).allowed


def test_in_process_cache_invalidates_on_commit_not_before(db: Database, clock: FrozenClock, tenant_id: str) -> None:
    rt = _runtime(db, None)
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
        lic = make_license(s, tenant_id, clock)
    now = clock.now_ns()
    assert rt.validate(tenant_id, lic, "cam", None, now).allowed
    with db.session() as s:
        rt.bind(s)
        licensing_service.update_license(s, tenant_id, lic, now_ns=now, status="suspended")
        assert rt.validate_cached(tenant_id, lic, "cam", now) is not None  # not committed yet
    assert rt.validate_cached(tenant_id, lic, "cam", now) is None
    assert rt.validate(tenant_id, lic, "cam", None, now).code == "license_suspended"
    with pytest.raises(RuntimeError), db.session() as s:
        rt.bind(s)
        licensing_service.update_license(s, tenant_id, lic, now_ns=now, status="active")
        raise RuntimeError("rolled back")
    assert rt.validate(tenant_id, lic, "cam", None, now).code == "license_suspended"


def test_ttl_expires_entries(db: Database, clock: FrozenClock, tenant_id: str) -> None:
    rt = LicensingRuntime(db, Settings(database_url=db.url), cache=LicenseCache(license_ttl_s=3600),
                          audit=AuditBuffer(db, interval_s=3600))
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
        lic = make_license(s, tenant_id, clock)
    assert rt.validate(tenant_id, lic, "cam", None, clock.now_ns()).allowed
    clock.advance(3599)
    assert rt.validate_cached(tenant_id, lic, "cam", clock.now_ns()) is not None
    clock.advance(1)
    assert rt.validate_cached(tenant_id, lic, "cam", clock.now_ns()) is None
