"""`meterline keys create|revoke|list` and `meterline tenants create|list`."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from meterline.cli.common import load_settings
from meterline.clock import system_clock, to_rfc3339
from meterline.db.engine import Database
from meterline.errors import MeterlineError
from meterline.identity.models import Tenant
from meterline.identity.service import identity_service

app = typer.Typer(no_args_is_help=True, help="API keys: shown once, stored hashed, revocable.")
tenants_app = typer.Typer(no_args_is_help=True, help="Tenants.")
console = Console()


def _db(database_url: str | None) -> Database:
    return Database(load_settings(database_url).database_url)


def _fail(exc: MeterlineError) -> typer.Exit:
    typer.echo(f"error: {exc.code}: {exc.detail}", err=True)
    return typer.Exit(2)


@app.command("create")
def create(
    tenant: str = typer.Option(..., "--tenant", "-t", help="Tenant id; created if it does not exist."),
    scope: list[str] = typer.Option(None, "--scope", "-s", help="Scope (repeatable). Default: by kind."),
    kind: str = typer.Option("admin", help="Principal kind: admin, operator, customer, provider, device."),
    principal_id: str | None = typer.Option(None, help="The principal's id (e.g. a customer id)."),
    name: str = typer.Option("", help="A label for the key."),
    test: bool = typer.Option(False, "--test", help="Make an ml_test_ key instead of ml_live_."),
    database_url: str | None = typer.Option(None, envvar="METERLINE_DATABASE_URL"),
) -> None:
    """Create an API key and print it once."""
    db = _db(database_url)
    now = system_clock.now_ns()
    try:
        with db.session() as session:
            existed = session.get(Tenant, tenant)
            identity_service.ensure_tenant(session, tenant, now)
            created = identity_service.create_key(
                session, tenant_id=tenant, kind=kind, scopes=scope or None, principal_id=principal_id,
                name=name, live=not test, now_ns=now,
            )
    except MeterlineError as exc:
        raise _fail(exc) from None
    if existed is None:
        typer.echo(f"created tenant {tenant}", err=True)
    typer.echo(f"key id: {created.key.id}  scopes: {','.join(created.key.scopes)}", err=True)
    typer.echo("store this key now; it is not shown again:", err=True)
    typer.echo(created.secret)


@app.command("revoke")
def revoke(
    key: str = typer.Argument(..., help="Key id (key_…) or its display prefix."),
    database_url: str | None = typer.Option(None, envvar="METERLINE_DATABASE_URL"),
) -> None:
    """Revoke a key at once (other server processes stop accepting it within the key-cache TTL)."""
    db = _db(database_url)
    try:
        with db.session() as session:
            row = identity_service.revoke_key(session, key, system_clock.now_ns())
    except MeterlineError as exc:
        raise _fail(exc) from None
    typer.echo(f"revoked {row.id} ({row.prefix}…)")


@app.command("list")
def list_keys(
    tenant: str | None = typer.Option(None, "--tenant", "-t"),
    database_url: str | None = typer.Option(None, envvar="METERLINE_DATABASE_URL"),
) -> None:
    """List keys (prefixes only; secrets are never stored)."""
    db = _db(database_url)
    with db.session(write=False) as session:
        rows = identity_service.list_keys(session, tenant)
    cells = [
        (r.id, r.tenant_id, r.prefix + "…", r.principal_kind, ",".join(r.scopes),
         to_rfc3339(r.created_at), to_rfc3339(r.revoked_at) if r.revoked_at else "")
        for r in rows
    ]
    if not console.is_terminal:  # piped: one tab-separated line per key, for scripts
        for row in cells:
            typer.echo("\t".join(row))
        return
    table = Table("id", "tenant", "prefix", "kind", "scopes", "created", "revoked")
    for row in cells:
        table.add_row(*row)
    console.print(table)


@tenants_app.command("create")
def create_tenant(
    tenant_id: str,
    name: str | None = typer.Option(None),
    database_url: str | None = typer.Option(None, envvar="METERLINE_DATABASE_URL"),
) -> None:
    """Create a tenant (with the standard assets)."""
    db = _db(database_url)
    try:
        with db.session() as session:
            identity_service.create_tenant(session, tenant_id, name, system_clock.now_ns())
    except MeterlineError as exc:
        raise _fail(exc) from None
    typer.echo(f"created tenant {tenant_id}")


@tenants_app.command("list")
def list_tenants(database_url: str | None = typer.Option(None, envvar="METERLINE_DATABASE_URL")) -> None:
    db = _db(database_url)
    with db.session(write=False) as session:
        for t in identity_service.list_tenants(session):
            typer.echo(f"{t.id}\t{t.name}")
