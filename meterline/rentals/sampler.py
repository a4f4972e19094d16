"""Group commit for metrics samples (the model is the ledger's `LedgerBatcher`).

Devices post a sample every few hundred milliseconds; one write transaction (and one
fsync) per sample caps a SQLite server at a few hundred samples per second. Request
handlers instead hand their validated samples to the `SampleBatcher`. Its writer thread
takes everything queued while the previous commit was in flight (plus up to `window_ms`
more if the batch is still small; and it starts a batch no sooner than `pace_ms` after the
previous one, so a steady fleet shares commits instead of paying one each) and applies it
in ONE transaction:

- load every touched rental with one query (locked with `FOR UPDATE` on PostgreSQL, in
  key order; on SQLite the writer is the single writer);
- check each caller's rental with the rules `record_sample` uses
  (`rental_service.check_active`): unknown, another owner's or of another style than the
  caller addresses (a session through a contract route) → `contract_not_found`,
  settled → `contract_already_settled`, expired / not active → 409 — a refused caller
  never fails its neighbours;
- fold the samples into each rental's power integral and counters in arrival order
  (`rental_service.fold_sample`, the same function the one-sample path uses), each stamped
  no earlier than its rental's start (`sample_time`, as `record_sample`);
- insert the sample rows and update each touched rental once. On SQLite the statements go
  straight to the DBAPI cursor (SQLAlchemy's per-statement machinery was most of a small
  batch's fixed cost): the load is ONE statement reading the keys as a JSON array
  (`json_each`), the writes are `executemany` (bound and stepped in C); on PostgreSQL the
  rows are locked and written by the usual multi-row statements;

and only after the commit resolves each caller's future with the rental as committed
after its own samples and the accrual at its sample time. An acknowledged sample is a
committed one. If the combined transaction fails for an unexpected reason, each caller
is retried alone so a poisoned request cannot fail the others.
"""

from __future__ import annotations

import copy
import json
import logging
import sqlite3
import time
from concurrent.futures import Future
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, cast

from prometheus_client import Counter
from sqlalchemy import Connection, Table, bindparam, insert, select, tuple_, update

from meterline.clock import Clock
from meterline.db.engine import Database
from meterline.db.group_commit import CommitterStopped, GroupCommitter
from meterline.rentals.models import Rental, RentalSample
from meterline.rentals.service import (
    Accrual,
    RentalNotFound,
    rental_service,
    sample_time,
    sample_values,
)

log = logging.getLogger(__name__)

# Samples per commit is what a sample costs (each commit has a fixed cost): these two show it.
BATCHES = Counter("meterline_sample_batches_total", "Sample batches committed")
SAMPLES = Counter("meterline_samples_committed_total", "Samples in committed batches (refused ones too)")

_T = cast(Table, Rental.__table__)
_SAMPLES = cast(Table, RentalSample.__table__)
_UPDATE = (
    update(_T)
    .where(_T.c.tenant_id == bindparam("k_tenant"), _T.c.id == bindparam("k_id"))
    .values(energy2_mw_ms=bindparam("energy2_mw_ms"), power_cost_e6=bindparam("power_cost_e6"),
            last_sample_at=bindparam("last_sample_at"), last_power_mw=bindparam("last_power_mw"),
            sample_count=bindparam("sample_count"))
)


@dataclass(slots=True)
class SampledRental:
    """A rental's row as the batcher loads it: satisfies `rental_service.RentalState`.

    On SQLite `quote` holds only the field a sample reads (`power_rate_per_wh`): decoding
    each touched rental's whole quote document cost more than the rest of its row.
    """

    id: str
    status: str
    style: str
    customer_id: str
    quote: dict[str, Any]
    scale: int
    held_minor: int
    duration_s: int | None
    started_at: int
    expires_at: int | None
    ended_at: int | None
    settled_at: int | None
    used_minor: int | None
    rate_num: int
    rate_den: int
    rounding: str
    power_cost_e6: int
    energy2_mw_ms: int
    last_sample_at: int | None
    last_power_mw: int | None
    sample_count: int


# The columns a sample reads or writes are SampledRental's fields, in its order (rows are
# built positionally from them), so the list lives in one place.
_COLUMNS = tuple(f.name for f in fields(SampledRental))
_SELECT = select(_T.c.tenant_id, *(_T.c[c] for c in _COLUMNS))

# SQLite: the load reads its keys from one JSON array parameter (`json_each`).
_JSON_STATEMENTS = sqlite3.sqlite_version_info >= (3, 33)
# Of the quote (a JSON document), a sample reads only the power rate: SQLite extracts it.
_POWER_RATE = "power_rate_per_wh"
_SQLITE_SELECT = (
    "SELECT tenant_id, "
    + ", ".join(f"json_extract(quote, '$.{_POWER_RATE}')" if c == "quote" else c for c in _COLUMNS)
    + " FROM rentals WHERE (tenant_id, id) IN "
    "(SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))"
)
# The writes are executemany on the DBAPI cursor: sqlite3 binds and steps each row in C, which
# measured faster than one statement reading a JSON array (json_each + json_extract re-parses
# each element once per column): 10 vs 16 µs a sample row, 1.8 vs 3.1 µs a rental update.
_SQLITE_INSERT = 'INSERT INTO rental_samples (tenant_id, rental_id, ts, power_mw, "values") VALUES (?, ?, ?, ?, ?)'
_SQLITE_UPDATE = (
    "UPDATE rentals SET energy2_mw_ms = ?, power_cost_e6 = ?, last_sample_at = ?, last_power_mw = ?, "
    "sample_count = ? WHERE tenant_id = ? AND id = ?"
)
# A batch starts at most this often (see SampleBatcher._gather); 0 turns pacing off. A server
# takes it from `Settings.sample_pace_ms` (METERLINE_SAMPLE_PACE_MS).
PACE_MS = 10.0
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True, slots=True)
class Recorded:
    """One caller's result: the rental as committed right after its samples, and the accrual then."""

    rental: SampledRental
    accrual: Accrual


@dataclass(slots=True)
class _Item:
    tenant_id: str
    rental_id: str
    samples: list[dict[str, Decimal]]
    owner: str | None
    style: str | None = None


class SamplerStopped(CommitterStopped):
    pass


class SampleBatcher(GroupCommitter[_Item, Recorded]):
    name = "sample-batcher"
    stopped = SamplerStopped

    def __init__(self, db: Database, clock: Clock, *, window_ms: float = 1.0, max_samples: int = 4000,
                 pace_ms: float = PACE_MS) -> None:
        super().__init__(db, window_ms=window_ms, max_size=max_samples)
        self.clock = clock
        self.pace_s = pace_ms / 1000
        self._next_batch_at = 0.0

    def start(self) -> SampleBatcher:
        super().start()
        return self

    def __enter__(self) -> SampleBatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- submitting ----------------------------------------------------------------------
    def submit(self, tenant_id: str, rental_id: str, samples: list[dict[str, Decimal]], *,
               owner: str | None = None, style: str | None = None) -> Future[Recorded]:
        """Queue validated samples (`rental_service.validate_sample`) for one rental; all or none
        are stored. `owner`: the customer id a non-staff caller must be (None: any). `style`:
        the kind of rental the caller addresses (`prepaid` from the SI64 profile; None: any);
        a rental of another style is `contract_not_found`, as an unknown id."""
        return self.submit_item(_Item(tenant_id, rental_id, list(samples), owner, style))

    def record(self, tenant_id: str, rental_id: str, samples: list[dict[str, Decimal]], *,
               owner: str | None = None, style: str | None = None) -> Recorded:
        """Blocking submit: returns once the samples are committed (or raises the refusal)."""
        return self.submit(tenant_id, rental_id, samples, owner=owner, style=style).result()

    async def record_async(self, tenant_id: str, rental_id: str, samples: list[dict[str, Decimal]], *,
                           owner: str | None = None, style: str | None = None) -> Recorded:
        return await self.submit_item_async(_Item(tenant_id, rental_id, list(samples), owner, style))

    # -- pacing --------------------------------------------------------------------------
    def _gather(self, entries: list[Any], count: int) -> bool:
        """Start a batch no sooner than `pace_s` after the previous one started.

        A batch has a fixed cost (its transaction, three statements, the fsync, waking the
        callers' loop: some 300-500 µs of CPU) whatever its size, and a device fleet posts
        steadily: left to itself the writer commits as fast as it can, in batches of a few
        samples, and spends most of the server's CPU on the fixed part. Waiting out the rest
        of the pace first lets the samples that arrive meanwhile share the commit. Under light
        load (nothing committed within the pace) a sample never waits; under heavy load the
        commit itself outlasts the pace and the wait is zero too. A full batch never waits.
        """
        wait = self._next_batch_at - time.monotonic()
        if wait > 0 and count + self._queue.qsize() < self.max_size:
            time.sleep(wait)
        self._next_batch_at = time.monotonic() + self.pace_s
        return super()._gather(entries, count)

    def observe(self, items: list[_Item], seconds: float) -> None:
        BATCHES.inc()
        SAMPLES.inc(sum(len(i.samples) for i in items))

    # -- applying ------------------------------------------------------------------------
    def size(self, item: _Item) -> int:
        return len(item.samples)

    def apply(self, conn: Connection, items: list[_Item]) -> list[Recorded | Exception]:
        keys = sorted({(i.tenant_id, i.rental_id) for i in items})
        json_sql = self.db.is_sqlite and _JSON_STATEMENTS
        # SQLite: the three statements go straight to the DBAPI cursor, inside the transaction
        # the committer began on this connection. Through `exec_driver_sql` each one also built
        # SQLAlchemy's result metadata (a processor lookup per column of the 21-column SELECT):
        # about 350 µs of a batch's ~600 µs fixed cost, paid again for every small batch.
        cur = conn.connection.dbapi_connection.cursor() if json_sql else None  # type: ignore[union-attr]
        found: Any
        if cur is not None:
            found = cur.execute(_SQLITE_SELECT, (_compact(keys),)).fetchall()
        else:
            # Key order, so a batcher and a settle/extend never lock rentals in opposite orders.
            stmt = _SELECT.where(tuple_(_T.c.tenant_id, _T.c.id).in_(keys))
            if not self.db.is_sqlite:
                stmt = stmt.order_by(_T.c.tenant_id, _T.c.id).with_for_update()
            found = conn.execute(stmt)
        rows: dict[tuple[str, str], SampledRental] = {}
        for r in found:
            row = rows[(r[0], r[1])] = SampledRental(*r[1:])
            if json_sql:  # the quote column holds only the power rate (see _SQLITE_SELECT)
                row.quote = {} if row.quote is None else {_POWER_RATE: row.quote}
        touched: dict[tuple[str, str], SampledRental] = {}
        inserts: list[tuple[str, str, int, int | None, dict[str, str]]] = []
        outcomes: list[Recorded | Exception] = []
        for item in items:  # arrival order
            key = (item.tenant_id, item.rental_id)
            rental = rows.get(key)
            now = self.clock.now_ns()
            try:
                if (rental is None or (item.owner is not None and rental.customer_id != item.owner)
                        or (item.style is not None and rental.style != item.style)):
                    raise RentalNotFound(f"contract {item.rental_id} does not exist")
                rental_service.check_active(rental, now)
            except Exception as exc:
                outcomes.append(exc)
                continue
            if key in touched:
                # An earlier caller of this batch holds this row as its answer: fold into a copy.
                # (Copying only then, not for every caller, saves most of a batch's copies.)
                rental = rows[key] = copy.copy(rental)
            at = sample_time(rental, now)  # never before the rental started
            for clean in item.samples:
                power_mw = rental_service.fold_sample(rental, clean, at)
                inserts.append((item.tenant_id, item.rental_id, at, power_mw, sample_values(clean)))
            touched[key] = rental
            outcomes.append(Recorded(rental, rental_service.running_cost(rental, now)))
        if inserts and cur is not None:
            cur.executemany(_SQLITE_INSERT, [(t, rid, ts, p, _compact(v)) for t, rid, ts, p, v in inserts])
            cur.executemany(_SQLITE_UPDATE, [
                (r.energy2_mw_ms, r.power_cost_e6, r.last_sample_at, r.last_power_mw, r.sample_count, k[0], k[1])
                for k, r in touched.items()])
        elif inserts:
            conn.execute(insert(_SAMPLES), [
                {"tenant_id": t, "rental_id": rid, "ts": ts, "power_mw": p, "values": v} for t, rid, ts, p, v in inserts
            ])
            conn.execute(_UPDATE, [
                {"k_tenant": k[0], "k_id": k[1], "energy2_mw_ms": r.energy2_mw_ms, "power_cost_e6": r.power_cost_e6,
                 "last_sample_at": r.last_sample_at, "last_power_mw": r.last_power_mw,
                 "sample_count": r.sample_count}
                for k, r in touched.items()
            ])
        return outcomes
