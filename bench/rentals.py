"""Rentals benchmark: metrics samples at a paced rate, contract status under that load, the billing ledger.

Target (the issue): on this 2-core machine, one `meterline serve --dev` process on SQLite —
1,000 active contracts each posting a metrics sample every 500 ms (2,000 samples/s) sustained
for 60 s with p99 < 50 ms and no errors; contract status p99 < 10 ms under that load;
`GET /api/billing/ledger` with 10,000 active contracts in < 100 ms.

Parts:

1. setup: a temporary SQLite database, `meterline serve --dev` on it (METERLINE_DATABASE_URL),
   --contracts contracts created with `POST /api/rent` (a distinct tx_signature each);
2. load (--only load): every contract POSTs `/api/metrics/{id}` (with `power_w`, so the
   energy integral is exercised) every --interval-ms, on its own keep-alive connection,
   phases spread evenly over the interval. Open-loop: each send has a scheduled time and its
   latency is measured FROM THAT TIME, so a stalled server shows up as latency rather than
   as fewer requests (no coordinated omission). Meanwhile a separate client process polls
   `GET /api/contracts/{id}` of random contracts at --status-rps, also open-loop (a pool of
   connections; a request waiting for a free connection is counted from its scheduled time).
   Latencies are reported overall and per second (the p99 of each second of the run: its
   median and worst, and how many seconds missed the target), so a one-off stall shows apart
   from the sustained latency. After the run: Σ sample_count and the rows in rental_samples must equal the acknowledged
   samples (every 2xx was committed, none twice) — printed OK/FAIL;
3. ledger (--only ledger): active contracts are brought up to --ledger-contracts (the first
   through HTTP as above, the rest as copies of those rows inserted directly into the
   rentals table with new ids — the endpoint reads only that table), then
   `GET /api/billing/ledger` is timed --ledger-calls times (after 2 warm-up calls).

Every figure is printed with the load average at the time (the machine is shared).
HTTP client: the lean asyncio keep-alive client of bench/ledger.py (+ uvloop).

Usage: python bench/rentals.py [--seconds 60] [--contracts 1000] [--only load|ledger]
The last line is `BENCH rentals key=value ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select, text

from bench._common import fmt, fresh_sqlite, median, percentile, summary_line
from bench.ledger import _Conn, _free_port, _wait_ready
from meterline.db.engine import Database
from meterline.rentals.models import Rental

TENANT = "default"  # dev mode: unauthenticated loopback calls act as this tenant's admin
DURATION_HOURS = 2  # nothing expires during a run
RENT_CONNECTIONS = 8
STATUS_CONNECTIONS = 8
METRICS_P99_MS = 50.0  # the targets, for the per-second counts
STATUS_P99_MS = 10.0
REQUEST_TIMEOUT_S = 10.0  # a request unanswered this long is an error (its latency is recorded as ≥ this)


def log(msg: str = "") -> None:
    print(msg, flush=True)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "NA"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU time of each of a process's threads so far, by thread id (Linux /proc).

    The server's event loop is its main thread (thread id = pid); the rest is the sample
    writer, the worker and the threadpool — split so a change shows on which side it landed."""
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            continue
    return out


def sampler_counts(port: int) -> tuple[float, float]:
    """(sample batches committed, samples in them) so far, from the server's /metrics."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text_ = r.read().decode()
    except OSError:
        return float("nan"), float("nan")
    found = {}
    for line in text_.splitlines():
        name, _, value = line.partition(" ")
        if name in ("meterline_sample_batches_total", "meterline_samples_committed_total"):
            found[name] = float(value)
    return (found.get("meterline_sample_batches_total", float("nan")),
            found.get("meterline_samples_committed_total", float("nan")))


def _uvloop_run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _post(port: int, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def _get(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


def _stats(lats: list[float]) -> dict[str, float]:
    s = sorted(lats)
    return {"p50": percentile(s, 50) * 1000, "p99": percentile(s, 99) * 1000,
            "max": (s[-1] * 1000 if s else float("nan"))}


def _per_second(lats: list[float], secs: list[int], limit_ms: float) -> dict[str, Any]:
    """p99 of each second of the run (by scheduled time), so a one-off stall (a GC pause, a WAL
    checkpoint) shows apart from the sustained latency: the median and worst of those p99s, how
    many seconds were over `limit_ms`, and the p99s themselves in ms."""
    by_sec: dict[int, list[float]] = {}
    for lat, sec in zip(lats, secs, strict=True):
        by_sec.setdefault(sec, []).append(lat)
    p99s = [percentile(sorted(v), 99) * 1000 for _, v in sorted(by_sec.items())]
    return {"median": median(p99s) if p99s else float("nan"), "worst": max(p99s, default=float("nan")),
            "over": sum(1 for p in p99s if p > limit_ms), "seconds": len(p99s), "p99s": p99s}


def _per_second_line(name: str, ps: dict[str, Any], limit_ms: float) -> str:
    return (f"  {name} per-second p99: median {ps['median']:.1f} ms, worst {ps['worst']:.1f} ms, "
            f"{ps['over']} of {ps['seconds']} s over {limit_ms:g} ms; by second: "
            + " ".join(f"{p:.0f}" for p in ps["p99s"]))


# -- setup: contracts through POST /api/rent ----------------------------------------------------


async def _rent(port: int, tag: str, start: int, n: int) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    errors: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(start, start + n):
        queue.put_nowait(i)

    async def worker() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        conn = _Conn(r, w)
        try:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = json.dumps({"wallet": f"bench-wallet-{i:05d}", "tier": "M2",
                                   "duration_hours": DURATION_HOURS, "tx_signature": f"bench-{tag}-{i}"}).encode()
                status, raw = await conn.request(_post(port, "/api/rent", body))
                if status == 200:
                    ids.append(json.loads(raw)["contract_id"])
                elif len(errors) < 3:
                    errors.append(f"{status} {raw[:200]!r}")
                else:
                    errors.append("")
        finally:
            w.close()

    await asyncio.gather(*(worker() for _ in range(RENT_CONNECTIONS)))
    return ids, errors


def create_contracts(port: int, tag: str, start: int, n: int) -> list[str]:
    t0 = time.perf_counter()
    ids, errors = _uvloop_run(_rent(port, tag, start, n))
    dt = time.perf_counter() - t0
    log(f"  created {len(ids):,} contracts via POST /api/rent in {dt:.1f} s ({len(ids) / dt:,.0f}/s), "
        f"errors {len(errors)}" + (f" e.g. {errors[0]}" if errors else "") + f"  [load {loadavg()}]")
    if errors:
        raise SystemExit("could not create the contracts")
    return ids


# -- part 2: paced samples and status polls ------------------------------------------------------


async def _metrics_load(port: int, ids: list[str], interval: float, seconds: float, start_at: float
                        ) -> dict[str, Any]:
    conns: list[_Conn | None] = []
    for _ in ids:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        conns.append(_Conn(r, w))
    ok = 0
    err = 0
    lats: list[float] = []
    secs: list[int] = []  # the second (from the start) each latency's request was scheduled in
    samples: list[str] = []
    late_sends = 0
    not_sent = 0

    async def device(k: int, cid: str, conn: _Conn | None) -> None:
        nonlocal ok, err, late_sends, not_sent
        rng = random.Random(k)
        path = f"/api/metrics/{cid}"
        due = start_at + interval * k / len(ids)
        end = start_at + seconds
        while due < end:
            if time.perf_counter() >= end:
                # The run is over but this device is still behind schedule: its remaining slots
                # were never sent in time. Counted as errors, not silently dropped.
                while due < end:
                    err += 1
                    not_sent += 1
                    due += interval
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -interval:
                late_sends += 1
            body = (f'{{"cpu_percent":{rng.randint(0, 100)},"memory_mb":{rng.randint(1000, 8000)},'
                    f'"gpu_util_percent":{rng.randint(0, 100)},"power_w":{rng.randint(50, 450)}.{rng.randint(0, 9)}}}'
                    ).encode()
            try:
                if conn is None:
                    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), REQUEST_TIMEOUT_S)
                    conn = conns[k] = _Conn(r, w)
                # asyncio.timeout, not wait_for: wait_for wraps each request in a new task, and the
                # client shares the machine's two cores with the server it measures.
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    status, resp = await conn.request(_post(port, path, body))
            except (OSError, RuntimeError, asyncio.IncompleteReadError, TimeoutError) as exc:
                err += 1
                lats.append(time.perf_counter() - due)
                secs.append(int(due - start_at))
                if len(samples) < 3:
                    samples.append(repr(exc))
                if conn is not None:
                    conn.writer.close()  # the connection's state is unknown: start a new one
                conn = conns[k] = None
                due += interval
                while due < min(end, time.perf_counter()):  # slots that passed while waiting: not sent
                    err += 1
                    not_sent += 1
                    due += interval
                continue
            lats.append(time.perf_counter() - due)  # from the scheduled time: no coordinated omission
            secs.append(int(due - start_at))
            if status == 200:
                ok += 1
            else:
                err += 1
                if len(samples) < 3:
                    samples.append(f"{status} {resp[:200]!r}")
            due += interval

    delay = start_at - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    cpu0 = time.process_time()
    await asyncio.gather(*(device(k, cid, c) for k, (cid, c) in enumerate(zip(ids, conns, strict=True))))
    elapsed = time.perf_counter() - start_at
    cpu = time.process_time() - cpu0
    for c in conns:
        if c is not None:
            c.writer.close()
    return {"ok": ok, "err": err, "lats": lats, "secs": secs, "elapsed": elapsed, "samples": samples,
            "late": late_sends, "not_sent": not_sent, "cpu": cpu}


async def _status_load(port: int, ids: list[str], rps: float, seconds: float, start_at: float) -> dict[str, Any]:
    pool: asyncio.Queue[_Conn] = asyncio.Queue()
    for _ in range(STATUS_CONNECTIONS):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        pool.put_nowait(_Conn(r, w))
    rng = random.Random(7)
    ok = 0
    err = 0
    lats: list[float] = []
    secs: list[int] = []
    samples: list[str] = []

    async def one(due: float, cid: str) -> None:
        nonlocal ok, err
        conn = await pool.get()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, resp = await conn.request(_get(port, f"/api/contracts/{cid}"))
        except (OSError, RuntimeError, asyncio.IncompleteReadError, TimeoutError) as exc:
            err += 1
            lats.append(time.perf_counter() - due)
            secs.append(int(due - start_at))
            if len(samples) < 3:
                samples.append(repr(exc))
            conn.writer.close()
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), REQUEST_TIMEOUT_S)
                pool.put_nowait(_Conn(r, w))
            except (OSError, TimeoutError):
                pool.put_nowait(conn)  # broken: its next request fails and tries again
            return
        lats.append(time.perf_counter() - due)
        secs.append(int(due - start_at))
        pool.put_nowait(conn)
        if status == 200:
            ok += 1
        else:
            err += 1
            if len(samples) < 3:
                samples.append(f"{status} {resp[:200]!r}")

    tasks = []
    cpu0 = time.process_time()
    n = int(seconds * rps)
    for i in range(n):
        due = start_at + i / rps
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due, ids[rng.randrange(len(ids))])))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start_at
    cpu = time.process_time() - cpu0
    while not pool.empty():
        pool.get_nowait().writer.close()
    return {"ok": ok, "err": err, "lats": lats, "secs": secs, "elapsed": elapsed, "samples": samples, "cpu": cpu}


def _proc(kind: str, args: tuple[Any, ...], q: Any) -> None:
    fn = _metrics_load if kind == "metrics" else _status_load
    q.put(_uvloop_run(fn(*args)))


def run_load(port: int, ids: list[str], args: argparse.Namespace, db_url: str,
             summary: dict[str, str], server_pid: int) -> None:
    interval = args.interval_ms / 1000
    target = len(ids) / interval
    log(f"\n== load: {len(ids):,} contracts × 1 sample / {args.interval_ms:g} ms = {target:,.0f} samples/s "
        f"for {args.seconds:g} s, + GET /api/contracts/{{id}} at {args.status_rps:g} req/s (separate client "
        f"process)  [load {loadavg()}]")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start_at = time.perf_counter() + 3.0  # both processes connect first (perf_counter is system-wide)
    procs = [
        ctx.Process(target=_proc, args=("metrics", (port, ids, interval, args.seconds, start_at), q)),
        ctx.Process(target=_proc, args=("status", (port, ids, args.status_rps, args.seconds, start_at), q)),
    ]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start_at - time.perf_counter()))
    batches0, samples0 = sampler_counts(port)
    cpu0 = cpu_seconds(server_pid)
    threads0 = thread_cpu_seconds(server_pid)
    results = [q.get(timeout=args.seconds + 3 * REQUEST_TIMEOUT_S + 60) for _ in procs]
    cpu = cpu_seconds(server_pid) - cpu0  # the server's CPU over the run: robust to a busy machine
    threads = thread_cpu_seconds(server_pid)
    loop_cpu = threads.get(server_pid, float("nan")) - threads0.get(server_pid, float("nan"))
    batches1, samples1 = sampler_counts(port)
    batches = batches1 - batches0
    per_batch = (samples1 - samples0) / batches if batches > 0 else float("nan")
    for p in procs:
        p.join()
    load_end = loadavg()
    metrics = next(r for r in results if "late" in r)
    status = next(r for r in results if "late" not in r)
    m = _stats(metrics["lats"])
    s = _stats(status["lats"])
    mps = _per_second(metrics["lats"], metrics["secs"], METRICS_P99_MS)
    sps_ = _per_second(status["lats"], status["secs"], STATUS_P99_MS)
    sps = metrics["ok"] / metrics["elapsed"]
    log(f"  POST /api/metrics: {sps:,.0f} samples/s acknowledged (target {target:,.0f}), "
        f"p50 {m['p50']:.1f} ms  p99 {m['p99']:.1f} ms  max {m['max']:.0f} ms  errors {metrics['err']}"
        f"  sends >1 interval late {metrics['late']}"
        f"  not sent in time (behind schedule at the end, or after a timeout) {metrics['not_sent']}"
        + (f"  e.g. {metrics['samples'][0]}" if metrics["samples"] else "") + f"  [load {load_end}]")
    log(f"  GET /api/contracts/{{id}}: {status['ok'] / status['elapsed']:,.0f} req/s, "
        f"p50 {s['p50']:.1f} ms  p99 {s['p99']:.1f} ms  max {s['max']:.0f} ms  errors {status['err']}"
        + (f"  e.g. {status['samples'][0]}" if status["samples"] else "") + f"  [load {load_end}]")
    answered = metrics["ok"] + status["ok"]
    log(f"  server CPU: {cpu:.1f} s over {metrics['elapsed']:.0f} s ({cpu / metrics['elapsed'] * 100:.0f} % of a core), "
        f"{cpu / max(1, answered) * 1e6:.0f} µs per answered request (event loop {loop_cpu / max(1, answered) * 1e6:.0f}, "
        f"other threads {(cpu - loop_cpu) / max(1, answered) * 1e6:.0f}); clients: metrics "
        f"{metrics['cpu'] / metrics['elapsed'] * 100:.0f} %, status {status['cpu'] / status['elapsed'] * 100:.0f} % of a core")
    log(f"  sample commits: {batches:,.0f} ({batches / metrics['elapsed']:,.0f}/s), {per_batch:.1f} samples each")
    log(_per_second_line("POST /api/metrics", mps, METRICS_P99_MS))
    log(_per_second_line("GET /api/contracts/{id}", sps_, STATUS_P99_MS))
    consistent = check_samples(db_url, ids, metrics["ok"])
    summary.update(
        samples_per_s=fmt(sps), samples_target=fmt(target), metrics_p50_ms=fmt(m["p50"], 1),
        metrics_p99_ms=fmt(m["p99"], 1), metrics_max_ms=fmt(m["max"]), metrics_errors=str(metrics["err"]),
        status_p50_ms=fmt(s["p50"], 1), status_p99_ms=fmt(s["p99"], 1), status_max_ms=fmt(s["max"]),
        status_errors=str(status["err"]), samples_consistent="OK" if consistent else "FAIL",
        metrics_sec_p99_median_ms=fmt(mps["median"], 1), metrics_sec_p99_worst_ms=fmt(mps["worst"], 1),
        metrics_secs_over=f"{mps['over']}/{mps['seconds']}", status_sec_p99_median_ms=fmt(sps_["median"], 1),
        status_sec_p99_worst_ms=fmt(sps_["worst"], 1), status_secs_over=f"{sps_['over']}/{sps_['seconds']}",
        load_after_run=load_end.replace(" ", "/"), server_cpu_us_per_req=fmt(cpu / max(1, answered) * 1e6),
        server_loop_cpu_us_per_req=fmt(loop_cpu / max(1, answered) * 1e6), samples_per_commit=fmt(per_batch, 1),
    )


def check_samples(db_url: str, ids: list[str], acked: int) -> bool:
    """Every acknowledged sample is stored once, and counted once on its contract."""
    db = Database(db_url)
    try:
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT COUNT(*) FROM rental_samples WHERE tenant_id = :t"), {"t": TENANT}).scalar()
            counted = conn.execute(text("SELECT COALESCE(SUM(sample_count), 0) FROM rentals WHERE tenant_id = :t"),
                                   {"t": TENANT}).scalar()
    finally:
        db.dispose()
    ok = rows == counted and rows is not None and rows >= acked
    # A sample whose response was lost (client error) may still have committed: rows ≥ acked.
    log(f"  consistency: {rows:,} sample rows, Σ sample_count {counted:,}, {acked:,} acknowledged — "
        f"{'OK' if ok else 'FAIL'}")
    return ok


# -- part 3: the billing ledger over many active contracts ---------------------------------------


def fill_active(db_url: str, want: int) -> int:
    """Copy existing active contracts (new ids) until `want` are active. Returns the count."""
    db = Database(db_url)
    try:
        with db.engine.connect() as conn:
            have = conn.execute(select(Rental.__table__).where(Rental.tenant_id == TENANT,
                                                               Rental.status == "ACTIVE")).mappings().all()
        if not have:
            raise SystemExit("no active contracts to copy")
        rows = []
        for i in range(max(0, want - len(have))):
            row = dict(have[i % len(have)])
            row["id"] = f"CTR-B{i:07d}"
            row["payment_proof"] = f"bench-copy-{i}"
            rows.append(row)
        if rows:
            with db.write_connection() as conn:
                conn.execute(insert(Rental), rows)
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE")
        return len(have) + len(rows)
    finally:
        db.dispose()


async def _time_ledger(port: int, calls: int) -> tuple[list[float], list[str], int]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    conn = _Conn(r, w)
    raw = _get(port, "/api/billing/ledger")
    lats: list[float] = []
    errors: list[str] = []
    count = -1
    try:
        for i in range(calls + 2):
            t0 = time.perf_counter()
            status, body = await conn.request(raw)
            dt = time.perf_counter() - t0
            if status != 200:
                errors.append(f"{status} {body[:200]!r}")
                continue
            count = json.loads(body)["active_count"]
            if i >= 2:  # two warm-up calls
                lats.append(dt)
    finally:
        w.close()
    return lats, errors, count


def run_ledger(port: int, db_url: str, args: argparse.Namespace, summary: dict[str, str]) -> None:
    n = fill_active(db_url, args.ledger_contracts)
    time.sleep(5)  # let the server finish any backlog of the load part: this part is timed unloaded
    log(f"\n== GET /api/billing/ledger with {n:,} active contracts, {args.ledger_calls} calls  [load {loadavg()}]")
    lats, errors, count = _uvloop_run(_time_ledger(port, args.ledger_calls))
    s = sorted(lats)
    med = median(lats) * 1000
    p99 = percentile(s, 99) * 1000
    lavg = loadavg()
    log(f"  median {med:.1f} ms  p99 {p99:.1f} ms  min {s[0] * 1000 if s else float('nan'):.1f} ms  "
        f"active_count {count:,}  errors {len(errors)}" + (f" e.g. {errors[0]}" if errors else "")
        + f"  [load {lavg}]")
    summary.update(ledger_contracts=str(count), ledger_median_ms=fmt(med, 1), ledger_p99_ms=fmt(p99, 1),
                   ledger_errors=str(len(errors)), load_after_ledger=lavg.replace(" ", "/"))


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["load", "ledger"], help="run only this part")
    ap.add_argument("--seconds", type=float, default=60.0, help="duration of the paced load")
    ap.add_argument("--contracts", type=int, default=1000, help="contracts posting samples")
    ap.add_argument("--interval-ms", type=float, default=500.0, help="each contract's sample interval")
    ap.add_argument("--status-rps", type=float, default=100.0, help="GET /api/contracts/{id} rate")
    ap.add_argument("--ledger-contracts", type=int, default=10_000, help="active contracts for the ledger part")
    ap.add_argument("--ledger-calls", type=int, default=20, help="timed GET /api/billing/ledger calls")
    args = ap.parse_args()

    log(f"meterline rentals benchmark — {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"load {loadavg()}")
    summary = {k: "NA" for k in (
        "samples_per_s", "samples_target", "metrics_p50_ms", "metrics_p99_ms", "metrics_max_ms", "metrics_errors",
        "status_p50_ms", "status_p99_ms", "status_max_ms", "status_errors", "samples_consistent",
        "metrics_sec_p99_median_ms", "metrics_sec_p99_worst_ms", "metrics_secs_over", "status_sec_p99_median_ms",
        "status_sec_p99_worst_ms", "status_secs_over",
        "ledger_contracts", "ledger_median_ms", "ledger_p99_ms", "ledger_errors")}
    summary["load_before"] = loadavg().replace(" ", "/")
    with tempfile.TemporaryDirectory(prefix="meterline-bench-rentals-") as d:
        with fresh_sqlite(d) as url:
            port = _free_port()
            # The server runs this checkout's code (the one this script imported), whatever is
            # installed in the environment: its root goes first on the server's PYTHONPATH.
            root = str(Path(__file__).resolve().parent.parent)
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
            env = dict(os.environ, METERLINE_DATABASE_URL=url, METERLINE_DATA_DIR=str(Path(d) / "data"),
                       PYTHONPATH=path)
            exe = Path(sys.executable).with_name("meterline")
            cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "meterline.cli.main"]
            log(f"\n== setup: `meterline serve --dev` on {url}")
            err_path = Path(d) / "server.err"  # a file, not a pipe nobody reads while the server runs
            err_file = err_path.open("wb")
            server = subprocess.Popen([*cmd, "serve", "--dev", "--port", str(port)], cwd=d, env=env,
                                      stdout=subprocess.DEVNULL, stderr=err_file)
            try:
                _wait_ready(port, server)
                ids = create_contracts(port, "c", 0, args.contracts)
                if args.only in (None, "load"):
                    run_load(port, ids, args, url, summary, server.pid)
                if args.only in (None, "ledger"):
                    run_ledger(port, url, args, summary)
            finally:
                server.send_signal(signal.SIGINT)
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
                err_file.close()
                tail = [ln for ln in err_path.read_text(errors="replace").splitlines()
                        if "Traceback" in ln or "Error" in ln][:5]
                if tail:
                    log("  server stderr: " + " | ".join(tail))
    log()
    print(summary_line("rentals", summary), flush=True)


if __name__ == "__main__":
    main()
