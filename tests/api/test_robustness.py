"""Bad input never reaches a 500: every odd body or parameter is a 4xx problem with a code."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.api.conftest import assert_problem, create_account
from tests.factories import make_demo_tenant

ODD_BODIES = [
    b"", b"null", b"0", b"-1", b"true", b"[]", b"[{}]", b"{}", b'"x"', b"{\"a\":", b"\xff\xfe", b"NaN",
    b'{"id": 1}', b'{"id": null}', b'{"id": ["x"]}', b'{"id": {"$ne": 1}}', b'{"amount": Infinity}',
    b'{"id": "x", "amount": 1e999999, "asset": "USD", "debit_account_id": "a", "credit_account_id": "b"}',
    b'{"id": "x", "amount": "1e999999", "asset": "USD", "debit_account_id": "a", "credit_account_id": "b"}',
    b'{"id": "x", "amount": ' + b"9" * 5000 + b', "asset": "USD"}',
    b'{"id": "x", "amount": "0x10", "asset": "USD", "debit_account_id": "a", "credit_account_id": "b"}',
    b'{"id": "x", "amount": " 1", "asset": "USD", "debit_account_id": "a", "credit_account_id": "b"}',
    b'{"id": "x", "amount": "\\u0661", "asset": "USD", "debit_account_id": "a", "credit_account_id": "b"}',
    b'{"id": "x", "amount": [], "asset": "USD"}', b'{"id": "x", "asset": "\\u0000"}',
    b'{"id": "' + b"x" * 129 + b'", "pending_id": "p", "flags": ["void_pending"]}',
    b'{"id": "x", "pending_id": "p", "flags": ["void_pending"], "timeout_s": "5"}',
    b'{"id": "x", "pending_id": "p", "flags": ["void_pending"], "timeout_s": 5.0}',
    b'{"id": "x", "pending_id": "p", "flags": ["void_pending"], "timeout_s": true}',
    b'{"id": "x", "pending_id": "p", "flags": ["void_pending"], "timeout_s": -1}',
    b'{"id": "x", "pending_id": "p", "flags": "void_pending"}',
    b'{"id": "x", "pending_id": "x", "flags": ["post_pending"]}',
    b'{"id": "x", "pending_id": "p", "flags": ["post_pending"], "amount": "1"}',
    b'{"id": "x", "debit_account_id": "a", "credit_account_id": "b", "amount": "1", "asset": "USD", '
    b'"metadata": {"deep": ' + b"[" * 50 + b"]" * 50 + b"}}",
    b'{"id": "x", "debit_account_id": "a", "credit_account_id": "b", "amount": "1", "asset": "USD", '
    b'"metadata": "str"}',
    b'{"id": "x", "debit_account_id": "a", "credit_account_id": "b", "amount": "1", "asset": "USD", '
    b'"code": "' + b"c" * 65 + b'"}',
    b'{"transfers": [null, 1, "x", [], {}]}',
    b'{"transfers": [{"id": "x", "flags": ["linked"]}, {"id": "y", "flags": "linked"}]}',
    b'{"transfers": {"0": {}}}', b"[" * 100_000, b'{"metadata": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001,
    b'{"id": "x", "debit_account_id": "a", "credit_account_id": "b", "amount": "1", "asset": "USD", '
    b'"metadata": {"deep": ' + b"[" * 500 + b"]" * 500 + b"}}",
    b'{"kind": "x", "asset": "USD", "id": "\\ud800"}',
    b'{"code": "X", "scale": 1e3}', b'{"code": "X", "scale": 2, "name": "\\u0000"}',
]


@pytest.mark.parametrize("path", ["/v1/transfers", "/v1/accounts", "/v1/assets"])
def test_odd_bodies_are_4xx_problems(client, tenant, path):
    create_account(client, tenant, "a")
    create_account(client, tenant, "b")
    for body in ODD_BODIES:
        r = client.post(path, content=body, headers={**tenant.a, "content-type": "application/json"})
        assert r.status_code < 500, (body, r.text)
        if r.status_code >= 400:
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"], body


@pytest.mark.parametrize("field", ['"timeout_s": "5"', '"timeout_s": 5.0', '"timeout_s": true'])
def test_no_silent_coercion(client, tenant, field):
    body = '{"id": "x", "pending_id": "p", "flags": ["void_pending"], ' + field + "}"
    r = client.post("/v1/transfers", content=body, headers={**tenant.w, "content-type": "application/json"})
    problem = assert_problem(r, 422, "validation_error")
    assert problem["errors"][0]["field"] == "timeout_s"


@pytest.mark.parametrize("path", [
    "/v1/accounts/%00", "/v1/accounts/%E2%82%AC", "/v1/accounts/%00/holds", "/v1/transfers/%00",
    "/v1/accounts?owner_id=%00", "/v1/accounts?cursor=%FF", "/v1/accounts?limit=-1",
    "/v1/accounts/a/holds?cursor=@@", "/v1/blocks/-1",
])
def test_odd_parameters_are_4xx(client, tenant, path):
    r = client.get(path, headers=tenant.r)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["code"]


# -- U+0000: PostgreSQL's text cannot hold it, SQLite would store it; refused on both -------


def test_nul_in_a_body_is_refused_naming_the_field(client, tenant):
    body = '{"id": "a\\u0000b", "asset": "USD", "kind": "customer_wallet", "metadata": {"k": ["ok", "x\\u0000"]}}'
    r = client.post("/v1/accounts", content=body, headers={**tenant.a, "content-type": "application/json"})
    problem = assert_problem(r, 422, "validation_error")
    assert [(e["field"], e["code"]) for e in problem["errors"]] == [("id", "nul_character"),
                                                                   ("metadata.k.1", "nul_character")]
    assert client.get("/v1/accounts", headers=tenant.r).json()["data"] == []


def test_a_nul_key_is_refused(client, tenant):
    r = client.post("/v1/accounts", content='{"id": "a", "asset": "USD", "metadata": {"\\u0000": 1}}',
                    headers={**tenant.a, "content-type": "application/json"})
    assert assert_problem(r, 422, "validation_error")["errors"][0]["field"] == "metadata.\x00"


def test_an_escaped_backslash_before_u0000_is_text_not_nul(client, tenant):
    """`\\\\u0000` in JSON is a backslash followed by "u0000": six ordinary characters."""
    body = '{"id": "a", "asset": "USD", "kind": "customer_wallet", "metadata": {"note": "\\\\u0000"}}'
    r = client.post("/v1/accounts", content=body, headers={**tenant.a, "content-type": "application/json"})
    assert r.status_code == 201, r.text
    assert client.get("/v1/accounts/a", headers=tenant.r).json()["metadata"] == {"note": "\\u0000"}


@pytest.mark.parametrize(("path", "where"), [
    ("/v1/accounts/a%00b", "path"), ("/v1/transfers/%00", "path"), ("/api/contracts/%00", "path"),
    ("/api/devices/x%00", "path"), ("/v1/accounts?owner_id=a%00", "query"), ("/v1/blocks/latest?x=%00", "query"),
])
def test_nul_in_the_path_or_query_is_refused(client, tenant, path, where):
    problem = assert_problem(client.get(path, headers=tenant.r), 422, "validation_error")
    assert problem["errors"] == [{"field": where, "code": "nul_character", "detail": "text may not contain U+0000 (NUL)"}]


# -- every route in the OpenAPI document, not only the ledger's --------------------------


def _sample(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> Any:
    """A plausible value for a JSON Schema: enough to get past the first checks of a route."""
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return _sample(options[0], defs, depth + 1)
    if depth > 4:
        return "x"
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        return {k: _sample(v, defs, depth + 1) for k, v in schema.get("properties", {}).items()}
    return {"array": [], "integer": 1, "number": "1.5", "boolean": True}.get(kind, "x")


def _operations(app: Any) -> list[tuple[str, str, dict[str, Any] | None]]:
    spec = app.openapi()
    defs = spec.get("components", {}).get("schemas", {})
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            url = path
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    url = url.replace("{" + p["name"] + "}", "x")
            schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            out.append((method.upper(), url, _sample(schema, defs) if schema else None))
    return out


EVERY_ROUTE_BODIES = [b"", b"null", b"[]", b"{}", b'"x"', b"{\"a\":", b"\xff\xfe", b"[" * 100_000]
EVERY_ROUTE_VALUES = [None, -1, 10**30, "", "x" * 5000, [], {}, True, "1e999", "a\u0000b", "a\ud800b", "1" + "0" * 80]


def test_every_route_answers_bad_input_with_a_problem(make_client, tenant):
    """Each operation in /openapi.json (dev mode: the tenant's admin, so auth lets every body
    through to its parser), with odd bodies, then its own sample body with each top-level
    field swapped for odd values: never a 5xx, and every 4xx a problem with a code."""
    client = make_client(dev=True, default_tenant=tenant.id)
    seen = 0
    for method, url, sample in _operations(client.app):
        attempts: list[bytes] = []
        if method in ("POST", "PUT", "PATCH"):
            attempts += EVERY_ROUTE_BODIES
            if isinstance(sample, dict):
                for key in sample:
                    # A fresh id for each attempt, so a create reaches its INSERT instead of
                    # stopping at "already exists" after the first one succeeded.
                    for v in EVERY_ROUTE_VALUES:
                        fresh = {"id": f"x{len(attempts)}"} if "id" in sample and key != "id" else {}
                        attempts.append(json.dumps({**sample, **fresh, key: v}).encode())
        for body in attempts or [b""]:
            r = client.request(method, url, content=body or None, headers={"content-type": "application/json"})
            seen += 1
            assert r.status_code < 500, (method, url, body[:200], r.text)
            if r.status_code >= 400:
                assert r.headers["content-type"].startswith("application/problem+json"), (method, url, r.text)
                assert r.json()["code"], (method, url)
    assert seen > 1000  # the document lists every route: a shrinking count means routes went missing


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("path", [
    "/v1/accounts", "/v1/subscriptions", "/v1/invoices", "/v1/rentals", "/v1/payouts",
    "/v1/wallets/customer/alice/USD/transactions", "/api/v1/wallet/transactions?user_id=alice",
    "/api/v1/billing/history?user_id=alice", "/api/billing/ledger",
])
def test_forged_cursors_never_reach_the_database_as_errors(make_client, db, clock, tenant_id, path):
    """A cursor is compared with ids and BIGINT keys in the database: NUL, numbers past 2⁶³-1
    and non-ASCII digits (`"²".isdigit()` is true) once reached it as 500s. Each is refused,
    or — where it is a well-formed position in that list — answered."""
    with db.session() as s:
        make_demo_tenant(s, tenant_id, clock)  # (the profiles' lists need its price book)
    client = make_client(dev=True, default_tenant=tenant_id)
    sep = "&" if "?" in path else "?"
    for raw in ["a\x00b", "9" * 19, "9" * 25 + ":CTR-X", "1" + "0" * 19 + ":X", "\u00b2:X", "\u00b2"]:
        r = client.get(f"{path}{sep}cursor={_cursor(raw)}")
        assert r.status_code < 500, (raw, r.text)
        if r.status_code >= 400:
            assert r.json()["code"] in ("invalid_cursor", "invalid_rental_request"), (raw, r.text)
        if "\x00" in raw or (raw == "9" * 19 and "transactions" in path):
            assert r.status_code == 422, (raw, r.text)
