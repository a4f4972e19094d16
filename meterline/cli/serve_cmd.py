"""`meterline serve`: the API (and, with --dev, the worker) in one process."""

from __future__ import annotations

import typer
import uvicorn

from meterline.cli.common import load_settings, tune_gc


def serve(
    host: str = typer.Option("127.0.0.1", help="Bind address (--dev always binds 127.0.0.1)."),
    port: int = typer.Option(8000),
    dev: bool = typer.Option(False, "--dev", help="SQLite at ./meterline.db, demo data, in-process worker, "
                             "unauthenticated loopback calls act as the default tenant's admin."),
    database_url: str | None = typer.Option(None, envvar="METERLINE_DATABASE_URL"),
    workers_inprocess: bool = typer.Option(True, "--worker/--no-worker",
                                           help="Run the worker loop in this process (default in --dev)."),
    log_level: str = typer.Option("warning"),
) -> None:
    """Start the HTTP server."""
    from meterline.api.server import HttpProtocol
    from meterline.cli.bootstrap import build_server_app

    settings = load_settings(database_url, dev=dev or None)
    if dev:
        host = "127.0.0.1"
    app = build_server_app(settings, run_worker=dev and workers_inprocess, announce=True)
    tune_gc()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, http=HttpProtocol)

