"""Signed offline license files: valid, tampered, wrong key, expired, within grace; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from meterline.cli.main import app
from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.ledger.signing import Signer
from meterline.licensing.offline import build_license_file, verify_license_file
from meterline.licensing.service import LicenseSnapshot, licensing_service
from tests.factories import make_licensing_catalogue

DAY = 86_400


def _snap(clock: FrozenClock, *, days: int = 365, mode: str = "base") -> LicenseSnapshot:
    now = clock.now_ns()
    return LicenseSnapshot("t", "tenant-123", "lic_1", "base_license", mode, "active", now,
                           now + days * DAY * 10**9, 100, 10, ("active_transport", "advanced_analytics"), 3)


def _file(signer: Signer, clock: FrozenClock, *, days: int = 365) -> tuple[str, int]:
    doc = build_license_file(signer, _snap(clock, days=days), features=["heatmaps"], issued_at_ns=clock.now_ns(),
                             valid_days=30, grace_days=7)
    return json.dumps(doc), clock.now_ns() // 10**9


def test_valid_grace_expired() -> None:
    signer, clock = Signer.generate(), FrozenClock()
    text, now = _file(signer, clock)
    ok = verify_license_file(text, signer.public_key_hex, now)
    assert (ok["valid"], ok["code"]) == (True, "ok")
    assert ok["payload"]["cameras_allowed"] == 100 and ok["payload"]["tenant_id"] == "tenant-123"
    assert verify_license_file(text, signer.public_key_hex, now + 30 * DAY - 1)["code"] == "ok"
    assert verify_license_file(text, signer.public_key_hex, now + 30 * DAY)["code"] == "within_grace"
    assert verify_license_file(text, signer.public_key_hex, now + 37 * DAY - 1)["valid"] is True
    late = verify_license_file(text, signer.public_key_hex, now + 37 * DAY)
    assert (late["valid"], late["code"]) == (False, "expired")


def test_the_file_never_outlives_the_license_and_the_license_end_has_no_grace() -> None:
    signer, clock = Signer.generate(), FrozenClock()
    text, now = _file(signer, clock, days=10)
    assert json.loads(text)["payload"]["expires_at"] == now + 10 * DAY
    assert verify_license_file(text, signer.public_key_hex, now + 10 * DAY)["code"] == "license_expired"


def test_tampered_wrong_key_malformed() -> None:
    signer, clock = Signer.generate(), FrozenClock()
    text, now = _file(signer, clock)
    doc = json.loads(text)
    doc["payload"]["cameras_allowed"] = 1000
    bad = verify_license_file(json.dumps(doc), signer.public_key_hex, now)
    assert (bad["valid"], bad["code"], bad["payload"]) == (False, "bad_signature", None)
    assert verify_license_file(text, Signer.generate().public_key_hex, now)["code"] == "bad_signature"
    assert verify_license_file("not json", signer.public_key_hex, now)["code"] == "malformed"
    assert verify_license_file(text, "zz", now)["code"] == "malformed"
    assert verify_license_file(json.dumps({"payload": {}}), signer.public_key_hex, now)["code"] == "malformed"


def test_a_key_given_twice_is_a_malformed_file() -> None:
    """Terms a first-wins reader would see (1000 cameras) ahead of the signed ones (100): the
    signature checks out over the last value, so only refusing the repeat keeps them apart."""
    signer, clock = Signer.generate(), FrozenClock()
    text, now = _file(signer, clock)
    forged = text.replace('"cameras_allowed": 100', '"cameras_allowed": 1000, "cameras_allowed": 100')
    assert forged != text
    got = verify_license_file(forged, signer.public_key_hex, now)
    assert (got["valid"], got["code"], got["payload"]) == (False, "malformed", None)


def test_cli_export_then_verify(tmp_path: Path, db: Database, clock: FrozenClock, tenant_id: str) -> None:
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
        lic = licensing_service.get_license(s, tenant_id, "tenant-123")
        lic.valid_until = 4_000_000_000 * 10**9  # the file's clock is the real one
    key = tmp_path / "signing.key"
    signer = Signer.generate()
    key.write_text(signer._key.encode().hex())
    key.chmod(0o600)
    out = tmp_path / "tenant-123.license"
    env = {"METERLINE_DATABASE_URL": db.url, "METERLINE_SIGNING_KEY_FILE": str(key)}
    runner = CliRunner()
    res = runner.invoke(app, ["license", "export", "tenant-123", "--tenant", tenant_id, "--out", str(out)], env=env)
    assert res.exit_code == 0, res.output
    payload = json.loads(out.read_text())["payload"]
    assert payload["enabled_growth_packs"] == ["advanced_analytics", "active_transport"]
    assert len(payload["features"]) == 23
    res = runner.invoke(app, ["license", "verify", str(out), "--public-key", signer.public_key_hex])
    assert res.exit_code == 0 and json.loads(res.output)["code"] == "ok"
    res = runner.invoke(app, ["license", "verify", str(out), "--public-key", Signer.generate().public_key_hex])
    assert res.exit_code == 1 and json.loads(res.output)["code"] == "bad_signature"
    res = runner.invoke(app, ["license", "export", "nobody", "--tenant", tenant_id, "--out", str(out)], env=env)
    assert res.exit_code == 1
