"""Bad input never reaches a 500: every odd body or parameter is a 4xx problem with a code."""

from __future__ import annotations

import pytest

from tests.api.conftest import assert_problem, create_account

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
