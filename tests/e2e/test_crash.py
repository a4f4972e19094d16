"""A server under write load is SIGKILLed; after restart nothing acknowledged is missing.

Every transfer whose POST got a 2xx must be in the ledger after the crash, and
`meterline ledger verify` must hold: group commit acknowledges only after the
commit, and SQLite runs with synchronous=FULL.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

pytestmark = pytest.mark.e2e

ACCOUNTS = 20


async def _load(url: str, stop_at: float, acked: list[str], worker: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        i = 0
        while time.monotonic() < stop_at:
            tid = f"w{worker}-{i}"
            i += 1
            body = {"id": tid, "debit_account_id": f"a{i % ACCOUNTS}",
                    "credit_account_id": f"a{(i + 1 + worker) % ACCOUNTS}", "amount": "0.01", "asset": "USD"}
            if body["debit_account_id"] == body["credit_account_id"]:
                continue
            try:
                r = await client.post("/v1/transfers", json=body)
            except httpx.HTTPError:
                return  # the server died under us: this request was never acknowledged
            if r.status_code in (200, 201):
                acked.append(tid)


def test_sigkill_under_write_load_loses_no_acknowledged_transfer(server):
    for i in range(ACCOUNTS):
        r = httpx.post(f"{server.url}/v1/accounts", json={"id": f"a{i}", "asset": "USD", "kind": "wallet"})
        assert r.status_code == 201, r.text

    acked: list[str] = []

    async def main() -> None:
        stop_at = time.monotonic() + 60
        tasks = [asyncio.create_task(_load(server.url, stop_at, acked, w)) for w in range(16)]
        # Let the load build up (however slow the machine), then crash mid-flight.
        deadline = time.monotonic() + 45
        while len(acked) < 300 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        server.kill()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert len(acked) > 100, "the load never got going"

    server.start()
    missing = []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for tid in acked:
            r = client.get(f"/v1/transfers/{tid}")
            if r.status_code != 200:
                missing.append(tid)
    assert missing == [], f"{len(missing)} acknowledged transfers lost: {missing[:5]}"
    server.stop()

    verify = server.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
