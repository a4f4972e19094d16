"""Ledger tables, modelled on TigerBeetle's accounts and transfers.

Every table keys on `tenant_id` first so the schema can be distributed by
tenant. Transfers are append-only: nothing in Meterline issues UPDATE or DELETE
on `transfers`. The one mutable piece of a two-phase transfer, its state, lives
in `holds` and is changed exactly once (guarded by ``WHERE state = 'pending'``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKeyConstraint, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from meterline.db.base import Base


class AssetRow(Base):
    __tablename__ = "assets"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    code: Mapped[str] = mapped_column(String(16), primary_key=True)
    scale: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[int] = mapped_column(BigInteger)


class Account(Base):
    __tablename__ = "accounts"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    asset: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(40))
    owner_type: Mapped[str | None] = mapped_column(String(40), nullable=True)
    owner_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    flags: Mapped[int] = mapped_column(Integer, default=0)
    debits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)

    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "asset"], ["assets.tenant_id", "assets.code"]),
        Index("ix_accounts_tenant_kind", "tenant_id", "kind"),
        Index("ix_accounts_tenant_owner", "tenant_id", "owner_type", "owner_id"),
        # PostgreSQL: room on each page, so a balance update stays a heap-only tuple — no new
        # entry in the three indexes per committed update (migration 0011 says more).
        {"postgresql_with": {"fillfactor": 70}},
    )


class Transfer(Base):
    __tablename__ = "transfers"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    debit_account_id: Mapped[str] = mapped_column(String(64))
    credit_account_id: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    asset: Mapped[str] = mapped_column(String(16))
    pending_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    flags: Mapped[int] = mapped_column(Integer, default=0)
    timeout_s: Mapped[int] = mapped_column(Integer, default=0)
    code: Mapped[str] = mapped_column(String(64), default="")
    reference: Mapped[str | None] = mapped_column(String(128), nullable=True)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    timestamp: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("uq_transfers_tenant_seq", "tenant_id", "seq", unique=True),
        # Each account's history. PostgreSQL only: on SQLite these two indexes were half of
        # a batch's cost (1,000 random inserts into each dirty most of its leaf pages, ~6 MB
        # of WAL per commit); SQLite keeps the history in `account_history` runs instead.
        # Alembic's autogenerate leaves dialect-conditional indexes to the migrations
        # (`meterline.db.migrate.include_object`).
        Index("ix_transfers_debit", "tenant_id", "debit_account_id", "seq").ddl_if(dialect="postgresql"),
        Index("ix_transfers_credit", "tenant_id", "credit_account_id", "seq").ddl_if(dialect="postgresql"),
        # Partial: most transfers carry no reference, and an index entry per transfer
        # is measurable on the posting path.
        Index(
            "ix_transfers_reference", "tenant_id", "reference",
            sqlite_where=text("reference IS NOT NULL"), postgresql_where=text("reference IS NOT NULL"),
        ),
    )


class AccountHistory(Base):
    """SQLite: which transfers touched an account, in runs appended in bulk.

    The transfers up to a tenant's last run (`HistoryRun`) are listed here, one row per
    (account, transfer); the newer ones — at most `LedgerEngine.HISTORY_RUN` plus a batch —
    are the *tail*, found by scanning `transfers` by `seq`. When a tenant's `seq` crosses
    a multiple of `HISTORY_RUN` the writer appends the whole tail as one run, keyed by the
    run's last seq (`run`) first: a run is written at the right edge of the B-tree, page
    after page, instead of 2,000 random inserts per batch across every account's part of
    an index. Runs cover disjoint, ascending seq ranges, so an account's history in seq
    order is its entries run by run, then the tail (`LedgerService.list_transfers`).
    PostgreSQL indexes `transfers` by account instead; the table is empty there.
    """

    __tablename__ = "account_history"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    account_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)

    __table_args__ = ({"sqlite_with_rowid": False},)


class HistoryRun(Base):
    """SQLite: one row per `AccountHistory` run of a tenant — the transfers after the
    previous run's `last_seq`, up to and including this one's."""

    __tablename__ = "account_history_runs"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)

    __table_args__ = ({"sqlite_with_rowid": False},)


class Hold(Base):
    """The state of a pending transfer: pending → posted | voided | expired, once."""

    __tablename__ = "holds"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    transfer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    debit_account_id: Mapped[str] = mapped_column(String(64))
    credit_account_id: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    asset: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    resolved_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    posted_amount: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (
        Index("ix_holds_open_expiry", "state", "expires_at"),
        Index("ix_holds_debit_state", "tenant_id", "debit_account_id", "state"),
        Index("ix_holds_credit_state", "tenant_id", "credit_account_id", "state"),
    )


class LedgerHead(Base):
    """Per-tenant chain head. Its row lock serialises a tenant's ledger writers.

    The hash chain, the gap-free `seq` and the strictly increasing timestamp all
    need a total order per tenant, exactly as TigerBeetle's single writer gives;
    locking this one row (``FOR UPDATE`` on PostgreSQL, the single writer on
    SQLite) provides it, and makes per-account row locks unnecessary because
    balances are only ever written while it is held.
    """

    __tablename__ = "ledger_heads"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    last_timestamp: Mapped[int] = mapped_column(BigInteger, default=0)

    # PostgreSQL: rewritten by every batch; free space keeps each rewrite on its page (0011).
    __table_args__ = ({"postgresql_with": {"fillfactor": 50}},)


class Block(Base):
    """A sealed, signed run of transfers: Merkle root over their hashes, chained to the last block."""

    __tablename__ = "ledger_blocks"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    height: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    transfer_count: Mapped[int] = mapped_column(Integer)
    merkle_root: Mapped[str] = mapped_column(String(64))
    prev_block_hash: Mapped[str] = mapped_column(String(64))
    last_transfer_hash: Mapped[str] = mapped_column(String(64))
    block_hash: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[str] = mapped_column(String(128))
    public_key: Mapped[str] = mapped_column(String(64))
