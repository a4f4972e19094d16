"""The `meterline` command."""

from __future__ import annotations

import typer

from meterline.cli import (
    db_cmd,
    keys_cmd,
    ledger_cmd,
    license_cmd,
    serve_cmd,
    watch_cmd,
    worker_cmd,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Meterline: billing, metering, escrow and settlement.")
app.command("serve")(serve_cmd.serve)
app.command("worker")(worker_cmd.worker)
app.command("watch")(watch_cmd.watch)
app.add_typer(db_cmd.app, name="db")
app.add_typer(keys_cmd.app, name="keys")
app.add_typer(keys_cmd.tenants_app, name="tenants")
app.add_typer(ledger_cmd.app, name="ledger")
app.add_typer(license_cmd.app, name="license")

if __name__ == "__main__":
    app()
