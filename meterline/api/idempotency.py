"""The `Idempotency-Key` header on POSTs that create or move money (DESIGN §8).

A key is scoped to the caller: its tenant and, for a caller with a principal id
(a customer, a provider, an operator), that principal — customers choose their
keys independently and must never be answered each other's stored responses.
Staff keys without a principal id (admin and service keys) share the tenant's
space; any other key without one has a space of its own. The request a key names is identified by the SHA-256 of its method, path
and exact body bytes:

- same key, same request  → the stored status and body, with
  ``Idempotent-Replayed: true``, and nothing is executed again;
- same key, other request → 409 ``idempotency_conflict``;
- a key longer than 255 characters (or empty, or with control characters) → 422.

Only successful (2xx) responses are stored. A 4xx changed nothing, so a retry
is simply evaluated again (a transfer refused for ``exceeds_credits`` may
succeed after a deposit). A transfer batch answers 200 even when every
transfer in it was refused; it is stored only if at least one was applied.
Rows live in ``idempotency_keys``.

Two ways to use it:

- `claim` / `record` — inside the request's own write transaction (accounts,
  assets). The key is claimed *before* the work: a concurrent request with the
  same key blocks on the primary key until the first commits, then replays its
  response; if the first rolls back, the second runs. Response and effects
  commit together, so a crash leaves both or neither.
- `claim_apart` / `finish_apart` — for `POST /v1/transfers`, whose work is
  committed by the ledger batcher in its own transaction: the key is claimed in
  a short transaction of its own *before* posting (insert-or-ignore, so of two
  racing requests exactly one proceeds; the other replays, is told the first is
  in progress, or — with another body — gets ``idempotency_conflict``), and the
  response fills the claim after the batch returns; a failure releases it. A
  crash between posting and storing leaves the claim unfinished: after
  `STALE_CLAIM_S` the same request may take it over and run again, which is
  safe because every transfer carries a client id that is its own idempotency
  key — a retry answers ``exists`` and is never applied twice.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from fastapi import Request, Response
from pydantic import BaseModel
from sqlalchemy import CursorResult, Table, delete, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from meterline.api.deps import resolved_principal
from meterline.db import upsert
from meterline.db.engine import Database
from meterline.db.idempotency import IdempotencyRecord
from meterline.errors import IdempotencyConflict, IdempotencyInProgress, MeterlineError
from meterline.identity.service import Principal

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
# A claim left unfinished this long (its request died between posting and storing) may be
# taken over by the same request: far longer than any request runs.
STALE_CLAIM_S = 60
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
_JSON = "application/json"


class InvalidIdempotencyKey(MeterlineError):
    status = 422
    code = "invalid_idempotency_key"
    title = "The Idempotency-Key header is not valid"


def json_response(model: BaseModel, status: int) -> Response:
    """Serialise once, so the bytes sent are exactly the bytes stored for replay."""
    return Response(model.model_dump_json().encode(), status_code=status, media_type=_JSON)


def request_hash(method: str, path: str, body: bytes) -> str:
    h = hashlib.sha256()
    h.update(method.upper().encode())
    h.update(b"\n")
    h.update(path.encode())
    h.update(b"\n")
    h.update(body)
    return h.hexdigest()


def key_space(principal: Principal | None) -> str:
    """The principal part of a key's scope: '' for staff without a principal id (the tenant's
    own space); a non-staff key without one is a space of its own (it must not replay, or
    squat, what staff stored)."""
    if principal is None:
        return ""
    if principal.id:
        return f"{principal.kind}:{principal.id}"
    return "" if principal.is_staff else f"key:{principal.key_id}"


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    tenant_id: str
    principal: str
    key: str
    request_hash: str

    @classmethod
    def of(cls, request: Request, tenant_id: str, body: bytes) -> IdempotentRequest | None:
        """The request's key, or None when the header is absent."""
        key = request.headers.get(HEADER)
        if key is None:
            return None
        if not 1 <= len(key) <= MAX_KEY_LENGTH:
            raise InvalidIdempotencyKey(f"{HEADER} must be 1-{MAX_KEY_LENGTH} characters")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
            raise InvalidIdempotencyKey(f"{HEADER} must not contain control characters")
        return cls(tenant_id, key_space(resolved_principal(request)), key,
                   request_hash(request.method, request.url.path, body))

    # -- inside the request transaction ----------------------------------------------
    def claim(self, session: Session, now_ns: int) -> Response | None:
        """Claim the key in this transaction; a stored response (to replay) if it was used."""
        row = session.get(IdempotencyRecord, (self.tenant_id, self.principal, self.key))
        if row is not None:
            return self._replay(row)
        try:
            with session.begin_nested():
                session.add(IdempotencyRecord(
                    tenant_id=self.tenant_id, principal=self.principal, key=self.key, request_hash=self.request_hash,
                    status_code=0, response_body="", created_at=now_ns,
                ))
                session.flush()
        except IntegrityError:
            # A concurrent request with this key committed first.
            row = session.get(IdempotencyRecord, (self.tenant_id, self.principal, self.key), populate_existing=True)
            if row is None:
                raise
            return self._replay(row)
        return None

    def record(self, session: Session, response: Response) -> None:
        """Store the response on the row `claim` inserted (same transaction)."""
        row = session.get(IdempotencyRecord, (self.tenant_id, self.principal, self.key))
        assert row is not None, "record() without claim()"
        if 200 <= response.status_code < 300:
            row.status_code = response.status_code
            row.response_body = bytes(response.body).decode()
        else:
            session.delete(row)
        session.flush()

    # -- around the ledger batcher -----------------------------------------------------
    def claim_apart(self, db: Database, now_ns: int) -> Response | None:
        """Blocking (run it in a threadpool): claim the key in a committed transaction of its
        own; None if this request may proceed, else the stored response to replay (or a
        conflict / in-progress error raised)."""
        table = cast(Table, IdempotencyRecord.__table__)
        with db.session(write=True) as session:
            mine = session.execute(upsert.insert(session, table).values(
                tenant_id=self.tenant_id, principal=self.principal, key=self.key, request_hash=self.request_hash,
                status_code=0, response_body="", created_at=now_ns,
            ).on_conflict_do_nothing(index_elements=["tenant_id", "principal", "key"]).returning(table.c.key)).first()
            if mine is not None:
                return None
            row = session.get(IdempotencyRecord, (self.tenant_id, self.principal, self.key), populate_existing=True)
            if row is None:  # released this instant by a request that failed: the key is free
                raise IdempotencyInProgress(f"a request with {HEADER} {self.key!r} just ended; retry")
            if (row.status_code == 0 and row.request_hash == self.request_hash
                    and now_ns - row.created_at > STALE_CLAIM_S * 1_000_000_000):
                # Its request died between claiming and finishing: take the claim over.
                took = session.execute(
                    update(IdempotencyRecord)
                    .where(IdempotencyRecord.tenant_id == self.tenant_id,
                           IdempotencyRecord.principal == self.principal, IdempotencyRecord.key == self.key,
                           IdempotencyRecord.status_code == 0, IdempotencyRecord.created_at == row.created_at)
                    .values(created_at=now_ns))
                if cast(CursorResult[Any], took).rowcount:
                    return None
            return self._replay(row)

    def finish_apart(self, db: Database, response: Response | None) -> None:
        """Blocking (run it in a threadpool): store a 2xx response on this request's claim, or
        release the claim (any other answer, or `None`: a failure, or nothing applied) so a
        retry runs."""
        mine = (IdempotencyRecord.tenant_id == self.tenant_id, IdempotencyRecord.principal == self.principal,
                IdempotencyRecord.key == self.key,
                IdempotencyRecord.request_hash == self.request_hash, IdempotencyRecord.status_code == 0)
        try:
            with db.session(write=True) as session:
                if response is not None and 200 <= response.status_code < 300:
                    session.execute(update(IdempotencyRecord).where(*mine).values(
                        status_code=response.status_code, response_body=bytes(response.body).decode()))
                else:
                    session.execute(delete(IdempotencyRecord).where(*mine))
        except SQLAlchemyError:
            # The transfers are committed and the response is true: answer it rather than a
            # 500. The claim stays unfinished; after STALE_CLAIM_S a retry runs again, safely
            # (it answers `exists` by transfer id).
            log.warning("could not finish idempotency key %r (tenant %s)", self.key, self.tenant_id,
                        exc_info=True)

    def _replay(self, row: IdempotencyRecord) -> Response:
        if row.request_hash != self.request_hash:
            raise IdempotencyConflict(f"{HEADER} {self.key!r} was used with a different request")
        if row.status_code == 0:
            raise IdempotencyInProgress(f"a request with {HEADER} {self.key!r} is still in progress")
        return Response(row.response_body.encode(), status_code=row.status_code, media_type=_JSON,
                        headers={REPLAYED_HEADER: "true"})


def in_transaction(
    request: Request, tenant_id: str, body: bytes, session: Session, now_ns: int,
    work: Callable[[], Response],
) -> Response:
    """Run `work` under the request's Idempotency-Key (if any), in the request transaction."""
    idem = IdempotentRequest.of(request, tenant_id, body)
    if idem is None:
        return work()
    replay = idem.claim(session, now_ns)
    if replay is not None:
        return replay
    response = work()
    idem.record(session, response)
    return response
