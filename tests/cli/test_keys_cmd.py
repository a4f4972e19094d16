"""`meterline keys` and `meterline tenants` against a real SQLite file."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from meterline.cli.main import app
from meterline.db import migrate

runner = CliRunner()


@pytest.fixture
def url(tmp_path):
    u = f"sqlite:///{tmp_path / 'cli.db'}"
    migrate.upgrade(u)
    return u


def test_create_prints_key_once_and_revoke_works(url):
    result = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--scope", "ledger:read",
                                 "--database-url", url])
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip().splitlines()[-1]
    assert secret.startswith("ml_live_")
    listed = runner.invoke(app, ["keys", "list", "--database-url", url])
    assert listed.exit_code == 0
    assert secret not in listed.stdout  # only the prefix is shown
    assert secret[:16] in listed.stdout
    key_id = next(line for line in result.output.splitlines() if line.startswith("key id:")).split()[2]
    revoked = runner.invoke(app, ["keys", "revoke", key_id, "--database-url", url])
    assert revoked.exit_code == 0, revoked.output
    again = runner.invoke(app, ["keys", "revoke", "key_nope", "--database-url", url])
    assert again.exit_code == 2
    assert "api_key_not_found" in again.output


def test_bad_scope_is_a_clear_error(url):
    result = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--scope", "root",
                                 "--database-url", url])
    assert result.exit_code == 2
    assert "unknown scope" in result.output


def test_tenants_create_and_list(url):
    assert runner.invoke(app, ["tenants", "create", "beta", "--database-url", url]).exit_code == 0
    dup = runner.invoke(app, ["tenants", "create", "beta", "--database-url", url])
    assert dup.exit_code == 2 and "tenant_exists" in dup.output
    listed = runner.invoke(app, ["tenants", "list", "--database-url", url])
    assert "beta" in listed.stdout
