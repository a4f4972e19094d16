"""Ledger operations: assets, accounts, transfers, holds.

The rules of posting live in `engine.py` (shared by the batcher and by domain
services that post inside their own request transaction); this module holds
everything else a caller needs, always scoped to one tenant.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Select, Table, and_, event, func, or_, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from meterline.clock import Clock
from meterline.db import upsert
from meterline.db.scoping import scoped
from meterline.errors import Conflict, MeterlineError, NotFound
from meterline.ledger import metrics
from meterline.ledger.engine import engine
from meterline.ledger.models import (
    Account,
    AccountHistory,
    AssetRow,
    HistoryRun,
    Hold,
    LedgerHead,
    Transfer,
)
from meterline.ledger.types import Segment, TransferIn, TransferResult
from meterline.money import MAX_SCALE, STANDARD_ASSETS, Asset

# -- errors -------------------------------------------------------------------------


class LedgerError(MeterlineError):
    code = "ledger_error"


class AssetNotFound(LedgerError, NotFound):
    code = "asset_not_found"
    title = "No such asset"


class AssetExists(LedgerError, Conflict):
    code = "asset_exists"
    title = "An asset with this code already exists"


class InvalidAsset(LedgerError):
    status = 422
    code = "invalid_asset"
    title = "The asset definition is not valid"


class AccountNotFound(LedgerError, NotFound):
    code = "account_not_found"
    title = "No such account"


class AccountExists(LedgerError, Conflict):
    code = "account_exists_with_different_fields"
    title = "An account with this id already exists with different fields"


class InvalidAccount(LedgerError):
    status = 422
    code = "invalid_account"
    title = "The account definition is not valid"


class TransferNotFound(LedgerError, NotFound):
    code = "transfer_not_found"
    title = "No such transfer"


# -- values -------------------------------------------------------------------------


@dataclass(slots=True)
class AccountCreate:
    asset: str
    kind: str
    id: str | None = None
    owner_type: str | None = None
    owner_id: str | None = None
    flags: int = 0
    metadata: dict[str, Any] | None = None


@dataclass(slots=True)
class Page:
    items: list[Any]
    next_cursor: str | None


def keyset_page(session: Session, stmt: Any, key: Any, after: Any, limit: int) -> Page:
    """One page of `stmt` in `key` order after the cursor value `after` (None: from the
    start). Reads one row more than the page to know whether another page follows; the
    cursor is the last row's key — the one rule every keyset-paged list shares."""
    if after is not None:
        stmt = stmt.where(key > after)
    rows = list(session.scalars(stmt.order_by(key).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, str(getattr(rows[-1], key.key)) if more and rows else None)


def new_id(prefix: str) -> str:
    """Time-ordered random id, so ids sort roughly by creation (cursor pagination)."""
    import time

    return f"{prefix}_{time.time_ns():x}{secrets.token_hex(6)}"


# Results of posts made inside a session's transaction, counted in /metrics once it commits
# (the batcher counts its own after its commit): deposits, settlements, payouts and the rest
# were missing from `meterline_transfers_total`, and a rolled-back post must not be counted.
_UNCOUNTED = "meterline.uncounted_transfer_results"


@event.listens_for(Session, "after_commit")
def _count_committed(session: Session) -> None:
    results = session.info.pop(_UNCOUNTED, None)
    if results:
        metrics.count_results(results)


@event.listens_for(Session, "after_rollback")
def _drop_uncommitted(session: Session) -> None:
    session.info.pop(_UNCOUNTED, None)


class AssetCache:
    """Per-process cache of asset scales. Assets are immutable once created, so a
    cached entry can never be stale; a miss simply reloads (a new asset created by
    another process is found on first use)."""

    def __init__(self) -> None:
        self._scales: dict[tuple[str, str], Asset] = {}
        self._lock = threading.Lock()

    def get(self, session_or_none: Session | None, tenant_id: str, code: str, loader: Any) -> Asset:
        key = (tenant_id, code)
        asset = self._scales.get(key)
        if asset is None:
            asset = loader(tenant_id, code)
            with self._lock:
                self._scales[key] = asset
        return asset

    def peek(self, tenant_id: str, code: str) -> Asset | None:
        """The cached asset, or None: never loads (the caller decides where a load may block)."""
        return self._scales.get((tenant_id, code))

    def clear(self) -> None:
        with self._lock:
            self._scales.clear()


class LedgerService:
    def __init__(self) -> None:
        self.assets = AssetCache()

    # -- assets -------------------------------------------------------------------
    def ensure_standard_assets(self, session: Session, tenant_id: str, now_ns: int) -> None:
        # Insert-or-ignore: two processes seeding one tenant at once never meet at the key.
        rows = [dict(tenant_id=tenant_id, code=a.code, scale=a.scale, kind=a.kind, name=a.code, created_at=now_ns)
                for a in STANDARD_ASSETS]
        table = cast(Table, AssetRow.__table__)
        session.execute(upsert.insert(session, table).values(rows).on_conflict_do_nothing(
            index_elements=["tenant_id", "code"]))

    def create_asset(
        self, session: Session, tenant_id: str, *, code: str, scale: int, kind: str, name: str, now_ns: int
    ) -> AssetRow:
        if not (code.isascii() and code.isalnum() and code.upper() == code and 1 <= len(code) <= 16):
            raise InvalidAsset("code must be 1-16 upper-case letters or digits")
        if not 0 <= scale <= MAX_SCALE:
            raise InvalidAsset(f"scale must be between 0 and {MAX_SCALE}")
        if session.get(AssetRow, (tenant_id, code)) is not None:
            raise AssetExists(f"asset {code} already exists")
        row = AssetRow(tenant_id=tenant_id, code=code, scale=scale, kind=kind, name=name or code,
                       created_at=now_ns)
        try:  # a savepoint: the same code racing in from another request is a 409 too
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            raise AssetExists(f"asset {code} already exists") from None
        return row

    def list_assets(self, session: Session, tenant_id: str) -> list[AssetRow]:
        return list(session.scalars(scoped(select(AssetRow), AssetRow, tenant_id).order_by(AssetRow.code)))

    def get_asset(self, session: Session, tenant_id: str, code: str) -> Asset:
        def load(t: str, c: str) -> Asset:
            row = session.get(AssetRow, (t, c))
            if row is None:
                raise AssetNotFound(f"asset {c} does not exist")
            return Asset(row.code, row.scale, row.kind)

        return self.assets.get(session, tenant_id, code, load)

    # -- accounts -----------------------------------------------------------------
    def create_account(self, session: Session, tenant_id: str, data: AccountCreate, now_ns: int) -> tuple[Account, bool]:
        """Create an account; with a client id, re-creating the same account is a no-op.

        Returns (account, created). Same id with different fields → 409.
        """
        self.get_asset(session, tenant_id, data.asset)
        if not data.kind or len(data.kind) > 40:
            raise InvalidAccount("kind must be 1-40 characters")
        if data.id is not None and not (1 <= len(data.id) <= 64):
            raise InvalidAccount("id must be 1-64 characters")
        acc_id = data.id or new_id("acc")
        existing = session.get(Account, (tenant_id, acc_id))
        if existing is not None:
            return self.same_account(existing, data), False
        row = Account(
            tenant_id=tenant_id, id=acc_id, asset=data.asset, kind=data.kind, owner_type=data.owner_type,
            owner_id=data.owner_id, flags=data.flags, debits_pending=0, debits_posted=0,
            credits_pending=0, credits_posted=0, created_at=now_ns, metadata_=data.metadata,
        )
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            existing = session.get(Account, (tenant_id, acc_id), populate_existing=True)
            if existing is None:
                raise
            return self.same_account(existing, data), False
        return row, True

    @staticmethod
    def same_account(existing: Account, data: AccountCreate) -> Account:
        """`existing`, if it is the account `data` describes; else AccountExists (409)."""
        same = (
            existing.asset == data.asset and existing.kind == data.kind
            and existing.owner_type == data.owner_type and existing.owner_id == data.owner_id
            and existing.flags == data.flags and (existing.metadata_ or None) == (data.metadata or None)
        )
        if not same:
            raise AccountExists(f"account {existing.id} exists with different fields")
        return existing

    def get_account(self, session: Session, tenant_id: str, account_id: str) -> Account:
        row = session.get(Account, (tenant_id, account_id))
        if row is None:
            raise AccountNotFound(f"account {account_id} does not exist")
        return row

    def list_accounts(
        self,
        session: Session,
        tenant_id: str,
        *,
        kind: str | None = None,
        asset: str | None = None,
        owner_type: str | None = None,
        owner_id: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> Page:
        stmt: Select[Any] = scoped(select(Account), Account, tenant_id)
        if kind:
            stmt = stmt.where(Account.kind == kind)
        if asset:
            stmt = stmt.where(Account.asset == asset)
        if owner_type:
            stmt = stmt.where(Account.owner_type == owner_type)
        if owner_id:
            stmt = stmt.where(Account.owner_id == owner_id)
        return keyset_page(session, stmt, Account.id, after, limit)

    # -- transfers ----------------------------------------------------------------
    def post(self, session: Session, tenant_id: str, transfers: list[TransferIn], clock: Clock) -> list[TransferResult]:
        """Post inside the caller's transaction (domain services: atomic with their own rows).

        On SQLite the session must be a write session (BEGIN IMMEDIATE). Nothing is
        committed here; a rollback of the caller's transaction undoes the postings.
        """
        # The engine writes with driver-level SQL: flush pending ORM changes first, and
        # afterwards expire any Account/Hold the session holds so the next read sees the
        # new balances instead of the identity map's stale copy.
        session.flush()
        seg = Segment(list(transfers))
        engine.apply(session.connection(), tenant_id, [seg], clock.now_ns())
        for obj in list(session.identity_map.values()):
            if isinstance(obj, Account | Hold):
                session.expire(obj)
        session.info.setdefault(_UNCOUNTED, []).extend(seg.results)
        return seg.results

    def lock_writes(self, session: Session, tenant_id: str) -> None:
        """Hold the tenant's ledger head from now to the end of the transaction, as a post
        would. For a decision that reads a balance and then posts on it (topping up a
        shortfall): balances are written only while the head is held, so the one read stays
        true until the post. Requests deciding on one wallet at once otherwise each saw the
        same balance and all but one post was refused."""
        session.execute(select(LedgerHead.tenant_id).where(LedgerHead.tenant_id == tenant_id).with_for_update())

    def get_transfer(self, session: Session, tenant_id: str, transfer_id: str) -> Transfer:
        row = session.get(Transfer, (tenant_id, transfer_id))
        if row is None:
            raise TransferNotFound(f"transfer {transfer_id} does not exist")
        return row

    def list_transfers(
        self,
        session: Session,
        tenant_id: str,
        *,
        account_id: str | None = None,
        reference: str | None = None,
        after_seq: int | None = None,
        limit: int = 100,
    ) -> Page:
        stmt: Select[Any] = scoped(select(Transfer), Transfer, tenant_id)
        if account_id:
            self.get_account(session, tenant_id, account_id)
            if session.get_bind().dialect.name == "sqlite":
                return self._account_history_sqlite(session, stmt, tenant_id, account_id, reference, after_seq, limit)
            stmt = stmt.where(
                or_(Transfer.debit_account_id == account_id, Transfer.credit_account_id == account_id)
            )
        if reference:
            stmt = stmt.where(Transfer.reference == reference)
        return keyset_page(session, stmt, Transfer.seq, after_seq, limit)

    @staticmethod
    def _account_history_sqlite(
        session: Session, stmt: Select[Any], tenant_id: str, account_id: str, reference: str | None,
        after_seq: int | None, limit: int,
    ) -> Page:
        """`list_transfers` of one account on SQLite: its entries in the appended history runs
        (`AccountHistory`), then the tail — the transfers after the last run, which no index
        lists by account yet (at most `LedgerEngine.HISTORY_RUN` plus a batch), scanned by
        seq. Every run's seqs are below the tail's, so the two in turn are in seq order; both
        reads see the session's one snapshot, so a run appended in between cannot be missed
        or read twice. Same rows, order and cursors as the indexed read on PostgreSQL."""
        after = after_seq if after_seq is not None else -1
        if reference:
            stmt = stmt.where(Transfer.reference == reference)
        last_run = session.scalar(
            select(func.max(HistoryRun.last_seq)).where(HistoryRun.tenant_id == tenant_id)) or 0
        rows: list[Any] = []
        if after < last_run:
            runs = select(HistoryRun.last_seq).where(HistoryRun.tenant_id == tenant_id, HistoryRun.last_seq > after)
            indexed = stmt.join(AccountHistory, and_(
                AccountHistory.tenant_id == Transfer.tenant_id, AccountHistory.seq == Transfer.seq,
            )).where(
                AccountHistory.tenant_id == tenant_id, AccountHistory.run.in_(runs),
                AccountHistory.account_id == account_id, AccountHistory.seq > after,
            ).order_by(AccountHistory.run, AccountHistory.seq).limit(limit + 1)
            rows = list(session.scalars(indexed))
        if len(rows) <= limit:
            tail = stmt.where(
                Transfer.seq > max(after, last_run),
                or_(Transfer.debit_account_id == account_id, Transfer.credit_account_id == account_id),
            ).order_by(Transfer.seq).limit(limit + 1 - len(rows))
            rows.extend(session.scalars(tail))
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, str(rows[-1].seq) if more and rows else None)

    def list_holds(
        self,
        session: Session,
        tenant_id: str,
        *,
        account_id: str,
        state: str | None = "pending",
        after: str | None = None,
        limit: int = 100,
    ) -> Page:
        self.get_account(session, tenant_id, account_id)
        stmt: Select[Any] = scoped(select(Hold), Hold, tenant_id).where(
            or_(Hold.debit_account_id == account_id, Hold.credit_account_id == account_id)
        )
        if state:
            stmt = stmt.where(Hold.state == state)
        return keyset_page(session, stmt, Hold.transfer_id, after, limit)

    def expired_holds(self, session: Session, now_ns: int, limit: int = 1000, *,
                      after: tuple[int, str, str] | None = None) -> list[Hold]:
        """Open holds whose timeout has passed, across tenants (for the sweeper), oldest first;
        `after` is the (expires_at, tenant_id, transfer_id) of the last one of a previous page."""
        stmt = select(Hold).where(and_(Hold.state == "pending", Hold.expires_at.is_not(None),
                                       Hold.expires_at <= now_ns))
        if after is not None:
            stmt = stmt.where(tuple_(Hold.expires_at, Hold.tenant_id, Hold.transfer_id) > tuple_(*after))
        return list(session.scalars(stmt.order_by(Hold.expires_at, Hold.tenant_id, Hold.transfer_id).limit(limit)))


ledger_service = LedgerService()
