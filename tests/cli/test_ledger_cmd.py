"""`meterline ledger verify|seal|keygen` and `meterline worker --once` against a temp SQLite file."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from meterline.cli.main import app
from meterline.clock import FrozenClock
from meterline.db import migrate
from meterline.db.engine import Database
from meterline.ledger.blocks import block_service
from meterline.ledger.service import ledger_service
from meterline.ledger.signing import Signer, SigningKeyError, load_signer
from meterline.ledger.types import TransferIn
from tests.factories import make_account, make_tenant

runner = CliRunner()


@pytest.fixture
def url(tmp_path):
    u = f"sqlite:///{tmp_path / 'cli.db'}"
    migrate.upgrade(u)
    clock = FrozenClock()
    db = Database(u)
    try:
        for tenant in ("acme", "beta"):
            with db.session() as s:
                make_tenant(s, tenant, clock)
                make_account(s, tenant, clock, id="treasury", kind="treasury")
                make_account(s, tenant, clock, id="wallet")
            with db.session() as s:
                results = ledger_service.post(s, tenant, [
                    TransferIn(id=f"t{i}", debit_account_id="treasury", credit_account_id="wallet", amount=10)
                    for i in range(5)
                ], clock)
                assert all(r.ok for r in results)
    finally:
        db.dispose()
    return u


@pytest.fixture
def env(tmp_path):
    """No ambient dev mode or key file; the data dir is the test's own."""
    return {"METERLINE_DATA_DIR": str(tmp_path / "data"), "METERLINE_DEV": "false",
            "METERLINE_SIGNING_KEY_FILE": str(tmp_path / "keys" / "signing.key")}


def _sql(url: str, statement: str) -> None:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    with conn:
        conn.execute(statement)
    conn.close()


def test_verify_ok(url, env):
    result = runner.invoke(app, ["ledger", "verify", "--database-url", url], env=env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ledger OK: 2 tenants, 4 accounts, 10 transfers")


def test_verify_reports_each_problem_and_exits_1(url, env):
    _sql(url, "UPDATE transfers SET amount = 11 WHERE tenant_id = 'acme' AND seq = 3")
    result = runner.invoke(app, ["ledger", "verify", "--database-url", url], env=env)
    assert result.exit_code == 1
    out = result.stdout
    assert "[hash_mismatch] tenant=acme seq=3" in out
    assert "[account_balance] tenant=acme account=wallet" in out
    assert "tenant=beta" not in out
    assert out.strip().splitlines()[-1].startswith("ledger FAILED: 3 problems")
    # one tenant at a time
    beta = runner.invoke(app, ["ledger", "verify", "--tenant", "beta", "--database-url", url], env=env)
    assert beta.exit_code == 0 and "1 tenants" in beta.stdout


def test_keygen_seal_and_verify_against_the_key(url, env, tmp_path):
    key = tmp_path / "keys" / "signing.key"
    made = runner.invoke(app, ["ledger", "keygen", str(key)], env=env)
    assert made.exit_code == 0, made.output
    public = made.stdout.strip()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert load_signer(key, create=False).public_key_hex == public
    again = runner.invoke(app, ["ledger", "keygen", str(key)], env=env)
    assert again.exit_code == 2 and "already exists" in again.output
    assert key.read_text().strip()  # untouched

    sealed = runner.invoke(app, ["ledger", "seal", "--max-transfers", "2", "--database-url", url], env=env)
    assert sealed.exit_code == 0, sealed.output
    assert sealed.stdout.strip() == "sealed 6 blocks"
    assert runner.invoke(app, ["ledger", "seal", "--database-url", url], env=env).stdout.strip() == "sealed 0 blocks"

    ok = runner.invoke(app, ["ledger", "verify", "--database-url", url], env=env)
    assert ok.exit_code == 0 and "6 blocks" in ok.stdout
    stranger = Signer.generate().public_key_hex
    bad = runner.invoke(app, ["ledger", "verify", "--public-key", stranger, "--database-url", url], env=env)
    assert bad.exit_code == 1 and "[block_untrusted_key]" in bad.stdout

    _sql(url, "UPDATE ledger_blocks SET signature = '" + "00" * 64 + "' WHERE tenant_id = 'beta' AND height = 2")
    broken = runner.invoke(app, ["ledger", "verify", "--database-url", url], env=env)
    assert broken.exit_code == 1 and "[block_signature] tenant=beta: block 2" in broken.stdout


def test_seal_without_a_key_explains_how_to_make_one(url, env):
    result = runner.invoke(app, ["ledger", "seal", "--database-url", url], env=env)
    assert result.exit_code == 2
    assert "meterline ledger keygen" in result.output


def test_signing_error_names_the_keygen_command(tmp_path):
    with pytest.raises(SigningKeyError, match="meterline ledger keygen"):
        load_signer(tmp_path / "missing.key", create=False)


def test_worker_once(url, env, tmp_path):
    assert runner.invoke(app, ["ledger", "keygen", env["METERLINE_SIGNING_KEY_FILE"]], env=env).exit_code == 0
    result = runner.invoke(app, ["worker", "--once", "--log-level", "warning", "--database-url", url], env=env)
    assert result.exit_code == 0, result.output
    assert "ledger.expire_holds: 0" in result.stdout
    assert "ledger.seal_blocks: 2" in result.stdout
    assert runner.invoke(app, ["ledger", "verify", "--database-url", url], env=env).exit_code == 0


def test_worker_runs_until_sigterm(url, env):
    key = env["METERLINE_SIGNING_KEY_FILE"]
    assert runner.invoke(app, ["ledger", "keygen", key], env=env).exit_code == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "meterline.cli.main", "worker", "--database-url", url],
        env={**os.environ, **env, "METERLINE_SEAL_INTERVAL_S": "0.1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        db = Database(url)
        try:
            while time.monotonic() < deadline:  # the loop seals both tenants' transfers
                if not block_service.tenants_with_unsealed(db):
                    break
                time.sleep(0.1)
            else:
                pytest.fail("worker did not seal")
        finally:
            db.dispose()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "worker stopped" in err
