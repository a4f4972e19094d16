"""The explorer routes: blocks and Merkle inclusion proofs, checked offline."""

from __future__ import annotations

import pytest

from meterline.identity.service import identity_service
from meterline.ledger.blocks import block_service, verify_proof_offline
from meterline.ledger.signing import Signer
from tests.api.conftest import ApiTenant, assert_problem, create_account, post_transfer


def _seal(db, clock, tenant_id, signer, max_transfers=1000):
    with db.session() as s:
        return block_service.seal(s, tenant_id, signer, clock.now_ns(), max_transfers)


def test_blocks_and_proofs(client, tenant, db, clock):
    t = tenant
    create_account(client, t, "a", kind="treasury")
    create_account(client, t, "b")
    assert_problem(client.get("/v1/blocks/latest", headers=t.r), 404, "block_not_found")
    one = {"debit_account_id": "a", "credit_account_id": "b", "amount": "1", "asset": "USD"}
    r = client.post("/v1/transfers", json={"transfers": [{"id": f"t{i}", **one} for i in range(5)]}, headers=t.w)
    assert r.status_code == 200
    assert_problem(client.get("/v1/transfers/t3/proof", headers=t.r), 409, "transfer_not_sealed")

    signer = Signer.generate()
    assert _seal(db, clock, t.id, signer, max_transfers=3) is not None
    clock.advance(1)
    assert _seal(db, clock, t.id, signer) is not None

    latest = client.get("/v1/blocks/latest", headers=t.r).json()
    assert (latest["height"], latest["first_seq"], latest["last_seq"], latest["transfer_count"]) == (2, 4, 5, 2)
    first = client.get("/v1/blocks/1", headers=t.r).json()
    assert first["last_seq"] == 3 and latest["prev_block_hash"] == first["block_hash"]
    assert latest["timestamp"].endswith("Z") and latest["public_key"] == signer.public_key_hex

    proof = client.get("/v1/transfers/t3/proof", headers=t.r).json()
    transfer = client.get("/v1/transfers/t3", headers=t.r).json()
    assert proof["transfer_hash"] == transfer["hash"]
    assert (proof["block_height"], proof["leaf_index"]) == (2, 0)
    block = proof["block"]
    assert block == latest
    header = {**block, "timestamp": block["timestamp_ns"]}
    assert verify_proof_offline(proof["transfer_hash"], proof["proof"], proof["merkle_root"], block["block_hash"],
                                block["signature"], block["public_key"], header=header)
    # A proof for another transfer's hash does not verify.
    assert not verify_proof_offline("00" * 32, proof["proof"], proof["merkle_root"], block["block_hash"],
                                    block["signature"], block["public_key"], header=header)

    assert_problem(client.get("/v1/blocks/3", headers=t.r), 404, "block_not_found")
    assert_problem(client.get("/v1/blocks/0", headers=t.r), 422, "validation_error")
    assert_problem(client.get("/v1/blocks/99999999999999999999", headers=t.r), 422, "validation_error")
    assert_problem(client.get("/v1/blocks/x", headers=t.r), 422, "validation_error")
    assert_problem(client.get("/v1/transfers/nope/proof", headers=t.r), 404, "transfer_not_found")


def test_blocks_are_tenant_scoped(client, tenant, other_tenant, db, clock):
    create_account(client, tenant, "a", kind="treasury")
    create_account(client, tenant, "b")
    client.post("/v1/transfers", json={"id": "t", "debit_account_id": "a", "credit_account_id": "b",
                                       "amount": "1", "asset": "USD"}, headers=tenant.w)
    _seal(db, clock, tenant.id, Signer.generate())
    assert client.get("/v1/blocks/1", headers=tenant.r).status_code == 200
    assert_problem(client.get("/v1/blocks/latest", headers=other_tenant.r), 404, "block_not_found")
    assert_problem(client.get("/v1/blocks/1", headers=other_tenant.r), 404, "block_not_found")
    assert_problem(client.get("/v1/transfers/t/proof", headers=other_tenant.r), 404, "transfer_not_found")


@pytest.mark.parametrize(("kind", "status"), [("admin", 200), ("operator", 200), ("customer", 403),
                                              ("provider", 403), ("device", 403)])
def test_blocks_are_for_staff_keys(client, tenant, db, clock, kind, status):
    """A header counts the tenant's transfers (`first_seq`..`last_seq`, `transfer_count`) and
    roots transfers only staff may read: a customer or provider key, even with `ledger:read`,
    gets 403 there, as on the transfers and proofs themselves."""
    create_account(client, tenant, "a", kind="treasury")
    create_account(client, tenant, "b")
    assert post_transfer(client, tenant, id="t", debit_account_id="a", credit_account_id="b", amount="1",
                         asset="USD").status_code == 201
    _seal(db, clock, tenant.id, Signer.generate())
    with db.session() as s:
        secret = identity_service.create_key(s, tenant_id=tenant.id, kind=kind, principal_id="alice",
                                             scopes=["ledger:read"], now_ns=clock.now_ns()).secret
    h = ApiTenant.auth(secret)
    for path in ("/v1/blocks/latest", "/v1/blocks/1", "/v1/transfers/t/proof"):
        r = client.get(path, headers=h)
        if status == 200:
            assert r.status_code == 200, r.text
        else:
            assert_problem(r, 403, "forbidden")
