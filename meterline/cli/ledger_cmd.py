"""`meterline ledger verify|seal|keygen`."""

from __future__ import annotations

from pathlib import Path

import typer

from meterline.cli.common import load_settings
from meterline.clock import system_clock
from meterline.db.engine import Database
from meterline.ledger.blocks import block_service
from meterline.ledger.signing import SigningKeyError, load_signer
from meterline.ledger.verify import verify_ledger

app = typer.Typer(no_args_is_help=True, help="The ledger: verify invariants, seal blocks, signing key.")


@app.command("verify")
def verify(
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="Verify one tenant (default: all)."),
    public_key: list[str] = typer.Option(
        None, "--public-key",
        help="Trusted platform public key (hex, repeatable). Default: the configured signing key's, "
             "when its file exists.",
    ),
    max_problems: int = typer.Option(1000, help="List at most this many problems (all are counted)."),
    database_url: str | None = typer.Option(None, envvar="METERLINE_DATABASE_URL"),
) -> None:
    """Check every ledger invariant; exit 0 if all hold, 1 (listing each problem) if not."""
    settings = load_settings(database_url)
    trusted: list[str] | None = list(public_key) if public_key else None
    if trusted is None:
        key_path = settings.signing_key_path()
        if key_path.exists():
            try:
                trusted = [load_signer(key_path, create=False).public_key_hex]
            except SigningKeyError as exc:
                typer.echo(f"note: not checking block signers against a trusted key ({exc})", err=True)
    db = Database(settings.database_url)
    try:
        report = verify_ledger(db, tenant, trusted_public_keys=trusted, max_problems=max_problems)
    finally:
        db.dispose()
    if report.ok:
        typer.echo(report.summary())
        return
    for problem in report.problems:
        typer.echo(str(problem))
    if report.omitted:
        typer.echo(f"… and {report.omitted} more problems")
    typer.echo(report.summary())
    raise typer.Exit(1)


@app.command("seal")
def seal(
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="Seal one tenant (default: all)."),
    max_transfers: int | None = typer.Option(None, help="Transfers per block (default: settings)."),
    database_url: str | None = typer.Option(None, envvar="METERLINE_DATABASE_URL"),
) -> None:
    """Seal every unsealed transfer into signed blocks now (the worker does this periodically)."""
    settings = load_settings(database_url)
    try:
        signer = load_signer(settings.signing_key_path(), create=settings.dev)
    except SigningKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    db = Database(settings.database_url)
    try:
        count = block_service.seal_all(
            db, signer, system_clock.now_ns(), max_transfers or settings.block_max_transfers, tenant_id=tenant
        )
    finally:
        db.dispose()
    typer.echo(f"sealed {count} block{'s' if count != 1 else ''}")


@app.command("keygen")
def keygen(
    path: Path = typer.Argument(..., help="Where to write the key (created with mode 0600)."),
) -> None:
    """Create the platform's Ed25519 signing key file and print its public key."""
    if path.exists():
        typer.echo(f"error: {path} already exists; refusing to overwrite a signing key", err=True)
        raise typer.Exit(2)
    signer = load_signer(path, create=True)  # O_EXCL, mode 0600
    typer.echo(f"wrote {path}; set METERLINE_SIGNING_KEY_FILE={path}", err=True)
    typer.echo(signer.public_key_hex)
