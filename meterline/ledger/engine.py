"""The posting engine: validate a batch in memory, then write it set-based.

One call applies any number of *segments* (each caller's batch) for one tenant
inside the caller's transaction:

1. lock the tenant's ledger head (the chain's single-writer point),
2. load every account, pending hold and prior transfer the batch names — one
   query each, whatever the batch size,
3. validate and apply each transfer in order against in-memory copies, with
   linked chains rolled back as a unit (chains never cross segments),
4. give successes their `seq`, strictly increasing `timestamp` and chained
   `hash`, then insert them with one multi-row statement, write each touched
   account and hold once, and move the head.

Nothing here commits; the batcher or the request edge owns the transaction.

A long-lived writer (the batcher) may pass a `WriterCache`: what it knew after its
own last commit — each tenant's head and the balances of the accounts it has read.
A batch of new transfers (no post/void) over cached accounts then skips step 2:
it validates against the cache and writes straight away. That is safe because of
one guard every batch's head update carries — the stored head must still be the
one this batch was built on, or the statement fails (NOT NULL violation) and the
whole transaction rolls back (the batcher then reruns it the ordinary way). A
balance only changes together with its tenant's head, under the head's lock, so
an unchanged head means unchanged balances; a resubmitted id fails the
transfers primary key the same way and is answered `exists` by the rerun. A
batch with any refusal is decided again after reading, in the same call: an id
stored earlier answers `exists` before any validation could refuse it.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection

from meterline.db.pgpipe import PgPipe, int_array, integer, rows, text, text_array
from meterline.db.sqlite_offload import StatementRunner, values_statements
from meterline.ledger.chain import GENESIS_HASH, seal
from meterline.ledger.types import (
    CODE_EXPIRED,
    SUCCESS,
    AccountFlags,
    HoldState,
    Segment,
    StoredTransfer,
    TransferFlags,
    TransferIn,
    TransferResult,
)
from meterline.money import MAX_AMOUNT

# Plain ints: IntFlag arithmetic costs microseconds per operation on the hot path.
_PENDING = int(TransferFlags.PENDING)
_POST = int(TransferFlags.POST_PENDING)
_VOID = int(TransferFlags.VOID_PENDING)
_LINKED = int(TransferFlags.LINKED)
_KNOWN_FLAGS = _PENDING | _POST | _VOID | _LINKED
_DMNEC = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CMNED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
_MAX_ID = 128
_MAX_TIMEOUT_S = 2**31 - 1
_CHUNK = 900  # stays under every driver's bound-parameter limit
_COPY_MIN_ROWS = 32  # PostgreSQL: below this, a pipelined INSERT beats COPY's extra round trips
_PG_VALUES_MAX_ACCOUNTS = 64  # PostgreSQL: up to this, the accounts UPDATE binds scalars (a statement per size)
_OFFLOAD_MIN_ROWS = 128  # SQLite: below this, handing statements to a helper thread costs more than it hides

_TRANSFER_FIELDS = (
    "tenant_id", "id", "seq", "debit_account_id", "credit_account_id", "amount", "asset", "pending_id",
    "flags", "timeout_s", "code", "reference", "metadata", "timestamp", "hash",
)
_TRANSFER_COLS = ", ".join(_TRANSFER_FIELDS)
_dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode


# PostgreSQL writes. Each that must touch an exact number of rows carries its own guard:
# the statement fails (an integer cast of a message) when the count is wrong, because
# the batcher's COMMIT travels in the same pipeline — nothing can be checked on the
# client between the write and the commit. The cast's text depends on count(*), so the
# planner cannot fold it into an error at plan time.
def _guarded(write: str, expected: str, what: str) -> str:
    return (f"WITH w AS ({write} RETURNING 1) SELECT CASE WHEN count(*) = {expected} THEN 1 "
            f"ELSE ('ledger guard: ' || count(*) || ' {what}, expected ' || {expected})::int END FROM w")


# A small PostgreSQL batch binds one scalar parameter per value in a VALUES list, one
# prepared statement per row count: for the few rows of a group commit of single transfers
# the server then parses no array literals and runs no unnest() (array_in was 3 % of the
# backend's CPU). Alternating in one process, 8 clients: +1-3 % spread, +5 % hot.
_PG_TRANSFER_CASTS = ("text", "text", "bigint", "text", "text", "bigint", "text", "text", "int", "int", "text",
                      "text", "json", "bigint", "text")


@lru_cache(maxsize=_COPY_MIN_ROWS)
def _pg_insert_transfers(n: int) -> str:
    width = len(_PG_TRANSFER_CASTS)
    rows = ", ".join("(" + ", ".join(f"${r * width + c + 1}::{cast}" for c, cast in enumerate(_PG_TRANSFER_CASTS))
                     + ")" for r in range(n))
    return f"INSERT INTO transfers ({_TRANSFER_COLS}) VALUES {rows}"


@lru_cache(maxsize=_PG_VALUES_MAX_ACCOUNTS)
def _pg_write_accounts(n: int) -> str:
    rows = ", ".join(f"(${r * 5 + 1}::text, ${r * 5 + 2}::bigint, ${r * 5 + 3}::bigint, ${r * 5 + 4}::bigint, "
                     f"${r * 5 + 5}::bigint)" for r in range(n))
    return _guarded(
        "UPDATE accounts AS a SET debits_pending = v.dp, debits_posted = v.dpo, credits_pending = v.cp, "
        f"credits_posted = v.cpo FROM (VALUES {rows}) AS v(id, dp, dpo, cp, cpo) "
        f"WHERE a.tenant_id = ${n * 5 + 1}::text AND a.id = v.id",
        str(n), "accounts updated")


@dataclass(slots=True)
class _Acc:
    asset: str
    flags: int
    dp: int
    dpo: int
    cp: int
    cpo: int
    dirty: bool = False


@dataclass(slots=True)
class _Hold:
    transfer_id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    asset: str
    state: str
    created_at: int
    expires_at: int | None
    resolved_by: str | None = None
    resolved_at: int | None = None
    posted_amount: int | None = None
    is_new: bool = False
    dirty: bool = False


class WriterCache:
    """One writer's knowledge of tenants' heads and balances as of its last commit — and of
    the batches it has sent since, whose commits are still in flight.

    The owner calls `begin()` before applying each batch, and once per batch, oldest first,
    `commit()` after its transaction committed or `abort()` after it failed. A writer may
    keep more than one batch in flight (the batcher on PostgreSQL sends the next one before
    the previous commit is back): a batch is then built on the state its predecessors will
    leave — `head()` is the newest head staged, and the cached account objects carry every
    sent batch's changes (a batch built on the cache changes them in place; accounts a batch
    read are merged in when staged). That is safe because every batch's head guard names the
    head it was built on: if a predecessor fails, the batch behind it fails too, and `abort()`
    drops everything — heads, balances, every batch still in flight — so balances that did
    not commit never outlive their batch.
    """

    def __init__(self, max_accounts: int = 200_000) -> None:
        self.max_accounts = max_accounts
        self._heads: dict[str, dict[str, Any]] = {}  # committed
        self._accounts: dict[str, dict[str, _Acc]] = {}
        # Per batch sent and not yet landed, oldest first: the heads it moves and whether it
        # relied on the cache.
        self._flights: deque[tuple[dict[str, dict[str, Any]], list[bool]]] = deque()
        self._size = 0

    # -- what the engine uses ---------------------------------------------------------------
    def head(self, tenant_id: str) -> dict[str, Any] | None:
        for heads, _ in reversed(self._flights):
            head = heads.get(tenant_id)
            if head is not None:
                return head
        return self._heads.get(tenant_id)

    def accounts(self, tenant_id: str) -> dict[str, _Acc]:
        return self._accounts.get(tenant_id) or {}

    @property
    def optimistic(self) -> bool:
        """The newest batch relied on the cache (its failure may be only a stale cache's)."""
        return bool(self._flights) and self._flights[-1][1][0]

    @optimistic.setter
    def optimistic(self, value: bool) -> None:
        if self._flights:
            self._flights[-1][1][0] = value

    def stage(self, tenant_id: str, before: dict[str, Any], after: dict[str, Any], accounts: dict[str, _Acc]) -> None:
        """The batch being built moves the tenant's head from `before` to `after`; `accounts`
        are the balances it read (the cached objects it used were changed in place)."""
        if not self._flights:
            self.begin()
        cached = self._accounts.get(tenant_id)
        if cached is None or self.head(tenant_id) != before:
            # Someone else moved the head since we last looked: what we hold is stale.
            self._size -= len(cached or ())
            cached = self._accounts[tenant_id] = {}
        self._size -= len(cached)
        cached.update(accounts)
        self._size += len(cached)
        self._flights[-1][0][tenant_id] = after

    def forget(self, tenant_id: str) -> None:
        """Drop one tenant's head and balances (they may no longer be the committed ones),
        also from the batches in flight: their commits must not bring it back."""
        self._heads.pop(tenant_id, None)
        self._size -= len(self._accounts.pop(tenant_id, {}))
        for heads, _ in self._flights:
            heads.pop(tenant_id, None)

    # -- what the owner calls ---------------------------------------------------------------
    def begin(self) -> None:
        """A batch starts: what it stages lands with its own `commit()` or `abort()`."""
        self._flights.append(({}, [False]))

    def commit(self) -> None:
        """The oldest batch in flight committed: its heads become the committed ones."""
        if self._flights:
            heads, _ = self._flights.popleft()
            self._heads.update(heads)
        if self._size > self.max_accounts:
            self.clear()

    def abort(self) -> bool:
        """The oldest batch in flight failed: forget everything (balances it and any later
        batch changed in place are not the committed ones). Returns whether it relied on
        the cache."""
        optimistic = bool(self._flights) and self._flights.popleft()[1][0]
        self.clear()
        return optimistic

    def clear(self) -> None:
        """Forget every head and balance; batches still in flight stay counted (each will
        still land), but whatever they staged is dropped."""
        self._heads.clear()
        self._accounts.clear()
        for heads, flags in self._flights:
            heads.clear()
            flags[0] = False
        self._size = 0


class _Fail(Exception):
    def __init__(self, code: str) -> None:
        self.code = code


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class _Batch:
    """In-memory state for one apply() call."""

    def __init__(
        self,
        conn: Connection,
        tenant_id: str,
        now_ns: int,
        accounts: dict[str, _Acc],
        holds: dict[str, _Hold],
        existing: dict[str, dict[str, Any]],
    ) -> None:
        self.conn = conn
        self.tenant_id = tenant_id
        self.now_ns = now_ns
        self.accounts = accounts
        self.holds = holds
        self.existing = existing  # transfers stored before this batch, by id
        self.new: dict[str, list[Any]] = {}  # accepted in this batch, by id: rows in _TRANSFER_FIELDS order
        self.undo: list[tuple[str, Any, Any]] | None = None

    # -- undo log for linked chains -------------------------------------------------
    def _save_acc(self, acc_id: str, acc: _Acc) -> None:
        if self.undo is not None:
            self.undo.append(("acc", acc_id, (acc.dp, acc.dpo, acc.cp, acc.cpo, acc.dirty)))

    def _save_hold(self, hold: _Hold) -> None:
        if self.undo is not None:
            self.undo.append(
                ("hold", hold.transfer_id, (hold.state, hold.resolved_by, hold.resolved_at,
                                            hold.posted_amount, hold.dirty))
            )

    def rollback(self, undo: list[tuple[str, Any, Any]]) -> None:
        for kind, key, old in reversed(undo):
            if kind == "acc":
                acc = self.accounts[key]
                acc.dp, acc.dpo, acc.cp, acc.cpo, acc.dirty = old
            elif kind == "hold":
                hold = self.holds[key]
                hold.state, hold.resolved_by, hold.resolved_at, hold.posted_amount, hold.dirty = old
            elif kind == "newhold":
                del self.holds[key]
            elif kind == "new":
                del self.new[key]

    # -- one transfer ---------------------------------------------------------------
    def apply_one(self, t: TransferIn, system: bool) -> list[Any] | str:
        """Apply `t` in memory. Returns the stored row (a list in _TRANSFER_FIELDS order),
        "exists", or raises _Fail.

        A new transfer's checks are written out here, on locals, rather than in a
        `_post_new` of their own: a call and the repeated attribute reads were a visible
        share of the ~3 µs its validation cost. The order of the checks is the order of
        the result codes' precedence — keep it.
        """
        tid = t.id
        if not tid or len(tid) > _MAX_ID:
            raise _Fail("id_must_not_be_empty" if not tid else "id_too_long")
        flags = t.flags
        if type(flags) is not int:
            flags = int(flags)
        prior = self.new.get(tid) or self.existing.get(tid)
        if prior is not None:
            return self._compare_existing(t, prior)
        kind = flags & (_PENDING | _POST | _VOID)
        if kind not in (0, _PENDING, _POST, _VOID):
            raise _Fail("flags_are_mutually_exclusive")
        if flags & ~_KNOWN_FLAGS:
            raise _Fail("reserved_flag")
        timeout_s = t.timeout_s
        if timeout_s < 0:
            raise _Fail("timeout_must_not_be_negative")
        if t.code is not None and len(t.code) > 64:
            raise _Fail("code_too_long")
        if t.reference is not None and len(t.reference) > 128:
            raise _Fail("reference_too_long")
        if kind & (_POST | _VOID):
            return self._resolve_pending(t, flags, system)
        # A new transfer (plain or pending).
        if t.pending_id:
            raise _Fail("pending_id_must_be_empty")
        if timeout_s:
            if not flags & _PENDING:
                raise _Fail("timeout_reserved_for_pending_transfer")
            # timeout_s is a 32-bit column and expires_at a 64-bit one: a larger value would
            # fail the whole batch's INSERT instead of this one transfer.
            if timeout_s > _MAX_TIMEOUT_S or self.now_ns + len(self.new) + timeout_s * 1_000_000_000 > MAX_AMOUNT:
                raise _Fail("overflows_timeout")
        dr_id = t.debit_account_id
        cr_id = t.credit_account_id
        if not dr_id:
            raise _Fail("debit_account_id_must_not_be_empty")
        if not cr_id:
            raise _Fail("credit_account_id_must_not_be_empty")
        if dr_id == cr_id:
            raise _Fail("accounts_must_be_different")
        a = t.amount
        if a is None or a == 0:
            raise _Fail("amount_must_not_be_zero")
        if a < 0:
            raise _Fail("amount_must_be_positive")
        if a > MAX_AMOUNT:
            raise _Fail("overflows_debits")
        accounts = self.accounts
        dr = accounts.get(dr_id)
        if dr is None:
            raise _Fail("debit_account_not_found")
        cr = accounts.get(cr_id)
        if cr is None:
            raise _Fail("credit_account_not_found")
        asset = dr.asset
        if cr.asset != asset:
            raise _Fail("asset_mismatch")
        if t.asset is not None and t.asset != asset:
            raise _Fail("asset_mismatch")
        if dr.dp + a > MAX_AMOUNT or dr.dpo + a > MAX_AMOUNT or dr.dp + dr.dpo + a > MAX_AMOUNT:
            raise _Fail("overflows_debits")
        if cr.cp + a > MAX_AMOUNT or cr.cpo + a > MAX_AMOUNT or cr.cp + cr.cpo + a > MAX_AMOUNT:
            raise _Fail("overflows_credits")
        # Balance limits count pending amounts too, so holds can never overdraw.
        if dr.flags & _DMNEC and dr.dp + dr.dpo + a > dr.cpo:
            raise _Fail("exceeds_credits")
        if cr.flags & _CMNED and cr.cp + cr.cpo + a > cr.dpo:
            raise _Fail("exceeds_debits")
        undo = self.undo
        if undo is not None:  # inside a linked chain only
            undo.append(("acc", dr_id, (dr.dp, dr.dpo, dr.cp, dr.cpo, dr.dirty)))
            undo.append(("acc", cr_id, (cr.dp, cr.dpo, cr.cp, cr.cpo, cr.dirty)))
        if flags & _PENDING:
            dr.dp += a
            cr.cp += a
            now_ns = self.now_ns + len(self.new)  # this transfer's own ledger timestamp
            self.holds[tid] = _Hold(
                tid, dr_id, cr_id, a, asset, HoldState.PENDING, now_ns,
                now_ns + timeout_s * 1_000_000_000 if timeout_s else None, is_new=True,
            )
            if undo is not None:
                undo.append(("newhold", tid, None))
        else:
            dr.dpo += a
            cr.cpo += a
        dr.dirty = cr.dirty = True
        row = [self.tenant_id, tid, 0, dr_id, cr_id, a, asset, t.pending_id, flags, timeout_s, t.code or "",
               t.reference, t.metadata or None, 0, ""]
        self.new[tid] = row
        if undo is not None:
            undo.append(("new", tid, None))
        return row

    def _compare_existing(self, t: TransferIn, prior: dict[str, Any] | list[Any]) -> str:
        if type(prior) is list:  # accepted earlier in this batch
            prior = dict(zip(_TRANSFER_FIELDS, prior, strict=True))
        assert isinstance(prior, dict)
        if int(t.flags) != prior["flags"]:
            raise _Fail("exists_with_different_flags")
        if t.pending_id != prior["pending_id"]:
            raise _Fail("exists_with_different_pending_id")
        if t.debit_account_id is not None and t.debit_account_id != prior["debit_account_id"]:
            raise _Fail("exists_with_different_debit_account_id")
        if t.credit_account_id is not None and t.credit_account_id != prior["credit_account_id"]:
            raise _Fail("exists_with_different_credit_account_id")
        if t.amount is not None and t.amount != prior["amount"]:
            raise _Fail("exists_with_different_amount")
        if t.asset is not None and t.asset != prior["asset"]:
            raise _Fail("exists_with_different_asset")
        if t.timeout_s != prior["timeout_s"]:
            raise _Fail("exists_with_different_timeout")
        if (t.code or "") != prior["code"]:
            raise _Fail("exists_with_different_code")
        if t.reference != prior["reference"] or (t.metadata or None) != (prior["metadata"] or None):
            raise _Fail("idempotency_conflict")
        return "exists"

    def _resolve_pending(self, t: TransferIn, flags: int, system: bool) -> list[Any]:
        if not t.pending_id:
            raise _Fail("pending_id_must_not_be_empty")
        if t.pending_id == t.id:
            raise _Fail("pending_id_must_be_different")
        if t.timeout_s:
            raise _Fail("timeout_reserved_for_pending_transfer")
        hold = self.holds.get(t.pending_id)
        if hold is None:
            known = t.pending_id in self.existing or t.pending_id in self.new
            raise _Fail("pending_transfer_not_pending" if known else "pending_transfer_not_found")
        if t.debit_account_id is not None and t.debit_account_id != hold.debit_account_id:
            raise _Fail("pending_transfer_has_different_debit_account_id")
        if t.credit_account_id is not None and t.credit_account_id != hold.credit_account_id:
            raise _Fail("pending_transfer_has_different_credit_account_id")
        if t.asset is not None and t.asset != hold.asset:
            raise _Fail("asset_mismatch")
        if hold.state == HoldState.POSTED:
            raise _Fail("pending_transfer_already_posted")
        if hold.state == HoldState.VOIDED:
            raise _Fail("pending_transfer_already_voided")
        if hold.state == HoldState.EXPIRED:
            raise _Fail("pending_transfer_expired")
        # Decided at this transfer's own ledger timestamp (`_persist` gives the batch's accepted
        # transfers now_ns, now_ns + 1, …, in order; `new` holds those accepted so far), so a
        # post is accepted only if its recorded time is before the expiry.
        at = self.now_ns + len(self.new)
        if not system and hold.expires_at is not None and at >= hold.expires_at:
            raise _Fail("pending_transfer_expired")
        if flags & _POST:
            amount = hold.amount if t.amount is None else t.amount
            if amount == 0:
                raise _Fail("amount_must_not_be_zero")
            if amount < 0:
                raise _Fail("amount_must_be_positive")
            if amount > hold.amount:
                raise _Fail("exceeds_pending_transfer_amount")
        else:
            amount = hold.amount
            if t.amount is not None and t.amount != hold.amount:
                raise _Fail("pending_transfer_has_different_amount")
        dr = self.accounts[hold.debit_account_id]
        cr = self.accounts[hold.credit_account_id]
        if flags & _POST and (dr.dpo + amount > MAX_AMOUNT or dr.dp + dr.dpo > MAX_AMOUNT):
            raise _Fail("overflows_debits")
        if flags & _POST and (cr.cpo + amount > MAX_AMOUNT or cr.cp + cr.cpo > MAX_AMOUNT):
            raise _Fail("overflows_credits")
        self._save_acc(hold.debit_account_id, dr)
        self._save_acc(hold.credit_account_id, cr)
        self._save_hold(hold)
        dr.dp -= hold.amount
        cr.cp -= hold.amount
        if flags & _POST:
            dr.dpo += amount
            cr.cpo += amount
            hold.state = HoldState.POSTED
            hold.posted_amount = amount
        else:
            hold.state = HoldState.EXPIRED if system and t.code == CODE_EXPIRED else HoldState.VOIDED
        hold.resolved_by = t.id
        hold.resolved_at = at
        dr.dirty = cr.dirty = hold.dirty = True
        return self._accept(t, hold.debit_account_id, hold.credit_account_id, amount, hold.asset, flags)

    def _accept(self, t: TransferIn, dr: str, cr: str, amount: int, asset: str, flags: int) -> list[Any]:
        # A list, not a dict: `_persist` fills seq, timestamp and hash in place, and both the
        # INSERT's tuple and the StoredTransfer come from it positionally.
        row = [self.tenant_id, t.id, 0, dr, cr, amount, asset, t.pending_id, flags, t.timeout_s, t.code or "",
               t.reference, t.metadata or None, 0, ""]
        self.new[t.id] = row
        if self.undo is not None:
            self.undo.append(("new", t.id, None))
        return row


def _stored(row: dict[str, Any]) -> StoredTransfer:
    return StoredTransfer(**row)


class LedgerEngine:
    """Stateless; one instance serves every caller."""

    def apply(
        self, conn: Connection, tenant_id: str, segments: list[Segment], now_ns: int,
        cache: WriterCache | None = None, pipe: PgPipe | None = None, offload: StatementRunner | None = None,
    ) -> None:
        """Apply all segments for one tenant; fills each segment's `results` in place.

        With a `cache`, a batch it fully covers is applied without reading (see the
        module docstring); the caller must `commit()` or `clear()` the cache afterwards.

        On PostgreSQL every statement goes through a `PgPipe`. Given one (the batcher's),
        the writes are left queued on it: the caller sends them with its other tenants'
        writes and the COMMIT in one round trip, and any read queued later goes out behind
        them, so statements still run in the order they were made. Without one, the writes
        are sent before returning (inside the caller's transaction, not committed).

        On SQLite a writer may pass an `offload` runner: a big batch's accounts UPDATE and
        transfers INSERT then run on its helper thread while this one hashes the chain and
        builds the results (`meterline.db.sqlite_offload`); all of it is in before return.
        """
        own = pipe is None and conn.dialect.name == "postgresql"
        if own:
            pipe = PgPipe(conn)
        self._apply(conn, tenant_id, segments, now_ns, cache, pipe, offload if pipe is None else None)
        if own:
            assert pipe is not None
            pipe.run()

    def _apply(
        self, conn: Connection, tenant_id: str, segments: list[Segment], now_ns: int,
        cache: WriterCache | None, pipe: PgPipe | None, offload: StatementRunner | None = None,
    ) -> None:
        all_t = [t for s in segments for t in s.transfers]
        acc_ids = {a for t in all_t for a in (t.debit_account_id, t.credit_account_id) if a}
        head = cache.head(tenant_id) if cache is not None else None
        if head is not None and cache is not None and not any(
            t.pending_id or int(t.flags) & (_POST | _VOID) for t in all_t
        ):
            now_ns = max(now_ns, head["last_timestamp"] + 1)
            cached = cache.accounts(tenant_id)
            # The cached objects themselves, changed in place: copying every touched account
            # and swapping the copies in at commit cost a tenth of a 1000-transfer batch.
            # Whatever does not commit never reaches a later batch: a refused batch drops
            # the tenant from the cache right here, and a failed transaction clears the whole
            # cache (`LedgerBatcher.rolled_back`). Accounts it lacks are read (one query) —
            # before the head guard, so it vouches for them too.
            accounts = {a: c for a in acc_ids if (c := cached.get(a)) is not None}
            loaded: dict[str, _Acc] = {}
            if len(accounts) < len(acc_ids):
                loaded = self._load_accounts(conn, tenant_id, acc_ids - accounts.keys(), pipe)
                accounts.update(loaded)
            batch = _Batch(conn, tenant_id, now_ns, accounts, {}, {})
            accepted = self._run(batch, segments)
            # A refusal may be wrong here: an id stored earlier answers `exists` (or its
            # conflict) before any validation. Only an all-accepted batch stays optimistic;
            # anything else is decided again, reading.
            if all(r.result in SUCCESS for s in segments for r in s.results):
                cache.optimistic = True
                new_head = self._persist(conn, tenant_id, head, batch, accepted, now_ns, pipe, offload)
                # The cached accounts changed in place; only those read here are new to it.
                cache.stage(tenant_id, head, new_head, loaded)
                return
            cache.forget(tenant_id)  # its accepted transfers moved cached balances: start over
        ids = {t.id for t in all_t if t.id}
        pending_ids = {t.pending_id for t in all_t if t.pending_id}
        head, existing, holds, accounts = self._load(conn, tenant_id, ids | pending_ids, pending_ids, acc_ids, pipe)
        # The batch's time is never behind the locked head: a transfer's timestamp is then the
        # very time its checks (a hold's expiry) were made at. Another writer holding the
        # head may have committed later times while this batch waited for it.
        now_ns = max(now_ns, head["last_timestamp"] + 1)
        # A post or void may name only the hold: its accounts come from the hold (rarely unread).
        hold_accs = {a for h in holds.values() for a in (h.debit_account_id, h.credit_account_id)}
        if hold_accs - accounts.keys():
            accounts.update(self._load_accounts(conn, tenant_id, hold_accs - accounts.keys(), pipe))
        batch = _Batch(conn, tenant_id, now_ns, accounts, holds, existing)
        accepted = self._run(batch, segments)
        new_head = self._persist(conn, tenant_id, head, batch, accepted, now_ns, pipe, offload) if accepted else head
        if cache is not None:
            cache.stage(tenant_id, head, new_head, accounts)

    def _run(self, batch: _Batch, segments: list[Segment]) -> list[tuple[TransferResult, list[Any]]]:
        """Validate and apply every segment in memory; returns the accepted (result, row) pairs."""
        accepted: list[tuple[TransferResult, list[Any]]] = []
        append = accepted.append
        apply_one = batch.apply_one
        for seg in segments:
            transfers = seg.transfers
            system = seg.system
            results = seg.results = [TransferResult(i, t.id, "") for i, t in enumerate(transfers)]
            n = len(transfers)
            i = 0
            while i < n:
                t = transfers[i]
                if not t.flags & _LINKED:  # the common case, without a chain's bookkeeping
                    try:
                        outcome = apply_one(t, system)
                    except _Fail as f:
                        results[i].result = f.code
                    else:
                        if type(outcome) is list:  # accepted: the `_accepted` call, inlined
                            res = results[i]
                            res.result = "ok"
                            append((res, outcome))
                        else:
                            self._accepted(batch, results[i], outcome, accepted)
                    i += 1
                    continue
                # A chain runs through the first unlinked transfer (or to the end: still open).
                j = i
                while j < n - 1 and transfers[j].flags & _LINKED:
                    j += 1
                self._apply_group(batch, seg, list(range(i, j + 1)), accepted)
                i = j + 1
        return accepted

    @staticmethod
    def _accepted(
        batch: _Batch, res: TransferResult, outcome: list[Any] | str,
        accepted: list[tuple[TransferResult, list[Any]]],
    ) -> None:
        if type(outcome) is str:  # "exists"
            res.result = "exists"
            prior = batch.new.get(res.id)
            if prior is None:  # stored before this batch: sequenced already
                res.transfer = _stored(batch.existing[res.id])
            else:  # accepted earlier in this same batch; filled in after sequencing
                accepted.append((res, prior))
        else:
            res.result = "ok"
            accepted.append((res, outcome))  # type: ignore[arg-type]

    def _apply_group(
        self,
        batch: _Batch,
        seg: Segment,
        group: list[int],
        accepted: list[tuple[TransferResult, list[Any]]],
    ) -> None:
        linked = len(group) > 1 or int(seg.transfers[group[-1]].flags) & _LINKED
        open_chain = bool(int(seg.transfers[group[-1]].flags) & _LINKED)
        batch.undo = [] if linked else None
        outcomes: list[list[Any] | str] = []
        failed_at: int | None = None
        failure = ""
        for pos, i in enumerate(group):
            try:
                outcomes.append(batch.apply_one(seg.transfers[i], seg.system))
            except _Fail as f:
                failed_at, failure = pos, f.code
                break
        if linked and failed_at is None and open_chain:
            failed_at, failure = len(group) - 1, "linked_event_chain_open"
        if failed_at is not None:
            if batch.undo:
                batch.rollback(batch.undo)
            # The failing member carries its own code; every other member of the chain
            # reports linked_event_failed (TigerBeetle's semantics).
            for pos, i in enumerate(group):
                seg.results[i].result = failure if pos == failed_at else "linked_event_failed"
            batch.undo = None
            return
        batch.undo = None
        for i, outcome in zip(group, outcomes, strict=True):
            self._accepted(batch, seg.results[i], outcome, accepted)

    # -- persistence ---------------------------------------------------------------
    # Driver-level SQL: SQLAlchemy's per-row parameter processing costs more than the
    # database work itself at thousands of rows per batch. Table and column names
    # come from the models above; only values are parameters.
    _HEAD = "SELECT last_seq, last_hash, last_timestamp FROM ledger_heads WHERE tenant_id = {p}"
    _ACCOUNTS = ("SELECT id, asset, flags, debits_pending, debits_posted, credits_pending, credits_posted "
                 "FROM accounts")
    _HOLDS = ("SELECT transfer_id, debit_account_id, credit_account_id, amount, asset, state, "
              "created_at, expires_at, resolved_by, resolved_at, posted_amount FROM holds")

    def _load(
        self, conn: Connection, tenant_id: str, transfer_ids: set[str], hold_ids: set[str], acc_ids: set[str],
        pipe: PgPipe | None = None,
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, _Hold], dict[str, _Acc]]:
        """Lock the head and read everything the batch names — on PostgreSQL as one pipeline,
        so a small group commit pays one round trip for its reads instead of four."""
        if pipe is not None:
            return self._load_pg(pipe, tenant_id, transfer_ids, hold_ids, acc_ids)
        sql = _SQLITE
        head_q = self._HEAD.format(p=sql.p)
        queries = [[(head_q, (tenant_id,))],
                   sql.in_queries(f"SELECT {_TRANSFER_COLS} FROM transfers", "id", tenant_id, transfer_ids),
                   sql.in_queries(self._HOLDS, "transfer_id", tenant_id, hold_ids),
                   sql.in_queries(self._ACCOUNTS, "id", tenant_id, acc_ids)]
        head_rows, transfer_rows, hold_rows, acc_rows = sql.fetch_all(conn, queries)
        head = self._head(head_rows[0]) if head_rows else self._create_head(conn, tenant_id, head_q)
        return (head, self._transfers(transfer_rows), {r[0]: _Hold(*r) for r in hold_rows},
                {r[0]: _Acc(r[1], r[2], r[3], r[4], r[5], r[6]) for r in acc_rows})

    # PostgreSQL: key lookups by one array parameter, probed one key at a time: LATERAL ...
    # LIMIT 1 cannot be flattened into a join, so the plan is a nested loop of key lookups.
    # The plain `col = ANY($1)` form let the planner pick a tenant-only index (or a generic
    # plan) that reads every row of the tenant. (While a tenant's table has no statistics —
    # the first few thousand transfers with autovacuum off — the planner can still cost the
    # (tenant_id, seq) index like the primary key and pick it; see docs/operations.md.)
    _PG_HEAD = "SELECT last_seq, last_hash, last_timestamp FROM ledger_heads WHERE tenant_id = $1 FOR UPDATE"
    _PG_BY_KEYS = ("SELECT x.* FROM unnest($1::text[]) AS k(key) CROSS JOIN LATERAL "
                   "({head} WHERE tenant_id = $2 AND {col} = k.key LIMIT 1) AS x")
    _PG_TRANSFERS = _PG_BY_KEYS.format(head=f"SELECT {_TRANSFER_COLS} FROM transfers", col="id")
    _PG_HOLDS = _PG_BY_KEYS.format(head=_HOLDS, col="transfer_id")
    _PG_ACCOUNTS = _PG_BY_KEYS.format(head=_ACCOUNTS, col="id")
    _PG_NEW_HEAD = ("INSERT INTO ledger_heads (tenant_id, last_seq, last_hash, last_timestamp) "
                    "VALUES ($1, 0, $2, 0) ON CONFLICT DO NOTHING")

    def _load_pg(
        self, pipe: PgPipe, tenant_id: str, transfer_ids: set[str], hold_ids: set[str], acc_ids: set[str],
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, _Hold], dict[str, _Acc]]:
        tenant = text(tenant_id)
        head_i = pipe.add(self._PG_HEAD, [tenant])
        reads = [(pipe.add(q, [text_array(sorted(ids)), tenant]) if ids else None)
                 for q, ids in ((self._PG_TRANSFERS, transfer_ids), (self._PG_HOLDS, hold_ids),
                                (self._PG_ACCOUNTS, acc_ids))]
        results = pipe.run()
        head_rows = rows(results[head_i], "iti")
        transfer_rows, hold_rows, acc_rows = (
            rows(results[i], kinds) if i is not None else []
            for i, kinds in zip(reads, ("ttittittiitttit", "tttittiitii", "ttiiiii"), strict=True)
        )
        if not head_rows:
            # A tenant's first transfer: create its head (a concurrent creator wins), then
            # read everything again under its lock. The reads above ran with no lock to
            # hold — there was no head yet — so a writer that created the head at the same
            # time may have committed balances since; building on them lost its transfers'
            # balance changes (seen once in a few runs of eight processes starting at once).
            pipe.add(self._PG_NEW_HEAD, [tenant, text(GENESIS_HASH)])
            pipe.run()
            return self._load_pg(pipe, tenant_id, transfer_ids, hold_ids, acc_ids)
        head = self._head(head_rows[0])
        return (head, self._transfers(transfer_rows), {r[0]: _Hold(*r) for r in hold_rows},
                {r[0]: _Acc(r[1], r[2], r[3], r[4], r[5], r[6]) for r in acc_rows})

    @staticmethod
    def _head(row: Any) -> dict[str, Any]:
        return {"last_seq": row[0], "last_hash": row[1], "last_timestamp": row[2]}

    def _create_head(self, conn: Connection, tenant_id: str, head_q: str) -> dict[str, Any]:
        """A tenant's first transfer on SQLite: create its head."""
        conn.exec_driver_sql(
            "INSERT INTO ledger_heads (tenant_id, last_seq, last_hash, last_timestamp) VALUES (?, 0, ?, 0)",
            (tenant_id, GENESIS_HASH),
        )
        row = conn.exec_driver_sql(head_q, (tenant_id,)).first()
        assert row is not None
        return self._head(row)

    def _load_accounts(
        self, conn: Connection, tenant_id: str, ids: set[str], pipe: PgPipe | None = None,
    ) -> dict[str, _Acc]:
        if pipe is not None:
            i = pipe.add(self._PG_ACCOUNTS, [text_array(sorted(ids)), text(tenant_id)])
            acc_rows = rows(pipe.run()[i], "ttiiiii")
        else:
            sql = _SQLITE
            [acc_rows] = sql.fetch_all(conn, [sql.in_queries(self._ACCOUNTS, "id", tenant_id, ids)])
        return {r[0]: _Acc(r[1], r[2], r[3], r[4], r[5], r[6]) for r in acc_rows}

    @staticmethod
    def _transfers(rows: list[Any]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            row = dict(zip(_TRANSFER_FIELDS, r, strict=True))
            meta = row["metadata"]
            if isinstance(meta, str):
                row["metadata"] = json.loads(meta)
            out[row["id"]] = row
        return out

    def _persist(
        self,
        conn: Connection,
        tenant_id: str,
        head: dict[str, Any],
        batch: _Batch,
        accepted: list[tuple[TransferResult, list[Any]]],
        now_ns: int,
        pipe: PgPipe | None = None,
        offload: StatementRunner | None = None,
    ) -> dict[str, Any]:
        """Sequence, hash and write the accepted transfers; returns the new head.

        Each accepted row is one list in column order, filled in place: its INSERT tuple
        is the list itself (metadata as JSON), its StoredTransfer is built positionally —
        a dict per row, a tuple rebuilt from it and `StoredTransfer(**row)` cost about
        3 µs a transfer.
        """
        seq = head["last_seq"]
        ts = max(now_ns, head["last_timestamp"] + 1)
        sealed: list[list[Any]] = []
        for res, row in accepted:
            if res.result == "ok":
                seq += 1
                row[2] = seq
                row[13] = ts
                ts += 1
                sealed.append(row)
        # In key order: SQLite's B-tree seeks for the accounts UPDATE then walk neighbouring
        # pages (a spread batch's UPDATE 5.9-6.2 -> 4.3-4.8 ms per 1000 transfers, measured).
        dirty = sorted((acc_id, acc) for acc_id, acc in batch.accounts.items() if acc.dirty)
        if offload is not None and len(sealed) < _OFFLOAD_MIN_ROWS:
            offload = None
        if offload is not None:
            # The balances are final once the batch is validated: their UPDATE runs while
            # the chain is hashed below.
            raw = conn.connection.dbapi_connection
            _SQLITE.offload_accounts(offload, raw, tenant_id, dirty)
        try:
            prev = seal(head["last_hash"], sealed)
            rows: list[tuple[Any, ...]] = [
                tuple(row) if row[12] is None else (*row[:12], _dumps(row[12]), row[13], row[14]) for row in sealed
            ]
            if offload is not None:
                _SQLITE.offload_transfers(offload, raw, rows)
            stored = StoredTransfer
            for res, row in accepted:
                res.transfer = stored(*row)
            new_head = {"last_seq": seq, "last_hash": prev,
                        "last_timestamp": ts - 1 if rows else head["last_timestamp"]}
            new_holds = [h for h in batch.holds.values() if h.is_new]
            resolved = [h for h in batch.holds.values() if h.dirty and not h.is_new]
            if pipe is not None:
                self._write_pg(conn, pipe, tenant_id, head, new_head, rows, new_holds, resolved, dirty)
            else:
                self._write_sqlite(conn, tenant_id, head, new_head, rows, new_holds, resolved, dirty, offload)
        except BaseException:
            if offload is not None:
                try:
                    offload.drain()  # nothing may still run on the connection when it rolls back
                except Exception:  # noqa: S110 - the first failure is the one being raised
                    pass
            raise
        for _, acc in dirty:
            acc.dirty = False  # written; a writer's cache may carry these objects on
        return new_head

    # The head goes first: it is the tenant's lock (taken before any account row, as
    # everywhere), and its guard — the stored hash must still be the one this batch was built
    # on, else NULL violates NOT NULL and the transaction fails — is what lets a batch built
    # on a writer's cache commit only on the state it assumed.
    _PG_HEAD_WRITE = _guarded(
        "UPDATE ledger_heads SET last_seq = $1::bigint, "
        "last_hash = CASE WHEN last_hash = $2::text AND last_seq = $3::bigint THEN $4::text END, "
        "last_timestamp = $5::bigint WHERE tenant_id = $6::text",
        "1", "ledger heads updated")
    # A hold may be created and resolved in one batch (a pending and its post or void side by
    # side, or in two callers' segments of one group commit): its resolution goes in with it.
    _PG_INSERT_HOLDS = (
        "INSERT INTO holds (tenant_id, transfer_id, debit_account_id, credit_account_id, amount, asset, state, "
        "created_at, expires_at, resolved_by, resolved_at, posted_amount) "
        "SELECT $1::text, i, d, c, a, x, s, ca, e, b, ra, pa "
        "FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::bigint[], "
        "$9::bigint[], $10::text[], $11::bigint[], $12::bigint[]) AS v(i, d, c, a, x, s, ca, e, b, ra, pa)")
    # Guarded by state = 'pending': a hold is resolved exactly once. The head lock makes a
    # concurrent change impossible; the guard makes it visible if it happens.
    _PG_RESOLVE_HOLDS = _guarded(
        "UPDATE holds AS h SET state = v.s, resolved_by = v.b, resolved_at = v.ra, posted_amount = v.pa "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) AS v(i, s, b, ra, pa) "
        "WHERE h.tenant_id = $6::text AND h.transfer_id = v.i AND h.state = 'pending'",
        "$7::bigint", "holds resolved (one was not pending)")
    # More accounts than `_PG_VALUES_MAX_ACCOUNTS`: one statement with array parameters.
    _PG_ACCOUNT_WRITE = _guarded(
        "UPDATE accounts AS a SET debits_pending = v.dp, debits_posted = v.dpo, "
        "credits_pending = v.cp, credits_posted = v.cpo "
        "FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) "
        "AS v(id, dp, dpo, cp, cpo) WHERE a.tenant_id = $6::text AND a.id = v.id",
        "$7::bigint", "accounts updated")

    def _write_pg(
        self, conn: Connection, pipe: PgPipe, tenant_id: str, head: dict[str, Any], new_head: dict[str, Any],
        rows: list[tuple[Any, ...]], new_holds: list[_Hold], resolved: list[_Hold],
        dirty: list[tuple[str, _Acc]],
    ) -> None:
        """Queue the batch's writes on `pipe` (the caller sends them, with its COMMIT)."""
        tenant = text(tenant_id)
        pipe.add(self._PG_HEAD_WRITE, [
            integer(new_head["last_seq"]), text(head["last_hash"]), integer(head["last_seq"]),
            text(new_head["last_hash"]), integer(new_head["last_timestamp"]), tenant,
        ])
        if not rows:
            return
        if len(rows) >= _COPY_MIN_ROWS:
            # COPY: one stream instead of a statement per row count (faster for big
            # batches), but it cannot run inside a pipeline: what is queued goes out first.
            pipe.run()
            _Sql.copy(conn, f"COPY transfers ({_TRANSFER_COLS}) FROM STDIN", rows)
        else:
            pipe.add(_pg_insert_transfers(len(rows)), [
                None if v is None else (v if type(v) is str else str(v)).encode() for row in rows for v in row])
        if new_holds:
            pipe.add(self._PG_INSERT_HOLDS, [
                tenant, text_array([h.transfer_id for h in new_holds]),
                text_array([h.debit_account_id for h in new_holds]),
                text_array([h.credit_account_id for h in new_holds]), int_array([h.amount for h in new_holds]),
                text_array([h.asset for h in new_holds]), text_array([h.state for h in new_holds]),
                int_array([h.created_at for h in new_holds]), int_array([h.expires_at for h in new_holds]),
                text_array([h.resolved_by for h in new_holds]), int_array([h.resolved_at for h in new_holds]),
                int_array([h.posted_amount for h in new_holds]),
            ])
        if resolved:
            pipe.add(self._PG_RESOLVE_HOLDS, [
                text_array([h.transfer_id for h in resolved]), text_array([h.state for h in resolved]),
                text_array([h.resolved_by for h in resolved]), int_array([h.resolved_at for h in resolved]),
                int_array([h.posted_amount for h in resolved]), tenant, integer(len(resolved)),
            ])
        if 0 < len(dirty) <= _PG_VALUES_MAX_ACCOUNTS:
            params: list[bytes | None] = []
            for acc_id, a in dirty:
                params += (acc_id.encode(), str(a.dp).encode(), str(a.dpo).encode(), str(a.cp).encode(),
                           str(a.cpo).encode())
            params.append(tenant)
            pipe.add(_pg_write_accounts(len(dirty)), params)
            return
        pipe.add(self._PG_ACCOUNT_WRITE, [
            text_array([i for i, _ in dirty]), int_array([a.dp for _, a in dirty]),
            int_array([a.dpo for _, a in dirty]), int_array([a.cp for _, a in dirty]),
            int_array([a.cpo for _, a in dirty]), tenant, integer(len(dirty)),
        ])

    def _write_sqlite(
        self, conn: Connection, tenant_id: str, head: dict[str, Any], new_head: dict[str, Any],
        rows: list[tuple[Any, ...]], new_holds: list[_Hold], resolved: list[_Hold],
        dirty: list[tuple[str, _Acc]], offload: StatementRunner | None = None,
    ) -> None:
        """The batch's writes. With `offload`, the transfers and the accounts were handed
        to its helper thread already (`_persist`): they are waited for here, first."""
        sql = _SQLITE
        # (kind, statement, parameters, check) — check(rowcount) returns an error or None.
        # The head guard: as on PostgreSQL (above), the stored hash must still be the one
        # this batch was built on, else NULL violates NOT NULL.
        writes: list[tuple[str, str, Any, Any]] = [(
            "one",
            "UPDATE ledger_heads SET last_seq = ?, last_hash = CASE WHEN last_hash = ? AND last_seq = ? "
            "THEN ? END, last_timestamp = ? WHERE tenant_id = ?",
            (new_head["last_seq"], head["last_hash"], head["last_seq"], new_head["last_hash"],
             new_head["last_timestamp"], tenant_id),
            lambda count: None if count == 1 else f"ledger head of {tenant_id} missing",
        )]
        if offload is not None:
            offload.drain()
        if not rows:
            sql.write_all(conn, writes)
            return
        if offload is None:
            statement, rows = sql.transfer_insert(rows)
            writes.append(("many", statement, rows, None))
        if new_holds:
            writes.append((
                "many",
                "INSERT INTO holds (tenant_id, transfer_id, debit_account_id, credit_account_id, amount, "
                "asset, state, created_at, expires_at, resolved_by, resolved_at, posted_amount) "
                f"VALUES ({sql.marks(12)})",
                [
                    (tenant_id, h.transfer_id, h.debit_account_id, h.credit_account_id, h.amount,
                     h.asset, h.state, h.created_at, h.expires_at, h.resolved_by, h.resolved_at,
                     h.posted_amount)
                    for h in new_holds
                ],
                None,
            ))
        if resolved:
            n_resolved = len(resolved)
            writes.append((
                "many",
                "UPDATE holds SET state = ?, resolved_by = ?, resolved_at = ?, posted_amount = ? "
                "WHERE tenant_id = ? AND transfer_id = ? AND state = 'pending'",
                [(h.state, h.resolved_by, h.resolved_at, h.posted_amount, tenant_id, h.transfer_id)
                 for h in resolved],
                lambda count: None if count in (-1, n_resolved)
                else "hold resolved concurrently; ledger head lock violated",
            ))
        if offload is None:
            writes.append((
                "many",
                "UPDATE accounts SET debits_pending = ?, debits_posted = ?, credits_pending = ?, "
                "credits_posted = ? WHERE tenant_id = ? AND id = ?",
                [(acc.dp, acc.dpo, acc.cp, acc.cpo, tenant_id, acc_id) for acc_id, acc in dirty],
                None,
            ))
        sql.write_all(conn, writes)
        if head["last_seq"] // self.HISTORY_RUN != new_head["last_seq"] // self.HISTORY_RUN:
            self._append_history_run(conn, tenant_id, new_head["last_seq"])

    # SQLite's account history (`AccountHistory`): every HISTORY_RUN transfers of a tenant,
    # the transfers since its last run are appended as one run. The tail a reader scans is
    # at most this plus one batch; a run costs about 1 µs per transfer and account, and a
    # first-page read of an account one index seek per run.
    HISTORY_RUN = 8192
    _LAST_RUN = "SELECT max(last_seq) FROM account_history_runs WHERE tenant_id = ?"
    # One pass over the tail, each transfer giving both its accounts (a UNION ALL of two
    # scans was 10-20% slower, measured).
    _APPEND_RUN = (
        "INSERT INTO account_history (tenant_id, run, account_id, seq) "
        "SELECT t.tenant_id, ?, CASE s.side WHEN 0 THEN t.debit_account_id ELSE t.credit_account_id END, t.seq "
        "FROM transfers t CROSS JOIN (SELECT 0 AS side UNION ALL SELECT 1) s "
        "WHERE t.tenant_id = ? AND t.seq > ? AND t.seq <= ? ORDER BY 3, 4")

    def _append_history_run(self, conn: Connection, tenant_id: str, last_seq: int) -> None:
        """Append the transfers after the tenant's last run, up to `last_seq`, as a new run —
        sorted by (account, seq) under a key larger than any before it, so SQLite writes it
        at the end of the index instead of all over it."""
        raw = conn.connection.dbapi_connection
        assert raw is not None
        prev = raw.execute(self._LAST_RUN, (tenant_id,)).fetchone()[0] or 0
        if prev >= last_seq:
            return
        raw.execute(self._APPEND_RUN, (last_seq, tenant_id, prev, last_seq))
        raw.execute("INSERT INTO account_history_runs (tenant_id, last_seq) VALUES (?, ?)", (tenant_id, last_seq))


class _Sql:
    """SQLite's driver-level statements (PostgreSQL's go through `PgPipe`), and COPY."""

    p = "?"

    def marks(self, n: int) -> str:
        return ", ".join([self.p] * n)

    # The nullable transfer columns (pending_id, reference, metadata), by position.
    _NULLABLE = tuple(_TRANSFER_FIELDS.index(c) for c in ("pending_id", "reference", "metadata"))

    def __init__(self) -> None:
        self._inserts: dict[tuple[int, ...], tuple[str, Any]] = {}

    def transfer_insert(self, rows: list[tuple[Any, ...]]) -> tuple[str, list[tuple[Any, ...]]]:
        """The INSERT for `rows` of transfers, and the rows to bind to it: a nullable column
        that is NULL in every row is written as a literal NULL instead of bound. Python's
        sqlite3 binds an int or str directly but looks up an adapter for each None, and a
        plain transfer carries three: the batch's INSERT went from 6.1 to 4.4 ms CPU per 1000
        (measured, min of 4 runs each)."""
        nulls = tuple(i for i in self._NULLABLE if all(r[i] is None for r in rows))
        entry = self._inserts.get(nulls)
        if entry is None:
            keep = [i for i in range(len(_TRANSFER_FIELDS)) if i not in nulls]
            values = ", ".join("NULL" if i in nulls else self.p for i in range(len(_TRANSFER_FIELDS)))
            entry = self._inserts[nulls] = (f"INSERT INTO transfers ({_TRANSFER_COLS}) VALUES ({values})",
                                            itemgetter(*keep) if nulls else None)
        statement, project = entry
        return statement, rows if project is None else list(map(project, rows))

    # The accounts UPDATE as one statement per 2,048 accounts (the MATERIALIZED list makes
    # SQLite walk it and seek each account, instead of scanning the tenant's accounts).
    _ACC_HEAD = "WITH v(id, dp, dpo, cp, cpo) AS MATERIALIZED ("
    _ACC_TAIL = (") UPDATE accounts SET debits_pending = v.dp, debits_posted = v.dpo, credits_pending = v.cp, "
                 "credits_posted = v.cpo FROM v WHERE accounts.tenant_id = ? AND accounts.id = v.id")

    def offload_accounts(self, runner: StatementRunner, raw: Any, tenant_id: str, dirty: list[tuple[str, _Acc]]) -> None:
        values: list[Any] = []
        for acc_id, a in dirty:
            values += (acc_id, a.dp, a.dpo, a.cp, a.cpo)
        first = True
        for statement, params in values_statements(self._ACC_HEAD, "(?, ?, ?, ?, ?)", self._ACC_TAIL, values, 5):
            params.append(tenant_id)
            # First after validation: the helper is idle, so hand it over at once.
            runner.run(raw, statement, params, hand_over=first)
            first = False

    def offload_transfers(self, runner: StatementRunner, raw: Any, rows: list[tuple[Any, ...]]) -> None:
        statement, rows = self.transfer_insert(rows)
        head, _, row = statement.partition("VALUES ")
        if not rows:
            return
        for insert, params in values_statements(head, row, "", [v for r in rows for v in r], len(rows[0])):
            runner.run(raw, insert, params)

    def in_queries(self, head: str, col: str, tenant_id: str, ids: set[str]) -> list[tuple[str, Any]]:
        """The statements that read the rows of `ids` (none for no ids)."""
        if not ids:
            return []
        return [(f"{head} WHERE tenant_id = ? AND {col} IN ({self.marks(len(chunk))})", (tenant_id, *chunk))
                for chunk in _chunks(sorted(ids))]

    def fetch_all(self, conn: Connection, groups: list[list[tuple[str, Any]]]) -> list[list[Any]]:
        """Run groups of reads; return each group's rows."""
        raw = conn.connection.dbapi_connection
        assert raw is not None
        out: list[list[Any]] = []
        for group in groups:
            out.append([])
            for statement, params in group:
                cur = raw.cursor()
                try:
                    cur.execute(statement, params)
                    out[-1].extend(cur.fetchall())
                finally:
                    cur.close()
        return out

    def write_all(self, conn: Connection, writes: list[tuple[str, str, Any, Any]]) -> None:
        """Run (kind, statement, params, check) writes in order. Kinds: "one" (execute),
        "many" (executemany). A failed row-count check raises, which rolls the caller's
        transaction back."""
        raw = conn.connection.dbapi_connection
        assert raw is not None
        for kind, statement, params, check in writes:
            cur = raw.cursor()
            try:
                if kind == "many":
                    if not params:
                        continue
                    cur.executemany(statement, params)
                else:
                    cur.execute(statement, params)
                if check is not None and (error := check(int(cur.rowcount))):
                    raise RuntimeError(error)
            finally:
                cur.close()

    @staticmethod
    def copy(conn: Connection, statement: str, rows: list[tuple[Any, ...]]) -> None:
        """PostgreSQL COPY FROM STDIN of `rows` on the raw psycopg cursor (same transaction)."""
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cur.copy(statement) as cp:
                for row in rows:
                    cp.write_row(row)
        finally:
            cur.close()


_SQLITE = _Sql()
engine = LedgerEngine()
