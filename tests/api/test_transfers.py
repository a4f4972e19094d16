"""POST /v1/transfers (one and batch), reads, holds, and every error path's problem code."""

from __future__ import annotations

import json

import pytest

from tests.api.conftest import assert_problem, create_account, post_transfer

WALLET = ["debits_must_not_exceed_credits"]


@pytest.fixture
def accounts(client, tenant):
    create_account(client, tenant, "treasury", kind="treasury")
    create_account(client, tenant, "alice", flags=WALLET)
    create_account(client, tenant, "escrow", kind="escrow")
    create_account(client, tenant, "sol-wallet", asset="SOL")
    r = post_transfer(client, tenant, id="fund", debit_account_id="treasury", credit_account_id="alice",
                      amount="100.00", asset="USD")
    assert r.status_code == 201, r.text
    return tenant


def balances(client, t, acc):
    return client.get(f"/v1/accounts/{acc}", headers=t.r).json()["balances"]


def test_round_trip_pending_partial_post_exact_balances(client, accounts):
    t = accounts
    r = post_transfer(client, t, id="hold-1", debit_account_id="alice", credit_account_id="escrow",
                      amount="12.50", asset="USD", flags=["pending"], timeout_s=3600, reference="rental-1",
                      metadata={"gpu": "a100", "hours": 3})
    assert r.status_code == 201, r.text
    hold = r.json()
    assert hold["amount"] == "12.50" and hold["flags"] == ["pending"] and hold["timeout_s"] == 3600
    assert hold["metadata"] == {"gpu": "a100", "hours": 3}
    assert hold["timestamp"].endswith("Z") and len(hold["hash"]) == 64
    assert balances(client, t, "alice") == {
        "debits_pending": "12.50", "debits_posted": "0.00", "credits_pending": "0.00",
        "credits_posted": "100.00", "balance": "100.00", "available": "87.50",
    }
    holds = client.get("/v1/accounts/alice/holds?state=pending", headers=t.r).json()["data"]
    assert [h["transfer_id"] for h in holds] == ["hold-1"]
    assert holds[0]["expires_at"] is not None and holds[0]["amount"] == "12.50"

    # Post 7.25 of the 12.50 (no accounts needed: they come from the hold).
    r = post_transfer(client, t, id="post-1", pending_id="hold-1", amount="7.25", asset="USD",
                      flags=["post_pending"])
    assert r.status_code == 201, r.text
    posted = r.json()
    assert (posted["debit_account_id"], posted["credit_account_id"], posted["amount"]) == ("alice", "escrow", "7.25")
    assert balances(client, t, "alice") == {
        "debits_pending": "0.00", "debits_posted": "7.25", "credits_pending": "0.00",
        "credits_posted": "100.00", "balance": "92.75", "available": "92.75",
    }
    assert balances(client, t, "escrow")["balance"] == "7.25"
    assert client.get("/v1/accounts/alice/holds?state=pending", headers=t.r).json()["data"] == []
    [h] = client.get("/v1/accounts/alice/holds?state=posted", headers=t.r).json()["data"]
    assert (h["posted_amount"], h["resolved_by"], h["state"]) == ("7.25", "post-1", "posted")

    # A second resolution is a conflict; the same post again is `exists` (200).
    r = post_transfer(client, t, id="post-2", pending_id="hold-1", flags=["void_pending"])
    assert_problem(r, 409, "pending_transfer_already_posted")
    r = post_transfer(client, t, id="post-1", pending_id="hold-1", amount="7.25", asset="USD",
                      flags=["post_pending"])
    assert r.status_code == 200 and r.json() == posted
    assert client.get("/v1/transfers/post-1", headers=t.r).json() == posted


def test_post_pending_without_amount_posts_everything_and_void_releases(client, accounts):
    t = accounts
    for i in (1, 2):
        assert post_transfer(client, t, id=f"h{i}", debit_account_id="alice", credit_account_id="escrow",
                             amount="10", asset="USD", flags=["pending"]).status_code == 201
    r = post_transfer(client, t, id="p1", pending_id="h1", flags=["post_pending"])
    assert r.status_code == 201 and r.json()["amount"] == "10.00"
    r = post_transfer(client, t, id="v2", pending_id="h2", flags=["void_pending"])
    assert r.status_code == 201 and r.json()["amount"] == "10.00"
    assert balances(client, t, "alice")["available"] == "90.00"
    states = {h["transfer_id"]: h["state"] for h in
              client.get("/v1/accounts/alice/holds", headers=t.r).json()["data"]}
    assert states == {"h1": "posted", "h2": "voided"}


def test_expired_hold_cannot_be_posted(client, accounts, clock):
    t = accounts
    post_transfer(client, t, id="h", debit_account_id="alice", credit_account_id="escrow", amount="1",
                  asset="USD", flags=["pending"], timeout_s=10)
    clock.advance(11)
    r = post_transfer(client, t, id="p", pending_id="h", flags=["post_pending"])
    assert_problem(r, 409, "pending_transfer_expired")


@pytest.mark.parametrize(("amount", "minor"), [("0.10", "0.10"), ("0.1", "0.10"), ("5", "5.00"),
                                                ("1e1", "10.00"), ("2.500", "2.50")])
def test_decimal_strings(client, accounts, amount, minor):
    r = post_transfer(client, accounts, id="d", debit_account_id="alice", credit_account_id="escrow",
                      amount=amount, asset="USD")
    assert r.status_code == 201, r.text
    assert r.json()["amount"] == minor


@pytest.mark.parametrize(("raw", "expected"), [("0.10", "0.10"), ("0.1", "0.10"), ("7", "7.00"),
                                               ("12.50", "12.50"), ("1.0e1", "10.00")])
def test_json_numbers_are_exact(client, accounts, raw, expected):
    body = ('{"id": "n", "debit_account_id": "alice", "credit_account_id": "escrow", '
            f'"amount": {raw}, "asset": "USD"}}')
    r = client.post("/v1/transfers", content=body, headers={**accounts.w, "content-type": "application/json"})
    assert r.status_code == 201, r.text
    assert r.json()["amount"] == expected


def test_sol_keeps_nine_decimals(client, accounts):
    create_account(client, accounts, "sol-2", asset="SOL")
    r = post_transfer(client, accounts, id="s", debit_account_id="sol-wallet", credit_account_id="sol-2",
                      amount="0.000000001", asset="SOL")
    assert r.status_code == 201 and r.json()["amount"] == "0.000000001"
    assert balances(client, accounts, "sol-wallet")["balance"] == "-0.000000001"


@pytest.mark.parametrize(("body", "status", "code"), [
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": 0.001, "asset": "USD"}',
     422, "amount_precision"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "0.001", "asset": "USD"}',
     422, "amount_precision"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "-1", "asset": "USD"}',
     422, "amount_not_positive"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": -1, "asset": "USD"}',
     422, "amount_not_positive"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "0", "asset": "USD"}',
     422, "amount_not_positive"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": 0, "asset": "USD"}',
     422, "amount_not_positive"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1,5", "asset": "USD"}',
     422, "invalid_amount"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "NaN", "asset": "USD"}',
     422, "invalid_amount"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": 1e400, "asset": "USD"}',
     422, "amount_overflow"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "92233720368547758.08", '
     '"asset": "USD"}', 422, "amount_overflow"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": true, "asset": "USD"}',
     422, "validation_error"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1"}',
     422, "validation_error"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD", '
     '"colour": "red"}', 422, "validation_error"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD", '
     '"flags": ["instant"]}', 422, "validation_error"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD", '
     '"metadata": {"rate": 0.5}}', 422, "validation_error"),
    ('{"id": "x\\u0000", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD"}',
     422, "validation_error"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD", '
     '"reference": "a\\u0000b"}', 422, "validation_error"),
    # A lone UTF-16 surrogate can be neither stored nor answered in UTF-8: refused, not a 500.
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD", '
     '"reference": "a\\ud800b"}', 422, "validation_error"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD", '
     '"metadata": {"note": "\\udc00"}}', 422, "validation_error"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD", '
     '"timeout_s": 99999999999}', 422, "validation_error"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "BTC"}',
     422, "asset_mismatch"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "sol-wallet", "amount": "1", "asset": "USD"}',
     422, "asset_mismatch"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "NOPE"}',
     404, "asset_not_found"),
    ('{"id": "x", "debit_account_id": "ghost", "credit_account_id": "escrow", "amount": "1", "asset": "USD"}',
     404, "debit_account_not_found"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "ghost", "amount": "1", "asset": "USD"}',
     404, "credit_account_not_found"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "alice", "amount": "1", "asset": "USD"}',
     422, "accounts_must_be_different"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "100.01", "asset": "USD"}',
     409, "exceeds_credits"),
    ('{"id": "x", "pending_id": "nope", "flags": ["post_pending"]}', 404, "pending_transfer_not_found"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD", '
     '"flags": ["pending", "void_pending"]}', 422, "flags_are_mutually_exclusive"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD", '
     '"timeout_s": 5}', 422, "timeout_reserved_for_pending_transfer"),
    ('{"id": "x", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD", '
     '"flags": ["linked"]}', 422, "linked_event_chain_open"),
    ('{"id": "fund", "debit_account_id": "treasury", "credit_account_id": "alice", "amount": "100.01", '
     '"asset": "USD"}', 409, "exists_with_different_amount"),
    ('{"id": "fund", "debit_account_id": "treasury", "credit_account_id": "alice", "amount": "100", '
     '"asset": "USD", "reference": "other"}', 409, "idempotency_conflict"),
    ('{"id": "x", "debit_account_id": "alice"', 422, "validation_error"),
    ("[1, 2]", 422, "validation_error"),
    ('"just a string"', 422, "validation_error"),
    ("", 422, "validation_error"),
    ('{"transfers": "nope"}', 422, "validation_error"),
    ('{"transfers": []}', 422, "validation_error"),
    ('{"transfers": [], "extra": 1}', 422, "validation_error"),
])
def test_single_transfer_errors_are_problems(client, accounts, body, status, code):
    r = client.post("/v1/transfers", content=body, headers={**accounts.w, "content-type": "application/json"})
    problem = assert_problem(r, status, code)
    assert problem["detail"]
    # Nothing moved.
    assert balances(client, accounts, "alice")["debits_posted"] == "0.00"


def test_validation_problem_names_the_fields(client, accounts):
    r = post_transfer(client, accounts, id="x", debit_account_id="alice", credit_account_id="escrow",
                      amount="1", asset="USD", colour="red", flags=["bogus"])
    problem = assert_problem(r, 422, "validation_error")
    fields = {e["field"] for e in problem["errors"]}
    assert fields == {"colour", "flags.0"}


def test_batch_results_one_per_transfer_and_neighbours_survive(client, accounts):
    t = accounts
    transfers = [
        {"id": "b0", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD"},
        {"id": "b1", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "0.001",
         "asset": "USD"},
        {"id": "b2", "debit_account_id": "ghost", "credit_account_id": "escrow", "amount": "1", "asset": "USD"},
        {"id": "b3", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "2", "asset": "USD",
         "colour": "red"},
        {"id": "b4", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "3", "asset": "USD"},
        {"id": "b0", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD"},
        {"id": "b6", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "NOPE"},
        "not an object",
        {"id": "b8", "debit_account_id": "alice", "credit_account_id": "escrow", "amount": "500",
         "asset": "USD"},
    ]
    r = client.post("/v1/transfers", json={"transfers": transfers}, headers=t.w)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["index"], x["id"], x["result"]) for x in results] == [
        (0, "b0", "ok"), (1, "b1", "amount_precision"), (2, "b2", "debit_account_not_found"),
        (3, "b3", "validation_error"), (4, "b4", "ok"), (5, "b0", "exists"), (6, "b6", "asset_not_found"),
        (7, None, "validation_error"), (8, "b8", "exceeds_credits"),
    ]
    assert results[0]["transfer"]["amount"] == "1.00"
    assert results[5]["transfer"] == results[0]["transfer"]
    assert "transfer" not in results[1] and results[1]["detail"]
    assert results[3]["errors"][0]["field"] == "colour"
    assert balances(client, t, "alice")["debits_posted"] == "4.00"


def test_batch_linked_chain_is_all_or_nothing(client, accounts):
    t = accounts
    leg = {"credit_account_id": "escrow", "asset": "USD"}
    transfers = [
        {"id": "c0", "debit_account_id": "alice", "amount": "1", "flags": ["linked"], **leg},
        {"id": "c1", "debit_account_id": "alice", "amount": "1.001", "flags": ["linked"], **leg},  # bad amount
        {"id": "c2", "debit_account_id": "alice", "amount": "1", **leg},
        {"id": "d0", "debit_account_id": "alice", "amount": "5", "flags": ["linked"], **leg},
        {"id": "d1", "debit_account_id": "ghost", "amount": "5", **leg},  # refused by the engine
        {"id": "e0", "debit_account_id": "alice", "amount": "2", "flags": ["linked"], **leg},
        {"id": "e1", "debit_account_id": "alice", "amount": "3", **leg},
    ]
    r = client.post("/v1/transfers", json={"transfers": transfers}, headers=t.w)
    assert r.status_code == 200, r.text
    assert [x["result"] for x in r.json()["results"]] == [
        "linked_event_failed", "amount_precision", "linked_event_failed",
        "linked_event_failed", "debit_account_not_found",
        "ok", "ok",
    ]
    assert balances(client, t, "alice")["debits_posted"] == "5.00"


def test_batch_limits(client, accounts):
    one = {"debit_account_id": "alice", "credit_account_id": "escrow", "amount": "0.01", "asset": "USD"}
    r = client.post("/v1/transfers", json={"transfers": [{"id": f"m{i}", **one} for i in range(1001)]},
                    headers=accounts.w)
    assert_problem(r, 413, "batch_too_large")
    r = client.post("/v1/transfers", json={"transfers": [{"id": f"m{i}", **one} for i in range(1000)]},
                    headers=accounts.w)
    assert r.status_code == 200
    assert {x["result"] for x in r.json()["results"]} == {"ok"}
    assert balances(client, accounts, "alice")["debits_posted"] == "10.00"


def test_body_over_the_limit_is_413(make_client, tenant):
    client = make_client(max_body_bytes=1000)
    r = client.post("/v1/transfers", content=b"{" + b" " * 2000 + b"}",
                    headers={**tenant.w, "content-type": "application/json"})
    assert_problem(r, 413, "payload_too_large")
    r = client.post("/v1/accounts", json={"asset": "USD", "kind": "x", "metadata": {"k": "v" * 2000}},
                    headers=tenant.w)
    assert_problem(r, 413, "payload_too_large")


def test_account_transfers_pagination_walks_every_row_once(client, accounts):
    t = accounts
    one = {"debit_account_id": "alice", "credit_account_id": "escrow", "amount": "0.01", "asset": "USD"}
    r = client.post("/v1/transfers", json={"transfers": [{"id": f"p{i:02d}", **one} for i in range(23)]},
                    headers=t.w)
    assert r.status_code == 200
    seen: list[str] = []
    seqs: list[int] = []
    cursor = None
    pages = 0
    while True:
        url = "/v1/accounts/alice/transfers?limit=5" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=t.r).json()
        seen += [x["id"] for x in page["data"]]
        seqs += [x["seq"] for x in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["fund"] + [f"p{i:02d}" for i in range(23)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert pages == 5
    escrow = client.get("/v1/accounts/escrow/transfers?limit=1000", headers=t.r).json()
    assert len(escrow["data"]) == 23 and escrow["next_cursor"] is None


def test_holds_pagination_and_filters(client, accounts):
    t = accounts
    pending = {"debit_account_id": "alice", "credit_account_id": "escrow", "amount": "1", "asset": "USD",
               "flags": ["pending"]}
    client.post("/v1/transfers", json={"transfers": [{"id": f"h{i}", **pending} for i in range(7)]}, headers=t.w)
    post_transfer(client, t, id="v0", pending_id="h0", flags=["void_pending"])
    ids: list[str] = []
    cursor = None
    while True:
        url = "/v1/accounts/escrow/holds?state=pending&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=t.r).json()
        ids += [h["transfer_id"] for h in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert ids == [f"h{i}" for i in range(1, 7)]
    voided = client.get("/v1/accounts/escrow/holds?state=voided", headers=t.r).json()["data"]
    assert [h["transfer_id"] for h in voided] == ["h0"]
    assert_problem(client.get("/v1/accounts/escrow/holds?state=open", headers=t.r), 422, "validation_error")


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "cursor=%00", "cursor=!!",
                                   "cursor=YWJj"])
def test_bad_list_parameters_are_422(client, accounts, query):
    r = client.get(f"/v1/accounts/alice/transfers?{query}", headers=accounts.r)
    assert r.status_code == 422, r.text
    assert r.json()["code"] in ("validation_error", "invalid_cursor")


def test_get_unknown_transfer_and_odd_ids(client, accounts):
    assert_problem(client.get("/v1/transfers/nope", headers=accounts.r), 404, "transfer_not_found")
    assert_problem(client.get("/v1/transfers/a%00b", headers=accounts.r), 422, "validation_error")
    assert_problem(client.get("/v1/accounts/" + "x" * 65, headers=accounts.r), 422, "validation_error")
    assert_problem(client.get("/v1/accounts/ghost/transfers", headers=accounts.r), 404, "account_not_found")


def test_openapi_documents_the_routes(client):
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/transfers"]["post"]
    assert {"401", "403", "404", "409", "413", "422"} <= set(post["responses"])
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert len(schema["oneOf"]) == 2
    json.dumps(spec)  # serialisable as a whole
    for path in ("/v1/accounts", "/v1/accounts/{account_id}", "/v1/assets", "/v1/blocks/latest",
                 "/v1/transfers/{transfer_id}/proof", "/v1/accounts/{account_id}/holds"):
        assert path in spec["paths"]


def test_concurrent_single_posts_share_the_batcher_and_balance_exactly(client, accounts):
    from concurrent.futures import ThreadPoolExecutor

    t = accounts

    def call(i: int) -> int:
        r = post_transfer(client, t, id=f"c{i}", debit_account_id="alice", credit_account_id="escrow",
                          amount="0.01", asset="USD")
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(call, range(200)))
    assert statuses == [201] * 200
    assert balances(client, t, "alice")["debits_posted"] == "2.00"
    assert balances(client, t, "escrow")["credits_posted"] == "2.00"
    # Retried concurrently, every one is `exists` and nothing moves again.
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(call, range(200))) == {200}
    assert balances(client, t, "alice")["available"] == "98.00"


def test_large_batch_with_failures_keeps_order(client, accounts):
    one = {"debit_account_id": "alice", "credit_account_id": "escrow", "asset": "USD"}
    transfers = [{"id": f"L{i}", "amount": "0.01", **one} for i in range(60)]
    transfers[35] = {"id": "L35", "amount": "0.001", **one}
    transfers[36] = {"id": "L36", "amount": "1", "flags": ["linked"], **one}
    transfers[37] = {"id": "L37", "amount": "1", "colour": "red", **one}
    r = client.post("/v1/transfers", json={"transfers": transfers}, headers=accounts.w)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["index"] for x in results] == list(range(60))
    assert [x["result"] for x in results[34:39]] == ["ok", "amount_precision", "linked_event_failed",
                                                     "validation_error", "ok"]
    assert balances(client, accounts, "alice")["debits_posted"] == "0.57"


def test_a_cancelled_request_does_not_cancel_its_transfer_or_stop_the_batcher(db, clock, tenant, monkeypatch):
    import asyncio
    import threading

    from meterline.api.runtime import Runtime
    from meterline.api.v1 import transfers as routes
    from meterline.config import Settings
    from meterline.ledger.engine import engine
    from meterline.ledger.types import TransferIn
    from tests.factories import make_account

    with db.session() as s:
        make_account(s, tenant.id, clock, id="a")
        make_account(s, tenant.id, clock, id="b")
    real, gate = engine.apply, threading.Event()

    def held(*args):
        gate.wait(10)
        return real(*args)

    monkeypatch.setattr(engine, "apply", held)
    runtime = Runtime(settings=Settings(database_url=db.url), db=db, clock=clock)
    runtime.ledger.start()

    async def main() -> None:
        first = asyncio.create_task(routes._post(runtime, tenant.id, [TransferIn("t1", "a", "b", 1, "USD")]))
        second = asyncio.create_task(routes._post(runtime, tenant.id, [TransferIn("t2", "a", "b", 1, "USD")]))
        await asyncio.sleep(0.05)
        second.cancel()  # the client went away while its transfer was queued
        gate.set()
        assert (await first)[0].result == "ok"
        third = await asyncio.wait_for(
            routes._post(runtime, tenant.id, [TransferIn("t3", "a", "b", 1, "USD")]), 5)
        assert third[0].result == "ok"

    try:
        asyncio.run(main())
    finally:
        gate.set()
        runtime.ledger.stop()
    with db.session(write=False) as s:
        from meterline.ledger.service import ledger_service

        assert ledger_service.get_account(s, tenant.id, "a").debits_posted == 3  # t2 committed too


@pytest.mark.parametrize(("amount", "status", "code"), [
    ("12.50", 201, None), ("1e1", 201, None), ("0.001", 422, "amount_precision"), ("0", 422, "amount_not_positive"),
    ("1,5", 422, "invalid_amount"), ("100.01", 409, "exceeds_credits"),
])
def test_plain_and_model_parsed_transfers_answer_alike(client, accounts, amount, status, code):
    """The five-field body takes the plain parse; the same transfer with `"flags": []` goes through
    the model. Both answer the same status, problem code and transfer (but for its id and seq)."""
    answers = []
    for tid, extra in (("plain", {}), ("model", {"flags": []})):
        r = post_transfer(client, accounts, id=tid, debit_account_id="alice", credit_account_id="escrow",
                          amount=amount, asset="USD", **extra)
        assert r.status_code == status, r.text
        body = r.json()
        if code is not None:
            assert body["code"] == code and r.headers["content-type"].startswith("application/problem+json")
            answers.append({k: v for k, v in body.items() if k != "transfer_id"})
        else:
            answers.append({k: v for k, v in body.items() if k not in ("id", "seq", "hash", "timestamp")})
    assert answers[0] == answers[1]


@pytest.mark.parametrize("body", [
    {"id": "expire:h1", "debit_account_id": "a", "credit_account_id": "b", "amount": "1", "asset": "USD"},
    {"id": "dep:simulation:tx-1", "debit_account_id": "a", "credit_account_id": "b", "amount": "1", "asset": "USD"},
    {"id": "mine", "pending_id": "rent:CTR-1:hold:1", "flags": ["void_pending"]},
    {"transfers": [{"id": "wd:abc:1", "debit_account_id": "a", "credit_account_id": "b", "amount": "1",
                    "asset": "USD"}]},
])
def test_ids_meterline_derives_are_not_a_clients(client, tenant, body):
    """Taken first by a client, `expire:<hold>` kept that hold from ever expiring, and voiding
    `rent:…:hold:1` would empty a rental's escrow: those namespaces are Meterline's."""
    create_account(client, tenant, "a", kind="treasury")
    create_account(client, tenant, "b")
    r = client.post("/v1/transfers", json=body, headers=tenant.w)
    if "transfers" in body:  # a batch answers each transfer: this one refused, alone
        [res] = r.json()["results"]
        assert res["result"] == "validation_error" and "Meterline's own" in res["errors"][0]["detail"]
    else:
        assert "Meterline's own" in assert_problem(r, 422, "validation_error")["errors"][0]["detail"]


@pytest.mark.parametrize("acc_id", ["wal:customer:bob:USD", "earn:provider:p:USD", "sys:escrow:USD"])
def test_account_ids_meterline_derives_are_not_a_clients(client, tenant, acc_id):
    """An account created as `wal:customer:bob:USD` would stand in for bob's wallet — without
    its non-negative flag."""
    r = client.post("/v1/accounts", json={"id": acc_id, "asset": "USD", "kind": "customer_wallet"}, headers=tenant.w)
    assert_problem(r, 422, "validation_error")


_PAIR = '"debit_account_id":"treasury","credit_account_id":"alice"'


@pytest.mark.parametrize(("raw", "field"), [
    # A proxy or a signature check reading the first `amount` saw 1.00; the last (2.00) moved.
    ('{"id":"d1",' + _PAIR + ',"amount":"1.00","amount":"2.00","asset":"USD"}', "amount"),
    ('{"id":"d1",' + _PAIR + ',"amount":"1.00","asset":"USD","\\u0061sset":"SOL"}', "asset"),
    ('{"id":"d1",' + _PAIR + ',"amount":"1.00","asset":"USD","metadata":{"order":"o-1","order":"o-2"}}',
     "metadata.order"),
    ('{"transfers":[{"id":"d0",' + _PAIR + ',"amount":"1.00","asset":"USD"},'
     '{"id":"d1",' + _PAIR + ',"amount":"1.00","amount":"2.00","asset":"USD"}]}', "transfers.1.amount"),
    ('{"transfers":[{"id":"d1",' + _PAIR + ',"amount":"1.00","asset":"USD"}],"transfers":[]}', "transfers"),
])
def test_a_key_given_twice_is_refused_and_nothing_moves(client, accounts, raw, field):
    """On the fast path (no router), alone or in a batch: the whole body is refused, so no
    transfer of it — not even a neighbour in the batch — is posted."""
    from tests.api.test_fastpath import router_disabled

    with router_disabled(client):
        r = client.post("/v1/transfers", content=raw,
                        headers={**accounts.w, "content-type": "application/json", "Idempotency-Key": "dup-1"})
    problem = assert_problem(r, 422, "validation_error")
    assert [(e["field"], e["code"]) for e in problem["errors"]] == [(field, "duplicate_key")]
    for tid in ("d0", "d1"):
        assert_problem(client.get(f"/v1/transfers/{tid}", headers=accounts.r), 404, "transfer_not_found")
    assert balances(client, accounts, "alice")["credits_posted"] == "100.00"
