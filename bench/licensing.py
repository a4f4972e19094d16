"""License validation over HTTP: the seed's POST /api/v1/licenses/validate under load.

One `meterline serve --dev` process on SQLite (the demo catalogue holds the
seed's tenant-123: base license, 100 cameras). A warm-up validates each of the
100 cameras once (activating them — the only database writes), then 32
keep-alive clients (split over client processes) send validations for those
cameras for `--seconds`, repeated `--reps` times; the median run is reported.
Each client keeps one request in flight and sends the next when the answer is
complete; requests are pre-built bytes and the clients are protocol callbacks,
not asyncio streams, because the load generator shares the two cores with the
server (measured: ~70 us of CPU per request for the stream client, ~50 for this one).
Every answer must be 200 with `"is_valid":true`. The audit log is written in the
background throughout, as in production.

Target (issue): ≥ 5,000 requests/s with p99 < 10 ms, warm cache. The clients
share the machine's cores with the server, so the load average is printed.

Usage: python bench/licensing.py [--seconds S] [--reps N] [--client-procs P]
The last line is `BENCH licensing key=value ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import fmt, median, percentile, summary_line
from bench.ledger import _Conn, _free_port, _wait_ready

CLIENTS = 32
CAMERAS = 100
ROOT = Path(__file__).resolve().parent.parent


def _validate_request(port: int, camera: int) -> bytes:
    body = f'{{"camera_id":"cam-{camera:03d}","tenant_id":"tenant-123","device_id":"device-001"}}'.encode()
    return (f"POST /api/v1/licenses/validate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


class _Client(asyncio.Protocol):
    """One keep-alive connection with one request in flight, driven by callbacks: the next
    request is written from `data_received` as soon as the answer is complete. Requests are
    pre-built bytes and answers are parsed only as far as needed (status, Content-Length,
    `"is_valid":true`), so the client costs a fraction of an asyncio stream per request —
    it shares the machine's two cores with the server it measures."""

    def __init__(self, requests: list[bytes], first: int, deadline: float, lats: list[float],
                 samples: list[str], done: asyncio.Future[None]) -> None:
        self.requests, self.i, self.deadline = requests, first, deadline
        self.lats, self.samples, self.done = lats, samples, done
        self.ok = self.err = 0
        self.buf = b""
        self.t0 = 0.0
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def _next(self) -> None:
        self.t0 = time.perf_counter()
        if self.t0 >= self.deadline:
            self._finish()
            return
        self.transport.write(self.requests[self.i % CAMERAS])
        self.i += 1

    def _finish(self, problem: str | None = None) -> None:
        if problem is not None:
            self.err += 1
            self.samples.append(problem)
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                self._finish(f"no content-length: {head[:200]!r}")
                return
            stop = head.find(b"\r\n", at + 17)
            length = int(head[at + 17:stop if stop > 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                break
            self.lats.append(time.perf_counter() - self.t0)
            if buf[9:12] == b"200" and b'"is_valid":true' in buf[end + 4:total]:
                self.ok += 1
            else:
                self.err += 1
                if len(self.samples) < 3:
                    self.samples.append(f"{buf[9:12]!r} {buf[end + 4:total][:200]!r}")
            buf = buf[total:]
            self._next()
        self.buf = buf

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self._finish(f"connection lost: {exc!r}")


async def _load(port: int, clients: int, seconds: float, offset: int) -> tuple[int, int, list[float], float, list[str]]:
    loop = asyncio.get_running_loop()
    requests = [_validate_request(port, i) for i in range(CAMERAS)]
    lats: list[float] = []
    samples: list[str] = []
    deadline = 0.0  # set once every client is connected; then they all start
    conns: list[_Client] = []
    for c in range(clients):
        client = _Client(requests, (offset + c) * 7, deadline, lats, samples, loop.create_future())
        await loop.create_connection(lambda: client, "127.0.0.1", port)
        conns.append(client)
    t0 = time.perf_counter()
    for client in conns:
        client.deadline = t0 + seconds
        client._next()
    await asyncio.gather(*(client.done for client in conns))
    elapsed = time.perf_counter() - t0
    for client in conns:
        client.transport.close()
    return sum(c.ok for c in conns), sum(c.err for c in conns), lats, elapsed, samples


async def _activate_all(port: int) -> int:
    """Validate each camera once, one after another: every activation (a database write) happens
    here, not inside a timed run — a time-boxed concurrent warm-up left some cameras for run 1."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    conn = _Conn(r, w)
    valid = 0
    for camera in range(CAMERAS):
        status, body = await conn.request(_validate_request(port, camera))
        valid += status == 200 and b'"is_valid":true' in body
    w.close()
    return valid


def _run(port: int, clients: int, seconds: float, offset: int) -> Any:
    try:
        import uvloop

        return uvloop.run(_load(port, clients, seconds, offset))
    except ImportError:
        return asyncio.run(_load(port, clients, seconds, offset))


def _proc(port: int, clients: int, seconds: float, offset: int, q: Any) -> None:
    q.put(_run(port, clients, seconds, offset))


def drive(port: int, seconds: float, procs: int) -> dict[str, Any]:
    per = [CLIENTS // procs + (1 if i < CLIENTS % procs else 0) for i in range(procs)]
    if procs == 1:
        results = [_run(port, per[0], seconds, 0)]
    else:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        ps = [ctx.Process(target=_proc, args=(port, n, seconds, sum(per[:i]), q)) for i, n in enumerate(per)]
        for p in ps:
            p.start()
        results = [q.get(timeout=seconds + 60) for _ in ps]
        for p in ps:
            p.join()
    lats = sorted(x for r in results for x in r[2])
    elapsed = max(r[3] for r in results)
    ok = sum(r[0] for r in results)
    return {"ok": ok, "err": sum(r[1] for r in results), "rps": ok / elapsed,
            "p50": percentile(lats, 50) * 1000, "p99": percentile(lats, 99) * 1000,
            "samples": [s for r in results for s in r[4]]}


def _cpu_s(pid: int) -> float | None:
    """The server's CPU time so far (Linux): per-request CPU is a figure the other processes on
    a shared machine inflate far less than throughput and tail latency."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--client-procs", type=int, default=1)
    args = ap.parse_args()
    print(f"license validation over HTTP: {CLIENTS} keep-alive clients in {args.client_procs} process(es), "
          f"{args.seconds:g}s x {args.reps}, one `meterline serve --dev` process on SQLite, cpus={os.cpu_count()}")
    summary: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="meterline-bench-lic-") as d:
        port = _free_port()
        env = dict(os.environ, METERLINE_DATABASE_URL=f"sqlite:///{Path(d) / 'bench.db'}",
                   METERLINE_DATA_DIR=str(Path(d) / "data"), PYTHONPATH=str(ROOT))
        env.pop("METERLINE_REDIS_URL", None)
        log = open(Path(d) / "server.log", "wb")
        server = subprocess.Popen([sys.executable, "-m", "meterline.cli.main", "serve", "--dev", "--port", str(port)],
                                  cwd=d, env=env, stdout=log, stderr=log)
        try:
            _wait_ready(port, server)
            activated = asyncio.run(_activate_all(port))
            assert activated == CAMERAS, f"only {activated} of {CAMERAS} cameras validated"
            warm = drive(port, 1.0, 1)
            print(f"  warm-up: {activated} cameras activated, then {warm['ok']} ok, {warm['err']} errors")
            runs = []
            for rep in range(args.reps):
                cpu0 = _cpu_s(server.pid)
                r = drive(port, args.seconds, args.client_procs)
                cpu1 = _cpu_s(server.pid)
                r["cpu_us"] = (cpu1 - cpu0) / r["ok"] * 1e6 if cpu0 is not None and cpu1 is not None and r["ok"] \
                    else float("nan")
                runs.append(r)
                print(f"  run {rep + 1}: {r['rps']:.0f} req/s  p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms  "
                      f"errors {r['err']}  server CPU {r['cpu_us']:.0f} us/req  load {os.getloadavg()[0]:.2f}")
                if r["samples"]:
                    print(f"    samples: {r['samples'][:3]}")
            mid = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
            summary = {"rps": fmt(median([r["rps"] for r in runs])), "p50_ms": fmt(mid["p50"], 2),
                       "p99_ms": fmt(mid["p99"], 2), "server_cpu_us": fmt(median([r["cpu_us"] for r in runs])),
                       "errors": str(sum(r["err"] for r in runs)),
                       "clients": str(CLIENTS), "load1": fmt(os.getloadavg()[0], 2),
                       "target": "rps>=5000,p99<10ms"}
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
    print(summary_line("licensing", summary))


if __name__ == "__main__":
    main()
