"""`meterline ledger verify`: recompute every invariant the ledger promises.

Per tenant (or for one tenant):

- for every asset, Σ debits = Σ credits over accounts, posted and pending;
- every account's stored balances equal the sums recomputed from transfers
  (posted: plain and post_pending transfers, a post counting its posted amount;
  pending: holds still in state 'pending');
- holds agree with transfers: every pending transfer has its hold, every hold
  its pending transfer, and a resolved hold names the one transfer that
  resolved it, with the matching flag and amount — before the hold expired,
  unless the sweeper expired it;
- the chain: seq is gap-free 1..N, timestamps strictly increase, each hash
  recomputes from the previous one, and the head row matches the last transfer;
- blocks: heights and seq ranges are contiguous, each Merkle root, previous-block
  link, block hash and Ed25519 signature verifies.

Sums are set-based SQL (GROUP BY in the database, only mismatches come back);
the chain is one streamed pass over transfers in (tenant, seq) order, so memory
stays bounded by one block's leaves however long the ledger is. Everything is
read in one snapshot (REPEATABLE READ on PostgreSQL, a WAL read transaction on
SQLite) so concurrent posting cannot produce false alarms.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from meterline.db.engine import Database
from meterline.ledger import chain
from meterline.ledger.signing import verify_signature
from meterline.ledger.types import TransferFlags

_PENDING = int(TransferFlags.PENDING)
_POST = int(TransferFlags.POST_PENDING)
_VOID = int(TransferFlags.VOID_PENDING)
_STREAM_CHUNK = 10_000


@dataclass(frozen=True, slots=True)
class Problem:
    tenant_id: str
    check: str
    detail: str
    account_id: str | None = None
    seq: int | None = None
    expected: Any = None
    found: Any = None

    def __str__(self) -> str:
        where = [f"tenant={self.tenant_id}"]
        if self.account_id is not None:
            where.append(f"account={self.account_id}")
        if self.seq is not None:
            where.append(f"seq={self.seq}")
        out = f"[{self.check}] {' '.join(where)}: {self.detail}"
        if self.expected is not None or self.found is not None:
            out += f" (expected {self.expected}, found {self.found})"
        return out


@dataclass(slots=True)
class VerifyReport:
    tenants: int = 0
    accounts: int = 0
    transfers: int = 0
    holds: int = 0
    blocks: int = 0
    problems: list[Problem] = field(default_factory=list)
    # Problems beyond `max_problems` are counted, not kept.
    omitted: int = 0
    max_problems: int = 1000

    @property
    def ok(self) -> bool:
        return not self.problems and not self.omitted

    @property
    def problem_count(self) -> int:
        return len(self.problems) + self.omitted

    def add(self, problem: Problem) -> None:
        if len(self.problems) < self.max_problems:
            self.problems.append(problem)
        else:
            self.omitted += 1

    def summary(self) -> str:
        counts = (
            f"{self.tenants} tenants, {self.accounts} accounts, {self.transfers} transfers, "
            f"{self.holds} holds, {self.blocks} blocks"
        )
        if self.ok:
            return f"ledger OK: {counts} verified"
        return f"ledger FAILED: {self.problem_count} problems in {counts}"


def verify_ledger(
    source: Database | Session | Connection,
    tenant_id: str | None = None,
    *,
    trusted_public_keys: Collection[str] | None = None,
    max_problems: int = 1000,
) -> VerifyReport:
    """Check every invariant for `tenant_id` (or all tenants). Read-only.

    `trusted_public_keys`: when given, a block signed by any other key is reported
    (a valid signature by an unknown key proves nothing).
    """
    report = _Verifier(tenant_id, trusted_public_keys, max_problems)
    with _snapshot(source) as conn:
        report.run(conn)
    return report.report


@contextmanager
def _snapshot(source: Database | Session | Connection) -> Iterator[Connection]:
    if isinstance(source, Session):
        yield source.connection()
        return
    if isinstance(source, Connection):
        yield source
        return
    with source.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


class _Verifier:
    def __init__(self, tenant_id: str | None, trusted: Collection[str] | None, max_problems: int) -> None:
        self.tenant_id = tenant_id
        self.trusted = set(trusted) if trusted is not None else None
        self.report = VerifyReport(max_problems=max_problems)

    def _where(self, alias: str = "", *, first: bool = True) -> str:
        if self.tenant_id is None:
            return ""
        col = f"{alias}.tenant_id" if alias else "tenant_id"
        return f" {'WHERE' if first else 'AND'} {col} = :tenant"

    def _q(self, conn: Connection, sql: str) -> Any:
        return conn.execute(text(sql), {"tenant": self.tenant_id} if self.tenant_id else {})

    def run(self, conn: Connection) -> None:
        self.report.accounts = int(self._q(conn, "SELECT COUNT(*) FROM accounts" + self._where()).scalar_one())
        self.report.holds = int(self._q(conn, "SELECT COUNT(*) FROM holds" + self._where()).scalar_one())
        self._check_asset_totals(conn)
        self._check_account_balances(conn)
        self._check_transfer_accounts(conn)
        self._check_holds(conn)
        if conn.dialect.name == "sqlite":
            self._check_account_history(conn)
        self._check_chains(conn)

    # -- set-based checks ---------------------------------------------------------------
    def _check_asset_totals(self, conn: Connection) -> None:
        rows = self._q(
            conn,
            "SELECT tenant_id, asset, SUM(debits_posted), SUM(credits_posted), "
            "SUM(debits_pending), SUM(credits_pending) FROM accounts" + self._where()
            + " GROUP BY tenant_id, asset ORDER BY tenant_id, asset",
        )
        for t, asset, dpo, cpo, dp, cp in rows:
            if int(dpo) != int(cpo):
                self.report.add(Problem(t, "asset_posted_unbalanced",
                                        f"asset {asset}: Σ debits_posted ≠ Σ credits_posted",
                                        expected=int(cpo), found=int(dpo)))
            if int(dp) != int(cp):
                self.report.add(Problem(t, "asset_pending_unbalanced",
                                        f"asset {asset}: Σ debits_pending ≠ Σ credits_pending",
                                        expected=int(cp), found=int(dp)))

    def _check_account_balances(self, conn: Connection) -> None:
        # Posted balances count plain transfers and posts (a post's amount is what it
        # posted); a pending transfer only reserves, and a void moves nothing.
        posted = f"(flags & {_PENDING | _VOID}) = 0"
        tw = self._where(first=False)
        hw = self._where(first=False)
        sql = f"""
            SELECT a.tenant_id, a.id,
                   a.debits_posted, COALESCE(d.s, 0), a.credits_posted, COALESCE(c.s, 0),
                   a.debits_pending, COALESCE(hd.s, 0), a.credits_pending, COALESCE(hc.s, 0)
            FROM accounts a
            LEFT JOIN (SELECT tenant_id, debit_account_id AS acc, SUM(amount) AS s FROM transfers
                       WHERE {posted}{tw} GROUP BY tenant_id, debit_account_id) d
                   ON d.tenant_id = a.tenant_id AND d.acc = a.id
            LEFT JOIN (SELECT tenant_id, credit_account_id AS acc, SUM(amount) AS s FROM transfers
                       WHERE {posted}{tw} GROUP BY tenant_id, credit_account_id) c
                   ON c.tenant_id = a.tenant_id AND c.acc = a.id
            LEFT JOIN (SELECT tenant_id, debit_account_id AS acc, SUM(amount) AS s FROM holds
                       WHERE state = 'pending'{hw} GROUP BY tenant_id, debit_account_id) hd
                   ON hd.tenant_id = a.tenant_id AND hd.acc = a.id
            LEFT JOIN (SELECT tenant_id, credit_account_id AS acc, SUM(amount) AS s FROM holds
                       WHERE state = 'pending'{hw} GROUP BY tenant_id, credit_account_id) hc
                   ON hc.tenant_id = a.tenant_id AND hc.acc = a.id
            WHERE (a.debits_posted <> COALESCE(d.s, 0) OR a.credits_posted <> COALESCE(c.s, 0)
                   OR a.debits_pending <> COALESCE(hd.s, 0) OR a.credits_pending <> COALESCE(hc.s, 0))
                  {self._where("a", first=False)}
            ORDER BY a.tenant_id, a.id
        """
        names = ("debits_posted", "credits_posted", "debits_pending", "credits_pending")
        for row in self._q(conn, sql):
            t, acc = row[0], row[1]
            for i, name in enumerate(names):
                stored, summed = int(row[2 + 2 * i]), int(row[3 + 2 * i])
                if stored != summed:
                    self.report.add(Problem(t, "account_balance", f"{name} differs from its transfers",
                                            account_id=acc, expected=summed, found=stored))

    def _check_transfer_accounts(self, conn: Connection) -> None:
        """Every transfer's accounts exist in its tenant and hold its asset."""
        for side in ("debit", "credit"):
            sql = f"""
                SELECT s.tenant_id, s.acc, s.asset, s.n, a.asset FROM
                  (SELECT tenant_id, {side}_account_id AS acc, asset, COUNT(*) AS n FROM transfers
                   {self._where()} GROUP BY tenant_id, {side}_account_id, asset) s
                LEFT JOIN accounts a ON a.tenant_id = s.tenant_id AND a.id = s.acc
                WHERE a.id IS NULL OR a.asset <> s.asset
                ORDER BY s.tenant_id, s.acc
            """
            for t, acc, asset, n, acc_asset in self._q(conn, sql):
                if acc_asset is None:
                    self.report.add(Problem(t, "transfer_account_missing",
                                            f"{n} transfers {side} an account that does not exist",
                                            account_id=acc))
                else:
                    self.report.add(Problem(t, "transfer_asset_mismatch",
                                            f"{n} transfers in {asset} {side} an account in {acc_asset}",
                                            account_id=acc, expected=acc_asset, found=asset))

    def _check_account_history(self, conn: Connection) -> None:
        """SQLite: the appended history runs list exactly both accounts of each transfer up
        to the tenant's last run, each under the run its seq falls in (`AccountHistory`) —
        an entry missing would hide a transfer from its account's history."""
        sets = f"""
            WITH r AS (
              SELECT tenant_id, last_seq, COALESCE(LAG(last_seq) OVER (
                  PARTITION BY tenant_id ORDER BY last_seq), 0) AS after_seq
              FROM account_history_runs{self._where()}),
            expected AS (
              SELECT t.tenant_id, r.last_seq AS run, t.debit_account_id AS account_id, t.seq FROM transfers t
                JOIN r ON r.tenant_id = t.tenant_id AND t.seq > r.after_seq AND t.seq <= r.last_seq
              UNION ALL
              SELECT t.tenant_id, r.last_seq, t.credit_account_id, t.seq FROM transfers t
                JOIN r ON r.tenant_id = t.tenant_id AND t.seq > r.after_seq AND t.seq <= r.last_seq),
            stored AS (SELECT tenant_id, run, account_id, seq FROM account_history{self._where()})
        """
        for check, a, b, what in (("account_history_missing", "expected", "stored", "not listed in"),
                                  ("account_history_extra", "stored", "expected", "listed wrongly in")):
            sql = f"{sets} SELECT * FROM (SELECT * FROM {a} EXCEPT SELECT * FROM {b}) ORDER BY 1, 4, 3 LIMIT 100"
            for t, run, acc, seq in self._q(conn, sql):
                self.report.add(Problem(t, check, f"transfer {what} the account's history run {run}",
                                        account_id=acc, seq=seq))

    def _check_holds(self, conn: Connection) -> None:
        tw = self._where("t", first=False)
        hw = self._where("h", first=False)
        # 1. Every pending transfer has a matching hold.
        sql = f"""
            SELECT t.tenant_id, t.seq, t.id, h.transfer_id, t.amount, h.amount
            FROM transfers t LEFT JOIN holds h ON h.tenant_id = t.tenant_id AND h.transfer_id = t.id
            WHERE (t.flags & {_PENDING}) <> 0{tw}
              AND (h.transfer_id IS NULL OR h.amount <> t.amount OR h.asset <> t.asset
                   OR h.debit_account_id <> t.debit_account_id
                   OR h.credit_account_id <> t.credit_account_id)
            ORDER BY t.tenant_id, t.seq
        """
        for t, seq, tid, hid, amount, hamount in self._q(conn, sql):
            if hid is None:
                self.report.add(Problem(t, "hold_missing", f"pending transfer {tid} has no hold", seq=seq))
            else:
                self.report.add(Problem(t, "hold_mismatch",
                                        f"hold {tid} differs from its pending transfer (accounts/asset/amount)",
                                        seq=seq, expected=amount, found=hamount))
        # 2. Every hold belongs to a pending transfer and has a known state.
        sql = f"""
            SELECT h.tenant_id, h.transfer_id, h.state, t.id, t.flags
            FROM holds h LEFT JOIN transfers t ON t.tenant_id = h.tenant_id AND t.id = h.transfer_id
            WHERE (t.id IS NULL OR (t.flags & {_PENDING}) = 0
                   OR h.state NOT IN ('pending', 'posted', 'voided', 'expired')){hw}
            ORDER BY h.tenant_id, h.transfer_id
        """
        for t, hid, state, tid, _flags in self._q(conn, sql):
            if tid is None or not _flags & _PENDING:
                self.report.add(Problem(t, "hold_orphaned", f"hold {hid} has no pending transfer"))
            else:
                self.report.add(Problem(t, "hold_state", f"hold {hid} has an unknown state",
                                        found=state))
        # 3. A resolved hold names its resolving transfer, which matches its state.
        sql = f"""
            SELECT h.tenant_id, h.transfer_id, h.state, h.resolved_by, h.amount, h.posted_amount,
                   r.id, r.seq, r.pending_id, r.flags, r.amount, r.code
            FROM holds h LEFT JOIN transfers r ON r.tenant_id = h.tenant_id AND r.id = h.resolved_by
            WHERE h.state <> 'pending'{hw}
              AND (r.id IS NULL OR r.pending_id IS NULL OR r.pending_id <> h.transfer_id
                   OR (h.state = 'posted' AND ((r.flags & {_POST}) = 0 OR r.amount <> h.posted_amount
                                              OR r.amount > h.amount))
                   OR (h.state IN ('voided', 'expired') AND ((r.flags & {_VOID}) = 0 OR r.amount <> h.amount))
                   OR (h.state = 'expired' AND r.code <> :expired))
            ORDER BY h.tenant_id, h.transfer_id
        """
        params = {"expired": "expired"}
        if self.tenant_id:
            params["tenant"] = self.tenant_id
        for row in conn.execute(text(sql), params):
            t, hid, state, by, amount, posted_amount, rid, rseq, _pid, rflags, ramount, _code = row
            if rid is None:
                self.report.add(Problem(t, "hold_resolution",
                                        f"hold {hid} is {state} but its resolving transfer {by!r} does not exist"))
            else:
                self.report.add(Problem(
                    t, "hold_resolution",
                    f"hold {hid} is {state} (amount {amount}, posted {posted_amount}) but transfer {rid} "
                    f"(flags {rflags}, amount {ramount}) does not resolve it that way", seq=rseq,
                ))
        # 4. A posted or voided hold was resolved before it expired: its resolving transfer's
        #    ledger timestamp is earlier than the expiry (later, only the sweeper resolves it).
        sql = f"""
            SELECT h.tenant_id, h.transfer_id, h.expires_at, r.id, r.seq, r.timestamp
            FROM holds h JOIN transfers r ON r.tenant_id = h.tenant_id AND r.id = h.resolved_by
            WHERE h.state IN ('posted', 'voided') AND h.expires_at IS NOT NULL
              AND r.timestamp >= h.expires_at{hw}
            ORDER BY h.tenant_id, h.transfer_id
        """
        for t, hid, expires_at, rid, rseq, rts in self._q(conn, sql):
            self.report.add(Problem(t, "hold_resolved_after_expiry",
                                    f"hold {hid} expired at {expires_at} but transfer {rid} resolved it at {rts}",
                                    seq=rseq))
        # 5. Every post/void resolves a hold that names it: a hold is resolved exactly once,
        #    and a hold still 'pending' has no resolving transfer.
        sql = f"""
            SELECT t.tenant_id, t.seq, t.id, t.pending_id, h.transfer_id, h.state, h.resolved_by
            FROM transfers t LEFT JOIN holds h ON h.tenant_id = t.tenant_id AND h.transfer_id = t.pending_id
            WHERE (t.flags & {_POST | _VOID}) <> 0{tw}
              AND (h.transfer_id IS NULL OR h.resolved_by IS NULL OR h.resolved_by <> t.id)
            ORDER BY t.tenant_id, t.seq
        """
        for t, seq, tid, pid, hid, state, by in self._q(conn, sql):
            if hid is None:
                detail = f"transfer {tid} resolves {pid!r}, which has no hold"
            else:
                detail = f"transfer {tid} resolves hold {pid} but the hold is {state}, resolved by {by!r}"
            self.report.add(Problem(t, "hold_resolution", detail, seq=seq, expected=tid, found=by))

    # -- the chain and blocks, streamed --------------------------------------------------
    def _check_chains(self, conn: Connection) -> None:
        heads = {
            r[0]: (int(r[1]), r[2], int(r[3]))
            for r in self._q(conn, "SELECT tenant_id, last_seq, last_hash, last_timestamp FROM ledger_heads"
                             + self._where())
        }
        block_tenants = {r[0] for r in self._q(conn, "SELECT DISTINCT tenant_id FROM ledger_blocks"
                                                + self._where())}
        sqlite = conn.dialect.name == "sqlite"
        stmt = text(
            "SELECT tenant_id, seq, id, debit_account_id, credit_account_id, amount, asset, pending_id, "
            "flags, timeout_s, code, reference, metadata, timestamp, hash FROM transfers"
            + self._where() + " ORDER BY tenant_id, seq"
        ).execution_options(yield_per=_STREAM_CHUNK)
        seen: set[str] = set()
        cur: _Chain | None = None
        for r in conn.execute(stmt, {"tenant": self.tenant_id} if self.tenant_id else {}):
            if cur is None or r[0] != cur.tenant_id:
                if cur is not None:
                    self._finish(cur, heads)
                cur = _Chain(r[0], self, self._load_blocks(conn, r[0]))
                seen.add(r[0])
            meta = r[12]
            if sqlite and isinstance(meta, str):
                meta = json.loads(meta)
            cur.feed({
                "tenant_id": r[0], "seq": r[1], "id": r[2], "debit_account_id": r[3],
                "credit_account_id": r[4], "amount": r[5], "asset": r[6], "pending_id": r[7],
                "flags": r[8], "timeout_s": r[9], "code": r[10], "reference": r[11], "metadata": meta,
                "timestamp": r[13],
            }, r[14])
        if cur is not None:
            self._finish(cur, heads)
        # Tenants with a head or blocks but no transfers at all.
        for t in sorted((set(heads) | block_tenants) - seen):
            self._finish(_Chain(t, self, self._load_blocks(conn, t)), heads)
        self.report.tenants = len(seen | set(heads) | block_tenants)

    def _load_blocks(self, conn: Connection, tenant_id: str) -> list[dict[str, Any]]:
        rows = conn.execute(
            text("SELECT tenant_id, height, first_seq, last_seq, transfer_count, merkle_root, prev_block_hash, "
                 "last_transfer_hash, timestamp, block_hash, signature, public_key FROM ledger_blocks "
                 "WHERE tenant_id = :t ORDER BY height"),
            {"t": tenant_id},
        ).mappings()
        blocks = [dict(b) for b in rows]
        self.report.blocks += len(blocks)
        self._check_block_headers(tenant_id, blocks)
        return blocks

    def _check_block_headers(self, tenant_id: str, blocks: list[dict[str, Any]]) -> None:
        prev_hash, prev_last, prev_ts = chain.GENESIS_HASH, 0, None
        for i, b in enumerate(blocks, start=1):
            h = b["height"]

            def bad(check: str, detail: str, expected: Any = None, found: Any = None, h: int = h) -> None:
                self.report.add(Problem(tenant_id, check, f"block {h}: {detail}", expected=expected, found=found))

            if h != i:
                bad("block_height_gap", "heights are not 1..K without gaps", i, h)
            if b["prev_block_hash"] != prev_hash:
                bad("block_prev_link", "prev_block_hash does not match the previous block", prev_hash,
                    b["prev_block_hash"])
            if b["first_seq"] != prev_last + 1:
                bad("block_seq_range", "first_seq does not follow the previous block", prev_last + 1,
                    b["first_seq"])
            if b["transfer_count"] != b["last_seq"] - b["first_seq"] + 1 or b["last_seq"] < b["first_seq"]:
                bad("block_seq_range", "transfer_count does not match first_seq..last_seq",
                    b["last_seq"] - b["first_seq"] + 1, b["transfer_count"])
            if prev_ts is not None and b["timestamp"] <= prev_ts:
                bad("block_timestamp", "timestamp does not increase", f"> {prev_ts}", b["timestamp"])
            digest = chain.block_hash(b)
            if digest != b["block_hash"]:
                bad("block_hash", "block_hash does not recompute from the header", digest, b["block_hash"])
            if not _valid_signature(b["public_key"], b["block_hash"], b["signature"]):
                bad("block_signature", "signature does not verify for its block_hash and public key")
            if self.trusted is not None and b["public_key"] not in self.trusted:
                bad("block_untrusted_key", "signed by a key that is not a trusted platform key",
                    found=b["public_key"])
            prev_hash, prev_last, prev_ts = b["block_hash"], b["last_seq"], b["timestamp"]

    def _finish(self, c: _Chain, heads: dict[str, tuple[int, str, int]]) -> None:
        c.finish_blocks()
        head = heads.get(c.tenant_id)
        if head is None:
            if c.count:
                self.report.add(Problem(c.tenant_id, "head_missing", "transfers exist but no ledger head row"))
            return
        last_seq, last_hash, last_ts = head
        if (last_seq, last_hash) != (c.last_seq, c.prev_hash):
            self.report.add(Problem(c.tenant_id, "head_mismatch", "ledger head does not match the last transfer",
                                    seq=c.last_seq, expected=(c.last_seq, c.prev_hash),
                                    found=(last_seq, last_hash)))
        if c.count and last_ts != c.prev_ts:
            self.report.add(Problem(c.tenant_id, "head_mismatch", "ledger head timestamp is not the last transfer's",
                                    seq=c.last_seq, expected=c.prev_ts, found=last_ts))


def _valid_signature(public_key: str, block_hash: str, signature: str) -> bool:
    try:
        return verify_signature(public_key, bytes.fromhex(block_hash), signature)
    except ValueError:
        return False


class _Chain:
    """One tenant's streamed pass: seq, time, hash chain and block Merkle roots."""

    def __init__(self, tenant_id: str, v: _Verifier, blocks: list[dict[str, Any]]) -> None:
        self.tenant_id = tenant_id
        self.v = v
        self.count = 0
        self.last_seq = 0
        self.prev_hash = chain.GENESIS_HASH
        self.prev_ts = 0
        self.blocks = blocks
        self.block_i = 0
        self.leaves: list[str] = []

    def _add(self, check: str, detail: str, seq: int | None = None, expected: Any = None, found: Any = None) -> None:
        self.v.report.add(Problem(self.tenant_id, check, detail, seq=seq, expected=expected, found=found))

    def feed(self, row: dict[str, Any], stored_hash: str) -> None:
        seq = row["seq"]
        self.count += 1
        self.v.report.transfers += 1
        if seq != self.last_seq + 1:
            self._add("seq_gap", "seq does not follow the previous transfer", seq, self.last_seq + 1, seq)
        if self.count > 1 and row["timestamp"] <= self.prev_ts:
            self._add("timestamp_order", "timestamp does not strictly increase", seq,
                      f"> {self.prev_ts}", row["timestamp"])
        expected = chain.chain_hash(self.prev_hash, row)
        if expected != stored_hash:
            self._add("hash_mismatch", f"transfer {row['id']} does not hash to its stored hash", seq,
                      expected, stored_hash)
        # Continue from the stored hash so one altered transfer is reported once, not N times.
        self.prev_hash, self.prev_ts, self.last_seq = stored_hash, row["timestamp"], seq
        self._feed_block(seq, stored_hash)

    def _feed_block(self, seq: int, h: str) -> None:
        while self.block_i < len(self.blocks) and self.blocks[self.block_i]["last_seq"] < seq:
            self._close_block()
        if self.block_i < len(self.blocks):
            b = self.blocks[self.block_i]
            if b["first_seq"] <= seq <= b["last_seq"]:
                self.leaves.append(h)
                if seq == b["last_seq"]:
                    self._close_block(last_hash=h)

    def _close_block(self, last_hash: str | None = None) -> None:
        b = self.blocks[self.block_i]
        root = chain.merkle_root(self.leaves)
        where = f"block {b['height']}"
        if len(self.leaves) != b["transfer_count"]:
            self._add("block_transfers", f"{where}: covers transfers that do not exist", b["last_seq"],
                      b["transfer_count"], len(self.leaves))
        if root != b["merkle_root"]:
            self._add("block_merkle_root", f"{where}: Merkle root does not recompute from its transfers",
                      None, root, b["merkle_root"])
        if last_hash is not None and last_hash != b["last_transfer_hash"]:
            self._add("block_last_transfer", f"{where}: last_transfer_hash is not transfer {b['last_seq']}'s hash",
                      b["last_seq"], last_hash, b["last_transfer_hash"])
        self.leaves = []
        self.block_i += 1

    def finish_blocks(self) -> None:
        while self.block_i < len(self.blocks):
            b = self.blocks[self.block_i]
            if b["first_seq"] > self.last_seq:
                self._add("block_beyond_chain", f"block {b['height']} seals seq {b['first_seq']}..{b['last_seq']} "
                          f"but the chain ends at {self.last_seq}")
                self.block_i += 1
                self.leaves = []
            else:
                self._close_block()
