"""HTTP fixtures: an app around the test database, a client, a tenant with keys.

The client is entered as a context manager so the app's lifespan starts the
ledger batcher. HTTP requests commit for real, so each test gets a fresh tenant
(the `tenant_id` fixture) instead of a rolled-back transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from meterline.api.app import create_app
from meterline.api.runtime import Runtime
from meterline.clock import FrozenClock
from meterline.config import Settings
from meterline.db.engine import Database
from tests.factories import make_key, make_tenant

MakeClient = Callable[..., TestClient]


@dataclass
class ApiTenant:
    id: str
    admin: str  # secrets of keys: admin (every scope), operator (ledger:read+write), operator (ledger:read)
    writer: str
    reader: str

    @staticmethod
    def auth(secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    @property
    def w(self) -> dict[str, str]:
        return self.auth(self.writer)

    @property
    def r(self) -> dict[str, str]:
        return self.auth(self.reader)

    @property
    def a(self) -> dict[str, str]:
        return self.auth(self.admin)


def create_tenant(db: Database, clock: FrozenClock, tenant_id: str) -> ApiTenant:
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        admin = make_key(s, tenant_id, clock, kind="admin").secret
        writer = make_key(s, tenant_id, clock, kind="operator").secret
        reader = make_key(s, tenant_id, clock, kind="operator", scopes=["ledger:read"]).secret
    return ApiTenant(tenant_id, admin, writer, reader)


@pytest.fixture
def make_client(db: Database, clock: FrozenClock) -> Iterator[MakeClient]:
    """Build a started client: `make_client(dev=True, client=("10.1.2.3", 1234), **settings)`."""
    with ExitStack() as stack:

        def make(*, client: tuple[str, int] | None = None, **overrides: Any) -> TestClient:
            # Not dev mode, but with the simulation rail on: most tests pay with it.
            settings = Settings(database_url=db.url, **{"dev": False, "simulation": True, **overrides})
            app = create_app(Runtime(settings=settings, db=db, clock=clock))
            kwargs: dict[str, Any] = {"raise_server_exceptions": False}
            if client is not None:
                kwargs["client"] = client
            return stack.enter_context(TestClient(app, **kwargs))

        yield make


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()


@pytest.fixture
def tenant(db: Database, clock: FrozenClock, tenant_id: str) -> ApiTenant:
    return create_tenant(db, clock, tenant_id)


@pytest.fixture
def other_tenant(db: Database, clock: FrozenClock, tenant_id: str) -> ApiTenant:
    return create_tenant(db, clock, f"{tenant_id}-b")


# -- small HTTP helpers shared by the API tests ----------------------------------------------


def create_account(client: TestClient, t: ApiTenant, id: str, *, asset: str = "USD",
                   kind: str = "customer_wallet", flags: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": id, "asset": asset, "kind": kind}
    if flags:
        body["flags"] = flags
    r = client.post("/v1/accounts", json=body, headers=t.w)
    assert r.status_code == 201, r.text
    return dict(r.json())


def post_transfer(client: TestClient, t: ApiTenant, **fields: Any) -> Any:
    return client.post("/v1/transfers", json=fields, headers=t.w)


def assert_problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["code"] == code, body
    assert body["status"] == status
    return dict(body)
