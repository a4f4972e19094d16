"""The canonical transfer encoding every stored hash depends on."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meterline.ledger.chain import GENESIS_HASH, ROW_FIELDS, canonical_transfer, chain_hash, seal

FIELDS = ("tenant_id", "seq", "id", "debit_account_id", "credit_account_id", "amount", "asset", "pending_id",
          "flags", "timeout_s", "code", "reference", "metadata", "timestamp")


def reference(t: dict[str, Any]) -> bytes:
    """The definition: compact JSON of the field list, sorted metadata keys, UTF-8."""
    return json.dumps([t[f] for f in FIELDS], separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # any Unicode but lone surrogates
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Mostly ints; now and then a bool or None, which the JSON encoder writes differently from str().
nums = ints | st.booleans() | st.none()
json_values = st.recursive(
    st.none() | st.booleans() | ints | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
transfers = st.fixed_dictionaries({
    "tenant_id": text, "seq": nums, "id": text, "debit_account_id": st.none() | text,
    "credit_account_id": st.none() | text, "amount": nums, "asset": st.none() | text,
    "pending_id": st.none() | text, "flags": nums, "timeout_s": nums, "code": text,
    "reference": st.none() | text, "metadata": st.none() | st.dictionaries(text, json_values, max_size=4),
    "timestamp": nums,
})


@given(transfers)
def test_canonical_encoding_is_byte_equal_to_its_json_definition(t: dict[str, Any]) -> None:
    assert canonical_transfer(t) == reference(t)


def test_a_known_transfer_hashes_to_its_recorded_value() -> None:
    # Pinned: a stored chain must verify forever, whatever the encoder's implementation.
    t = {"tenant_id": "default", "seq": 1, "id": "tr_1", "debit_account_id": "a", "credit_account_id": "b",
         "amount": 1250, "asset": "USD", "pending_id": None, "flags": 0, "timeout_s": 0, "code": "",
         "reference": "rental_42", "metadata": {"z": 1, "a": "é\n"}, "timestamp": 1_700_000_000_000_000_000}
    assert canonical_transfer(t) == (
        '["default",1,"tr_1","a","b",1250,"USD",null,0,0,"","rental_42",{"a":"é\\n","z":1},'
        '1700000000000000000]'
    ).encode()
    assert chain_hash(GENESIS_HASH, t) == hashlib.sha256(
        bytes(32) + canonical_transfer(t)).hexdigest()


@given(st.lists(transfers, max_size=4), st.sampled_from([GENESIS_HASH, "ab" * 32]))
def test_seal_chains_rows_exactly_as_chain_hash_does(ts: list[dict[str, Any]], genesis: str) -> None:
    # `seal` is the engine's per-batch form of `chain_hash`, over column-ordered lists.
    rows = [[t[f] if f != "hash" else "" for f in ROW_FIELDS] for t in ts]
    last = seal(genesis, rows)
    prev = genesis
    for t, row in zip(ts, rows, strict=True):
        prev = chain_hash(prev, t)
        assert row[-1] == prev
    assert last == prev


@given(transfers, text, text, ints, st.booleans())
def test_seal_of_a_batch_of_one_tenant_matches_chain_hash(
    t: dict[str, Any], dr: str, cr: str, seq: int, plain: bool,
) -> None:
    # The common shapes (str accounts, one tenant for every row; a plain transfer's tail —
    # no pending id, code, reference or metadata — half the time): seal's own f-strings.
    t = t | {"debit_account_id": dr, "credit_account_id": cr, "asset": dr, "seq": seq, "amount": seq * 3,
             "flags": seq % 16, "timeout_s": -seq, "timestamp": seq + 2**62}
    if plain:
        t |= {"pending_id": None, "code": "", "reference": None, "metadata": None}
    rows = [[t[f] if f != "hash" else "" for f in ROW_FIELDS] for _ in range(2)]
    seal(GENESIS_HASH, rows)
    first = chain_hash(GENESIS_HASH, t)
    assert [rows[0][-1], rows[1][-1]] == [first, chain_hash(first, t)]


def test_row_fields_are_the_transfers_columns_and_stored_transfer_fields() -> None:
    from dataclasses import fields

    from meterline.ledger import engine
    from meterline.ledger.types import StoredTransfer

    assert ROW_FIELDS == engine._TRANSFER_FIELDS == tuple(f.name for f in fields(StoredTransfer))
