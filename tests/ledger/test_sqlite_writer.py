"""The transfer INSERT binds only the columns some row needs (NULL columns are literals on
SQLite): whatever mix of NULL and set nullable columns a batch has, every row is stored
exactly as accepted."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from meterline.ledger.models import Transfer
from meterline.ledger.service import ledger_service
from meterline.ledger.types import TransferFlags, TransferIn
from tests.factories import make_account, make_tenant

PENDING, POST = int(TransferFlags.PENDING), int(TransferFlags.POST_PENDING)


@pytest.mark.parametrize("batch", [
    [TransferIn("p1", "a", "b", 1), TransferIn("p2", "b", "a", 2)],
    [TransferIn("r1", "a", "b", 1), TransferIn("r2", "a", "b", 2, reference="ref", metadata={"k": "v"})],
    [TransferIn("m1", "a", "b", 3, metadata={"n": 1}), TransferIn("m2", "a", "b", 4, metadata={"n": 2}, code="c")],
    [TransferIn("h1", "a", "b", 5, flags=PENDING, timeout_s=60), TransferIn("h2", pending_id="h1", flags=POST),
     TransferIn("x", "b", "a", 1)],
])
def test_every_mix_of_null_and_set_columns_is_stored_as_accepted(session, tenant_id, clock, batch):
    make_tenant(session, tenant_id, clock)
    for acc in ("a", "b"):
        make_account(session, tenant_id, clock, id=acc)
    results = ledger_service.post(session, tenant_id, batch, clock)
    assert all(r.result == "ok" for r in results)
    stored = {t.id: t for t in session.scalars(select(Transfer).where(Transfer.tenant_id == tenant_id))}
    for r in results:
        assert r.transfer is not None
        row = stored[r.id]
        assert (row.pending_id, row.reference, row.metadata_, row.code, row.amount, row.seq, row.hash) == (
            r.transfer.pending_id, r.transfer.reference, r.transfer.metadata, r.transfer.code,
            r.transfer.amount, r.transfer.seq, r.transfer.hash)
