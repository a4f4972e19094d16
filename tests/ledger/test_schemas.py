"""The hand-written transfer answer is byte for byte the model's."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.ledger.schemas import TransferOut, transfer_json
from meterline.ledger.types import TRANSFER_FLAG_NAMES, StoredTransfer
from meterline.money import Asset

# Any text a client may send in an id, code or reference — control characters, quotes,
# backslashes, non-ASCII and astral code points — so escaping is compared, not assumed.
text = st.text(max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
flag_bits = st.sets(st.sampled_from(sorted(TRANSFER_FLAG_NAMES.values()))).map(lambda bits: sum(bits))


@st.composite
def stored_transfers(draw: Any) -> tuple[StoredTransfer, Asset]:
    scale = draw(st.integers(min_value=0, max_value=18))
    t = StoredTransfer(
        tenant_id="t", id=draw(text), seq=draw(st.integers(min_value=1, max_value=2**62)),
        debit_account_id=draw(text), credit_account_id=draw(text),
        amount=draw(st.integers(min_value=1, max_value=2**63 - 1)), asset=draw(st.sampled_from(["USD", "SOL", "X1"])),
        pending_id=draw(st.none() | text), flags=draw(flag_bits), timeout_s=draw(st.integers(0, 2**31 - 1)),
        code=draw(text), reference=draw(st.none() | text),
        metadata=draw(st.none() | st.dictionaries(text, json_values, max_size=5)),
        timestamp=draw(st.integers(min_value=0, max_value=4_102_444_800 * 10**9)), hash=draw(text),
    )
    return t, Asset(t.asset, scale)


@settings(max_examples=300, deadline=None)
@given(stored_transfers())
def test_transfer_json_is_the_models_serialisation(case: tuple[StoredTransfer, Asset]) -> None:
    t, asset = case
    assert transfer_json(t, asset) == TransferOut.of(t, asset).model_dump_json().encode()


def test_transfer_json_with_every_flag_and_metadata_reads_back() -> None:
    t = StoredTransfer("t", 'tr_"1"\n', 7, "a", "b", 1250, "USD", "p-1", sum(TRANSFER_FLAG_NAMES.values()), 60,
                       "code", "ref ü", {"k": [1, {"x": None}], "é": True}, 1_700_000_000_123_456_789, "ab" * 32)
    out = json.loads(transfer_json(t, Asset("USD", 2)))
    assert out["id"] == 'tr_"1"\n' and out["amount"] == "12.50" and out["metadata"] == {"k": [1, {"x": None}], "é": True}
    assert out["flags"] == ["pending", "post_pending", "void_pending", "linked"]
