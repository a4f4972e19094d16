"""Group commit for metrics samples (the model is the ledger's `LedgerBatcher`).

Devices post a sample every few hundred milliseconds; one write transaction (and one
fsync) per sample caps a SQLite server at a few hundred samples per second. Request
handlers instead hand their validated samples to the `SampleBatcher`. Its writer thread
takes everything queued while the previous commit was in flight (plus up to `window_ms`
more if the batch is still small) and applies it in ONE transaction:

- load every touched rental with one query (locked with `FOR UPDATE` on PostgreSQL, in
  key order; on SQLite the writer is the single writer);
- check each caller's rental with the rules `record_sample` uses
  (`rental_service.check_active`): unknown or another owner's → `contract_not_found`,
  settled → `contract_already_settled`, expired / not active → 409 — a refused caller
  never fails its neighbours;
- fold the samples into each rental's power integral and counters in arrival order
  (`rental_service.fold_sample`, the same function the one-sample path uses);
- insert the sample rows with one executemany and update each touched rental once;

and only after the commit resolves each caller's future with the rental as committed
after its own samples and the accrual at its sample time. An acknowledged sample is a
committed one. If the combined transaction fails for an unexpected reason, each caller
is retried alone so a poisoned request cannot fail the others.
"""

from __future__ import annotations

import copy
import logging
from concurrent.futures import Future
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, tuple_, update

from meterline.clock import Clock
from meterline.db.engine import Database
from meterline.db.group_commit import CommitterStopped, GroupCommitter
from meterline.rentals.models import Rental, RentalSample
from meterline.rentals.service import Accrual, RentalNotFound, rental_service, sample_values

log = logging.getLogger(__name__)

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
    """A rental's row as the batcher loads it: satisfies `rental_service.RentalState`."""

    id: str
    status: str
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


class SamplerStopped(CommitterStopped):
    pass


class SampleBatcher(GroupCommitter[_Item, Recorded]):
    name = "sample-batcher"
    stopped = SamplerStopped

    def __init__(self, db: Database, clock: Clock, *, window_ms: float = 1.0, max_samples: int = 4000) -> None:
        super().__init__(db, window_ms=window_ms, max_size=max_samples)
        self.clock = clock

    def start(self) -> SampleBatcher:
        super().start()
        return self

    def __enter__(self) -> SampleBatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- submitting ----------------------------------------------------------------------
    def submit(self, tenant_id: str, rental_id: str, samples: list[dict[str, Decimal]], *,
               owner: str | None = None) -> Future[Recorded]:
        """Queue validated samples (`rental_service.validate_sample`) for one rental; all or none
        are stored. `owner`: the customer id a non-staff caller must be (None: any)."""
        return self.submit_item(_Item(tenant_id, rental_id, list(samples), owner))

    def record(self, tenant_id: str, rental_id: str, samples: list[dict[str, Decimal]], *,
               owner: str | None = None) -> Recorded:
        """Blocking submit: returns once the samples are committed (or raises the refusal)."""
        return self.submit(tenant_id, rental_id, samples, owner=owner).result()

    async def record_async(self, tenant_id: str, rental_id: str, samples: list[dict[str, Decimal]], *,
                           owner: str | None = None) -> Recorded:
        return await self.submit_item_async(_Item(tenant_id, rental_id, list(samples), owner))

    # -- applying ------------------------------------------------------------------------
    def size(self, item: _Item) -> int:
        return len(item.samples)

    def apply(self, conn: Connection, items: list[_Item]) -> list[Recorded | Exception]:
        keys = sorted({(i.tenant_id, i.rental_id) for i in items})
        stmt = _SELECT.where(tuple_(_T.c.tenant_id, _T.c.id).in_(keys))
        if not self.db.is_sqlite:
            # Key order, so a batcher and a settle/extend never lock rentals in opposite orders.
            stmt = stmt.order_by(_T.c.tenant_id, _T.c.id).with_for_update()
        rows: dict[tuple[str, str], SampledRental] = {}
        for r in conn.execute(stmt):
            rows[(r[0], r[1])] = SampledRental(*r[1:])
        touched: dict[tuple[str, str], SampledRental] = {}
        inserts: list[dict[str, Any]] = []
        outcomes: list[Recorded | Exception] = []
        for item in items:  # arrival order
            key = (item.tenant_id, item.rental_id)
            rental = rows.get(key)
            now = self.clock.now_ns()
            try:
                if rental is None or (item.owner is not None and rental.customer_id != item.owner):
                    raise RentalNotFound(f"contract {item.rental_id} does not exist")
                rental_service.check_active(rental, now)
            except Exception as exc:
                outcomes.append(exc)
                continue
            for clean in item.samples:
                power_mw = rental_service.fold_sample(rental, clean, now)
                inserts.append({"tenant_id": item.tenant_id, "rental_id": item.rental_id, "ts": now,
                                "power_mw": power_mw, "values": sample_values(clean)})
            touched[key] = rental
            outcomes.append(Recorded(copy.copy(rental), rental_service.accrual(rental, now)))
        if inserts:
            conn.execute(insert(_SAMPLES), inserts)
            conn.execute(_UPDATE, [
                {"k_tenant": k[0], "k_id": k[1], "energy2_mw_ms": r.energy2_mw_ms, "power_cost_e6": r.power_cost_e6,
                 "last_sample_at": r.last_sample_at, "last_power_mw": r.last_power_mw,
                 "sample_count": r.sample_count}
                for k, r in touched.items()
            ])
        return outcomes
