"""`meterline watch`: one frame rendered from the SI64 ledger and stats of an ASGI app (no server)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from meterline.api.app import create_app
from meterline.api.runtime import Runtime
from meterline.cli import watch_cmd
from meterline.clock import FrozenClock
from meterline.config import Settings
from meterline.db.engine import Database
from tests.api.conftest import ApiTenant
from tests.api.profiles.test_si64 import WALLET, rent_id, seed_si64


@pytest.fixture
def t(db: Database, clock: FrozenClock, tenant_id: str) -> ApiTenant:
    return seed_si64(db, clock, tenant_id)


@pytest.fixture
def client(db: Database, clock: FrozenClock) -> Iterator[TestClient]:
    """The app over the test database; TestClient is an httpx.Client, which is what `watch` reads with."""
    app = create_app(Runtime(settings=Settings(database_url=db.url, dev=False, simulation=True), db=db, clock=clock))
    with TestClient(app) as c:
        yield c


def frame(client: httpx.Client, **kw: object) -> tuple[int, str]:
    out = io.StringIO()
    console = Console(file=out, width=160, color_system=None)
    code = watch_cmd.run(client, seconds=1, once=True, console=console, **kw)  # type: ignore[arg-type]
    return code, out.getvalue()


def test_once_shows_live_costs_refunds_settlements_and_revenue(client: TestClient, t: ApiTenant,
                                                              clock: FrozenClock):
    client.headers.update(t.r)
    active = rent_id(client, t, sig="w-1", hours=0.1, amount=0.0001)
    done = rent_id(client, t, sig="w-2")
    clock.advance(30)
    assert client.post(f"/api/contracts/{done}/settle", headers=t.w).status_code == 200

    code, text = frame(client)
    assert code == 0, text
    assert active in text and done in text
    # 30 s of 0.0001 SOL / 0.1 h: 8333 lamports used, 91667 refundable, shown exactly
    assert "0.000008333" in text and "0.000091667" in text
    assert "Pending refunds" in text and "0.000091667 SOL" in text
    # the settled one billed its minimum minute: 16667 lamports, 5 % of it (833) to the platform
    assert "0.000016667" in text and "0.000000833 SOL" in text
    assert WALLET[:8] in text and "SIMULATION_MODE" in text


def test_once_lists_the_newest_and_says_how_many(client: TestClient, t: ApiTenant, clock: FrozenClock):
    client.headers.update(t.r)
    ids = []
    for i in range(3):
        ids.append(rent_id(client, t, sig=f"n-{i}"))
        clock.advance(1)
    code, text = frame(client, limit=2)
    assert code == 0
    assert ids[2] in text and ids[1] in text and ids[0] not in text
    assert "newest 2 of 3" in text


def test_once_fails_cleanly_without_access(client: TestClient, t: ApiTenant):
    code, text = frame(client)  # no key: the server answers 401
    assert code == 1 and "401" in text
    code, text = frame(httpx.Client(base_url="http://127.0.0.1:9", timeout=2))
    assert code == 1 and "cannot reach" in text
