"""The ledger against a plain-Python model, driven by random batches.

Hypothesis applies random group commits — several callers' segments at once,
with pendings, full and partial posts, voids, expiries (clock moves forward and
the sweeper's system void releases the hold), linked chains (some left open),
duplicate and conflicting ids, accounts with either or both balance limits —
through `LedgerEngine.apply` with real commits, and checks after every step:

- every result code equals the model's prediction,
- stored balances equal the model's,
- each account's balances equal the sums of its stored transfers and open holds,
- Σ debits = Σ credits per asset, posted and pending,
- no balance limit is ever broken,
- `seq` is gap-free, timestamps strictly increase, the hash chain recomputes.

Each example uses a fresh tenant, so examples never see each other.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.db.pgpipe import PgPipe
from meterline.ledger.chain import GENESIS_HASH, chain_hash
from meterline.ledger.engine import engine
from meterline.ledger.models import Account, Hold, LedgerHead, Transfer
from meterline.ledger.service import ledger_service
from meterline.ledger.types import AccountFlags, Segment, TransferFlags, TransferIn
from meterline.ledger.verify import verify_ledger
from tests.factories import make_account, make_tenant

PENDING = int(TransferFlags.PENDING)
POST = int(TransferFlags.POST_PENDING)
VOID = int(TransferFlags.VOID_PENDING)
LINKED = int(TransferFlags.LINKED)
DMNEC = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
CMNED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
SECOND = 1_000_000_000

ACCOUNTS = {
    "src": ("USD", 0),  # where money comes from: no limit
    "w1": ("USD", DMNEC),  # customer wallets: may not go below zero
    "w2": ("USD", DMNEC),
    "cap": ("USD", CMNED),  # may only be credited what was debited
    "both": ("USD", DMNEC | CMNED),
    "m": ("USD", 0),
    "sol": ("SOL", 0),
    "solw": ("SOL", DMNEC),
}
ACCOUNT_IDS = [*ACCOUNTS, "ghost"]  # "ghost" does not exist


class Fail(Exception):
    def __init__(self, code: str) -> None:
        self.code = code


@dataclass
class ModelHold:
    dr: str
    cr: str
    amount: int
    asset: str
    expires_at: int | None
    state: str = "pending"
    posted_amount: int | None = None


@dataclass
class Model:
    """The rules of DESIGN.md §4, written as simply as possible."""

    balances: dict[str, list[int]] = field(default_factory=lambda: {a: [0, 0, 0, 0] for a in ACCOUNTS})
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    holds: dict[str, ModelHold] = field(default_factory=dict)
    # Ledger time: a batch's accepted transfers are stamped from max(now, last + 1) up, one
    # nanosecond apart, and each is judged (a hold's expiry) and dated at its own stamp.
    last_ts: int = 0
    next_ts: int = 0

    def apply(self, segments: list[Segment], now: int) -> list[list[str]]:
        self.next_ts = base = max(now, self.last_ts + 1)
        results = [self._segment(seg, now) for seg in segments]
        if self.next_ts > base:
            self.last_ts = self.next_ts - 1
        return results

    def _segment(self, seg: Segment, now: int) -> list[str]:
        results: list[str] = []
        chain: list[TransferIn] = []
        for i, t in enumerate(seg.transfers):
            chain.append(t)
            if t.flags & LINKED and i < len(seg.transfers) - 1:
                continue
            results.extend(self._chain(chain, seg.system, now))
            chain = []
        return results

    def _chain(self, chain: list[TransferIn], system: bool, now: int) -> list[str]:
        linked = len(chain) > 1 or bool(chain[-1].flags & LINKED)
        saved = copy.deepcopy((self.balances, self.stored, self.holds, self.next_ts))
        codes: list[str] = []
        for pos, t in enumerate(chain):
            try:
                codes.append(self._one(t, system, now))
            except Fail as f:
                self.balances, self.stored, self.holds, self.next_ts = saved
                return ["linked_event_failed"] * pos + [f.code] + ["linked_event_failed"] * (len(chain) - pos - 1)
            if linked and pos == len(chain) - 1 and t.flags & LINKED:
                self.balances, self.stored, self.holds, self.next_ts = saved
                return ["linked_event_failed"] * pos + ["linked_event_chain_open"]
        return codes

    def _one(self, t: TransferIn, system: bool, now: int) -> str:
        prior = self.stored.get(t.id)
        if prior is not None:
            return self._compare(t, prior)
        if t.flags & (POST | VOID):
            return self._resolve(t, system, now)
        return self._create(t, now)

    @staticmethod
    def _compare(t: TransferIn, prior: dict[str, Any]) -> str:
        checks = [
            ("flags", t.flags, "exists_with_different_flags"),
            ("pending_id", t.pending_id, "exists_with_different_pending_id"),
            ("dr", t.debit_account_id, "exists_with_different_debit_account_id"),
            ("cr", t.credit_account_id, "exists_with_different_credit_account_id"),
            ("amount", t.amount, "exists_with_different_amount"),
            ("asset", t.asset, "exists_with_different_asset"),
            ("timeout_s", t.timeout_s, "exists_with_different_timeout"),
            ("code", t.code, "exists_with_different_code"),
            ("reference", t.reference, "idempotency_conflict"),
        ]
        optional = {"dr", "cr", "amount", "asset"}  # omitted in a resubmission = not compared
        for key, value, code in checks:
            if value is None and key in optional:
                continue
            if value != prior[key]:
                raise Fail(code)
        return "exists"

    def _create(self, t: TransferIn, now: int) -> str:
        if t.debit_account_id == t.credit_account_id:
            raise Fail("accounts_must_be_different")
        if not t.amount:
            raise Fail("amount_must_not_be_zero")
        if t.debit_account_id not in ACCOUNTS:
            raise Fail("debit_account_not_found")
        if t.credit_account_id not in ACCOUNTS:
            raise Fail("credit_account_not_found")
        dr_asset, dr_flags = ACCOUNTS[t.debit_account_id]
        cr_asset, cr_flags = ACCOUNTS[t.credit_account_id]
        if dr_asset != cr_asset or (t.asset is not None and t.asset != dr_asset):
            raise Fail("asset_mismatch")
        dr, cr, a = self.balances[t.debit_account_id], self.balances[t.credit_account_id], t.amount
        if dr_flags & DMNEC and dr[0] + dr[1] + a > dr[3]:
            raise Fail("exceeds_credits")
        if cr_flags & CMNED and cr[2] + cr[3] + a > cr[1]:
            raise Fail("exceeds_debits")
        if t.flags & PENDING:
            dr[0] += a
            cr[2] += a
            expires = self.next_ts + t.timeout_s * SECOND if t.timeout_s else None
            self.holds[t.id] = ModelHold(t.debit_account_id, t.credit_account_id, a, dr_asset, expires)
        else:
            dr[1] += a
            cr[3] += a
        self._store(t, t.debit_account_id, t.credit_account_id, a, dr_asset)
        return "ok"

    def _resolve(self, t: TransferIn, system: bool, now: int) -> str:
        assert t.pending_id is not None
        hold = self.holds.get(t.pending_id)
        if hold is None:
            raise Fail("pending_transfer_not_pending" if t.pending_id in self.stored else "pending_transfer_not_found")
        if hold.state != "pending":
            raise Fail({"posted": "pending_transfer_already_posted", "voided": "pending_transfer_already_voided",
                        "expired": "pending_transfer_expired"}[hold.state])
        if not system and hold.expires_at is not None and self.next_ts >= hold.expires_at:
            raise Fail("pending_transfer_expired")
        if t.flags & POST:
            amount = hold.amount if t.amount is None else t.amount
            if amount == 0:
                raise Fail("amount_must_not_be_zero")
            if amount > hold.amount:
                raise Fail("exceeds_pending_transfer_amount")
        else:
            amount = hold.amount
            if t.amount is not None and t.amount != hold.amount:
                raise Fail("pending_transfer_has_different_amount")
        dr, cr = self.balances[hold.dr], self.balances[hold.cr]
        dr[0] -= hold.amount
        cr[2] -= hold.amount
        if t.flags & POST:
            dr[1] += amount
            cr[3] += amount
            hold.state, hold.posted_amount = "posted", amount
        else:
            hold.state = "expired" if system and t.code == "expired" else "voided"
        self._store(t, hold.dr, hold.cr, amount, hold.asset)
        return "ok"

    def _store(self, t: TransferIn, dr: str, cr: str, amount: int, asset: str) -> None:
        self.next_ts += 1
        self.stored[t.id] = {"flags": t.flags, "pending_id": t.pending_id, "dr": dr, "cr": cr, "amount": amount,
                             "asset": asset, "timeout_s": t.timeout_s, "code": t.code, "reference": t.reference}


def _machine(db: Database) -> type[RuleBasedStateMachine]:
    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.tenant = f"sm-{uuid.uuid4().hex[:12]}"
            self.clock = FrozenClock()
            self.model = Model()
            self.history: list[TransferIn] = []
            self.counter = 0
            with db.session() as s:
                make_tenant(s, self.tenant, self.clock)
                for acc_id, (asset, flags) in ACCOUNTS.items():
                    make_account(s, self.tenant, self.clock, id=acc_id, asset=asset, flags=flags)

        def _apply(self, segments: list[Segment]) -> None:
            now = self.clock.now_ns()
            expected = self.model.apply(segments, now)
            with db.write_connection() as conn:
                # On PostgreSQL the writes go as the group-commit writer sends them (a libpq
                # pipeline ending in COMMIT): its own statements, not the generic ones.
                pipe = None if db.is_sqlite else PgPipe(conn)
                engine.apply(conn, self.tenant, segments, now, None, pipe)
                if pipe is not None:
                    pipe.run(commit=True)
            actual = [[r.result for r in seg.results] for seg in segments]
            assert actual == expected, "\n".join(
                f"{t}: engine {r.result}, model {e}"
                for seg, exp in zip(segments, expected, strict=True)
                for t, r, e in zip(seg.transfers, seg.results, exp, strict=True)
            )
            for seg in segments:
                for t, r in zip(seg.transfers, seg.results, strict=True):
                    assert r.id == t.id and (r.transfer is not None) == r.ok
                    if r.ok:
                        stored = self.model.stored[t.id]
                        assert (r.transfer.debit_account_id, r.transfer.credit_account_id, r.transfer.amount) == (
                            stored["dr"], stored["cr"], stored["amount"])
                self.history.extend(seg.transfers)
                for r in seg.results:
                    event(r.result)  # --hypothesis-show-statistics shows which codes were reached

        def _fresh_id(self) -> str:
            self.counter += 1
            return f"t{self.counter}"

        def _transfer(self, data: st.DataObject) -> TransferIn:
            kind = data.draw(st.sampled_from(["new", "new", "new", "pending", "pending", "post", "void", "dup"]))
            flags = POST if kind == "post" else VOID
            if kind in ("post", "void"):
                open_holds = sorted(h for h, m in self.model.holds.items() if m.state == "pending")
                where = data.draw(st.integers(0, 19))
                if open_holds and where < 15:
                    pid = data.draw(st.sampled_from(open_holds))
                    full = self.model.holds[pid].amount
                    amount = data.draw(st.sampled_from([None, None, full, full + 1, 0, max(1, full // 3)]))
                    return TransferIn(self._fresh_id(), pending_id=pid, amount=amount, flags=flags)
                if self.model.holds and where < 18:  # already posted, voided or expired
                    pid = data.draw(st.sampled_from(sorted(self.model.holds)))
                    return TransferIn(self._fresh_id(), pending_id=pid, flags=flags)
                not_pending = sorted(set(self.model.stored) - set(self.model.holds))
                pid = data.draw(st.sampled_from([*not_pending, "nope"]))
                return TransferIn(self._fresh_id(), pending_id=pid, flags=flags)
            if kind == "dup" and self.history:
                orig = data.draw(st.sampled_from(self.history))
                change = data.draw(st.sampled_from(["same", "same", "same", "amount", "reference", "code"]))
                if change == "amount":
                    return replace(orig, amount=(orig.amount or 0) + 1)
                if change == "reference":
                    return replace(orig, reference="other")
                if change == "code":
                    return replace(orig, code="other")
                return replace(orig)
            dr = data.draw(st.sampled_from(["src", "src", "w1", "w1", "w2", "w2", "m", "cap", "both", "sol", "solw",
                                            "ghost"]))
            asset = ACCOUNTS.get(dr, ("USD", 0))[0]
            if data.draw(st.integers(0, 9)):
                cr = data.draw(st.sampled_from([a for a, (x, _) in ACCOUNTS.items() if x == asset and a != dr]))
            else:
                cr = data.draw(st.sampled_from(ACCOUNT_IDS))  # maybe missing, same or another asset
            if data.draw(st.integers(0, 9)):
                amount: int | None = data.draw(st.integers(1, 150))
            else:
                amount = data.draw(st.sampled_from([0, None, 400, 1000]))
            pending = kind == "pending"
            return TransferIn(
                self._fresh_id(), dr, cr, amount,
                asset=data.draw(st.sampled_from([None, None, None, asset, "SOL" if asset == "USD" else "USD"])),
                flags=PENDING if pending else 0,
                timeout_s=data.draw(st.sampled_from([0, 1, 5, 10])) if pending else 0,
                reference=data.draw(st.sampled_from([None, "ref"])),
            )

        @initialize()
        def fund_wallets(self) -> None:
            self._apply([Segment([TransferIn("fund-w1", "src", "w1", 500), TransferIn("fund-w2", "src", "w2", 500),
                                  TransferIn("fund-cap", "cap", "m", 300), TransferIn("fund-solw", "sol", "solw", 500)])])

        @rule(data=st.data())
        def group_commit(self, data: st.DataObject) -> None:
            segments = []
            for _ in range(data.draw(st.integers(1, 3), label="segments")):
                transfers = []
                for _ in range(data.draw(st.integers(1, 4), label="transfers")):
                    t = self._transfer(data)
                    linked = data.draw(st.integers(0, 3)) == 0
                    t.flags = (t.flags & ~LINKED) | (LINKED if linked else 0)
                    transfers.append(t)
                segments.append(Segment(transfers))
            self._apply(segments)

        # Whole seconds like the timeouts, so holds are often tried exactly at expires_at;
        # a nanosecond either side now and then.
        @rule(seconds=st.sampled_from([1, 1, 4, 5, 5, 10]), ns=st.sampled_from([0, 0, 0, 0, 1, -1]))
        def advance(self, seconds: int, ns: int) -> None:
            self.clock.advance(seconds, ns=ns)

        def _expiring(self) -> list[str]:
            now = self.clock.now_ns()
            return sorted(pid for pid, h in self.model.holds.items()
                          if h.state == "pending" and h.expires_at is not None and h.expires_at > now)

        @precondition(lambda self: self._expiring())
        @rule(data=st.data())
        def resolve_at_the_deadline(self, data: st.DataObject) -> None:
            """Post or void a hold a nanosecond before, exactly at, or just after its expiry."""
            pid = data.draw(st.sampled_from(self._expiring()))
            expires_at = self.model.holds[pid].expires_at
            assert expires_at is not None
            self.clock.set(expires_at + data.draw(st.sampled_from([-1, 0, 1])))
            flags = data.draw(st.sampled_from([POST, VOID]))
            self._apply([Segment([TransferIn(self._fresh_id(), pending_id=pid, flags=flags)])])

        @rule()
        def sweep(self) -> None:
            """What the sweeper does: find expired holds, system-void them with reason `expired`."""
            now = self.clock.now_ns()
            with db.session(write=False) as s:
                due = sorted(h.transfer_id for h in ledger_service.expired_holds(s, now, limit=100_000)
                             if h.tenant_id == self.tenant)
            expected = sorted(pid for pid, h in self.model.holds.items()
                              if h.state == "pending" and h.expires_at is not None and h.expires_at <= now)
            assert due == expected
            if due:
                self._apply([Segment([TransferIn(f"expire:{pid}", pending_id=pid, flags=VOID, code="expired")
                                      for pid in due], system=True)])
                assert all(self.model.holds[pid].state == "expired" for pid in due)

        @invariant()
        def ledger_is_consistent(self) -> None:
            with db.session(write=False) as s:
                accounts = {a.id: a for a in s.scalars(select(Account).where(Account.tenant_id == self.tenant))}
                transfers = list(s.scalars(select(Transfer).where(Transfer.tenant_id == self.tenant)
                                           .order_by(Transfer.seq)))
                holds = {h.transfer_id: h for h in s.scalars(select(Hold).where(Hold.tenant_id == self.tenant))}
                head = s.get(LedgerHead, self.tenant)

            stored = {a: [acc.debits_pending, acc.debits_posted, acc.credits_pending, acc.credits_posted]
                      for a, acc in accounts.items()}
            assert stored == self.model.balances

            # Balances are the sums of transfers (posted) and of open holds (pending).
            sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
            for t in transfers:
                if not t.flags & (PENDING | VOID):
                    sums[t.debit_account_id][1] += t.amount
                    sums[t.credit_account_id][3] += t.amount
            for h in holds.values():
                if h.state == "pending":
                    sums[h.debit_account_id][0] += h.amount
                    sums[h.credit_account_id][2] += h.amount
            for a, b in stored.items():
                assert b == sums[a], a

            per_asset: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
            for acc in accounts.values():
                totals = per_asset[acc.asset]
                for i, v in enumerate(stored[acc.id]):
                    totals[i] += v
            for asset, (dp, dpo, cp, cpo) in per_asset.items():
                assert (dp, dpo) == (cp, cpo), asset

            for acc in accounts.values():
                dp, dpo, cp, cpo = stored[acc.id]
                assert min(dp, dpo, cp, cpo) >= 0
                if acc.flags & DMNEC:
                    assert dp + dpo <= cpo, acc.id
                if acc.flags & CMNED:
                    assert cp + cpo <= dpo, acc.id

            assert {h: m.state for h, m in self.model.holds.items()} == {h: x.state for h, x in holds.items()}
            for hid, h in holds.items():
                assert h.posted_amount == self.model.holds[hid].posted_amount
                assert h.expires_at == self.model.holds[hid].expires_at

            assert {t.id for t in transfers} == set(self.model.stored)
            assert [t.seq for t in transfers] == list(range(1, len(transfers) + 1))
            stamps = [t.timestamp for t in transfers]
            assert all(x < y for x, y in itertools.pairwise(stamps))
            prev = GENESIS_HASH
            for t in transfers:
                row = {c: getattr(t, c) for c in ("tenant_id", "id", "seq", "debit_account_id", "credit_account_id",
                                                  "amount", "asset", "pending_id", "flags", "timeout_s", "code",
                                                  "reference", "timestamp")}
                assert t.hash == chain_hash(prev, row | {"metadata": t.metadata_}), t.id
                prev = t.hash
            if transfers:
                assert head is not None and (head.last_seq, head.last_hash, head.last_timestamp) == (
                    len(transfers), prev, stamps[-1])
            # And what `meterline ledger verify` checks besides (each hold's resolution among them).
            report = verify_ledger(db, self.tenant)
            assert report.ok, report

    return LedgerMachine


def test_ledger_matches_the_model(db):
    run_state_machine_as_test(
        _machine(db),
        settings=settings(max_examples=50, stateful_step_count=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
    )
