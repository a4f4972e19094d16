"""Rental jobs: settle contracts that reached their expiry, keep sessions' rolling holds ahead.

Each rental is handled in its own transaction, so one that fails (or is settled
by a concurrent worker first) never holds back or rolls back the others. Both
jobs are idempotent sweeps: the rental row lock taken by the service decides
who settles, and a loser sees `RentalAlreadySettled` and moves on.
"""

from __future__ import annotations

import logging

from sqlalchemy import literal, select, tuple_

from meterline.clock import Clock
from meterline.db.engine import Database
from meterline.rentals import events as rental_events
from meterline.rentals.models import Rental
from meterline.rentals.service import ACTIVE, RentalAlreadySettled, rental_service

log = logging.getLogger(__name__)

SETTLE_EXPIRED = "rentals.settle_expired"
RENEW_COVER = "rentals.renew_cover"
EMIT_USAGE = "rentals.emit_usage"

_MAX_ROUNDS = 100


def settle_expired(db: Database, clock: Clock, *, limit: int = 200) -> int:
    """Settle every active contract past its `expires_at` with reason ``expired``.

    Works in rounds of `limit` until none is due, so a backlog clears within one
    pass. Returns how many this pass settled.
    """
    settled = 0
    after: tuple[int, str, str] | None = None
    for _ in range(_MAX_ROUNDS):
        with db.session(write=False) as session:
            due = rental_service.due_for_settlement(session, clock.now_ns(), limit, after=after)
        if not due:
            break
        for _expires, tenant_id, rental_id in due:
            try:
                with db.session() as session:
                    # Lock and re-check first: the list was read without locks, and a contract
                    # extended meanwhile is no longer due (settling it would end it early).
                    rental = rental_service.get(session, tenant_id, rental_id, lock=True)
                    if rental.status != ACTIVE or rental.expires_at is None or rental.expires_at > clock.now_ns():
                        continue
                    rental_service.settle(session, tenant_id, rental_id, clock, reason="expired")
                settled += 1
            except RentalAlreadySettled:
                pass  # another worker (or the customer) settled it first
            except Exception:
                # Keep sweeping the rest (the page moves past it); retried on the next pass.
                log.exception("could not settle expired rental %s/%s", tenant_id, rental_id)
        if len(due) < limit:
            break
        after = due[-1]
    return settled


def renew_cover(db: Database, clock: Clock, *, page: int = 1000) -> int:
    """Top up (or terminate) every active pay-as-you-go session. Returns renewed + terminated."""
    changed = 0
    after: tuple[str, str] | None = None
    while True:
        with db.session(write=False) as session:
            batch = rental_service.active_sessions(session, limit=page, after=after)
        for tenant_id, rental_id in batch:
            try:
                with db.session() as session:
                    outcome = rental_service.renew_cover(session, tenant_id, rental_id, clock)
            except RentalAlreadySettled:
                continue  # ended by its customer meanwhile
            except Exception:
                log.exception("could not renew the cover of session %s/%s", tenant_id, rental_id)
                continue
            if outcome in ("renewed", "terminated"):
                changed += 1
        if len(batch) < page:
            break
        after = batch[-1]
    return changed


def emit_usage(db: Database, clock: Clock, every_s: int, *, page: int = 500) -> int:
    """A `rental.usage` event for every running rental (Dante's real-time usage updates on
    NATS, and webhooks): its cost so far and the cover left (for a session, the committed
    figure renewal uses: `rental_service.running_cost`). One event per rental per
    period of `every_s` seconds — the id names the period, so a pass repeated within it
    (a crash, a second worker) adds nothing. Returns how many rentals it reported."""
    now = clock.now_ns()
    bucket = now // (every_s * 1_000_000_000)
    reported = 0
    after: tuple[str, str] | None = None
    while True:
        with db.session() as session:
            stmt = select(Rental).where(Rental.status == ACTIVE)
            if after is not None:
                stmt = stmt.where(tuple_(Rental.tenant_id, Rental.id) > tuple_(literal(after[0]), literal(after[1])))
            rows = list(session.scalars(stmt.order_by(Rental.tenant_id, Rental.id).limit(page)))
            for rental in rows:
                acc = rental_service.running_cost(rental, now)
                rental_events.usage(session, rental, elapsed_s=acc.elapsed_s, cost_minor=acc.cost_minor,
                                    now_ns=now, bucket=bucket)
            reported += len(rows)
        if len(rows) < page:
            return reported
        after = (rows[-1].tenant_id, rows[-1].id)
