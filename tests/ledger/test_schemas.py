"""The hand-written transfer answer is byte for byte the model's; the plain transfer parse is the model's."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.errors import MeterlineError
from meterline.ledger.schemas import PlainTransfer, TransferCreate, TransferOut, transfer_json
from meterline.ledger.types import TRANSFER_FLAG_NAMES, StoredTransfer, TransferIn
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


# -- the plain single transfer agrees with the model ------------------------------------------

def _outcome(fn: Any) -> tuple[Any, ...]:
    try:
        return ("ok", fn())
    except MeterlineError as exc:
        return ("refused", type(exc), exc.code, exc.detail)


def _mostly(common: Any, odd: Any) -> Any:
    """`common` nine draws in ten, `odd` otherwise: most bodies are plain, the rest probe edges."""
    return st.integers(0, 9).flatmap(lambda i: common if i else odd)


_plain_ids = _mostly(st.from_regex(r"\A[!-.0-~]{1,70}\Z"), st.sampled_from(
    ["", "a\n", "a b", "a/b", "é", "a" * 64, "a" * 65, "a" * 128, "a" * 129, "x\x00", "\ud800"]))
_amounts = _mostly(
    st.from_regex(r"\A[+-]?[0-9]{0,20}(\.[0-9]{0,12})?([eE][+-]?[0-9]{1,3})?\Z"),
    st.sampled_from(["1", "0.01", "12.50", "1.234", "0", "-1", " 1", "1 ", "1e1", "NaN", "Infinity", "1,5", "",
                     "٣", "1\ud800", "92233720368547758.08", "0E+100", "+2"])
    | st.integers(min_value=-5, max_value=10**20) | st.decimals(allow_nan=False, places=3)
    | st.none() | st.booleans() | st.text(max_size=8))
_assets = _mostly(st.sampled_from(["USD", "SOL", "X1", "A" * 16]),
                  st.sampled_from(["usd", "", "A" * 17, "US D", "ÜSD", "USD\n"]))
_anything = st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.lists(st.integers(), max_size=2)


@st.composite
def transfer_bodies(draw: Any) -> Any:
    body: dict[str, Any] = {}
    for name, values in (("id", _plain_ids), ("debit_account_id", _plain_ids), ("credit_account_id", _plain_ids),
                         ("amount", _amounts), ("asset", _assets)):
        if draw(st.integers(0, 19)):  # usually present, sometimes missing
            body[name] = draw(values) if draw(st.integers(0, 19)) else draw(_anything)
    if not draw(st.integers(0, 9)):
        body[draw(st.sampled_from(["flags", "code", "reference", "metadata", "pending_id", "colour"]))] = draw(
            _anything | st.just(["linked"]))
    return body if draw(st.integers(0, 19)) else draw(st.sampled_from([[body], "x", 5, None]))


@settings(max_examples=1500, deadline=None)
@given(transfer_bodies(), st.sampled_from([0, 2, 6, 9, 18]))
def test_plain_transfer_is_what_the_model_makes_of_the_same_body(data: Any, scale: int) -> None:
    """The plain parse accepts only bodies the model accepts, and yields the same transfer (or
    the same refusal of its amount); whatever it declines, the model still answers."""
    plain = PlainTransfer.of(data)
    if plain is None:
        return
    model = TransferCreate.model_validate(data)  # must not raise: the plain parse took it
    asset = Asset(plain.asset, scale)
    assert _outcome(lambda: plain.to_transfer_in(asset)) == _outcome(lambda: model.to_transfer_in(asset))


def test_plain_transfer_takes_the_common_body_and_declines_the_rest() -> None:
    body = {"id": "tr_1", "debit_account_id": "a", "credit_account_id": "b", "amount": "12.50", "asset": "USD"}
    assert PlainTransfer.of(body) == PlainTransfer("tr_1", "a", "b", "12.50", "USD")
    assert PlainTransfer.of(body).to_transfer_in(Asset("USD", 2)) == TransferIn("tr_1", "a", "b", 1250, "USD")
    declined = [
        {**body, "amount": Decimal("12.5")},  # a JSON number: the model keeps it exact
        {**body, "amount": 1250},
        {**body, "amount": "1\ud800"},  # not ASCII: the model decides
        {**body, "id": "tr_1\n"},
        {**body, "asset": "usd"},
        {**body, "debit_account_id": "a" * 65},
        {**body, "flags": []},
        {k: v for k, v in body.items() if k != "asset"},
        [body],
    ]
    for data in declined:
        assert PlainTransfer.of(data) is None, data
