"""`meterline worker`: the background jobs (hold expiry, block sealing, …) as their own process.

Several workers may run against one PostgreSQL database: each due job is claimed
by exactly one of them (see `meterline.worker.scheduler`).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import typer

from meterline.cli.common import load_settings, tune_gc
from meterline.clock import system_clock
from meterline.db.engine import Database
from meterline.ledger.batcher import LedgerBatcher
from meterline.ledger.signing import SigningKeyError, load_signer
from meterline.worker.runner import Worker


def worker(
    once: bool = typer.Option(False, "--once", help="Run every job once (whether due or not) and exit."),
    database_url: str | None = typer.Option(None, envvar="METERLINE_DATABASE_URL"),
    log_level: str = typer.Option("info"),
) -> None:
    """Run the worker loop until SIGINT/SIGTERM."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(database_url)
    try:
        signer = load_signer(settings.signing_key_path(), create=settings.dev)
    except SigningKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    db = Database(settings.database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    batcher = LedgerBatcher(
        db, system_clock, window_ms=settings.batch_window_ms, max_transfers=settings.batch_max_transfers,
        overlap=settings.ledger_overlap,
    ).start()
    w = Worker(db=db, clock=system_clock, batcher=batcher, settings=settings, signer=signer)
    tune_gc()
    try:
        if once:
            for name, count in sorted(w.run_once(force=True).items()):
                typer.echo(f"{name}: {count}")
            return
        stop = threading.Event()

        def _on_signal(signum: int, _frame: FrameType | None) -> None:
            stop.set()

        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            w.start()
            typer.echo(f"worker running ({', '.join(j.name for j in w.scheduler.jobs)}); Ctrl-C stops it",
                       err=True)
            while not stop.wait(1.0):
                pass
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            w.stop()
    finally:
        batcher.stop()
        db.dispose()
    typer.echo("worker stopped", err=True)
