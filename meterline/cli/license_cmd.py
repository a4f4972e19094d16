"""`meterline license export|verify`: signed offline license files."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from meterline.cli.common import load_settings
from meterline.clock import system_clock
from meterline.db.engine import Database
from meterline.ledger.signing import SigningKeyError, load_signer
from meterline.licensing.offline import build_license_file, verify_license_file
from meterline.licensing.service import LicenseNotFound, LicenseSnapshot, licensing_service

app = typer.Typer(no_args_is_help=True, help="Licenses: offline files signed with the platform key.")


@app.command("export")
def export(
    licensee: str = typer.Argument(..., help="The licensee (BrinkByte tenant id, e.g. tenant-123)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the license file."),
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="Meterline tenant (default: the default)."),
    days: int | None = typer.Option(None, help="File lifetime in days (METERLINE_LICENSE_FILE_DAYS)."),
    grace_days: int | None = typer.Option(None, help="Grace after expiry (METERLINE_LICENSE_FILE_GRACE_DAYS)."),
    database_url: str | None = typer.Option(None, envvar="METERLINE_DATABASE_URL"),
) -> None:
    """Write LICENSEE's license terms, signed with the platform Ed25519 key, to OUT."""
    settings = load_settings(database_url)
    try:
        signer = load_signer(settings.signing_key_path(), create=settings.dev)
    except SigningKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    db = Database(settings.database_url)
    tenant_id = tenant or settings.default_tenant
    try:
        with db.session(write=False) as session:
            row = licensing_service.get_license(session, tenant_id, licensee)
            snap = LicenseSnapshot.of(row)
            features = [f for f, p in licensing_service.feature_map(session, tenant_id).items() if p in snap.packs]
    except LicenseNotFound as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    doc = build_license_file(signer, snap, features=features, issued_at_ns=system_clock.now_ns(),
                             valid_days=days if days is not None else settings.license_file_days,
                             grace_days=grace_days if grace_days is not None else settings.license_file_grace_days)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    typer.echo(f"wrote {out} (expires {doc['payload']['expires_at']}, public key {signer.public_key_hex})")


@app.command("verify")
def verify(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The license file."),
    public_key: str = typer.Option(..., "--public-key", help="Trusted platform public key: hex, or a file holding it."),
    now: int | None = typer.Option(None, help="Check as of this Unix time (default: now)."),
) -> None:
    """Check a license file offline; exit 0 when valid (also within grace), 1 when not."""
    key = public_key
    if not all(c in "0123456789abcdefABCDEF" for c in key.strip()) and Path(key).is_file():
        key = Path(key).read_text().strip()
    result = verify_license_file(file.read_text(), key, int(time.time()) if now is None else now)
    json.dump({"valid": result["valid"], "code": result["code"], "license": result["payload"]}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    raise typer.Exit(0 if result["valid"] else 1)
