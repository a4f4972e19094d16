"""Usage metering benchmark.

Parts:

1. ingestion through the service API in batches of 1000 events (10 cameras × 4
   meters, properties on one in ten), on SQLite and PostgreSQL, median over reps:
   "direct" (the summary's sqlite_eps / pg_eps) — one caller, `metering_service.ingest`
   in its own transaction per batch (one fsync per 1000 events), with the median CPU
   time of this thread per batch (sqlite_cpu_ms: all of SQLite's work, the fsync wait
   excluded — steadier than events/s on a shared machine; pg_client_cpu_ms: only the
   client's part, PostgreSQL works in its own processes); "group commit"
   (sqlite_group_eps / pg_group_eps) — `--callers` threads submitting batches to the
   `UsageIngestor`, the path the HTTP routes use;
2. `POST /api/v1/usage/batch` over HTTP (the BrinkByte profile) against one
   `meterline serve --dev` process on SQLite, batches of 1000, N keep-alive
   connections from the lean client in bench/ledger.py — events/s;
3. a meter query (`metering_service.usage`, what `GET /v1/meters/{meter}/usage`
   runs) over a month of 10 million events actually ingested: 200 cameras over 31 days
   (October 2025, its own monthly partition on PostgreSQL) go through `ingest.apply` —
   the claim, raw rows and rollups of every ingestion — in transactions of 10,000
   events (10x the API's batch, only to keep the run to minutes; the ingest time is
   printed). Timed: the month total (checked against the exact sum), by day, by
   subject, a partial-day range, and one camera's month by hour — median and max.

Usage: python bench/usage.py [--only service|http|query] [--backends sqlite,postgres]
The last line is `BENCH usage key=value ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    fmt,
    fresh_postgres,
    fresh_sqlite,
    median,
    postgres_reachable,
    summary_line,
)
from bench.ledger import _Conn, _free_port, _wait_ready
from meterline.clock import SystemClock
from meterline.db.engine import Database
from meterline.identity.service import identity_service
from meterline.metering import ingest, partitions
from meterline.metering.ingest import HOUR_NS, UsageEventIn, Window
from meterline.metering.ingestor import UsageIngestor
from meterline.metering.service import metering_service

BATCH = 1000
METERS = ("frames_processed", "detections", "events_uploaded", "inference_seconds")
NS = 1_000_000_000


def log(msg: str = "") -> None:
    print(msg, flush=True)


def setup(db: Database, tenant: str) -> None:
    now = SystemClock().now_ns()
    with db.session() as s:
        identity_service.ensure_tenant(s, tenant, now)
        metering_service.seed_demo(s, tenant, now)


RANDOM_IDS = False  # --random-ids: UUIDv4 event ids instead of "<batch>-<n>"


def make_events(prefix: str, now: int, seq: int = 0) -> list[UsageEventIn]:
    """Batch `seq` of a stream: its events cover one second of event time, the next batch the
    next second (edge devices report what just happened), ending at `now` + 40 s at most.
    Ids are "<batch>-<n>" — a batch's ids sort together, as a device's counter or a time-
    prefixed id would — or, with --random-ids, UUIDv4s, which scatter over the dedup index."""
    out = []
    base = now - 600 * NS + seq * NS
    for i in range(BATCH):
        props = {"model": "yolov8n", "fps": 30} if i % 10 == 0 else None
        out.append(UsageEventIn(str(uuid.uuid4()) if RANDOM_IDS else f"{prefix}-{i}", f"cam-{i % 10:03d}",
                                METERS[i % 4], i % 50 + 1, base + i * 1_000_000, props))
    return out


def bench_service(url: str, backend: str, args: argparse.Namespace) -> tuple[float, float]:
    """(direct, group commit) events/s. Direct: one caller, `metering_service.ingest` in one
    transaction per batch. Group commit: `--callers` threads submitting batches to the
    `UsageIngestor` (what the HTTP routes use), which commits what has queued together."""
    db = Database(url)
    try:
        setup(db, "bench")
        direct = []
        cpu: list[float] = []
        for rep in range(args.reps):
            now = time.time_ns()
            batches = [make_events(f"r{rep}b{b}", now, b) for b in range(args.batches)]
            rep_cpu = []
            t0 = time.perf_counter()
            for batch in batches:
                c0 = time.thread_time()
                with db.write_connection() as conn:
                    r = metering_service.ingest(conn, "bench", "tenant-123", "device-001", batch, now)
                    assert r.accepted == BATCH, (r.accepted, r.rejected[:3])
                rep_cpu.append((time.thread_time() - c0) * 1000)
            rate = args.batches * BATCH / (time.perf_counter() - t0)
            direct.append(rate)
            cpu.append(median(rep_cpu))
            log(f"  {backend:8s} direct       rep {rep}: {rate:>9,.0f} events/s, {cpu[-1]:.2f} ms CPU per batch"
                f"{'' if db.is_sqlite else ' (this process only)'}, load {os.getloadavg()[0]:.2f}")
        args.cpu_ms[backend] = median(cpu)
        grouped = []
        ingestor = UsageIngestor(db).start()
        try:
            for rep in range(args.reps):
                now = time.time_ns()
                window = Window(now, 3600, 300)
                per = [[make_events(f"g{rep}c{c}b{b}", now, b) for b in range(args.batches // args.callers)]
                       for c in range(args.callers)]
                failures: list[str] = []

                def caller(batches: list[list[UsageEventIn]], window: Window = window,
                           failures: list[str] = failures) -> None:
                    for batch in batches:
                        r = ingestor.submit("bench", "tenant-123", "device-001", batch, window).result()
                        if r.accepted != BATCH:
                            failures.append(f"{r.accepted} accepted")

                threads = [threading.Thread(target=caller, args=(b,)) for b in per]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                rate = sum(len(b) for b in per) * BATCH / (time.perf_counter() - t0)
                assert not failures, failures[:3]
                grouped.append(rate)
                log(f"  {backend:8s} group commit rep {rep}: {rate:>9,.0f} events/s ({args.callers} callers)")
        finally:
            ingestor.stop()
        return median(direct), median(grouped)
    finally:
        db.dispose()


def run_service(args: argparse.Namespace, summary: dict[str, str]) -> None:
    log(f"\n== service API: batches of {BATCH}, {args.batches} per rep")
    if "sqlite" in args.backends:
        with fresh_sqlite() as url:
            d, g = bench_service(url, "sqlite", args)
            summary["sqlite_eps"], summary["sqlite_group_eps"] = fmt(d), fmt(g)
            summary["sqlite_cpu_ms"] = fmt(args.cpu_ms["sqlite"], 2)
            log(f"  sqlite median: direct {d:,.0f}, group commit {g:,.0f} events/s")
    if "postgres" in args.backends and postgres_reachable():
        with fresh_postgres() as url:
            d, g = bench_service(url, "postgres", args)
            summary["pg_eps"], summary["pg_group_eps"] = fmt(d), fmt(g)
            summary["pg_client_cpu_ms"] = fmt(args.cpu_ms["postgres"], 2)
            log(f"  postgres median: direct {d:,.0f}, group commit {g:,.0f} events/s")


# -- HTTP -------------------------------------------------------------------------------


def _batch_request(port: int, tag: str, now_s: int) -> bytes:
    events = []
    for i in range(BATCH):
        events.append(
            f'{{"event_id":"{tag}-{i}","camera_id":"cam-{i % 10:03d}","meter":"{METERS[i % 4]}",'
            f'"quantity":{i % 50 + 1},"timestamp":{now_s}.{i:03d}}}'
        )
    body = ('{"tenant_id":"tenant-123","device_id":"device-001","events":[' + ",".join(events) + "]}").encode()
    return (f"POST /api/v1/usage/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def _drive(port: int, clients: int, seconds: float, tag: str) -> tuple[int, int, float, list[str]]:
    conns = [_Conn(*(await asyncio.open_connection("127.0.0.1", port))) for _ in range(clients)]
    deadline = time.perf_counter() + seconds
    accepted = 0
    errors = 0
    samples: list[str] = []

    async def one(c: int, conn: _Conn) -> None:
        nonlocal accepted, errors
        i = 0
        while time.perf_counter() < deadline:
            raw = _batch_request(port, f"{tag}-{c}-{i}", int(time.time()) - 2)
            i += 1
            status, body = await conn.request(raw)
            if status == 200:
                out = json.loads(body)
                accepted += out["accepted"]
                if out["rejected"] and len(samples) < 3:
                    samples.append(str(out["rejected"][:2]))
            else:
                errors += 1
                if len(samples) < 3:
                    samples.append(f"{status} {body[:200]!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c, conn) for c, conn in enumerate(conns)))
    elapsed = time.perf_counter() - t0
    for conn in conns:
        conn.writer.close()
    return accepted, errors, elapsed, samples


def run_http(args: argparse.Namespace, summary: dict[str, str]) -> None:
    log(f"\n== HTTP POST /api/v1/usage/batch: {args.http_clients} connections, batches of {BATCH}, "
        f"{args.seconds:g}s per rep, one `meterline serve --dev` on SQLite")
    with tempfile.TemporaryDirectory(prefix="meterline-bench-usage-") as d, fresh_sqlite(d) as url:
        port = _free_port()
        env = dict(os.environ, METERLINE_DATABASE_URL=url, METERLINE_DATA_DIR=str(Path(d) / "data"))
        exe = Path(sys.executable).with_name("meterline")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "meterline.cli.main"]
        server = subprocess.Popen([*cmd, "serve", "--dev", "--port", str(port)], cwd=d, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_ready(port, server)
            asyncio.run(_drive(port, 1, 1.0, "warm"))
            rates = []
            for rep in range(args.http_reps):
                acc, err, elapsed, samples = asyncio.run(_drive(port, args.http_clients, args.seconds, f"h{rep}"))
                rates.append(acc / elapsed)
                log(f"  rep {rep}: {acc / elapsed:>9,.0f} events/s ({acc / BATCH / elapsed:.1f} batches/s), "
                    f"errors {err}" + (f"  e.g. {samples[0]}" if samples else ""))
            summary["http_eps"] = fmt(median(rates))
            log(f"  HTTP median: {summary['http_eps']} events/s")
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.communicate()


# -- query over 10M ingested events ------------------------------------------------------

QUERY_BATCH = 10_000


def query_events(month_start: int, step: int, subjects: int, first: int, n: int) -> list[UsageEventIn]:
    """Events first..first+n of the month's stream: `step` ns apart, round-robin over the
    cameras, quantity 1..50 — so any total is computable without reading anything back."""
    return [UsageEventIn(f"q{k}", f"cam-{k % subjects:04d}", "frames_processed", k % 50 + 1,
                         month_start + k * step) for k in range(first, first + n)]


def ingest_month(db: Database, tenant: str, month_start: int, days: int, subjects: int, events: int) -> float:
    """Ingest `events` events through `ingest.apply` (the code path of every ingestion: claim,
    raw rows, hourly and daily rollups), QUERY_BATCH per transaction; returns events/s.
    Batches are 10x the API's 1000 only to keep a bench run to minutes; nothing else differs."""
    end = month_start + days * 24 * HOUR_NS
    step = (end - month_start) // max(events, 1)
    window = Window(end, (days + 1) * 86_400, 0)
    if not db.is_sqlite:
        with db.write_connection() as conn:
            partitions.ensure(conn, month_start, 0)  # the month's own partition, not the default one
    t0 = time.perf_counter()
    for first in range(0, events, QUERY_BATCH):
        batch = query_events(month_start, step, subjects, first, min(QUERY_BATCH, events - first))
        with db.write_connection() as conn:
            r = ingest.apply(conn, tenant, "tenant-123", "device-001", batch, window)
        assert r.accepted == len(batch), (r.accepted, r.rejected[:3])
    rate = events / (time.perf_counter() - t0)
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")
    return rate


def bench_query(url: str, backend: str, args: argparse.Namespace) -> float:
    db = Database(url)
    try:
        setup(db, "q")
        month = 1_759_276_800 * NS  # 2025-10-01T00:00:00Z
        t0 = time.perf_counter()
        rate = ingest_month(db, "q", month, 31, 200, args.query_events)
        with db.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT (SELECT COUNT(*) FROM usage_rollups WHERE tenant_id = 'q'), "
                                        "(SELECT COUNT(*) FROM usage_rollups_daily WHERE tenant_id = 'q')").one()
        log(f"  {backend}: {args.query_events:,} events ingested in {time.perf_counter() - t0:.0f}s "
            f"({rate:,.0f} events/s, batches of {QUERY_BATCH:,}) -> {rows[0]:,} hourly and {rows[1]:,} daily rollup rows")
        end = month + 31 * 24 * HOUR_NS
        cases = {
            "month_total": dict(group_by="none"),
            "month_by_day": dict(group_by="day"),
            "month_by_subject": dict(group_by="subject"),
            "camera_by_hour": dict(group_by="hour", subject="cam-0042", licensee="tenant-123"),
        }
        ranges = {name: (month, end) for name in cases}
        cases["ragged_edges"] = dict(group_by="none")  # 10:00 on the 1st to 14:00 on the 31st
        ranges["ragged_edges"] = (month + 10 * HOUR_NS, end - 10 * HOUR_NS)
        worst = 0.0
        for name, kw in cases.items():
            times = []
            for _ in range(args.query_reps):
                with db.session(write=False) as s:
                    q0 = time.perf_counter()
                    frm, to = ranges[name]
                    rep = metering_service.usage(s, "q", "frames_processed", from_ns=frm, to_ns=to, **kw)
                    times.append((time.perf_counter() - q0) * 1000)
            if name == "month_total":
                expected = sum(k % 50 + 1 for k in range(args.query_events)) * 1_000_000
                assert (rep.rows[0].events, rep.rows[0].value_micro) == (args.query_events, expected), rep.rows[0]
            med = median(times)
            worst = max(worst, med)
            log(f"  {backend} {name:17s}: median {med:6.1f} ms  max {max(times):6.1f} ms  ({len(rep.rows)} rows)")
        return worst
    finally:
        db.dispose()


def run_query(args: argparse.Namespace, summary: dict[str, str]) -> None:
    log(f"\n== meter query over {args.query_events:,} ingested events")
    if "sqlite" in args.backends:
        with fresh_sqlite() as url:
            summary["sqlite_query_ms"] = fmt(bench_query(url, "sqlite", args), 1)
    if "postgres" in args.backends and postgres_reachable():
        with fresh_postgres() as url:
            summary["pg_query_ms"] = fmt(bench_query(url, "postgres", args), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["service", "http", "query"])
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--callers", type=int, default=4, help="threads submitting to the group-commit ingestor")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--http-reps", type=int, default=3)
    ap.add_argument("--http-clients", type=int, default=4)
    ap.add_argument("--query-events", type=int, default=10_000_000)
    ap.add_argument("--query-reps", type=int, default=20)
    ap.add_argument("--random-ids", action="store_true", help="service part: UUIDv4 event ids")
    args = ap.parse_args()
    global RANDOM_IDS
    RANDOM_IDS = args.random_ids
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.cpu_ms = {}
    log(f"meterline usage benchmark — {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.2f} at start")
    summary = {k: "NA" for k in ("sqlite_eps", "pg_eps", "http_eps", "sqlite_query_ms", "pg_query_ms",
                                  "sqlite_group_eps", "pg_group_eps", "sqlite_cpu_ms", "pg_client_cpu_ms")}
    if args.only in (None, "service"):
        run_service(args, summary)
    if args.only in (None, "http"):
        run_http(args, summary)
    if args.only in (None, "query"):
        run_query(args, summary)
    summary["load"] = f"{os.getloadavg()[0]:.2f}"
    log()
    log(summary_line("usage", summary))


if __name__ == "__main__":
    main()
