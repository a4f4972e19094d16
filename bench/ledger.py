"""Ledger posting benchmark.

Parts (see the issue's Performance section):

1. batches of 1000 transfers through the service API (`LedgerBatcher.post`, one
   caller posting batch after batch), over 10,000 accounts, spread (random
   pairs) and hot (every transfer debits or credits one account) — SQLite and
   PostgreSQL; several repetitions, the MEDIAN is reported;
2. single transfers (one per call) from 8 concurrent callers for a fixed
   duration — throughput, p50 and p99 latency; PostgreSQL for the summary
   (SQLite printed for reference). Two kinds of caller take turns: 8 threads
   calling the blocking `LedgerBatcher.post` (the summary's
   `pg_single_spread/hot`), and 8 tasks on one event loop awaiting
   `post_async`, as the server's `POST /v1/transfers` handlers do
   (`pg_single_*_loop`). The batcher is the same; the threads pay for
   CPython's GIL hand-overs (about 4 context switches per transfer against 1);
3. single-transfer `POST /v1/transfers` over HTTP with 32 concurrent
   keep-alive connections against one `meterline serve --dev` process on
   SQLite — requests/s, p50, p99, errors;
4. the same load against `GET /health` on the same server (the ceiling).

HTTP client: a minimal HTTP/1.1 keep-alive client on asyncio (+ uvloop), with
request bytes built by string formatting, so the load generator costs a few
tens of microseconds per request. It shares the 2 cores with the server; httpx
costs several times more CPU per request and would measure itself. Use
--client-procs N to split the 32 connections over N processes.

Every run ends with a consistency check of the ledger it wrote (Σ debits =
Σ credits per asset, every balance = the sum of its transfers, seq gap-free,
every acknowledged transfer stored exactly once) and `verify_ledger`'s chain
recomputation, printed as OK/FAIL.

Every run starts by reading the machine's phase — plain Python's speed and the
latency of one durable PostgreSQL commit (`probe_py_ms`, `probe_pg_commit_us` in
the summary): this 2-core virtual machine runs unchanged code 2x faster or slower
from one hour to the next, so compare runs with these readings beside them.

Usage: python bench/ledger.py [--only service|http] [--seconds S] [--reps N]
                               [--backends sqlite,postgres]
The last line is `BENCH ledger key=value ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, text

from bench._common import (
    fmt,
    fresh_postgres,
    fresh_sqlite,
    median,
    percentile,
    pg_commit_probe_us,
    postgres_reachable,
    python_probe_ms,
    summary_line,
)
from meterline.cli.common import tune_gc
from meterline.clock import SystemClock
from meterline.db.engine import Database
from meterline.identity.service import identity_service
from meterline.ledger.batcher import LedgerBatcher
from meterline.ledger.models import Account
from meterline.ledger.types import TransferIn

ACCOUNTS = 10_000
BATCH = 1000
HOT = "hot"
SINGLE_CLIENTS = 8
HTTP_CLIENTS = 32
ROOT = Path(__file__).resolve().parent.parent


def log(msg: str = "") -> None:
    print(msg, flush=True)


# -- setup ------------------------------------------------------------------------------


def setup_ledger(db: Database, tenant: str) -> list[str]:
    """Tenant with standard assets, a hot treasury account and ACCOUNTS wallets (no limits)."""
    clock = SystemClock()
    now = clock.now_ns()
    with db.session() as s:
        identity_service.ensure_tenant(s, tenant, now)
    ids = [f"acc{i:05d}" for i in range(ACCOUNTS)]
    rows: list[dict[str, Any]] = [
        dict(tenant_id=tenant, id=a, asset="USD", kind="customer_wallet", owner_type=None, owner_id=None,
             flags=0, debits_pending=0, debits_posted=0, credits_pending=0, credits_posted=0,
             created_at=now, metadata_=None)
        for a in [HOT, *ids]
    ]
    rows[0]["kind"] = "treasury"
    with db.engine.begin() as conn:
        conn.execute(insert(Account), rows)
    # Planner statistics for the new accounts, as autovacuum (PostgreSQL) or
    # `PRAGMA optimize` (SQLite) would have them on a running system.
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE accounts" if not db.is_sqlite else "ANALYZE")
    return ids


def make_transfers(prefix: str, n: int, ids: list[str], hot: bool, rng: random.Random) -> list[TransferIn]:
    out = []
    for i in range(n):
        if hot:
            other = ids[rng.randrange(len(ids))]
            dr, cr = (HOT, other) if i % 2 == 0 else (other, HOT)
        else:
            d, c = rng.sample(range(len(ids)), 2)
            dr, cr = ids[d], ids[c]
        out.append(TransferIn(f"{prefix}-{i}", dr, cr, rng.randint(1, 1000), "USD"))
    return out


# -- consistency check ----------------------------------------------------------------


def check_ledger(db: Database, tenant: str, expected_ok: int | None) -> bool:
    """Σ debits = Σ credits, balances = sums of transfers, seq gap-free, count as acknowledged."""
    problems: list[str] = []
    with db.engine.connect() as conn:
        p = {"t": tenant}
        for asset, dpo, cpo, dp, cp in conn.execute(text(
            "SELECT asset, SUM(debits_posted), SUM(credits_posted), SUM(debits_pending), SUM(credits_pending) "
            "FROM accounts WHERE tenant_id = :t GROUP BY asset"), p):
            if dpo != cpo or dp != cp:
                problems.append(f"{asset}: debits {dpo}/{dp} != credits {cpo}/{cp}")
        n, max_seq, min_seq, non_plain = conn.execute(text(
            "SELECT COUNT(*), MAX(seq), MIN(seq), SUM(CASE WHEN flags <> 0 THEN 1 ELSE 0 END) "
            "FROM transfers WHERE tenant_id = :t"), p).one()
        if n and (min_seq != 1 or max_seq != n):
            problems.append(f"seq not gap-free: {n} transfers, seq {min_seq}..{max_seq}")
        if non_plain:
            problems.append(f"{non_plain} transfers with flags (the bench posts plain transfers only)")
        head = conn.execute(text("SELECT last_seq FROM ledger_heads WHERE tenant_id = :t"), p).scalar()
        if (head or 0) != n:
            problems.append(f"head last_seq {head} != {n} transfers")
        if expected_ok is not None and n != expected_ok:
            problems.append(f"{n} transfers stored, {expected_ok} acknowledged")
        bad = conn.execute(text(
            """
            SELECT COUNT(*) FROM accounts a
            LEFT JOIN (SELECT debit_account_id AS id, SUM(amount) AS s FROM transfers
                       WHERE tenant_id = :t GROUP BY debit_account_id) d ON d.id = a.id
            LEFT JOIN (SELECT credit_account_id AS id, SUM(amount) AS s FROM transfers
                       WHERE tenant_id = :t GROUP BY credit_account_id) c ON c.id = a.id
            WHERE a.tenant_id = :t
              AND (a.debits_posted <> COALESCE(d.s, 0) OR a.credits_posted <> COALESCE(c.s, 0)
                   OR a.debits_pending <> 0 OR a.credits_pending <> 0)
            """), p).scalar()
        if bad:
            problems.append(f"{bad} accounts whose balances differ from their transfers")
    try:
        from meterline.ledger.verify import verify_ledger
    except ImportError:
        verify_ledger = None  # type: ignore[assignment]
    if verify_ledger is not None:
        report = verify_ledger(db, tenant)
        if not report.ok:
            problems.append(report.summary() + ": " + "; ".join(str(x) for x in report.problems[:3]))
    status = "OK" if not problems else "FAIL"
    log(f"    consistency {status}: {n} transfers" + ("" if not problems else " — " + " | ".join(problems)))
    return not problems


# -- part 1: batches of 1000 --------------------------------------------------------------


def analyze(db: Database) -> None:
    """What autovacuum would have done by now (it is off on this machine): give the planner
    statistics for the tables the warm-up filled. Without them PostgreSQL can cost the
    (tenant_id, seq) index like the primary key for the ledger's key lookups and scan every
    transfer of the tenant per key — 250–800 ms per batch of 1,000 (docs/operations.md)."""
    if db.is_sqlite:
        return
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")


def warm_every_account(batcher: LedgerBatcher, tenant: str, ids: list[str]) -> int:
    """One transfer out of every account, in batches of 1000, so the writer's cache and the
    page cache hold them all, as on a running system. Returns the transfers acknowledged."""
    acked = 0
    for start in range(0, len(ids), BATCH):
        res = batcher.post(tenant, [TransferIn(f"warm-{i}", ids[i], ids[(i + 1) % len(ids)], 1, "USD")
                                    for i in range(start, min(start + BATCH, len(ids)))])
        acked += sum(r.result == "ok" for r in res)
    return acked


def bench_batches(db: Database, backend: str, args: argparse.Namespace) -> dict[str, float]:
    tenant = "bench-batch"
    ids = setup_ledger(db, tenant)
    out: dict[str, float] = {}
    acked = 0
    ok = True
    with LedgerBatcher(db, SystemClock()) as batcher:
        # Steady state (with only the two warm-up batches below, the first spread reps still
        # read ~2/3 of their accounts: 35-37k/s against 43-46k/s for the later reps, measured).
        acked += warm_every_account(batcher, tenant, ids)
        for mode in ("spread", "hot"):
            rng = random.Random(f"{backend}-{mode}")
            # Warm-up: caches, prepared statements, the first touch of every page.
            for w in range(2):
                res = batcher.post(tenant, make_transfers(f"{mode}-w{w}", BATCH, ids, mode == "hot", rng))
                acked += sum(r.result == "ok" for r in res)
            analyze(db)
            rates = []
            for rep in range(args.reps):
                batches = [make_transfers(f"{mode}-r{rep}-b{b}", BATCH, ids, mode == "hot", rng)
                           for b in range(args.batches)]
                t0 = time.perf_counter()
                for b in batches:
                    res = batcher.post(tenant, b)
                    bad = [r.result for r in res if r.result != "ok"]
                    if bad:
                        raise SystemExit(f"unexpected results: {bad[:5]}")
                elapsed = time.perf_counter() - t0
                acked += BATCH * len(batches)
                rates.append(BATCH * len(batches) / elapsed)
            out[mode] = median(rates)
            log(f"  {backend:8s} batch {mode:6s}: median {out[mode]:>9,.0f} transfers/s   "
                f"(reps: {', '.join(f'{r:,.0f}' for r in rates)}; {args.batches}×{BATCH} per rep)")
    ok = check_ledger(db, tenant, acked)
    out["ok"] = float(ok)
    return out


# -- part 2: single transfers from 8 concurrent callers ------------------------------------


def _transfer(tag: str, i: int, ids: list[str], hot: bool, rng: random.Random) -> list[TransferIn]:
    t = make_transfers(f"{tag}-{i}", 1, ids, hot, rng)
    if hot and rng.random() < 0.5:  # both directions through the hot account
        t[0].debit_account_id, t[0].credit_account_id = t[0].credit_account_id, t[0].debit_account_id
    return t


@dataclass
class _Tally:
    """One caller's count of answers and its latencies (seconds)."""

    ok: int = 0
    refused: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, result: str, seconds: float) -> None:
        self.latencies.append(seconds)
        if result == "ok":
            self.ok += 1
        else:
            self.refused += 1


# One repetition: every caller's tally and the elapsed seconds.
_Rep = tuple[list[_Tally], float]


def _threads_rep(batcher: LedgerBatcher, tenant: str, ids: list[str], hot: bool, tag: str,
                 seconds: float) -> _Rep:
    """SINGLE_CLIENTS threads, each calling the blocking `post` in a loop (as a worker job
    or a synchronous service call does)."""
    stop = threading.Event()
    tallies = [_Tally() for _ in range(SINGLE_CLIENTS)]

    def client(w: int) -> None:
        rng = random.Random(f"{tag}-{w}")
        i = 0
        while not stop.is_set():
            t = _transfer(f"{tag}-{w}", i, ids, hot, rng)
            i += 1
            t0 = time.perf_counter()
            r = batcher.post(tenant, t)[0]
            tallies[w].add(r.result, time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(SINGLE_CLIENTS)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join()
    return tallies, time.perf_counter() - t0


def _loop_rep(batcher: LedgerBatcher, tenant: str, ids: list[str], hot: bool, tag: str,
              seconds: float) -> _Rep:
    """SINGLE_CLIENTS tasks on one event loop, each awaiting `post_async` in a loop — how the
    server's `POST /v1/transfers` handlers call the batcher."""
    tallies = [_Tally() for _ in range(SINGLE_CLIENTS)]

    async def client(w: int, end: float) -> None:
        rng = random.Random(f"{tag}-{w}")
        i = 0
        while time.perf_counter() < end:
            t = _transfer(f"{tag}-{w}", i, ids, hot, rng)
            i += 1
            t0 = time.perf_counter()
            r = (await batcher.post_async(tenant, t))[0]
            tallies[w].add(r.result, time.perf_counter() - t0)

    async def run() -> None:
        end = time.perf_counter() + seconds
        await asyncio.gather(*(client(w, end) for w in range(SINGLE_CLIENTS)))

    t0 = time.perf_counter()
    asyncio.run(run())
    return tallies, time.perf_counter() - t0


SINGLE_CALLERS = {"threads": _threads_rep, "loop": _loop_rep}


def bench_single(db: Database, backend: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Part 2; returns {"spread"|"hot" + ("" | "_loop"): {"tps", "p50", "p99"}}."""
    tenant = "bench-single"
    ids = setup_ledger(db, tenant)
    out: dict[str, dict[str, float]] = {}
    acked = 0
    errors = 0
    with LedgerBatcher(db, SystemClock(), window_ms=args.window_ms, overlap=args.overlap) as batcher:
        # Steady state, as in part 1: one transfer out of every account first, so the writer's
        # cache holds them all. Without it the first spread rep reads most of its accounts
        # (its batches take a second round trip) and measures a cold start, not the service.
        acked += warm_every_account(batcher, tenant, ids)
        for mode in ("spread", "hot"):
            warm = batcher.post(tenant, make_transfers(f"s-{mode}-warm", BATCH, ids, mode == "hot",
                                                       random.Random(mode)))
            acked += sum(r.result == "ok" for r in warm)
            analyze(db)
            rates: dict[str, list[float]] = {kind: [] for kind in args.single_callers}
            lats: dict[str, list[float]] = {kind: [] for kind in args.single_callers}
            for rep in range(args.single_reps):
                # The caller kinds take turns, first one then the other, so that the machine's
                # drift over the minute does not favour either.
                kinds = args.single_callers if rep % 2 == 0 else args.single_callers[::-1]
                for kind in kinds:
                    tallies, elapsed = SINGLE_CALLERS[kind](
                        batcher, tenant, ids, mode == "hot", f"s-{mode}-{kind}-{rep}", args.seconds)
                    n_ok = sum(t.ok for t in tallies)
                    errors += sum(t.refused for t in tallies)
                    acked += n_ok
                    rates[kind].append(n_ok / elapsed)
                    lats[kind].extend(x for t in tallies for x in t.latencies)
            for kind in args.single_callers:
                key = mode if kind == "threads" else f"{mode}_loop"
                kind_lats = sorted(lats[kind])
                out[key] = {"tps": median(rates[kind]), "p50": percentile(kind_lats, 50) * 1000,
                            "p99": percentile(kind_lats, 99) * 1000}
                who = f"{SINGLE_CLIENTS} threads" if kind == "threads" else f"{SINGLE_CLIENTS} loop tasks"
                log(f"  {backend:8s} single {mode:6s} ({kind:7s}): median {out[key]['tps']:>8,.0f} transfers/s  "
                    f"p50 {out[key]['p50']:.2f} ms  p99 {out[key]['p99']:.2f} ms   "
                    f"(reps: {', '.join(f'{r:,.0f}' for r in rates[kind])}; {who} × {args.seconds:g}s)")
    if errors:
        log(f"    {errors} transfers were not ok")
    check_ledger(db, tenant, acked)
    return out


def run_service(args: argparse.Namespace, summary: dict[str, str]) -> None:
    tune_gc()  # the batcher runs here with the collector tuned as in `meterline serve` and `worker`
    for backend in args.backends:
        if backend == "postgres" and not postgres_reachable():
            continue
        log(f"\n== {backend}: part 1 (batches of {BATCH}) and part 2 ({SINGLE_CLIENTS} single-transfer clients)")
        cm = fresh_sqlite() if backend == "sqlite" else fresh_postgres()
        with cm as url:
            db = Database(url)
            try:
                b = bench_batches(db, backend, args)
                key = "sqlite" if backend == "sqlite" else "pg"
                summary[f"{key}_spread"] = fmt(b["spread"])
                summary[f"{key}_hot"] = fmt(b["hot"])
                s = bench_single(db, backend, args)
                if backend == "postgres":
                    for key, result in s.items():
                        summary[f"pg_single_{key}"] = fmt(result["tps"])
            finally:
                db.dispose()


# -- parts 3 and 4: HTTP -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Conn:
    """One keep-alive HTTP/1.1 connection; reads exactly one response per request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
            return status, body
        body = await self.reader.readexactly(length) if length > 0 else b""
        return status, body


def _transfer_request(port: int, tid: str, dr: str, cr: str, cents: int) -> bytes:
    body = (f'{{"id":"{tid}","debit_account_id":"{dr}","credit_account_id":"{cr}",'
            f'"amount":"{cents // 100}.{cents % 100:02d}","asset":"USD"}}').encode()
    return (f"POST /v1/transfers HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def _load(port: int, kind: str, clients: int, seconds: float, tag: str, seed: int,
                ids: list[str]) -> tuple[int, int, list[float], float, list[str]]:
    conns = []
    for _ in range(clients):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        conns.append(_Conn(r, w))
    health = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    deadline = time.perf_counter() + seconds
    ok = 0
    err = 0
    lats: list[float] = []
    samples: list[str] = []

    async def one(c: int, conn: _Conn) -> None:
        nonlocal ok, err
        rng = random.Random(seed * 1000 + c)
        i = 0
        while time.perf_counter() < deadline:
            if kind == "health":
                raw = health
            else:
                d, k = rng.sample(range(len(ids)), 2)
                raw = _transfer_request(port, f"h-{tag}-{c}-{i}", ids[d], ids[k], rng.randint(1, 1000))
            i += 1
            t0 = time.perf_counter()
            try:
                status, body = await conn.request(raw)
            except (OSError, asyncio.IncompleteReadError) as exc:
                err += 1
                if len(samples) < 3:
                    samples.append(repr(exc))
                return
            lats.append(time.perf_counter() - t0)
            if 200 <= status < 300:
                ok += 1
            else:
                err += 1
                if len(samples) < 3:
                    samples.append(f"{status} {body[:200]!r}")

    t0 = time.perf_counter()
    c0 = time.process_time()
    await asyncio.gather(*(one(c, conn) for c, conn in enumerate(conns)))
    elapsed = time.perf_counter() - t0
    print(f"    client CPU {(time.process_time() - c0) / max(1, ok + err) * 1e6:.0f} µs/req", file=sys.stderr)
    for conn in conns:
        conn.writer.close()
    return ok, err, lats, elapsed, samples


def _load_proc(port: int, kind: str, clients: int, seconds: float, tag: str, seed: int, ids: list[str],
               q: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    q.put(asyncio.run(_load(port, kind, clients, seconds, tag, seed, ids)))


def drive(port: int, kind: str, seconds: float, procs: int, tag: str, ids: list[str]) -> dict[str, Any]:
    per = [HTTP_CLIENTS // procs + (1 if i < HTTP_CLIENTS % procs else 0) for i in range(procs)]
    if procs == 1:
        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:
            runner = asyncio.run
        results = [runner(_load(port, kind, per[0], seconds, tag, 0, ids))]
    else:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        ps = [ctx.Process(target=_load_proc, args=(port, kind, n, seconds, f"{tag}p{i}", i + 1, ids, q))
              for i, n in enumerate(per)]
        for p in ps:
            p.start()
        results = [q.get(timeout=seconds + 60) for _ in ps]
        for p in ps:
            p.join()
    ok = sum(r[0] for r in results)
    err = sum(r[1] for r in results)
    lats = sorted(x for r in results for x in r[2])
    elapsed = max(r[3] for r in results)
    samples = [s for r in results for s in r[4]]
    return {"ok": ok, "err": err, "rps": ok / elapsed, "p50": percentile(lats, 50) * 1000,
            "p99": percentile(lats, 99) * 1000, "samples": samples}


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process (Linux /proc), to report server cost per request —
    a figure that stays comparable when other work shares the two cores, unlike req/s."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def drive_measured(server: subprocess.Popen[bytes], port: int, kind: str, seconds: float, procs: int, tag: str,
                   ids: list[str]) -> dict[str, Any]:
    """`drive`, plus the server's CPU microseconds per answered request."""
    before = _cpu_seconds(server.pid)
    r = drive(port, kind, seconds, procs, tag, ids)
    after = _cpu_seconds(server.pid)
    total = r["ok"] + r["err"]
    r["cpu_us"] = (after - before) / total * 1e6 if before is not None and after is not None and total else float("nan")
    return r


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def _probe_transfer(port: int, ids: list[str]) -> tuple[bool, str]:
    async def go() -> tuple[int, bytes]:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await _Conn(r, w).request(_transfer_request(port, "probe-1", ids[0], ids[1], 1))
        finally:
            w.close()

    status, body = asyncio.run(go())
    if status in (404, 405):
        return False, f"POST /v1/transfers answered {status}: endpoint missing"
    if not 200 <= status < 300:
        return False, f"POST /v1/transfers answered {status}: {body[:300]!r}"
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = body[:200]
    return True, f"probe answered {status}: {str(parsed)[:200]}"


def run_http(args: argparse.Namespace, summary: dict[str, str]) -> None:
    log(f"\n== HTTP: {HTTP_CLIENTS} keep-alive connections, {args.client_procs} client process(es), "
        f"{args.http_seconds:g}s per run, one `meterline serve --dev` process on SQLite")
    with tempfile.TemporaryDirectory(prefix="meterline-bench-http-") as d:
        with fresh_sqlite(d) as url:
            db = Database(url)
            ids = setup_ledger(db, "default")
            db.dispose()
            port = _free_port()
            env = dict(os.environ, METERLINE_DATABASE_URL=url, METERLINE_DATA_DIR=str(Path(d) / "data"))
            exe = Path(sys.executable).with_name("meterline")
            cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "meterline.cli.main"]
            server = subprocess.Popen([*cmd, "serve", "--dev", "--port", str(port)], cwd=d, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                _wait_ready(port, server)
                health = drive(port, "health", args.http_seconds, args.client_procs, "hw", ids)  # warm-up
                present, note = _probe_transfer(port, ids)
                log(f"  {note}")
                http_rates: list[dict[str, Any]] = []
                health_rates: list[dict[str, Any]] = []
                acked = 1 if present else 0
                for rep in range(args.http_reps):
                    if present:
                        r = drive_measured(server, port, "transfer", args.http_seconds, args.client_procs,
                                           f"r{rep}", ids)
                        acked += r["ok"]
                        http_rates.append(r)
                        log(f"  POST /v1/transfers rep {rep}: {r['rps']:>7,.0f} req/s  p50 {r['p50']:.1f} ms  "
                            f"p99 {r['p99']:.1f} ms  server CPU {r['cpu_us']:.0f} µs/req  errors {r['err']}"
                            + (f"  e.g. {r['samples'][0]}" if r["samples"] else ""))
                    h = drive_measured(server, port, "health", args.http_seconds, args.client_procs, f"h{rep}", ids)
                    health_rates.append(h)
                    log(f"  GET /health        rep {rep}: {h['rps']:>7,.0f} req/s  p50 {h['p50']:.1f} ms  "
                        f"p99 {h['p99']:.1f} ms  server CPU {h['cpu_us']:.0f} µs/req  errors {h['err']}")
                del health
            finally:
                server.send_signal(signal.SIGINT)
                try:
                    _, stderr = server.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    server.kill()
                    _, stderr = server.communicate()
                tail = [ln for ln in stderr.decode(errors="replace").splitlines()
                        if "Traceback" in ln or "Error" in ln][:5]
                if tail:
                    log("  server stderr: " + " | ".join(tail))
            hr = median([h["rps"] for h in health_rates])
            summary["health_rps"] = fmt(hr)
            log(f"  GET /health median: {hr:,.0f} req/s")
            if present and http_rates:
                tps = median([r["rps"] for r in http_rates])
                mid = sorted(http_rates, key=lambda r: r["rps"])[len(http_rates) // 2]
                summary["http_tps"] = fmt(tps)
                summary["http_p99_ms"] = fmt(mid["p99"], 1)
                log(f"  POST /v1/transfers median: {tps:,.0f} req/s, p99 {mid['p99']:.1f} ms "
                    f"(p99 of the median rep), {tps / hr:.0%} of /health, "
                    f"errors {sum(r['err'] for r in http_rates)}")
                db = Database(url)
                try:
                    check_ledger(db, "default", acked)
                finally:
                    db.dispose()


def probe_phase(args: argparse.Namespace, summary: dict[str, str]) -> None:
    """Read the machine's phase before measuring: plain Python's speed and, when
    PostgreSQL is measured, the latency of one durable commit. Runs minutes apart on
    unchanged code differ by 2x here; these two readings say which phase a run was in."""
    py_ms = python_probe_ms()
    summary["probe_py_ms"] = fmt(py_ms)
    line = f"  machine phase: sum(range(10**7)) {py_ms:.0f} ms"
    if "postgres" in args.backends and args.only in (None, "service") and postgres_reachable():
        commit_us = pg_commit_probe_us()
        summary["probe_pg_commit_us"] = fmt(commit_us)
        line += f"; PostgreSQL one-row durable commit p50 {commit_us:.0f} µs"
    log(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["service", "http"], help="run only these parts")
    ap.add_argument("--backends", default="sqlite,postgres", help="comma list: sqlite,postgres")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each timed run (parts 2-4)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of part 1 (median reported)")
    ap.add_argument("--batches", type=int, default=20, help="batches of 1000 per part-1 repetition")
    ap.add_argument("--single-reps", type=int, default=3, help="repetitions of part 2")
    ap.add_argument("--http-reps", type=int, default=3, help="repetitions of parts 3-4")
    ap.add_argument("--client-procs", type=int, default=1, help="HTTP load-generator processes")
    ap.add_argument("--single-callers", default="threads,loop",
                    help="part 2's callers, comma list: threads (blocking post), loop (post_async on one event loop)")
    ap.add_argument("--window-ms", type=float, default=1.0, help="batcher window for part 2")
    ap.add_argument("--no-overlap", dest="overlap", action="store_false",
                    help="part 2: never overlap two batches (the server's METERLINE_LEDGER_OVERLAP=false); "
                         "by default the batcher does, as the server does, when it measures that it pays")
    args = ap.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.http_seconds = args.seconds
    args.single_callers = [c.strip() for c in args.single_callers.split(",") if c.strip()]
    for c in args.single_callers:
        if c not in SINGLE_CALLERS:
            ap.error(f"unknown --single-callers kind {c}")
    for b in args.backends:
        if b not in ("sqlite", "postgres"):
            ap.error(f"unknown backend {b}")

    log(f"meterline ledger benchmark — {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    summary = {k: "NA" for k in ("sqlite_spread", "sqlite_hot", "pg_spread", "pg_hot", "pg_single_spread",
                                  "pg_single_hot", "pg_single_spread_loop", "pg_single_hot_loop", "http_tps", "http_p99_ms", "health_rps",
                                  "probe_py_ms", "probe_pg_commit_us")}
    probe_phase(args, summary)
    if args.only in (None, "service"):
        run_service(args, summary)
    if args.only in (None, "http"):
        run_http(args, summary)
    log()
    print(summary_line("ledger", summary), flush=True)


if __name__ == "__main__":
    main()
