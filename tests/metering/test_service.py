"""Metering service: dedup, per-event codes, each aggregation exact, grouping, tenancy, retention."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select, text

from meterline.db.base import BIGINT_MAX
from meterline.metering import ingest as ingest_engine
from meterline.metering.ingest import HOUR_NS, UsageEventIn, UsageTotalOverflow
from meterline.metering.models import UsageEvent, UsageEventId, UsageRollup
from meterline.metering.service import (
    InvalidMeter,
    InvalidUsagePeriod,
    MeterExists,
    MeterNotFound,
    UsageBatchTooLarge,
    metering_service,
)
from tests.factories import make_tenant

NS = 1_000_000_000


@pytest.fixture
def t0(clock):
    return clock.now_ns() - clock.now_ns() % HOUR_NS  # an hour boundary


@pytest.fixture
def tenant(session, clock, tenant_id):
    make_tenant(session, tenant_id, clock)
    metering_service.seed_demo(session, tenant_id, clock.now_ns())
    return tenant_id


def ev(eid, q=1, *, meter="frames_processed", subject="cam-1", ts, props=None):
    return UsageEventIn(eid, subject, meter, q, ts, props)


def ingest(session, tenant, events, now, licensee="lic", **kw):
    return metering_service.ingest(session, tenant, licensee, "dev-1", events, now, **kw)


def total(session, tenant, meter, t0, **kw):
    rep = metering_service.usage(session, tenant, meter, from_ns=t0 - 24 * HOUR_NS, to_ns=t0 + 2 * HOUR_NS, **kw)
    return rep.rows


def test_accepts_and_aggregates_sum_exactly(session, tenant, clock, t0):
    r = ingest(session, tenant, [ev("a", Decimal("1.000001"), ts=t0), ev("b", "2.5", ts=t0 + 1), ev("c", 3, ts=t0)],
               clock.now_ns())
    assert (r.accepted, r.duplicates, r.rejected) == (3, 0, [])
    assert r.results == ["accepted"] * 3
    [row] = total(session, tenant, "frames_processed", t0)
    assert (row.value_micro, row.events) == (6_500_001, 3)


def test_dedup_within_batch_and_across_batches(session, tenant, clock, t0):
    now = clock.now_ns()
    r1 = ingest(session, tenant, [ev("a", ts=t0), ev("a", 5, ts=t0), ev("b", ts=t0)], now)
    assert (r1.accepted, r1.duplicates, r1.results) == (2, 1, ["accepted", "duplicate", "accepted"])
    r2 = ingest(session, tenant, [ev("b", 7, ts=t0), ev("c", ts=t0)], now)
    assert (r2.accepted, r2.duplicates, r2.results) == (1, 1, ["duplicate", "accepted"])
    [row] = total(session, tenant, "frames_processed", t0)
    assert (row.value_micro, row.events) == (3_000_000, 3)


def test_each_bad_event_rejected_alone(session, tenant, clock, t0):
    now = clock.now_ns()
    events = [
        ev("ok1", ts=t0),
        ev("m", meter="nope", ts=t0),
        ev("q1", -1, ts=t0),
        ev("q2", "abc", ts=t0),
        ev("q3", Decimal("0.0000001"), ts=t0),
        ev("q4", 1.5, ts=t0),  # a float has already lost digits: refused
        ev("q5", Decimal("NaN"), ts=t0),
        ev("late", ts=now - 8 * 24 * 3600 * NS),
        ev("future", ts=now + 3600 * NS),
        ev("badts", ts="yesterday"),
        ev("", ts=t0),
        ev("nosubject", subject="", ts=t0),
        ev("props", ts=t0, props=["x"]),
        ev("ok2", ts="2023-11-14T22:00:00Z"),
    ]
    r = ingest(session, tenant, events, now)
    codes = {x.event_id: x.code for x in r.rejected}
    assert codes == {
        "m": "unknown_meter", "q1": "invalid_quantity", "q2": "invalid_quantity", "q3": "invalid_quantity",
        "q4": "invalid_quantity", "q5": "invalid_quantity", "late": "too_late", "future": "in_future",
        "badts": "invalid_timestamp", "": "invalid_event", "nosubject": "invalid_event",
        "props": "invalid_properties",
    }
    assert r.accepted == 2 and r.results[0] == "accepted" and r.results[-1] == "accepted"
    assert [x.index for x in r.rejected] == list(range(1, 13))
    # A rejected event claims nothing: the same id, fixed, is accepted.
    assert ingest(session, tenant, [ev("q1", 1, ts=t0)], now).accepted == 1


def test_lateness_window_is_configurable(session, tenant, clock, t0):
    now = clock.now_ns()
    old = now - 2 * 3600 * NS
    assert ingest(session, tenant, [ev("x", ts=old)], now, lateness_s=3600).results == ["too_late"]
    assert ingest(session, tenant, [ev("x", ts=old)], now, lateness_s=3 * 3600).results == ["accepted"]


def test_every_aggregation_exact(session, tenant, clock, t0):
    now = clock.now_ns()
    for mid, agg, field in [("m_count", "count", None), ("m_max", "max", None), ("m_latest", "latest", None),
                            ("m_uniq", "unique_count", "user")]:
        metering_service.create_meter(session, tenant, id=mid, aggregation=agg, field=field, now_ns=now)
    h1, h2 = t0 - HOUR_NS, t0
    data = [("e1", "2", h1 + 5, "u1"), ("e2", "9.5", h1 + 9, "u2"), ("e3", "4", h2 + 1, "u1"),
            ("e4", "1", h2 + 2, "u3")]
    events = []
    for meter in ("m_count", "m_max", "m_latest", "m_uniq"):
        events += [ev(f"{meter}-{e}", q, meter=meter, ts=ts, props={"user": u}) for e, q, ts, u in data]
    assert ingest(session, tenant, events, now).accepted == 16
    # the latest of h1 arrives late and out of order in a later batch
    assert ingest(session, tenant, [ev("m_latest-e0", "100", meter="m_latest", ts=h1 + 1)], now).accepted == 1
    got = {m: total(session, tenant, m, t0)[0].value_micro for m in ("m_count", "m_max", "m_latest", "m_uniq")}
    assert got == {"m_count": 4_000_000, "m_max": 9_500_000, "m_latest": 1_000_000, "m_uniq": 3_000_000}
    hourly = metering_service.usage(session, tenant, "m_latest", from_ns=h1, to_ns=h2 + HOUR_NS, group_by="hour")
    assert [(r.period_start, r.value_micro) for r in hourly.rows] == [(h1, 9_500_000), (h2, 1_000_000)]
    uniq = metering_service.usage(session, tenant, "m_uniq", from_ns=h1, to_ns=h2 + HOUR_NS, group_by="hour")
    assert [r.value_micro for r in uniq.rows] == [2_000_000, 2_000_000]  # u1 in both hours counts once overall
    assert ingest(session, tenant, [ev("nouser", meter="m_uniq", ts=h2)], now).results == ["missing_property"]


def test_group_by_subject_day_month_and_filters(session, tenant, clock, t0):
    now = clock.now_ns()
    events = [ev(f"e{i}", i, subject=f"cam-{i % 3}", ts=t0 - i * HOUR_NS) for i in range(1, 49)]
    assert ingest(session, tenant, events, now, lateness_s=3 * 24 * 3600).accepted == 48
    ingest(session, tenant, [ev("other-lic", 1000, ts=t0)], now, licensee="lic-2")
    frm, to = t0 - 72 * HOUR_NS, t0 + HOUR_NS
    by_subject = metering_service.usage(session, tenant, "frames_processed", from_ns=frm, to_ns=to,
                                        group_by="subject", licensee="lic")
    assert {r.subject: r.value_micro // 1_000_000 for r in by_subject.rows} == {
        "cam-0": sum(i for i in range(1, 49) if i % 3 == 0),
        "cam-1": sum(i for i in range(1, 49) if i % 3 == 1),
        "cam-2": sum(i for i in range(1, 49) if i % 3 == 2),
    }
    days = metering_service.usage(session, tenant, "frames_processed", from_ns=frm, to_ns=to, group_by="day")
    assert sum(r.value_micro for r in days.rows) == (sum(range(1, 49)) + 1000) * 1_000_000
    assert all(r.period_end - r.period_start == 24 * HOUR_NS for r in days.rows)
    months = metering_service.usage(session, tenant, "frames_processed", from_ns=frm, to_ns=to, group_by="month")
    assert sum(r.value_micro for r in months.rows) == (sum(range(1, 49)) + 1000) * 1_000_000
    one = metering_service.usage(session, tenant, "frames_processed", from_ns=frm, to_ns=to, subject="cam-1",
                                 licensee="lic")
    assert one.rows[0].value_micro == sum(i for i in range(1, 49) if i % 3 == 1) * 1_000_000
    with pytest.raises(InvalidUsagePeriod):
        metering_service.usage(session, tenant, "frames_processed", from_ns=frm + 1, to_ns=to)
    with pytest.raises(InvalidUsagePeriod):
        metering_service.usage(session, tenant, "frames_processed", from_ns=to, to_ns=frm)


def test_queries_read_rollups_not_raw_events(session, tenant, clock, t0):
    ingest(session, tenant, [ev("a", 2, ts=t0)], clock.now_ns())
    session.execute(text("DELETE FROM usage_events"))  # the raw rows are not needed to answer
    assert total(session, tenant, "frames_processed", t0)[0].value_micro == 2_000_000


def test_tenant_isolation(session, clock, tenant_id, t0):
    a, b = tenant_id, f"{tenant_id}-b"
    for t in (a, b):
        make_tenant(session, t, clock)
        metering_service.seed_demo(session, t, clock.now_ns())
    now = clock.now_ns()
    assert ingest(session, a, [ev("same-id", 5, ts=t0)], now).accepted == 1
    assert ingest(session, b, [ev("same-id", 7, ts=t0)], now).accepted == 1  # ids are per tenant
    assert total(session, a, "frames_processed", t0)[0].value_micro == 5_000_000
    assert total(session, b, "frames_processed", t0)[0].value_micro == 7_000_000
    metering_service.create_meter(session, a, id="only_a", aggregation="sum", now_ns=now)
    assert ingest(session, b, [ev("x", meter="only_a", ts=t0)], now).results == ["unknown_meter"]
    with pytest.raises(MeterNotFound):
        metering_service.usage(session, b, "only_a", from_ns=t0, to_ns=t0 + HOUR_NS)


def test_failed_write_leaves_ids_unclaimed(session, tenant, clock, t0, monkeypatch):
    now = clock.now_ns()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingest_engine, "_write", boom)
    with pytest.raises(RuntimeError):
        with session.begin_nested():
            ingest(session, tenant, [ev("a", ts=t0), ev("b", ts=t0)], now)
    monkeypatch.undo()
    assert session.scalar(select(func.count()).select_from(UsageEventId).where(UsageEventId.tenant_id == tenant)) == 0
    r = ingest(session, tenant, [ev("a", ts=t0), ev("b", ts=t0)], now)
    assert (r.accepted, r.duplicates) == (2, 0)


def _set_sums(session, tenant, value):
    for table in ("usage_rollups", "usage_rollups_daily"):
        session.execute(text(f"UPDATE {table} SET sum_micro = :v WHERE tenant_id = :t"), {"v": value, "t": tenant})


@pytest.mark.parametrize("events", [1, 40])  # (40: PostgreSQL's COPY claim)
def test_a_usage_total_past_64_bits_refuses_the_batch_whole(session, tenant, clock, t0, events):
    """9.2 × 10¹² units in one subject's hour (eleven batches of 1,000 events of 10⁹) once
    failed in PostgreSQL as a 500; SQLite would have stored the sum as a float."""
    now = clock.now_ns()
    ingest(session, tenant, [ev("base", 10**9, ts=t0)], now)
    _set_sums(session, tenant, BIGINT_MAX - 10**15 // 2)
    batch = [ev(f"big{i}", 10**9, ts=t0 + i) for i in range(events)]
    with pytest.raises(UsageTotalOverflow), session.begin_nested():
        ingest(session, tenant, batch, now)
    assert session.scalar(select(func.count()).select_from(UsageEventId).where(UsageEventId.tenant_id == tenant)) == 1
    # Within range it is taken, and the sum is exact.
    _set_sums(session, tenant, 10**15)
    assert ingest(session, tenant, batch, now).accepted == events
    [row] = total(session, tenant, "frames_processed", t0)
    assert row.value_micro == 10**15 * (events + 1)


@pytest.mark.parametrize(
    ("stage", "events", "quantity"),
    [
        # PostgreSQL folds the batch while the claim's COPY is still open (40 events is enough
        # for the COPY claim); an error there aborts the COPY and the transaction.
        ("_fold", 40, 1),
        # The claim and the raw rows are in (250: full multi-row statements and single rows),
        # then the rollup upsert fails. SQLite's claim is a plain INSERT betting on new ids:
        # it must roll back too.
        ("_upsert_rollups", 250, 2),
    ],
)
def test_a_failure_part_way_leaves_no_id_claimed_and_no_raw_row(
    session, tenant, clock, t0, monkeypatch, stage, events, quantity
):
    now = clock.now_ns()
    batch = [ev(f"{stage}{i}", quantity, ts=t0 + i) for i in range(events)]

    def boom(*args, **kwargs):
        raise RuntimeError(f"{stage} failed")

    monkeypatch.setattr(ingest_engine, stage, boom)
    with pytest.raises(RuntimeError):
        with session.begin_nested():
            ingest(session, tenant, batch, now)
    monkeypatch.undo()
    assert session.scalar(select(func.count()).select_from(UsageEventId).where(UsageEventId.tenant_id == tenant)) == 0
    assert session.scalar(select(func.count()).select_from(UsageEvent).where(UsageEvent.tenant_id == tenant)) == 0
    r = ingest(session, tenant, batch, now)
    assert (r.accepted, r.duplicates, set(r.results)) == (events, 0, {"accepted"})
    [row] = total(session, tenant, "frames_processed", t0)
    assert (row.value_micro, row.events) == (events * quantity * 1_000_000, events)
    assert session.scalar(select(func.count()).select_from(UsageEvent).where(UsageEvent.tenant_id == tenant)) == events


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # the COPY claim is PostgreSQL's
def test_the_claim_savepoint_does_not_outlive_the_batch(session, tenant, clock, t0):
    """On PostgreSQL a won COPY bet leaves its savepoint open until the write's pipeline releases
    it; after the batch it must be gone (else group commits would nest one per batch)."""
    from sqlalchemy.exc import DBAPIError

    for b in range(2):
        r = ingest(session, tenant, [ev(f"s{b}-{i}", 1, ts=t0 + i) for i in range(40)], clock.now_ns())
        assert r.accepted == 40
    with pytest.raises(DBAPIError, match="usage_claim"):
        with session.begin_nested():
            session.execute(text("RELEASE SAVEPOINT usage_claim"))
    [row] = total(session, tenant, "frames_processed", t0)
    assert (row.value_micro, row.events) == (80_000_000, 80)


def test_batch_limits_and_meter_rules(session, tenant, clock, t0):
    now = clock.now_ns()
    with pytest.raises(UsageBatchTooLarge):
        ingest(session, tenant, [ev(f"e{i}", ts=t0) for i in range(1001)], now)
    with pytest.raises(MeterExists):
        metering_service.create_meter(session, tenant, id="detections", aggregation="sum", now_ns=now)
    with pytest.raises(InvalidMeter):
        metering_service.create_meter(session, tenant, id="u", aggregation="unique_count", now_ns=now)
    with pytest.raises(InvalidMeter):
        metering_service.create_meter(session, tenant, id="bad id", aggregation="sum", now_ns=now)
    assert [m.id for m in metering_service.list_meters(session, tenant)] == [
        "detections", "events_uploaded", "frames_processed", "inference_seconds"]


def test_retention_prunes_raw_events_keeps_rollups_and_ids(session, tenant, clock, t0, db):
    now = clock.now_ns()
    old, new = now - 5 * 24 * 3600 * NS, now - 60 * NS
    ingest(session, tenant, [ev("old", 1, ts=old), ev("new", 2, ts=new)], now)
    metering_service.prune(session, now + 100 * 24 * 3600 * NS if not db.is_sqlite else now, 3)
    ids = set(session.scalars(select(UsageEvent.event_id).where(UsageEvent.tenant_id == tenant)))
    if db.is_sqlite:
        assert ids == {"new"}
    else:  # PostgreSQL drops whole months and deletes from the default partition
        assert ids == set()
    assert session.scalar(select(func.count()).select_from(UsageRollup).where(UsageRollup.tenant_id == tenant)) >= 1
    # "deduplicated forever": the pruned event's id is still claimed
    assert ingest(session, tenant, [ev("old", 1, ts=new)], now).results == ["duplicate"]


def test_raw_rows_round_trip_awkward_text(session, tenant, clock, t0):
    """Enough events for PostgreSQL's COPY path; ids and properties with tabs, newlines, backslashes."""
    now = clock.now_ns()
    weird = ["tab\tid", "nl\nid", "back\\slash", "cr\rid", "\\N", "ünï"]
    events = [ev(f"e{i}-{weird[i % len(weird)]}", i, subject=f"cam {weird[i % len(weird)]}", ts=t0 + i,
                 props={"note": weird[i % len(weird)], "n": Decimal("0.1")}) for i in range(40)]
    assert ingest(session, tenant, events, now).accepted == 40
    got = {e.event_id: (e.subject, e.quantity_micro, e.properties) for e in
           session.scalars(select(UsageEvent).where(UsageEvent.tenant_id == tenant))}
    assert got == {x.event_id: (x.subject, x.quantity * 1_000_000,
                                '{"note":' + __import__("json").dumps(x.properties["note"], ensure_ascii=False)
                                + ',"n":0.1}') for x in events}


def test_hourly_and_daily_rollups_agree(session, tenant, clock, t0):
    now = clock.now_ns()
    metering_service.create_meter(session, tenant, id="uniq", aggregation="unique_count", field="u", now_ns=now)
    events = [ev(f"e{i}", i, ts=t0 - i * 3 * HOUR_NS) for i in range(1, 50)]
    events += [ev(f"u{i}", 1, meter="uniq", ts=t0 - i * 3 * HOUR_NS, props={"u": f"user-{i % 4}"})
               for i in range(1, 50)]
    assert ingest(session, tenant, events, now, lateness_s=10 * 24 * 3600).accepted == 98
    frm, to = t0 - 160 * HOUR_NS, t0 + HOUR_NS  # ragged at both ends: hourly edges + whole days
    whole = metering_service.usage(session, tenant, "frames_processed", from_ns=frm, to_ns=to)
    hours = metering_service.usage(session, tenant, "frames_processed", from_ns=frm, to_ns=to, group_by="hour")
    days = metering_service.usage(session, tenant, "frames_processed", from_ns=frm, to_ns=to, group_by="day")
    expected = sum(range(1, 50)) * 1_000_000
    assert whole.rows[0].value_micro == expected
    assert sum(r.value_micro for r in hours.rows) == expected
    assert sum(r.value_micro for r in days.rows) == expected
    assert metering_service.usage(session, tenant, "uniq", from_ns=frm, to_ns=to).rows[0].value_micro == 4_000_000


def test_a_batch_holding_one_seen_id_claims_the_others_once(session, tenant, clock, t0):
    """Enough ids for PostgreSQL's optimistic COPY claim: one id seen before makes the COPY fail,
    its savepoint undoes the partial claim, and the ON CONFLICT fallback claims the rest."""
    now = clock.now_ns()
    assert ingest(session, tenant, [ev("e17", 5, ts=t0)], now).accepted == 1
    r = ingest(session, tenant, [ev(f"e{i}", 1, ts=t0 + i) for i in range(60)], now)
    assert (r.accepted, r.duplicates) == (59, 1)
    assert r.results[17] == "duplicate"
    claimed = session.scalar(select(func.count()).select_from(UsageEventId).where(UsageEventId.tenant_id == tenant))
    assert claimed == 60
    [row] = total(session, tenant, "frames_processed", t0)
    assert (row.value_micro, row.events) == (64_000_000, 60)
    # and the whole batch again: nothing new
    assert ingest(session, tenant, [ev(f"e{i}", 1, ts=t0 + i) for i in range(60)], now).duplicates == 60


@pytest.mark.parametrize("text_value", ["plain", "tab\there", "nl\nhere", "back\\slash", "cr\rhere", "\\N", "ünï"])
def test_copy_text_escapes_exactly_when_needed(text_value):
    """The unescaped fast build is used only when it equals the fully escaped text."""
    esc = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
    rows = [(10 + i, f"id-{i}-{text_value}", f"cam-{text_value}", "m", i,
             None if i % 2 else f'{{"x":"{text_value}"}}') for i in range(4)]
    null = "\\N"
    expected = "".join(
        f"t\t{ts}\t{e.translate(esc)}\tlic\tdev\t{s.translate(esc)}\tm\t{q}\t"
        f"{null if p is None else p.translate(esc)}\t99\n"
        for ts, e, s, _m, q, p in rows)
    assert ingest_engine._events_copy_text("t", "lic", "dev", 99, rows) == expected


def test_claimed_ids_are_exactly_the_submitted_ones(session, tenant, clock, t0):
    """SQLite claims a batch as one JSON array unless an id needs an escape in JSON; either way
    the claimed id is exactly the submitted one, and a later batch sees it as a duplicate."""
    now = clock.now_ns()
    plain = ["ünï-ç☃", "emoji-🙂", "sp ace", "12", "a'b", "x\u2028y"]
    escaped = ['q"uote', "back\\slash", "tab\tid", "ctl\x01id"]
    first = [ev(e, 1, ts=t0 + i) for i, e in enumerate(plain)]
    assert ingest(session, tenant, first, now).accepted == len(plain)
    second = [ev(e, 1, ts=t0 + i) for i, e in enumerate(escaped)]
    assert ingest(session, tenant, second, now).accepted == len(escaped)
    claimed = set(session.scalars(select(UsageEventId.event_id).where(UsageEventId.tenant_id == tenant)))
    assert claimed == set(plain) | set(escaped)
    again = ingest(session, tenant, [*first, *second, ev("new", 1, ts=t0)], now)
    assert (again.accepted, again.duplicates) == (1, len(plain) + len(escaped))
    raw = set(session.scalars(select(UsageEvent.event_id).where(UsageEvent.tenant_id == tenant)))
    assert raw == claimed | {"new"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL prunes by partition
def test_sqlite_retention_by_rowid_ranges(session, tenant, clock, t0):
    """Each SQLite batch records its rowid range and earliest ts; pruning deletes exactly the rows
    before the cutoff, moves a straddling range's min_ts up to what is left, drops emptied ones."""
    now = clock.now_ns()
    day = 24 * HOUR_NS
    # batch 1 straddles three days; batch 2 is wholly recent; batch 3 wholly old
    b1 = [ev(f"a{i}", 1, ts=now - (6 - i) * day) for i in range(3)]  # 6, 5, 4 days ago
    b2 = [ev(f"b{i}", 1, ts=now - i * NS) for i in range(5)]
    b3 = [ev(f"c{i}", 1, ts=now - 6 * day - i * NS) for i in range(300)]
    for batch in (b1, b2, b3):
        assert ingest(session, tenant, batch, now, lateness_s=7 * 24 * 3600).accepted == len(batch)

    def ranges():
        return session.execute(text("SELECT first_rowid, last_rowid, min_ts FROM usage_event_ranges "
                                    "ORDER BY first_rowid")).all()

    def raw():
        return set(session.scalars(select(UsageEvent.event_id).where(UsageEvent.tenant_id == tenant)))

    mine = ranges()[-3:]
    assert [r.min_ts for r in mine] == [now - 6 * day, now - 4 * NS, now - 6 * day - 299 * NS]
    assert [r.last_rowid - r.first_rowid + 1 for r in mine] == [3, 5, 300]
    # cutoff between 6 and 5 days ago: a0 and all of batch 3 go
    n = metering_service.prune(session, now + 12 * HOUR_NS, retention_days=6)
    assert n >= 301
    assert raw() == {"a1", "a2"} | {f"b{i}" for i in range(5)}
    after = {r.first_rowid: r for r in ranges()}
    assert after[mine[0].first_rowid].min_ts == now - 5 * day  # moved up to what is left
    assert mine[2].first_rowid not in after  # emptied: dropped
    # a day on, a1 goes too; nothing recent is touched
    metering_service.prune(session, now + 36 * HOUR_NS, retention_days=6)
    assert raw() == {"a2"} | {f"b{i}" for i in range(5)}
    assert {r.first_rowid: r.min_ts for r in ranges()}[mine[0].first_rowid] == now - 4 * day
    # the pruned ids stay claimed
    assert ingest(session, tenant, [ev("c7", 1, ts=now)], now).results == ["duplicate"]
