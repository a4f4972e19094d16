"""`meterline db upgrade|downgrade`."""

from __future__ import annotations

import typer

from meterline.cli.common import load_settings
from meterline.db import migrate

app = typer.Typer(no_args_is_help=True, help="Database migrations (Alembic).")


@app.command()
def upgrade(
    revision: str = typer.Argument("head"),
    database_url: str | None = typer.Option(None, envvar="METERLINE_DATABASE_URL"),
) -> None:
    """Apply migrations up to REVISION (default: head)."""
    settings = load_settings(database_url)
    migrate.upgrade(settings.database_url, revision)
    typer.echo(f"database at {revision}")


@app.command()
def downgrade(
    revision: str,
    database_url: str | None = typer.Option(None, envvar="METERLINE_DATABASE_URL"),
) -> None:
    """Revert migrations down to REVISION."""
    settings = load_settings(database_url)
    migrate.downgrade(settings.database_url, revision)
    typer.echo(f"database at {revision}")
