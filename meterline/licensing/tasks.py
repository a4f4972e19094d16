"""Licensing jobs: cull silent devices, write the queued audit log, prune old audit entries.

Each job commits its own transaction and then publishes what it changed to the
license cache, so a device marked dead (and the cameras it released) stops
being answered from cache at once — on every process sharing Redis.
"""

from __future__ import annotations

from meterline.clock import Clock
from meterline.config import Settings
from meterline.licensing import audit
from meterline.licensing.runtime import LicensingRuntime
from meterline.licensing.service import NS, licensing_service

CULL_DEAD_DEVICES = "licensing.cull_dead_devices"
FLUSH_AUDIT = "licensing.flush_audit"
PRUNE_AUDIT = "licensing.prune_audit"

_MAX_ROUNDS = 100


def cull_dead_devices(rt: LicensingRuntime, clock: Clock, settings: Settings, *, limit: int = 500) -> int:
    """Mark devices silent longer than `device_dead_after_s` dead; returns how many."""
    total = 0
    for _ in range(_MAX_ROUNDS):
        with rt.db.session() as session:
            rt.bind(session)
            culled = licensing_service.cull_dead_devices(
                session, clock.now_ns(), dead_after_ns=int(settings.device_dead_after_s * NS),
                release_cameras=settings.release_dead_device_cameras, limit=limit)
        total += len(culled)
        if len(culled) < limit:
            break
    return total


def flush_audit() -> int:
    """Write every queued audit entry of this process now (the buffers also flush themselves)."""
    return audit.flush_all()


def prune_audit(rt: LicensingRuntime, clock: Clock, settings: Settings, *, limit: int = 10_000) -> int:
    """Delete audit entries older than `license_audit_retention_days`, in bounded batches."""
    before = clock.now_ns() - settings.license_audit_retention_days * 86_400 * NS
    total = 0
    for _ in range(_MAX_ROUNDS):
        with rt.db.session() as session:
            n = licensing_service.prune_audit(session, before, limit=limit)
        total += n
        if n < limit:
            break
    return total
