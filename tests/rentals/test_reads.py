"""The lean primary-key read of a contract (reads.py): the same figures as the ORM row, scoped by tenant."""

from __future__ import annotations

from dataclasses import fields

import pytest

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.rentals.contracts import contract_service
from meterline.rentals.reads import ContractReader, ContractRow, contract_reader
from meterline.rentals.service import PAYG, PREPAID, SETTLED, rental_service
from meterline.rentals.sessions import session_service
from meterline.wallets.service import wallet_service
from tests.factories import make_demo_tenant
from tests.threads import run_concurrently

NS = 1_000_000_000
WALLET = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU"


@pytest.fixture
def tenant(db: Database, tenant_id: str, clock: FrozenClock) -> str:
    with db.session() as s:
        make_demo_tenant(s, tenant_id, clock)
    return tenant_id


def _rent(db: Database, tenant: str, clock: FrozenClock, proof: str = "tx-reads-1") -> str:
    with db.session() as s:
        return contract_service.rent(s, tenant, wallet=WALLET, tier="M2", duration_s=3600, paid_minor=1_000_000,
                                     proof=proof, rail=None, clock=clock).rental.id


def _same_as_orm(db: Database, tenant: str, row: ContractRow) -> None:
    with db.session(write=False) as s:
        orm = rental_service.get(s, tenant, row.id)
    for f in fields(ContractRow):
        assert getattr(row, f.name) == getattr(orm, f.name), f.name


def test_status_row_has_the_orm_rows_values_and_the_same_accrual(db, tenant, clock):
    rid = _rent(db, tenant, clock)
    clock.advance(15)
    row = contract_reader(db).status_row(tenant, rid, style=PREPAID)
    assert row is not None
    _same_as_orm(db, tenant, row)
    with db.session(write=False) as s:
        orm = rental_service.get(s, tenant, rid)
    now = clock.now_ns()
    assert rental_service.accrual(row, now) == rental_service.accrual(orm, now)
    assert rental_service.accrual(row, now).cost_minor == 4167  # 15 s of 0.001 SOL/h, half-up


def test_a_settled_contract_reads_with_its_settlement(db, tenant, clock):
    rid = _rent(db, tenant, clock)
    clock.advance(120)
    with db.session() as s:
        rental_service.settle(s, tenant, rid, clock)
    row = contract_reader(db).status_row(tenant, rid, style=PREPAID)
    assert row is not None and row.status == SETTLED
    assert row.refund_minor is not None and row.used_minor is not None
    assert row.used_minor + row.refund_minor == row.held_minor
    _same_as_orm(db, tenant, row)


def test_unknown_and_other_tenants_contracts_are_not_found(db, tenant, clock):
    rid = _rent(db, tenant, clock)
    with db.session() as s:
        make_demo_tenant(s, f"{tenant}-b", clock)
    reader = contract_reader(db)
    assert reader.status_row(tenant, "CTR-NOPE0000", style=PREPAID) is None
    assert reader.status_row(f"{tenant}-b", rid, style=PREPAID) is None


def test_a_rental_of_another_style_is_not_found(db, tenant, clock):
    """The style is in the read's WHERE clause: a session read as a contract (the SI64 status
    route given a Dante session id) is not found, as a contract read as a session."""
    rid = _rent(db, tenant, clock)
    with db.session() as s:
        wallet_service.deposit(s, tenant, owner_type="user", owner_id="alice", asset="DGPU", amount_minor=10**7,
                               rail="simulation", proof="tx-reads-payg", clock=clock)
        sid = session_service.start(s, tenant, customer_id="alice", device_id=None, gpu_model="nvidia_rtx_4090",
                                    vram_gb=None, watts=None, clock=clock).id
    reader = contract_reader(db)
    assert reader.status_row(tenant, sid, style=PREPAID) is None
    assert reader.status_row(tenant, rid, style=PAYG) is None
    row = reader.status_row(tenant, sid, style=PAYG)
    assert row is not None and row.id == sid


def test_one_reader_per_database_inline_only_on_sqlite(db):
    assert contract_reader(db) is contract_reader(db)
    assert contract_reader(db).inline is db.is_sqlite


def test_a_read_sees_each_commit_and_keeps_no_snapshot_open(db, tenant, clock):
    """Reused connections must not pin an old snapshot: each read sees the latest commit."""
    rid = _rent(db, tenant, clock)
    reader = contract_reader(db)
    first = reader.status_row(tenant, rid, style=PREPAID)
    assert first is not None
    clock.advance(30)
    with db.session() as s:
        rental_service.settle(s, tenant, rid, clock)
    second = reader.status_row(tenant, rid, style=PREPAID)
    assert second is not None and first.status != SETTLED and second.status == SETTLED


def test_each_thread_reads_on_its_own_connection(db, tenant, clock):
    rid = _rent(db, tenant, clock)
    reader = ContractReader(db)
    seen: list[str | None] = []

    def read(_: int) -> None:
        for _ in range(50):
            row = reader.status_row(tenant, rid, style=PREPAID)
            seen.append(None if row is None else row.id)

    run_concurrently(read, 4)
    assert seen == [rid] * 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the per-thread connection is SQLite's
def test_a_failed_read_drops_its_connection_and_the_next_one_reconnects(db, tenant, clock):
    rid = _rent(db, tenant, clock)
    reader = ContractReader(db)
    assert reader.status_row(tenant, rid, style=PREPAID) is not None
    reader._local.conn.close()  # e.g. the file went away under it
    with pytest.raises(Exception):
        reader.status_row(tenant, rid, style=PREPAID)
    row = reader.status_row(tenant, rid, style=PREPAID)
    assert row is not None and row.id == rid
