"""The `meterline` command."""

from __future__ import annotations

import typer

from meterline.cli import db_cmd, keys_cmd, serve_cmd

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Meterline: billing, metering, escrow and settlement.")
app.command("serve")(serve_cmd.serve)
app.add_typer(db_cmd.app, name="db")
app.add_typer(keys_cmd.app, name="keys")
app.add_typer(keys_cmd.tenants_app, name="tenants")

if __name__ == "__main__":
    app()
