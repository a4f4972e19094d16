"""Incoming payments: verify a proof through its rail and claim it in the inbox once.

Every domain that is paid from outside — wallet deposits, rent payments, card
checkouts — goes through `verify_and_claim` (or `claim` for a proof verified
elsewhere, e.g. a signed webhook), in the same transaction as the ledger
transfer the payment causes, then `mark_processed`. A rollback undoes the
claim together with the money; a second claim of the same proof, by anyone,
is `PaymentProofReused` (409).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.orm import Session

from meterline.db import upsert
from meterline.errors import AmountNotPositive, Conflict, MeterlineError
from meterline.payments.models import PaymentInbox
from meterline.payments.rails import SIMULATION_MODE, Rail

# -- errors -------------------------------------------------------------------------


class PaymentError(MeterlineError):
    code = "payment_error"


class PaymentProofReused(PaymentError, Conflict):
    code = "payment_proof_reused"
    title = "This payment proof has already been used"


class InvalidPaymentProof(PaymentError):
    status = 422
    code = "invalid_payment_proof"
    title = "The payment proof is not valid"


class PaymentAmountMismatch(PaymentError):
    status = 422
    code = "payment_amount_mismatch"
    title = "The payment's amount is not the amount claimed"


class PaymentAssetMismatch(PaymentError):
    status = 422
    code = "payment_asset_mismatch"
    title = "The payment's asset is not the asset claimed"


# -- values -------------------------------------------------------------------------

MAX_PROOF = 100  # a Solana signature is 88 base58 characters; Stripe ids are shorter


@dataclass(frozen=True, slots=True)
class ClaimedPayment:
    """A verified payment, now claimed by this transaction."""

    rail: str
    external_id: str
    proof: str
    amount_minor: int
    asset: str
    simulated: bool

    def ledger_metadata(self) -> dict[str, Any]:
        """Metadata for every transfer this payment causes; simulated money says so."""
        meta: dict[str, Any] = {"rail": self.rail, "proof": self.proof}
        if self.simulated:
            meta["mode"] = SIMULATION_MODE
        return meta


# Proofs Meterline makes up itself (a simulated top-up of an extension's shortfall). A client
# sending one first would lock that extension out (409 proof reused) — and, racing it,
# deadlock: the top-up claims its proof while holding the ledger, a client's deposit the
# other way round. So no client proof starts with it.
INTERNAL_PROOF_PREFIX = "sim-extend:"


def check_proof(proof: str, *, internal: bool = False) -> None:
    if not isinstance(proof, str) or not 1 <= len(proof) <= MAX_PROOF or not proof.isascii() \
            or not proof.isprintable() or any(c.isspace() for c in proof):
        raise InvalidPaymentProof(f"a payment proof is 1-{MAX_PROOF} printable ASCII characters")
    if proof.startswith(INTERNAL_PROOF_PREFIX) and not internal:
        raise InvalidPaymentProof(f"proofs starting with {INTERNAL_PROOF_PREFIX!r} are Meterline's own")


class PaymentService:
    def record_incoming(
        self,
        session: Session,
        tenant_id: str,
        rail: str,
        external_id: str,
        kind: str,
        owner: str | None,
        amount_minor: int | None,
        asset: str,
        now_ns: int,
    ) -> bool:
        """Store an external payment in the inbox once. True if this call stored it.

        Insert-or-ignore on the global (rail, external_id) key: a concurrent insert of
        the same key waits for the other transaction, then inserts nothing.
        """
        if not tenant_id:
            raise ValueError("tenant_id is required")
        values = {
            "rail": rail, "external_id": external_id, "tenant_id": tenant_id, "kind": kind,
            "owner": owner, "amount_minor": amount_minor, "asset": asset, "status": "received",
            "received_at": now_ns, "processed_at": None, "transfer_id": None,
        }
        table = cast(Table, PaymentInbox.__table__)
        stmt = upsert.insert(session, table).values(values).on_conflict_do_nothing(
            index_elements=["rail", "external_id"])
        # RETURNING says whether this statement inserted the row; rowcount is not reliable
        # for an ignored conflict on every driver (psycopg reports -1).
        return session.execute(stmt.returning(table.c.rail)).first() is not None

    def claim(
        self,
        session: Session,
        tenant_id: str,
        rail: str,
        external_id: str,
        *,
        kind: str,
        owner: str | None,
        amount_minor: int | None,
        asset: str,
        now_ns: int,
    ) -> None:
        """`record_incoming`, or `PaymentProofReused` when the payment is already in the inbox."""
        if not self.record_incoming(session, tenant_id, rail, external_id, kind, owner, amount_minor,
                                    asset, now_ns):
            raise PaymentProofReused(f"payment {external_id} on rail {rail} has already been used")

    def verify_and_claim(
        self,
        session: Session,
        tenant_id: str,
        *,
        rail: Rail,
        proof: str,
        kind: str,
        owner: str | None,
        amount_minor: int | None,
        asset: str,
        now_ns: int,
        internal: bool = False,
    ) -> ClaimedPayment:
        """Verify `proof` through `rail` and claim it. `amount_minor` is the amount the
        caller says it paid (None: whatever the rail reports); a rail that knows the
        amount must agree with it exactly. `internal`: a proof Meterline made up itself."""
        check_proof(proof, internal=internal)
        verified = rail.verify_incoming(tenant_id, proof, expected_amount_minor=amount_minor, asset=asset)
        if verified.asset != asset:
            raise PaymentAssetMismatch(f"the payment is in {verified.asset}, not {asset}")
        if verified.amount_minor is not None and amount_minor is not None \
                and verified.amount_minor != amount_minor:
            raise PaymentAmountMismatch(
                f"the payment is {verified.amount_minor} minor units, not {amount_minor}")
        amount = verified.amount_minor if verified.amount_minor is not None else amount_minor
        if amount is None or amount <= 0:
            raise AmountNotPositive("the payment amount must be greater than zero")
        self.claim(session, tenant_id, rail.name, verified.external_id, kind=kind, owner=owner,
                   amount_minor=amount, asset=asset, now_ns=now_ns)
        return ClaimedPayment(rail.name, verified.external_id, proof, amount, asset, verified.simulated)

    def mark_processed(
        self, session: Session, tenant_id: str, rail: str, external_id: str, *, transfer_id: str | None,
        now_ns: int,
    ) -> PaymentInbox:
        row = self.get_incoming(session, tenant_id, rail, external_id)
        if row is None:
            raise ValueError(f"payment {rail}:{external_id} is not in this tenant's inbox")
        row.status = "processed"
        row.processed_at = now_ns
        row.transfer_id = transfer_id
        session.flush()
        return row

    def get_incoming(self, session: Session, tenant_id: str, rail: str, external_id: str) -> PaymentInbox | None:
        """The inbox row, if it belongs to `tenant_id` (another tenant's is invisible)."""
        row = session.get(PaymentInbox, (rail, external_id))
        return row if row is not None and row.tenant_id == tenant_id else None


payment_service = PaymentService()
