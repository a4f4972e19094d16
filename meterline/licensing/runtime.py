"""Validation and entitlement answers through the cache: what the HTTP routes call.

Each answer has two halves. `*_cached` does no I/O at all — it is called on the
event loop and answers whenever the cache is warm. The plain method is the slow
path, run in a threadpool: it fills the cache (from Redis or the database) and,
for a camera never seen before, activates it in its own short transaction —
the only database write a validation ever makes. Every answer is appended to the
audit queue, which a background thread writes in batches.

Changes made through a session are published to the cache after that session
commits (`bind`), so no other request can read the old answer once the
change is visible.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

from sqlalchemy import event
from sqlalchemy.orm import Session

from meterline.config import Settings
from meterline.db.engine import Database
from meterline.licensing.audit import AuditBuffer
from meterline.licensing.cache import Key, LicenseCache, LicenseEntry
from meterline.licensing.service import (
    AuditRecord,
    LicenseCode,
    LicenseSnapshot,
    changed_keys,
    entitlement_verdict,
    license_verdict,
    licensing_service,
)

_BOUND = "licensing.bound"


class Answer(NamedTuple):
    """A validation or entitlement answer. `snapshot` is None when there is no license.
    (A named tuple: one is built per validation, and a frozen dataclass costs twice as much.)"""

    allowed: bool
    code: str
    snapshot: LicenseSnapshot | None
    growth_pack: str | None = None


# What a licensee without a license is answered, given without reading or activating anything
# of the one named: a customer key asking about another customer's license
# (`api/v1/principals.speaks_for`) must not learn that it exists, nor use up its slots.
NOT_LICENSED = Answer(False, LicenseCode.LICENSE_NOT_FOUND, None)


class LicensingRuntime:
    def __init__(self, db: Database, settings: Settings, *, cache: LicenseCache | None = None,
                 audit: AuditBuffer | None = None) -> None:
        self.db = db
        self.settings = settings
        self.cache = cache or LicenseCache(license_ttl_s=settings.license_cache_ttl_s,
                                           entitlement_ttl_s=settings.entitlement_cache_ttl_s,
                                           redis_url=settings.redis_url)
        self.audit = audit or AuditBuffer(db, max_queue=settings.license_audit_queue_max,
                                          interval_s=settings.license_audit_flush_interval_s)

    # -- change publication ---------------------------------------------------------------
    def bind(self, session: Session) -> Session:
        """Invalidate what this session changed once it commits (never before: a reader
        refilling the cache in between would see the old rows and cache them)."""
        if not session.info.get(_BOUND):
            session.info[_BOUND] = True

            @event.listens_for(session, "after_commit")
            def _published(sess: Session) -> None:
                keys = changed_keys(sess)
                if keys:
                    self.cache.invalidate(list(keys))
                    keys.clear()

            @event.listens_for(session, "after_rollback")
            def _discarded(sess: Session) -> None:
                changed_keys(sess).clear()

        return session

    # -- validation -----------------------------------------------------------------------
    def validate_cached(self, tenant_id: str, licensee_id: str, camera_id: str, now_ns: int) -> Answer | None:
        entry = self.cache.get((tenant_id, licensee_id), now_ns)
        if entry is None:
            return None
        code = license_verdict(entry.snapshot, now_ns)
        if code != LicenseCode.OK:
            return Answer(False, code, entry.snapshot)
        if camera_id in entry.cameras:
            return Answer(True, LicenseCode.OK, entry.snapshot)
        if camera_id in entry.refused:
            return Answer(False, LicenseCode.CAMERA_LIMIT_EXCEEDED, entry.snapshot)
        return None

    def validate(self, tenant_id: str, licensee_id: str, camera_id: str, device_id: str | None,
                 now_ns: int) -> Answer:
        key = (tenant_id, licensee_id)
        answer = self.validate_cached(tenant_id, licensee_id, camera_id, now_ns)
        if answer is not None:
            return answer
        version, entry = self._entry(key, now_ns)
        code = license_verdict(entry.snapshot, now_ns)
        if code != LicenseCode.OK:
            return Answer(False, code, entry.snapshot)
        if camera_id in entry.cameras:
            return Answer(True, LicenseCode.OK, entry.snapshot)
        if camera_id in entry.refused:
            return Answer(False, LicenseCode.CAMERA_LIMIT_EXCEEDED, entry.snapshot)
        with self.db.session() as session:
            code, snap = licensing_service.activate_camera(session, tenant_id, licensee_id, camera_id, device_id,
                                                           now_ns)
        if code in (LicenseCode.OK, LicenseCode.CAMERA_LIMIT_EXCEEDED):
            self.cache.note_camera(key, version, camera_id, code == LicenseCode.OK)
        return Answer(code == LicenseCode.OK, code, snap)

    # -- a licensee the caller may not name (NOT_LICENSED) -----------------------------------
    def unlicensed_entitlement_cached(self, tenant_id: str, feature: str, now_ns: int) -> Answer | None:
        """As `entitlement_cached` for a licensee without a license (the pack is still named)."""
        features = self.cache.features(tenant_id, now_ns)
        if features is None:
            return None
        return Answer(False, LicenseCode.LICENSE_NOT_FOUND, None, features.get(feature))

    def unlicensed_entitlement(self, tenant_id: str, feature: str, now_ns: int) -> Answer:
        return Answer(False, LicenseCode.LICENSE_NOT_FOUND, None, self._features(tenant_id, now_ns).get(feature))

    # -- is there a license at all (usage reports) ------------------------------------------
    def licensed_cached(self, tenant_id: str, licensee_id: str, now_ns: int) -> bool | None:
        """Whether the licensee has a license (of any status), from the cache; None on a miss.
        No I/O. A licensee without one is cached too, until a license is issued to it."""
        entry = self.cache.get((tenant_id, licensee_id), now_ns)
        return None if entry is None else entry.snapshot is not None

    def licensed(self, tenant_id: str, licensee_id: str, now_ns: int) -> bool:
        """`licensed_cached`, filling the cache (Redis, then the database) on a miss."""
        return self._entry((tenant_id, licensee_id), now_ns)[1].snapshot is not None

    # -- entitlements ---------------------------------------------------------------------
    def entitlement_cached(self, tenant_id: str, licensee_id: str, camera_id: str | None, feature: str,
                           now_ns: int) -> Answer | None:
        features = self.cache.features(tenant_id, now_ns)
        entry = self.cache.get((tenant_id, licensee_id), now_ns)
        if features is None or entry is None:
            return None
        return self._entitlement(entry, features, camera_id, feature, now_ns, known_only=True)

    def entitlement(self, tenant_id: str, licensee_id: str, camera_id: str | None, feature: str,
                    now_ns: int) -> Answer:
        features = self._features(tenant_id, now_ns)
        key = (tenant_id, licensee_id)
        version, entry = self._entry(key, now_ns)
        answer = self._entitlement(entry, features, camera_id, feature, now_ns, known_only=True)
        if answer is not None:
            return answer
        assert camera_id is not None
        # A camera this process has not seen activated: maybe another process activated it.
        with self.db.session(write=False) as session:
            activated = licensing_service.is_activated(session, tenant_id, licensee_id, camera_id)
        if activated:
            self.cache.note_camera(key, version, camera_id, True)
            return self._entitlement(entry, features, None, feature, now_ns, known_only=False) or Answer(
                False, LicenseCode.CAMERA_NOT_ACTIVATED, entry.snapshot)
        return Answer(False, LicenseCode.CAMERA_NOT_ACTIVATED, entry.snapshot, features.get(feature))

    @staticmethod
    def _entitlement(entry: LicenseEntry, features: dict[str, str], camera_id: str | None, feature: str,
                     now_ns: int, *, known_only: bool) -> Answer | None:
        pack = features.get(feature)
        code = entitlement_verdict(entry.snapshot, pack, now_ns)
        if code == LicenseCode.OK and camera_id is not None and camera_id not in entry.cameras:
            return None  # the caller checks the database (or answers camera_not_activated)
        return Answer(code == LicenseCode.OK, code, entry.snapshot, pack)

    # -- audit ----------------------------------------------------------------------------
    def record(self, tenant_id: str, principal: str, action: str, licensee_id: str, answer: Answer, now_ns: int,
               *, camera_id: str | None = None, device_id: str | None = None, feature: str | None = None) -> None:
        self.audit.append(AuditRecord(tenant_id, now_ns, principal, action, licensee_id, camera_id, device_id,
                                      feature, answer.allowed, answer.code))

    # -- helpers --------------------------------------------------------------------------
    def _features(self, tenant_id: str, now_ns: int) -> dict[str, str]:
        """The tenant's feature → pack map, loading it on a miss."""
        features = self.cache.features(tenant_id, now_ns)
        if features is None:
            fversion = self.cache.version((tenant_id, ""))
            with self.db.session(write=False) as session:
                features = licensing_service.feature_map(session, tenant_id)
            self.cache.put_features(tenant_id, fversion, features, now_ns)
        return features

    def _entry(self, key: Key, now_ns: int) -> tuple[int, LicenseEntry]:
        """The live entry, loading it (Redis, then the database) on a miss."""
        version = self.cache.version(key)
        entry = self.cache.get(key, now_ns)
        if entry is not None and entry.version == version:
            return version, entry
        state = self.cache.load_shared(key, version)
        shared = state is not None
        if state is None:
            with self.db.session(write=False) as session:
                state = licensing_service.load_state(session, *key)
        return version, self.cache.put(key, version, state, now_ns, share=not shared)

    def close(self) -> None:
        self.audit.close()
        self.cache.close()


_SHARED: dict[tuple[str, str | None], LicensingRuntime] = {}
_SHARED_LOCK = threading.Lock()


def shared_runtime(db: Database, settings: Settings) -> LicensingRuntime:
    """One licensing runtime per (database, Redis) in a process, so the API and an in-process
    worker (`serve --dev`) invalidate the same local cache and drain the same audit queue.
    A process has one Settings, so the first caller's TTLs and queue size are everyone's; jobs
    take their own intervals from the settings they are given."""
    key = (db.url, settings.redis_url)
    with _SHARED_LOCK:
        rt = _SHARED.get(key)
        if rt is None:
            rt = _SHARED[key] = LicensingRuntime(db, settings)
        return rt
