"""Shared fixtures.

Databases: every test session (each xdist worker) gets its own SQLite file and,
when METERLINE_TEST_POSTGRES_URL is set, its own freshly created PostgreSQL
database — both migrated by Alembic, so the migrations are tested too. Tests
that take `db` run once per backend.

Isolation inside a database: service tests use `session`, a transaction rolled
back after the test (join_transaction_mode="create_savepoint"). Tests that need
real commits (batcher, HTTP, concurrency) get a fresh tenant id per test, and
tenants never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from meterline.clock import FrozenClock
from meterline.config import Settings
from meterline.db import migrate
from meterline.db.engine import Database
from meterline.payments.rails import configure_rails

PG_URL = os.environ.get("METERLINE_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("METERLINE_TEST_REDIS_URL")
NATS_URL = os.environ.get("METERLINE_TEST_NATS_URL")

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgres",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not PG_URL, reason="METERLINE_TEST_POSTGRES_URL not set"),
        ],
    ),
]


def _pg_admin_url() -> str:
    assert PG_URL
    url = PG_URL
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("db") / "meterline.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if not PG_URL:
        pytest.skip("METERLINE_TEST_POSTGRES_URL not set")
    admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    name = f"meterline_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = _with_database(_pg_admin_url(), name)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def _databases() -> Iterator[dict[str, Database]]:
    dbs: dict[str, Database] = {}
    yield dbs
    for db in dbs.values():
        db.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def db(db_url: str, _databases: dict[str, Database]) -> Database:
    if db_url not in _databases:
        _databases[db_url] = Database(db_url)
    return _databases[db_url]


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def tenant_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def session(db: Database) -> Iterator[Session]:
    """A session whose every commit lands in a savepoint, rolled back after the test."""
    from meterline.db.engine import WRITE

    connection = db.engine.connect()
    if db.is_sqlite:
        connection = connection.execution_options(**WRITE)
    outer = connection.begin()
    s = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield s
    finally:
        s.close()
        outer.rollback()
        connection.close()


@pytest.fixture(autouse=True)
def simulation_rail_on() -> Iterator[None]:
    """Service tests pay with the simulation rail, which a process has off until its settings
    turn it on (`payments.rails.configure_rails`); each test starts with it on and leaves it on."""
    configure_rails(Settings(simulation=True))
    yield
    configure_rails(Settings(simulation=True))
