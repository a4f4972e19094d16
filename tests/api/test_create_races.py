"""The same create racing in from many requests at once: one creates, the others get the
answer a late duplicate gets (409, or the existing object for an idempotent create) —
never a 500. On PostgreSQL the losers pass the existence check together and meet at the
primary key, which is where a missing savepoint turns into a 500."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

CREATES: list[tuple[str, dict[str, Any], set[int]]] = [
    ("/v1/assets", {"code": "EURR", "scale": 2}, {409}),
    ("/v1/accounts", {"id": "racer", "asset": "USD", "kind": "customer_wallet"}, {200}),
    ("/v1/providers", {"id": "racer", "name": "Racer"}, {409}),
    ("/v1/meters", {"id": "racer", "aggregation": "sum"}, {409}),
]


@pytest.mark.parametrize(("path", "body", "late"), CREATES, ids=[c[0] for c in CREATES])
def test_a_create_racing_itself_is_created_once(client, tenant, path, body, late):
    def call(_: int) -> int:
        return client.post(path, json=body, headers=tenant.a).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(call, range(16)))
    assert statuses.count(201) == 1, statuses
    assert set(statuses) - {201} <= late, statuses
