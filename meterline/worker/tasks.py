"""The worker's periodic ledger jobs.

- ``ledger.expire_holds``: void every open hold whose timeout has passed, with
  reason ``expired``, through the batcher as a system transfer (the engine then
  marks the hold 'expired' and releases the reserved amounts). The void's id is
  derived from the hold (``expire:<pending_id>``), so two sweeps racing over the
  same hold post it once: the second gets ``exists`` / ``…_already_…``.
- ``ledger.seal_blocks``: seal every tenant's unsealed transfers into signed blocks.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from meterline.billing import tasks as billing_tasks
from meterline.clock import Clock
from meterline.config import Settings
from meterline.db.engine import Database
from meterline.events.dispatch import Dispatcher
from meterline.events.nats_client import NatsClient
from meterline.events.outbox import PAYMENTS, USAGE
from meterline.ledger.batcher import LedgerBatcher
from meterline.ledger.blocks import block_service
from meterline.ledger.service import ledger_service
from meterline.ledger.signing import Signer
from meterline.ledger.types import CODE_EXPIRED, TransferFlags, TransferIn
from meterline.licensing import tasks as licensing_tasks
from meterline.licensing.runtime import shared_runtime
from meterline.metering import tasks as metering_tasks
from meterline.metering.nats_ingest import ingest_from_nats
from meterline.payouts import tasks as payout_tasks
from meterline.rentals import tasks as rental_tasks
from meterline.worker.scheduler import Job

log = logging.getLogger(__name__)

EXPIRE_HOLDS = "ledger.expire_holds"
SEAL_BLOCKS = "ledger.seal_blocks"
# Payouts are retried on their own backoff (30 s and up); a few seconds' delay is invisible.
PAYOUT_INTERVAL_S = 5.0
# Devices die after minutes of silence and audit entries after days: sweeping often is waste.
LICENSING_SWEEP_S = 15.0
LICENSING_PRUNE_S = 3600.0
# Periods end on the second but a minute's delay in invoicing is invisible; retries wait days.
BILLING_INTERVAL_S = 30.0
FAN_OUT_EVENTS = "events.fan_out"
PRUNE_EVENTS = "events.prune"
EVENTS_PRUNE_S = 3600.0

_MAX_TRANSFER_ID = 128
# Outcomes meaning the hold was resolved by someone else first: nothing left to do.
_ALREADY_RESOLVED = frozenset({
    "exists",
    "pending_transfer_already_posted",
    "pending_transfer_already_voided",
    "pending_transfer_expired",
})


@dataclass(frozen=True, slots=True)
class JobContext:
    db: Database
    clock: Clock
    batcher: LedgerBatcher
    settings: Settings
    signer: Signer
    events: Dispatcher


def make_dispatcher(db: Database, clock: Clock, settings: Settings) -> Dispatcher:
    """The outbox dispatcher the settings describe (NATS only with METERLINE_NATS_URL)."""
    nats = NatsClient(settings.nats_url, stream=settings.nats_stream) if settings.nats_url else None
    return Dispatcher(
        db, clock, retry_schedule=settings.webhook_retry_waits, timeout_s=settings.webhook_timeout_s,
        subjects={USAGE: settings.nats_usage_subject, PAYMENTS: settings.nats_payments_subject}, nats=nats,
    )


def network_passes(ctx: JobContext) -> dict[str, Callable[[], int]]:
    """What the worker runs on threads of its own, beside the scheduler: the passes that
    wait on the network (a webhook endpoint, NATS), so that none of them can hold back
    hold expiry or settlement. Each returns how much it moved (0: wait a tick)."""
    passes: dict[str, Callable[[], int]] = {"webhooks": ctx.events.deliver}
    nats, subject = ctx.events.nats, ctx.settings.nats_ingest_subject

    def nats_pass() -> int:
        moved = ctx.events.publish()
        if nats is not None and subject:
            moved += ingest_from_nats(
                ctx.db, ctx.clock, nats, subject=subject, durable=ctx.settings.nats_ingest_durable,
                lateness_s=ctx.settings.usage_lateness_s, future_skew_s=ctx.settings.usage_future_skew_s)
        return moved

    passes["nats"] = nats_pass
    return passes


def expiry_transfer_id(pending_id: str) -> str:
    """`expire:<hold>`, a prefix clients may not use (`RESERVED_TRANSFER_PREFIXES`)."""
    tid = f"expire:{pending_id}"
    if len(tid) <= _MAX_TRANSFER_ID:
        return tid
    # A maximal-length pending id would not fit; a digest keeps the id deterministic, under a
    # prefix of its own so it never equals `expire:<hold>` of a hold named `sha256:…`.
    return "expire#sha256:" + hashlib.sha256(pending_id.encode()).hexdigest()


def expire_holds(ctx: JobContext, *, batch: int = 1000, max_rounds: int = 100) -> int:
    """Void holds past `expires_at`. Returns how many this pass expired."""
    expired = 0
    after: tuple[int, str, str] | None = None
    for _ in range(max_rounds):
        now = ctx.clock.now_ns()
        with ctx.db.session(write=False) as session:
            page = ledger_service.expired_holds(session, now, batch, after=after)
            due = [(h.tenant_id, h.transfer_id) for h in page]
        if not due:
            break
        # The next round reads past this page: a hold that could not be voided is logged
        # and left behind, never re-read ahead of every later one (a page of them stopped
        # every tenant's expiry).
        last = page[-1]
        assert last.expires_at is not None
        after = (last.expires_at, last.tenant_id, last.transfer_id)
        by_tenant: dict[str, list[str]] = {}
        for tenant_id, pending_id in due:
            by_tenant.setdefault(tenant_id, []).append(pending_id)
        for tenant_id, pending_ids in by_tenant.items():
            # One segment per tenant; the voids are not linked, so each succeeds or fails alone.
            results = ctx.batcher.post(
                tenant_id,
                [
                    TransferIn(id=expiry_transfer_id(pid), pending_id=pid,
                               flags=TransferFlags.VOID_PENDING, code=CODE_EXPIRED)
                    for pid in pending_ids
                ],
                system=True,
            )
            for pid, res in zip(pending_ids, results, strict=True):
                if res.result == "ok":
                    expired += 1
                elif res.result not in _ALREADY_RESOLVED:
                    log.warning("could not expire hold %s/%s: %s", tenant_id, pid, res.result)
        if len(due) < batch:
            break
    return expired


def seal_blocks(ctx: JobContext) -> int:
    """Seal every tenant's unsealed transfers. Returns the number of blocks sealed."""
    return block_service.seal_all(ctx.db, ctx.signer, ctx.clock.now_ns(), ctx.settings.block_max_transfers)


def default_jobs(ctx: JobContext) -> list[Job]:
    jobs = [
        Job(EXPIRE_HOLDS, ctx.settings.sweep_interval_s, lambda: expire_holds(ctx)),
        Job(SEAL_BLOCKS, ctx.settings.seal_interval_s, lambda: seal_blocks(ctx)),
        Job(rental_tasks.SETTLE_EXPIRED, ctx.settings.sweep_interval_s,
            lambda: rental_tasks.settle_expired(ctx.db, ctx.clock)),
        Job(rental_tasks.RENEW_COVER, ctx.settings.sweep_interval_s,
            lambda: rental_tasks.renew_cover(ctx.db, ctx.clock)),
        Job(payout_tasks.EXECUTE_DUE, PAYOUT_INTERVAL_S, lambda: payout_tasks.execute_due(ctx.db, ctx.clock)),
        Job(licensing_tasks.CULL_DEAD_DEVICES, LICENSING_SWEEP_S,
            lambda: licensing_tasks.cull_dead_devices(shared_runtime(ctx.db, ctx.settings), ctx.clock, ctx.settings)),
        Job(licensing_tasks.FLUSH_AUDIT, LICENSING_SWEEP_S, licensing_tasks.flush_audit),
        Job(licensing_tasks.PRUNE_AUDIT, LICENSING_PRUNE_S,
            lambda: licensing_tasks.prune_audit(shared_runtime(ctx.db, ctx.settings), ctx.clock, ctx.settings)),
        Job(metering_tasks.PRUNE, metering_tasks.PRUNE_INTERVAL_S,
            lambda: metering_tasks.prune(ctx.db, ctx.clock, ctx.settings.usage_retention_days)),
        Job(billing_tasks.CLOSE_PERIODS, BILLING_INTERVAL_S, lambda: billing_tasks.close_periods(ctx.db, ctx.clock)),
        Job(billing_tasks.COLLECT_PAYMENTS, BILLING_INTERVAL_S,
            lambda: billing_tasks.collect_payments(ctx.db, ctx.clock)),
        Job(FAN_OUT_EVENTS, ctx.settings.events_interval_s, ctx.events.run),
        Job(PRUNE_EVENTS, EVENTS_PRUNE_S, lambda: ctx.events.prune(ctx.settings.event_retention_days)),
    ]
    if ctx.settings.usage_event_interval_s > 0:
        every = ctx.settings.usage_event_interval_s
        jobs.append(Job(rental_tasks.EMIT_USAGE, float(every),
                        lambda: rental_tasks.emit_usage(ctx.db, ctx.clock, every)))
    return jobs
