"""Metering: meters, usage ingestion, usage queries from rollups, retention.

Per-event problems (unknown meter, bad quantity, too late, …) are result codes in
the `IngestResult`, never exceptions: one bad event must not fail its neighbours.
Exceptions are for the request as a whole (a batch too large, a bad query).
Services flush, never commit; ingestion runs in the caller's transaction.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from meterline.db.scoping import scoped
from meterline.errors import Conflict, MeterlineError, NotFound, PayloadTooLarge
from meterline.metering import ingest as engine
from meterline.metering import partitions
from meterline.metering.ingest import HOUR_NS, IngestResult, UsageEventIn, Window
from meterline.metering.models import AGGREGATIONS, Meter

log = logging.getLogger(__name__)

# -- errors -------------------------------------------------------------------------


class MeteringError(MeterlineError):
    code = "metering_error"


class MeterNotFound(MeteringError, NotFound):
    code = "meter_not_found"
    title = "No such meter"


class MeterExists(MeteringError, Conflict):
    code = "meter_exists"
    title = "A meter with this id already exists"


class InvalidMeter(MeteringError):
    status = 422
    code = "invalid_meter"
    title = "The meter definition is not valid"


class InvalidUsagePeriod(MeteringError):
    status = 422
    code = "invalid_period"
    title = "The usage period is not valid"


class InvalidUsageBatch(MeteringError):
    status = 422
    code = "invalid_usage_batch"
    title = "The usage batch is not valid"


class UsageBatchTooLarge(MeteringError, PayloadTooLarge):
    code = "batch_too_large"
    title = "The batch has too many events"


# -- values -------------------------------------------------------------------------

MAX_BATCH = 1000
DEFAULT_LATENESS_S = 7 * 24 * 3600
DEFAULT_FUTURE_SKEW_S = 300
DAY_NS = 24 * HOUR_NS
GROUP_BYS = ("none", "subject", "hour", "day", "month")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")

DEMO_METERS: list[dict[str, str]] = [
    {"id": "frames_processed", "aggregation": "sum", "unit": "frames",
     "description": "Video frames run through inference"},
    {"id": "detections", "aggregation": "sum", "unit": "detections", "description": "Objects detected"},
    {"id": "events_uploaded", "aggregation": "sum", "unit": "events",
     "description": "Telemetry events uploaded from the edge"},
    {"id": "inference_seconds", "aggregation": "sum", "unit": "seconds",
     "description": "Accelerator time spent in inference"},
]


@dataclass(slots=True)
class UsageRow:
    """One group of a usage answer. `value_micro` is None for `latest` with no events."""

    value_micro: int | None
    events: int
    subject: str | None = None
    period_start: int | None = None
    period_end: int | None = None


@dataclass(slots=True)
class UsageReport:
    meter: Meter
    from_ns: int
    to_ns: int
    group_by: str
    rows: list[UsageRow] = field(default_factory=list)


def _check_text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidMeter(f"{what} must be text of at most {limit} characters")
    return value


class MeteringService:
    # -- meters -----------------------------------------------------------------------
    def create_meter(
        self, session: Session, tenant_id: str, *, id: str, aggregation: str, unit: str = "",
        description: str = "", field: str | None = None, now_ns: int,
    ) -> Meter:
        if not isinstance(id, str) or not _ID.fullmatch(id):
            raise InvalidMeter("meter id must be 1-64 letters, digits, '_', '.', ':' or '-'")
        if aggregation not in AGGREGATIONS:
            raise InvalidMeter(f"aggregation must be one of {', '.join(AGGREGATIONS)}")
        if aggregation == "unique_count":
            if not isinstance(field, str) or not _FIELD.fullmatch(field):
                raise InvalidMeter("a unique_count meter needs `field`: the property whose values are counted")
        elif field is not None:
            raise InvalidMeter("only a unique_count meter takes `field`")
        row = Meter(tenant_id=tenant_id, id=id, aggregation=aggregation, unit=_check_text(unit, "unit", 32),
                    description=_check_text(description, "description", 500), field=field, created_at=now_ns)
        if session.get(Meter, (tenant_id, id)) is not None:
            raise MeterExists(f"meter {id} already exists")
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            raise MeterExists(f"meter {id} already exists") from None
        return row

    def get_meter(self, session: Session, tenant_id: str, meter_id: str) -> Meter:
        row = session.get(Meter, (tenant_id, meter_id))
        if row is None:
            raise MeterNotFound(f"meter {meter_id} does not exist")
        return row

    def list_meters(self, session: Session, tenant_id: str) -> list[Meter]:
        return list(session.scalars(scoped(select(Meter), Meter, tenant_id).order_by(Meter.id)))

    def seed_demo(self, session: Session, tenant_id: str, now_ns: int) -> None:
        """The demo meters (BrinkByte's). Idempotent: creates what's missing."""
        for meter in DEMO_METERS:
            if session.get(Meter, (tenant_id, meter["id"])) is None:
                self.create_meter(session, tenant_id, now_ns=now_ns, **meter)

    # -- ingestion --------------------------------------------------------------------
    def ingest(
        self,
        target: Session | Connection,
        tenant_id: str,
        licensee: str,
        device: str,
        events: Sequence[UsageEventIn],
        now_ns: int,
        *,
        lateness_s: int = DEFAULT_LATENESS_S,
        future_skew_s: int = DEFAULT_FUTURE_SKEW_S,
    ) -> IngestResult:
        """Ingest up to 1000 events for `licensee` (a customer inside the tenant; "" for none)
        reported by `device`. Returns one result per event; writes in the caller's transaction."""
        self.check_batch(licensee, device, len(events))
        return engine.apply(target, tenant_id, licensee, device, events, Window(now_ns, lateness_s, future_skew_s))

    @staticmethod
    def check_batch(licensee: Any, device: Any, n: int) -> None:
        if n > MAX_BATCH:
            raise UsageBatchTooLarge(f"a batch holds at most {MAX_BATCH} events")
        for value, what in ((licensee, "licensee"), (device, "device")):
            if not isinstance(value, str) or len(value) > 128:
                raise InvalidUsageBatch(f"{what} must be text of at most 128 characters")

    # -- queries ----------------------------------------------------------------------
    def usage(
        self, session: Session, tenant_id: str, meter_id: str, *, from_ns: int, to_ns: int,
        subject: str | None = None, licensee: str | None = None, group_by: str = "none",
        visible: bool = True,
    ) -> UsageReport:
        """Aggregate a meter over [from, to) from the hourly rollups (never the raw events).

        `from` and `to` must fall on whole hours (UTC): the rollups are hourly, and an
        answer for part of an hour could not be exact. Groups without events are left
        out, except with `group_by=none`, which always answers one row. `visible=False`
        (the caller may not read the licensee it named) answers as for a licensee without
        usage — after the same checks, so the answer is the same word for word — and reads
        no rollup.
        """
        meter = self.get_meter(session, tenant_id, meter_id)
        if group_by not in GROUP_BYS:
            raise InvalidUsagePeriod(f"group_by must be one of {', '.join(GROUP_BYS)}")
        if from_ns % HOUR_NS or to_ns % HOUR_NS:
            raise InvalidUsagePeriod("from and to must be whole hours (UTC), e.g. 2025-10-20T10:00:00Z")
        if to_ns <= from_ns:
            raise InvalidUsagePeriod("to must be after from")
        report = UsageReport(meter, from_ns, to_ns, group_by)
        if not visible:
            if group_by == "none":
                report.rows = [self._no_usage(meter)]
            return report
        if group_by == "month":
            for start, end in _months(from_ns, to_ns):
                rows = self._aggregate(session, tenant_id, meter, start, end, subject, licensee, "none")
                if rows and rows[0].events:
                    rows[0].period_start, rows[0].period_end = start, end
                    report.rows.append(rows[0])
            return report
        report.rows = self._aggregate(session, tenant_id, meter, from_ns, to_ns, subject, licensee, group_by)
        return report

    def _aggregate(
        self, session: Session, tenant_id: str, meter: Meter, from_ns: int, to_ns: int,
        subject: str | None, licensee: str | None, group_by: str,
    ) -> list[UsageRow]:
        where = "tenant_id = :t AND meter = :m"
        params: dict[str, Any] = {"t": tenant_id, "m": meter.id}
        if licensee is not None:
            where += " AND licensee = :l"
            params["l"] = licensee
        if subject is not None:
            where += " AND subject = :s"
            params["s"] = subject
        # Whole UTC days come from the daily rollups, the partial days at the edges (and
        # every hour when grouping by hour) from the hourly ones.
        d1 = -(-from_ns // DAY_NS) * DAY_NS
        d2 = to_ns - to_ns % DAY_NS
        if group_by == "hour" or d1 >= d2:
            d1 = d2 = to_ns
        params.update(f=from_ns, d1=d1, d2=d2, to=to_ns)

        def source(hourly: str, daily: str, cols: str) -> str:
            parts = [(hourly, ":f", ":d1", from_ns < d1), (daily, ":d1", ":d2", d1 < d2),
                     (hourly, ":d2", ":to", d2 < to_ns)]
            return " UNION ALL ".join(
                f"SELECT {cols} FROM {table} WHERE {where} AND bucket_start >= {lo} AND bucket_start < {hi}"
                for table, lo, hi, nonempty in parts if nonempty
            )

        rollups = source("usage_rollups", "usage_rollups_daily",
                         "tenant_id, subject, bucket_start, sum_micro, event_count, max_micro, latest_micro, latest_ts")
        # With no grouping every row is the tenant's: its id is the one "group".
        grp = {"none": "tenant_id", "subject": "subject", "hour": "bucket_start",
               "day": f"bucket_start - bucket_start % {DAY_NS}"}[group_by]
        base = session.execute(text(
            f"SELECT {grp} AS g, SUM(sum_micro), SUM(event_count), MAX(max_micro) FROM ({rollups}) AS r "
            f"GROUP BY {grp}"
        ), params).all()
        groups: dict[Any, list[Any]] = {r[0]: [int(r[1]), int(r[2]), int(r[3])] for r in base}
        values: dict[Any, int | None]
        if meter.aggregation == "sum":
            values = {g: v[0] for g, v in groups.items()}
        elif meter.aggregation == "count":
            values = {g: v[1] * 1_000_000 for g, v in groups.items()}
        elif meter.aggregation == "max":
            values = {g: v[2] for g, v in groups.items()}
        elif meter.aggregation == "latest":
            latest = session.execute(text(
                f"SELECT g, latest_micro FROM (SELECT {grp} AS g, latest_micro, ROW_NUMBER() OVER "
                f"(PARTITION BY {grp} ORDER BY latest_ts DESC, latest_micro DESC) AS rn "
                f"FROM ({rollups}) AS r) AS x WHERE rn = 1"
            ), params).all()
            values = {r[0]: int(r[1]) for r in latest}
        else:
            uniques = source("usage_rollup_uniques", "usage_rollup_uniques_daily",
                             "tenant_id, subject, bucket_start, value")
            distinct = session.execute(text(
                f"SELECT {grp} AS g, COUNT(DISTINCT value) FROM ({uniques}) AS u GROUP BY {grp}"
            ), params).all()
            values = {r[0]: int(r[1]) * 1_000_000 for r in distinct}
        rows: list[UsageRow] = []
        for g in sorted(groups):
            row = UsageRow(values.get(g), groups[g][1])
            if group_by == "subject":
                row.subject = g
            elif group_by in ("hour", "day"):
                row.period_start = int(g)
                row.period_end = int(g) + (HOUR_NS if group_by == "hour" else DAY_NS)
            rows.append(row)
        if group_by == "none" and not rows:
            rows.append(self._no_usage(meter))
        return rows

    @staticmethod
    def _no_usage(meter: Meter) -> UsageRow:
        return UsageRow(None if meter.aggregation == "latest" else 0, 0)

    # -- retention ----------------------------------------------------------------------
    def prune(self, target: Session | Connection, now_ns: int, retention_days: int) -> int:
        """Drop raw events older than the retention period; returns how many rows (SQLite) or
        partitions + default-partition rows (PostgreSQL) went. Rollups and the dedup ids are
        kept: usage history and "deduplicated forever" outlive the raw events."""
        conn = target.connection() if isinstance(target, Session) else target
        cutoff = now_ns - retention_days * DAY_NS
        if conn.dialect.name == "postgresql":
            return partitions.prune(conn, cutoff)
        # SQLite's raw table has no index on ts (see UsageEvent): each ingested batch's rowid
        # range with its earliest ts says where old rows can be. A range is read only once the
        # cutoff passes its earliest remaining row, and its rows are adjacent in the table.
        deleted = 0
        ranges = conn.execute(text("SELECT first_rowid, last_rowid FROM usage_event_ranges WHERE min_ts < :c "
                                   "ORDER BY first_rowid"), {"c": cutoff}).all()
        for first, last in ranges:
            span = {"a": first, "b": last, "c": cutoff}
            result = conn.execute(text("DELETE FROM usage_events WHERE rowid BETWEEN :a AND :b AND ts < :c"), span)
            deleted += max(result.rowcount or 0, 0)  # type: ignore[attr-defined]
            left = conn.execute(text("SELECT min(ts) FROM usage_events WHERE rowid BETWEEN :a AND :b"), span).scalar()
            if left is None:
                conn.execute(text("DELETE FROM usage_event_ranges WHERE first_rowid = :a"), span)
            else:
                conn.execute(text("UPDATE usage_event_ranges SET min_ts = :m WHERE first_rowid = :a"),
                             {"a": first, "m": left})
        return deleted

    def maintain_partitions(self, target: Session | Connection, now_ns: int) -> int:
        """PostgreSQL: create this and next month's partitions if missing (no-op on SQLite)."""
        conn = target.connection() if isinstance(target, Session) else target
        if conn.dialect.name != "postgresql":
            return 0
        return partitions.ensure(conn, now_ns)


def _months(from_ns: int, to_ns: int) -> list[tuple[int, int]]:
    """Calendar months (UTC) overlapping [from, to), clipped to it."""
    out: list[tuple[int, int]] = []
    start = from_ns
    while start < to_ns:
        nxt = partitions.month_start_ns(start, 1)
        out.append((start, min(nxt, to_ns)))
        start = nxt
    return out


metering_service = MeteringService()
