"""Shared helpers for the benchmark scripts: fresh databases, statistics, output."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def pg_admin_url() -> str:
    return (
        os.environ.get("METERLINE_BENCH_POSTGRES_URL")
        or os.environ.get("METERLINE_TEST_POSTGRES_URL")
        or DEFAULT_PG_URL
    )


def _psycopg(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


@contextmanager
def fresh_sqlite(tmpdir: str | None = None) -> Iterator[str]:
    """A migrated SQLite file in a temporary directory, removed afterwards."""
    from meterline.db import migrate

    with tempfile.TemporaryDirectory(prefix="meterline-bench-", dir=tmpdir) as d:
        url = f"sqlite:///{Path(d) / 'bench.db'}"
        migrate.upgrade(url)
        yield url


@contextmanager
def fresh_postgres(admin_url: str | None = None) -> Iterator[str]:
    """A freshly created and migrated PostgreSQL database, dropped afterwards."""
    from meterline.db import migrate

    admin = create_engine(_psycopg(admin_url or pg_admin_url()), isolation_level="AUTOCOMMIT")
    name = f"meterline_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    # make_url keeps a query string (`?host=/var/run/postgresql` for a Unix socket) intact.
    url = make_url(_psycopg(admin_url or pg_admin_url())).set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_reachable(admin_url: str | None = None) -> bool:
    try:
        eng = create_engine(_psycopg(admin_url or pg_admin_url()))
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return True
    except Exception as exc:
        print(f"  PostgreSQL not reachable ({exc.__class__.__name__}); skipping it", file=sys.stderr)
        return False


def python_probe_ms() -> float:
    """How fast this machine runs plain Python right now: the median of three
    `sum(range(10**7))`, in milliseconds.

    The 2-core virtual machine the figures come from swings 2x and more in speed
    within an hour, on unchanged code (docs/scaling.md): a figure means little
    without the phase it was measured in, and this reading is that phase.
    """
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        sum(range(10**7))
        times.append((time.perf_counter() - t0) * 1000)
    return median(times)


def pg_commit_probe_us(seconds: float = 1.0, admin_url: str | None = None) -> float:
    """The median latency, in microseconds, of PostgreSQL's durable commit right now:
    a one-row UPDATE in its own transaction, one after another, on a fresh database.

    This is the fixed cost every group commit pays (a round trip, the WAL flush and
    its fsync), and what bounds 8 single-transfer clients (docs/scaling.md): read
    part 2's figures against it.
    """
    import psycopg

    with fresh_postgres(admin_url) as url:
        conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE probe (id int PRIMARY KEY, n bigint NOT NULL)")
            conn.execute("INSERT INTO probe VALUES (1, 0)")
            latencies = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                conn.execute("UPDATE probe SET n = n + 1 WHERE id = 1", prepare=True)
                latencies.append((time.perf_counter() - t0) * 1e6)
    return median(latencies)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def fmt(value: float | int | str | None, digits: int = 0) -> str:
    if value is None:
        return "NA"
    if isinstance(value, str):
        return value
    if value != value:  # NaN
        return "NA"
    return f"{value:.{digits}f}"


def summary_line(name: str, fields: dict[str, str]) -> str:
    return f"BENCH {name} " + " ".join(f"{k}={v}" for k, v in fields.items())
