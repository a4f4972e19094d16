"""`_Batch.apply_one` for new transfers: its checks are written out inline for speed, so
this holds their order (the result codes' precedence) against a plain reference."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.ledger.engine import _Acc, _Batch, _Fail
from meterline.ledger.types import TransferFlags, TransferIn
from meterline.money import MAX_AMOUNT

NOW = 1_700_000_000_000_000_000
BIG = MAX_AMOUNT - 5


def reference(t: TransferIn, accounts: dict[str, _Acc]) -> str:
    """The precedence of a new transfer's refusals, one rule a line (the engine before inlining)."""
    flags = int(t.flags)
    kind = flags & 7
    dr, cr = accounts.get(t.debit_account_id or ""), accounts.get(t.credit_account_id or "")
    a = t.amount
    rules: list[tuple[Any, str]] = [
        (lambda: not t.id, "id_must_not_be_empty"),
        (lambda: len(t.id) > 128, "id_too_long"),
        (lambda: kind not in (0, 1, 2, 4), "flags_are_mutually_exclusive"),
        (lambda: flags & ~15, "reserved_flag"),
        (lambda: t.timeout_s < 0, "timeout_must_not_be_negative"),
        (lambda: t.code is not None and len(t.code) > 64, "code_too_long"),
        (lambda: t.reference is not None and len(t.reference) > 128, "reference_too_long"),
        (lambda: t.pending_id, "pending_id_must_be_empty"),
        (lambda: t.timeout_s and not flags & 1, "timeout_reserved_for_pending_transfer"),
        (lambda: t.timeout_s and (t.timeout_s > 2**31 - 1 or NOW + t.timeout_s * 10**9 > MAX_AMOUNT),
         "overflows_timeout"),
        (lambda: not t.debit_account_id, "debit_account_id_must_not_be_empty"),
        (lambda: not t.credit_account_id, "credit_account_id_must_not_be_empty"),
        (lambda: t.debit_account_id == t.credit_account_id, "accounts_must_be_different"),
        (lambda: not a, "amount_must_not_be_zero"),
        (lambda: a < 0, "amount_must_be_positive"),
        (lambda: a > MAX_AMOUNT, "overflows_debits"),
        (lambda: dr is None, "debit_account_not_found"),
        (lambda: cr is None, "credit_account_not_found"),
        (lambda: dr.asset != cr.asset or (t.asset is not None and t.asset != dr.asset), "asset_mismatch"),
        (lambda: max(dr.dp, dr.dpo, dr.dp + dr.dpo) + a > MAX_AMOUNT, "overflows_debits"),
        (lambda: max(cr.cp, cr.cpo, cr.cp + cr.cpo) + a > MAX_AMOUNT, "overflows_credits"),
        (lambda: dr.flags & 1 and dr.dp + dr.dpo + a > dr.cpo, "exceeds_credits"),
        (lambda: cr.flags & 2 and cr.cp + cr.cpo + a > cr.dpo, "exceeds_debits"),
    ]
    for refused, code in rules:
        if refused():
            return code
    return "ok"


def mostly(valid: list[Any], invalid: list[Any]) -> st.SearchStrategy[Any]:
    """A valid value nine times in ten: every refusal is reached behind all the checks before it."""
    return st.sampled_from(valid * (9 * max(len(invalid), 1)) + invalid)


accounts_st = st.fixed_dictionaries({
    name: st.builds(_Acc, mostly(["USD"], ["EUR"]), st.integers(0, 3),
                    mostly([0, 10], [BIG]), mostly([0, 10], [BIG]), mostly([0, 10], [BIG]), mostly([0, 10], [BIG]))
    for name in ("a", "b", "c")
})


transfer_st = st.builds(
    TransferIn,
    id=mostly(["t1"], ["", "x" * 129]),
    debit_account_id=mostly(["a", "b"], [None, "", "zz"]),
    credit_account_id=mostly(["a", "c"], [None, "", "zz"]),
    amount=mostly([1, 7], [None, 0, -1, MAX_AMOUNT + 1]),
    asset=mostly([None, "USD"], ["EUR"]),
    pending_id=mostly([None, ""], ["p"]),
    flags=mostly([0, 1, TransferFlags.PENDING, TransferFlags.NONE], [3, 16]),
    timeout_s=mostly([0, 5], [-1, 2**31, 10**9]),
    code=mostly(["", "c"], ["k" * 65]),
    reference=mostly([None, "r"], ["r" * 129]),
)


@settings(max_examples=500)
@given(accounts_st, transfer_st, st.booleans())
def test_a_new_transfers_result_code_follows_the_reference_precedence(
    accounts: dict[str, _Acc], t: TransferIn, linked: bool,
) -> None:
    before = {k: (v.dp, v.dpo, v.cp, v.cpo) for k, v in accounts.items()}
    batch = _Batch(None, "tenant", NOW, accounts, {}, {})  # type: ignore[arg-type]
    batch.undo = [] if linked else None
    try:
        row = batch.apply_one(t, False)
    except _Fail as f:
        assert f.code == reference(t, {k: _Acc(v.asset, v.flags, *before[k]) for k, v in accounts.items()})
        assert {k: (v.dp, v.dpo, v.cp, v.cpo) for k, v in accounts.items()} == before
        return
    assert reference(t, {k: _Acc(v.asset, v.flags, *before[k]) for k, v in accounts.items()}) == "ok"
    assert isinstance(row, list) and batch.new[t.id] is row
    assert row == ["tenant", t.id, 0, t.debit_account_id, t.credit_account_id, t.amount,
                   accounts[t.debit_account_id].asset, t.pending_id, int(t.flags), t.timeout_s,  # type: ignore[index]
                   t.code or "", t.reference, None, 0, ""]
    pending = int(t.flags) & 1
    dr, cr = accounts[t.debit_account_id], accounts[t.credit_account_id]  # type: ignore[index]
    assert (dr.dp, dr.dpo) == (before[t.debit_account_id][0] + t.amount * pending,  # type: ignore[index, operator]
                               before[t.debit_account_id][1] + t.amount * (1 - pending))  # type: ignore[index, operator]
    assert (cr.cp, cr.cpo) == (before[t.credit_account_id][2] + t.amount * pending,  # type: ignore[index, operator]
                               before[t.credit_account_id][3] + t.amount * (1 - pending))  # type: ignore[index, operator]
    assert (t.id in batch.holds) == bool(pending)
    if linked:
        batch.rollback(batch.undo)  # type: ignore[arg-type]
        assert {k: (v.dp, v.dpo, v.cp, v.cpo) for k, v in accounts.items()} == before
        assert not batch.new and not batch.holds
