"""Cached license answers: a local TTL cache keyed by a per-licensee version, shared through Redis.

Why versions: an answer cached in one process must die the moment any process
changes the license, a pack or a device. Each licensee (and each tenant's pack
catalogue, licensee ``""``) has a version number. A change bumps it — ``INCR``
of ``ml:lic:ver:{tenant}|{licensee}`` in Redis, then ``PUBLISH`` on
``ml:lic:invalidate`` — and every process's subscriber thread records the new
version, which makes its local entry for that key unreachable at once. Without
Redis the version lives in the process (one server, `serve --dev`).

Why local entries at all: with the entry and version both in local memory, a
warm validation costs two dict lookups and no I/O, so the hot path runs on the
event loop. Redis also holds each loaded state under its version (TTL = license
TTL) so a cold process fills from Redis instead of the database. If the
subscription drops, every local version is forgotten, so nothing stale survives
a missed message; the TTLs (license 1 h, entitlements 5 min, per seeds/002)
bound what a cache can ever hold.

A licensee's entry holds the license snapshot and the cameras activated when it
was read (a complete set: a camera not in it is either new or activated since,
and the activation path settles which with one insert). Refusals
(`camera_limit_exceeded`) are cached too: only a release or a license change —
both of which bump the version — can turn them into a yes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meterline.licensing.service import LicenseSnapshot, LicenseState

log = logging.getLogger(__name__)

NS = 1_000_000_000
CHANNEL = "ml:lic:invalidate"
Key = tuple[str, str]  # (tenant_id, licensee_id); licensee "" = the tenant's pack catalogue


@dataclass(slots=True)
class LicenseEntry:
    version: int
    expires_at: int
    snapshot: LicenseSnapshot | None
    cameras: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)


@dataclass(slots=True)
class FeatureEntry:
    version: int
    expires_at: int
    features: dict[str, str]


def _wire(key: Key) -> str:
    return f"{key[0]}|{key[1]}"


class LicenseCache:
    def __init__(self, *, license_ttl_s: float = 3600, entitlement_ttl_s: float = 300,
                 redis_url: str | None = None, max_entries: int = 200_000) -> None:
        self.license_ttl_ns = int(license_ttl_s * NS)
        self.entitlement_ttl_ns = int(entitlement_ttl_s * NS)
        self.max_entries = max_entries
        self._versions: dict[Key, int] = {}
        self._entries: dict[Key, LicenseEntry] = {}
        self._features: dict[str, FeatureEntry] = {}
        self._lock = threading.Lock()
        self._redis: Any = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.hits = 0
        self.misses = 0
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=5, health_check_interval=30)
            self._thread = threading.Thread(target=self._listen, name="meterline-license-cache", daemon=True)
            self._thread.start()

    @property
    def shared(self) -> bool:
        return self._redis is not None

    # -- versions -----------------------------------------------------------------------
    def _local_version(self, key: Key) -> int | None:
        v = self._versions.get(key)
        if v is None and self._redis is None:
            return 0
        return v

    def version(self, key: Key) -> int:
        """The current version, asking Redis when this process does not know it (slow path)."""
        v = self._local_version(key)
        if v is not None:
            return v
        raw = self._redis.get("ml:lic:ver:" + _wire(key))
        fetched = int(raw) if raw is not None else 0
        with self._lock:
            # A message may have raced in while we asked; never move a version backwards.
            v = max(fetched, self._versions.get(key, 0))
            self._versions[key] = v
        return v

    def invalidate(self, keys: Iterable[Key]) -> None:
        """Bump each key's version: local entries die now, other processes' on the message."""
        for key in set(keys):
            if self._redis is not None:
                try:
                    v = int(self._redis.incr("ml:lic:ver:" + _wire(key)))
                    self._redis.publish(CHANNEL, f"{_wire(key)}|{v}")
                except Exception:
                    log.exception("could not publish a license cache invalidation; clearing local cache")
                    self.clear()
                    continue
                self._set_version(key, v)
            else:
                with self._lock:
                    self._versions[key] = self._versions.get(key, 0) + 1
                    self._drop(key)

    def _set_version(self, key: Key, v: int) -> None:
        with self._lock:
            if v > self._versions.get(key, -1):
                self._versions[key] = v
                self._drop(key)

    def _drop(self, key: Key) -> None:
        if key[1] == "":
            self._features.pop(key[0], None)
        else:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._versions.clear()
            self._entries.clear()
            self._features.clear()

    # -- licensee entries -------------------------------------------------------------------
    def get(self, key: Key, now_ns: int) -> LicenseEntry | None:
        """The live entry, or None. No I/O: safe on the event loop."""
        e = self._entries.get(key)
        if e is None or e.version != self._local_version(key) or now_ns >= e.expires_at:
            self.misses += 1
            return None
        self.hits += 1
        return e

    def load_shared(self, key: Key, version: int) -> LicenseState | None:
        """A state another process loaded under this version, from Redis (slow path)."""
        if self._redis is None:
            return None
        try:
            raw = self._redis.get(f"ml:lic:state:{_wire(key)}|{version}")
        except Exception:
            return None
        if raw is None:
            return None
        d = json.loads(raw)
        snap = LicenseSnapshot.from_dict(d["snapshot"]) if d["snapshot"] is not None else None
        return LicenseState(snap, frozenset(d["cameras"]))

    def put(self, key: Key, version: int, state: LicenseState, now_ns: int, *, share: bool = True) -> LicenseEntry:
        """Store a state read under `version`; it is kept only if that is still current."""
        entry = LicenseEntry(version, now_ns + self.license_ttl_ns, state.snapshot, set(state.cameras))
        if share and self._redis is not None:
            try:
                body = {"snapshot": state.snapshot.as_dict() if state.snapshot else None,
                        "cameras": sorted(state.cameras)}
                self._redis.set(f"ml:lic:state:{_wire(key)}|{version}", json.dumps(body),
                                ex=max(1, self.license_ttl_ns // NS))
            except Exception:
                log.warning("could not share a license state in Redis", exc_info=True)
        with self._lock:
            if self._local_version(key) == version:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()  # crude but bounded; a full cache refills from Redis/DB
                self._entries[key] = entry
        return entry

    def note_camera(self, key: Key, version: int, camera_id: str, activated: bool) -> None:
        with self._lock:
            e = self._entries.get(key)
            if e is None or e.version != version:
                return
            (e.cameras if activated else e.refused).add(camera_id)

    # -- feature catalogue ------------------------------------------------------------------
    def features(self, tenant_id: str, now_ns: int) -> dict[str, str] | None:
        e = self._features.get(tenant_id)
        if e is None or e.version != self._local_version((tenant_id, "")) or now_ns >= e.expires_at:
            return None
        return e.features

    def put_features(self, tenant_id: str, version: int, features: dict[str, str], now_ns: int) -> None:
        with self._lock:
            if self._local_version((tenant_id, "")) == version:
                self._features[tenant_id] = FeatureEntry(version, now_ns + self.entitlement_ttl_ns, features)

    # -- subscription -----------------------------------------------------------------------
    def wait_ready(self, timeout: float = 5.0) -> bool:
        return True if self._redis is None else self._ready.wait(timeout)

    def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._redis.pubsub()
                pubsub.subscribe(CHANNEL)
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.25)  # also bounds how long close() waits
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe":
                        # (Re)subscribed: anything may have changed while we were not listening.
                        self.clear()
                        self._ready.set()
                    elif msg["type"] == "message":
                        data = msg["data"].decode() if isinstance(msg["data"], bytes) else str(msg["data"])
                        tenant, licensee, v = data.rsplit("|", 2)
                        self._set_version((tenant, licensee), int(v))
            except Exception:
                if self._stop.is_set():
                    break
                log.warning("license cache subscription lost; clearing and reconnecting", exc_info=True)
                self._ready.clear()
                self.clear()
                self._stop.wait(1.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
            self._thread = None
        if self._redis is not None:
            self._redis.close()
