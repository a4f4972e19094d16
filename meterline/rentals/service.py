"""Rentals: prepaid contracts (SI64) and pay-as-you-go sessions (Dante) on one state machine.

    PENDING_PAYMENT → ACTIVE → (EXPIRED | TERMINATED | ENDED) → SETTLED

Escrow is a series of ledger holds wallet → escrow (`rental_holds`). Usage cost
is computed on read (accrual.py); nothing is written to the ledger per sample.
Settlement is ONE linked ledger batch: post the used part of the holds (the
rest is released back to the wallet), debit a pay-as-you-go session's usage
beyond its holds from the wallet (as far as it can pay; the rest is recorded as
unpaid), pay the provider's share and the platform fee out of escrow, and
return the refund through the rail the money came from. Every operation locks the rental row first, so concurrent settle /
extend / sample calls serialise and a rental settles exactly once.
"""

from __future__ import annotations

import secrets
import string
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Select, func, literal, select, tuple_
from sqlalchemy.orm import Session

from meterline.clock import Clock
from meterline.db.base import BIGINT_MAX, bigint_text
from meterline.ledger.models import Account
from meterline.ledger.service import ledger_service
from meterline.ledger.types import TransferFlags, TransferIn, TransferResult
from meterline.payments.rails import SIMULATION_MODE, known_rail
from meterline.pricing.engine import Quote, billable_seconds, split_fee
from meterline.rentals import accrual
from meterline.rentals import events as rental_events
from meterline.rentals.errors import (  # noqa: F401 (callers import them from here too)
    InsufficientFunds,
    InsufficientPayment,
    InvalidRentalRequest,
    LedgerRefused,
    NoDeviceAvailable,
    RentalAlreadySettled,
    RentalError,
    RentalExpired,
    RentalNotActive,
    RentalNotFound,
)
from meterline.rentals.models import Rental, RentalHold, RentalSample
from meterline.rentals.values import (
    Accrual,
    AccrualState,
    ExtendResult,
    RentalState,
    Settlement,
)
from meterline.wallets.service import wallet_service

# -- states -----------------------------------------------------------------------

PENDING_PAYMENT = "PENDING_PAYMENT"
ACTIVE = "ACTIVE"
EXPIRED = "EXPIRED"
TERMINATED = "TERMINATED"
ENDED = "ENDED"
SETTLED = "SETTLED"
OPEN_STATES = (ACTIVE,)

PREPAID = "prepaid"
PAYG = "payg"

# Sample fields accepted, with the largest value that makes physical sense.
SAMPLE_FIELDS: dict[str, Decimal] = {
    "cpu_percent": Decimal(100),
    "memory_mb": Decimal(10**9),
    "disk_io_mbps": Decimal(10**9),
    "network_io_mbps": Decimal(10**9),
    "gpu_util_percent": Decimal(100),
    "vram_used_gb": Decimal(10**6),
    # One device's draw — an 8-GPU server is about 10 kW. The bound also keeps the exact energy
    # integral (Σ (p₁ + p₂) × Δt, in mW·ms) inside 64 bits for 14 years of samples, past the
    # 10-year term: at 1 MW it overflowed after 53 days and every later sample was a 500.
    "power_w": Decimal(10_000),
}
PAYG_SLICE_S = 300  # a pay-as-you-go session holds five minutes ahead (at what it is charged now)
PAYG_RENEW_BELOW_S = 120  # and tops up when less than two minutes of cover remain
PAYG_MAX_S = 365 * 24 * 3600
MAX_TERM_S = 10 * 365 * 24 * 3600  # a prepaid contract's whole term, extensions included

_ID_ALPHABET = string.ascii_uppercase + string.digits
LINKED = int(TransferFlags.LINKED)
POST_LINKED = int(TransferFlags.POST_PENDING) | LINKED
VOID_LINKED = int(TransferFlags.VOID_PENDING) | LINKED


def new_contract_id() -> str:
    return "CTR-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


class RentalService:
    # -- reads ------------------------------------------------------------------
    def get(self, session: Session, tenant_id: str, rental_id: str, *, lock: bool = False) -> Rental:
        rental = session.get(Rental, (tenant_id, rental_id), with_for_update=lock or None,
                             populate_existing=lock)
        if rental is None:
            raise RentalNotFound(f"contract {rental_id} does not exist")
        return rental

    def accrual(self, rental: AccrualState, now_ns: int) -> Accrual:
        if rental.status == SETTLED:
            assert rental.used_minor is not None
            return Accrual(rental.settled_at or now_ns, self._elapsed(rental, now_ns), rental.used_minor,
                           rental.held_minor)
        secs = self._elapsed(rental, now_ns)
        cost = accrual.accrued_minor(rental.rate_num, rental.rate_den, secs, rental.power_cost_e6,
                                     rental.held_minor, rental.rounding)
        return Accrual(now_ns, secs, cost, rental.held_minor)

    def running_cost(self, rental: RentalState, now_ns: int) -> Accrual:
        """The cost shown for a running rental: for a pay-as-you-go session the committed cost
        (`committed_minor`, the figure its renewal judges cover by — uncapped, with the power
        drawn since the last sample); for a prepaid contract, or once settled, `accrual`."""
        if rental.style != PAYG or rental.status == SETTLED:
            return self.accrual(rental, now_ns)
        return Accrual(now_ns, self._elapsed(rental, now_ns), self.committed_minor(rental, now_ns),
                       rental.held_minor)

    @staticmethod
    def _elapsed(rental: AccrualState, now_ns: int) -> int:
        stop = rental.ended_at if rental.ended_at is not None else rental.expires_at
        return accrual.elapsed_seconds(rental.started_at, now_ns, stop)

    def list_rentals(
        self,
        session: Session,
        tenant_id: str,
        *,
        status: str | None = None,
        statuses: tuple[str, ...] | None = None,
        customer: tuple[str, str] | None = None,
        style: str | None = None,
        after: str | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> tuple[list[Rental], str | None]:
        """Rentals in creation order (contract ids are random, so id order means nothing to a
        reader), keyset-paged: `after` is the previous page's cursor, "<created_at>:<id>"."""
        stmt: Select[Any] = select(Rental).where(Rental.tenant_id == tenant_id)
        if status:
            stmt = stmt.where(Rental.status == status)
        if statuses:
            stmt = stmt.where(Rental.status.in_(statuses))
        if customer:
            stmt = stmt.where(Rental.customer_type == customer[0], Rental.customer_id == customer[1])
        if style:
            stmt = stmt.where(Rental.style == style)
        if after:
            created, _, rid = after.partition(":")
            created_ns = bigint_text(created)
            if created_ns is None or not rid:
                raise InvalidRentalRequest("the cursor is not valid")
            key = tuple_(Rental.created_at, Rental.id)
            mark = tuple_(literal(created_ns, BigInteger), literal(rid))
            stmt = stmt.where(key < mark if newest_first else key > mark)
        order = (Rental.created_at.desc(), Rental.id.desc()) if newest_first else (Rental.created_at, Rental.id)
        rows = list(session.scalars(stmt.order_by(*order).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (f"{rows[-1].created_at:019d}:{rows[-1].id}" if more and rows else None)

    def totals(self, session: Session, tenant_id: str, now_ns: int, *, asset: str | None = None,
               style: str | None = None) -> dict[str, int]:
        """Held, used and refundable over all active rentals — in SQL, exactly as shown per rental.

        Minor units of different assets don't add up: pass `asset` whenever rentals in
        more than one asset exist (SI64 contracts are in SOL, GPU sessions in DGPU). `style`
        limits the totals to one kind (a profile's books show only the rentals it serves).
        """
        dialect = session.get_bind().dialect.name
        used = accrual.accrued_minor_sql(Rental, now_ns, dialect)
        scope = [Rental.tenant_id == tenant_id] + ([Rental.asset == asset] if asset is not None else [])
        scope += [Rental.style == style] if style is not None else []
        row = session.execute(
            select(func.count(), func.coalesce(func.sum(Rental.held_minor), 0), func.coalesce(func.sum(used), 0))
            .where(*scope, Rental.status == ACTIVE)
        ).one()
        settled = session.execute(
            select(func.count(), func.coalesce(func.sum(Rental.used_minor), 0),
                   func.coalesce(func.sum(Rental.refund_minor), 0),
                   func.coalesce(func.sum(Rental.fee_minor), 0))
            .where(*scope, Rental.status == SETTLED)
        ).one()
        held, used_sum = int(row[1]), int(row[2])
        return {
            "active_count": int(row[0]),
            "active_held": held,
            "active_used": used_sum,
            "active_refundable": held - used_sum,
            "settled_count": int(settled[0] or 0),
            "settled_used": int(settled[1] or 0),
            "settled_refunded": int(settled[2] or 0),
            "platform_fees": int(settled[3] or 0),
        }

    def samples(self, session: Session, tenant_id: str, rental_id: str, *, limit: int = 500) -> list[RentalSample]:
        self.get(session, tenant_id, rental_id)
        stmt = (
            select(RentalSample)
            .where(RentalSample.tenant_id == tenant_id, RentalSample.rental_id == rental_id)
            .order_by(RentalSample.ts.desc())
            .limit(limit)
        )
        return list(session.scalars(stmt))

    def holds(self, session: Session, tenant_id: str, rental_id: str) -> list[RentalHold]:
        stmt = (
            select(RentalHold)
            .where(RentalHold.tenant_id == tenant_id, RentalHold.rental_id == rental_id)
            .order_by(RentalHold.ordinal)
        )
        return list(session.scalars(stmt))

    # -- creating ------------------------------------------------------------------
    def create(
        self,
        session: Session,
        tenant_id: str,
        *,
        style: str,
        customer_type: str,
        customer_id: str,
        wallet_account_id: str,
        escrow_account_id: str,
        asset: str,
        scale: int,
        quote: Quote,
        duration_s: int | None,
        initial_hold_minor: int,
        payment_rail: str,
        payment_proof: str | None,
        refund_to_rail: bool,
        provider_id: str | None,
        device_id: str | None,
        tier: str | None,
        gpu_model: str | None,
        vram_gb: int | None,
        clock: Clock,
        rental_id: str | None = None,
    ) -> Rental:
        """Create an ACTIVE rental and place its first escrow hold (wallet → escrow).

        The wallet must already hold the funds (callers deposit first); a
        shortfall is `InsufficientFunds` and nothing is written.
        """
        if initial_hold_minor <= 0:
            raise InvalidRentalRequest("the first hold must be positive")
        locked = accrual.lock_rate(quote.hourly_rate, scale)
        num, den = accrual.rate_fraction(locked, scale)
        try:
            accrual.check_rate_fits(num, duration_s or PAYG_MAX_S)
        except accrual.RateTooLarge as exc:
            raise InvalidRentalRequest(str(exc)) from None
        now = clock.now_ns()
        rental = Rental(
            tenant_id=tenant_id, id=rental_id or new_contract_id(), style=style, status=ACTIVE,
            customer_type=customer_type, customer_id=customer_id, wallet_account_id=wallet_account_id,
            escrow_account_id=escrow_account_id, provider_id=provider_id, device_id=device_id, tier=tier,
            gpu_model=gpu_model, vram_gb=vram_gb, asset=asset, scale=scale,
            quote=quote.to_dict(), payment_rail=payment_rail, payment_proof=payment_proof,
            refund_to_rail=refund_to_rail, held_minor=0, duration_s=duration_s, created_at=now, started_at=now,
            expires_at=now + duration_s * accrual.NS if duration_s is not None else None,
            rate_num=num, rate_den=den, rounding=quote.rounding.value, power_cost_e6=0, energy2_mw_ms=0, sample_count=0, hold_count=0,
        )
        session.add(rental)
        session.flush()
        self._accounts_of(session, rental, now)
        self._place_hold(session, rental, initial_hold_minor, "initial", clock)
        rental_events.started(session, rental, now)
        return rental

    @staticmethod
    def settlement_accounts(session: Session, tenant_id: str, *, provider_id: str | None, asset: str,
                            refund_rail: str | None, now: int) -> tuple[Account, Account, Account | None]:
        """The accounts a settlement credits — the provider's earnings (or platform revenue),
        the platform's fees and, for a refund through a rail, the rail's external account —
        created if new.

        Called before a rental's first ledger post and before each renewal's, not only at
        settlement: a ledger post holds the tenant's ledger head until its transaction ends,
        and creating an account while holding it waits for any transaction that created the
        same account first — which may itself be waiting for the head. A new provider's first
        settlements deadlocked that way (a session ended while the worker terminated another)."""
        provider = (wallet_service.provider_earnings_account(session, tenant_id, provider_id, asset, now)
                    if provider_id else wallet_service.system_account(session, tenant_id, "platform_revenue",
                                                                      asset, now))
        fees = wallet_service.system_account(session, tenant_id, "platform_fees", asset, now)
        rail = (wallet_service.external_account(session, tenant_id, refund_rail, asset, now)
                if refund_rail is not None else None)
        return provider, fees, rail

    def _accounts_of(self, session: Session, rental: Rental, now: int) -> tuple[Account, Account, Account | None]:
        return self.settlement_accounts(
            session, rental.tenant_id, provider_id=rental.provider_id, asset=rental.asset,
            refund_rail=known_rail(rental.payment_rail).name if rental.refund_to_rail else None, now=now)

    def _place_hold(self, session: Session, rental: Rental, amount: int, kind: str, clock: Clock) -> RentalHold:
        ordinal = rental.hold_count + 1
        transfer_id = f"rent:{rental.id}:hold:{ordinal}"
        result = self._post(session, rental.tenant_id, [TransferIn(
            id=transfer_id, debit_account_id=rental.wallet_account_id,
            credit_account_id=rental.escrow_account_id, amount=amount, asset=rental.asset,
            flags=TransferFlags.PENDING, code="rental_hold", reference=rental.id,
        )], clock)[0]
        if result.result == "exceeds_credits":
            raise InsufficientFunds(f"the wallet cannot fund a hold of {amount} minor units")
        self._require_ok([result])
        hold = RentalHold(tenant_id=rental.tenant_id, transfer_id=transfer_id, rental_id=rental.id,
                          ordinal=ordinal, amount_minor=amount, kind=kind, created_at=clock.now_ns())
        session.add(hold)
        rental.hold_count = ordinal
        rental.held_minor += amount
        session.flush()
        return hold

    # -- changing ------------------------------------------------------------------
    def extend(self, session: Session, tenant_id: str, rental_id: str, *, added_seconds: int,
               added_minor: int, clock: Clock) -> ExtendResult:
        """Prolong a prepaid contract by `added_seconds`, holding `added_minor` more from the wallet."""
        rental = self._lock_active(session, tenant_id, rental_id, clock)
        if rental.style != PREPAID or rental.expires_at is None or rental.duration_s is None:
            raise RentalNotActive("only prepaid contracts are extended; sessions renew their hold")
        if added_seconds <= 0 or added_minor <= 0:
            raise InvalidRentalRequest("an extension must add time and money")
        if rental.duration_s + added_seconds > MAX_TERM_S:  # (each extension alone was capped, not the sum)
            raise InvalidRentalRequest(f"a contract's term is at most {MAX_TERM_S // (365 * 24 * 3600)} years")
        try:
            accrual.check_rate_fits(rental.rate_num, rental.duration_s + added_seconds)
        except accrual.RateTooLarge as exc:
            raise InvalidRentalRequest(str(exc)) from None
        self._place_hold(session, rental, added_minor, "extend", clock)
        rental.expires_at += added_seconds * accrual.NS
        rental.duration_s += added_seconds
        session.flush()
        rental_events.extended(session, rental, added_seconds, added_minor, clock.now_ns())
        return ExtendResult(rental, added_seconds, added_minor)

    def record_sample(self, session: Session, tenant_id: str, rental_id: str, values: dict[str, Any],
                      clock: Clock, *, owner: str | None = None,
                      style: str | None = None) -> tuple[Rental, Accrual]:
        """Store a metrics sample and fold its power into the rental's exact energy integral.
        `owner`: the customer id the caller must be (None: any); another's is not found.
        `style`: the kind of rental the caller addresses (None: any); another kind is not found."""
        clean = self.validate_sample(values)
        rental = self.get(session, tenant_id, rental_id, lock=True)
        if (owner is not None and rental.customer_id != owner) or (style is not None and rental.style != style):
            raise RentalNotFound(f"contract {rental_id} does not exist")
        self.check_active(rental, clock.now_ns())
        now = clock.now_ns()
        at = sample_time(rental, now)
        power_mw = self.fold_sample(rental, clean, at)
        session.add(RentalSample(tenant_id=tenant_id, rental_id=rental_id, ts=at, power_mw=power_mw,
                                 values=sample_values(clean)))
        session.flush()
        return rental, self.running_cost(rental, now)

    @staticmethod
    def fold_sample(rental: RentalState, clean: dict[str, Decimal], now: int) -> int | None:
        """Count a (validated) sample taken at `now` and fold its power into the rental's exact
        energy integral. Returns its power in integer mW, as stored on the sample row.

        The one place this math lives: `record_sample` and the sample batcher (sampler.py,
        which folds a group-committed batch in arrival order per rental) both call it. `now`
        is taken no earlier than the rental's start (`sample_time`): callers store that time.
        """
        now = sample_time(rental, now)
        power_mw = None
        if "power_w" in clean:
            power_mw = int((clean["power_w"] * 1000).to_integral_value())
            last = rental.last_sample_at
            if last is None or now >= last:
                if last is not None and rental.last_power_mw is not None:
                    # Intervals on a millisecond grid (floor of each end), so they telescope:
                    # however many samples arrive, no sub-millisecond remainder is ever lost.
                    dt_ms = now // 1_000_000 - last // 1_000_000
                    energy2 = rental.energy2_mw_ms + (rental.last_power_mw + power_mw) * dt_ms
                    if energy2 > BIGINT_MAX:  # (a session sampled at 10 kW for over 14 years)
                        raise InvalidRentalRequest("the session's energy total is out of range; end it")
                    rental.energy2_mw_ms = energy2
                    rental.power_cost_e6 = accrual.power_cost_e6(power_rate(rental.quote), rental.scale,
                                                                 rental.energy2_mw_ms)
                rental.last_power_mw = power_mw
                rental.last_sample_at = now
            # else: a sample stamped before the last one (another process's clock behind):
            # stored, but folding it in would integrate an interval twice.
        rental.sample_count += 1
        return power_mw

    @staticmethod
    def validate_sample(values: dict[str, Any], *, ignore_unknown: bool = False) -> dict[str, Decimal]:
        """The sample's metrics as exact Decimals, each checked against its physical range.

        `ignore_unknown`: names that are not metrics are skipped (a parsed request body, whose
        other fields the schema ignores) instead of refused. None means "not measured".
        """
        clean: dict[str, Decimal] = {}
        errors = []
        for name, raw in values.items():
            limit = SAMPLE_FIELDS.get(name)
            if limit is None:
                if not ignore_unknown:
                    errors.append(f"unknown metric {name!r}")
                continue
            kind = type(raw)
            # The JSON parser's two number types first (exact checks; a bool is not an int here).
            if kind is Decimal:
                d = raw
            elif kind is int:
                d = Decimal(raw)
            elif raw is None:
                continue
            elif isinstance(raw, bool) or not isinstance(raw, int | Decimal | str):
                errors.append(f"{name} must be a number")
                continue
            else:
                try:
                    d = Decimal(raw)
                except ArithmeticError:
                    errors.append(f"{name} must be a number")
                    continue
            if not d.is_finite() or d < 0 or d > limit:
                errors.append(f"{name} must be between 0 and {limit}")
                continue
            clean[name] = d
        if errors:
            raise InvalidRentalRequest("; ".join(errors))
        return clean

    def _lock_active(self, session: Session, tenant_id: str, rental_id: str, clock: Clock) -> Rental:
        rental = self.get(session, tenant_id, rental_id, lock=True)
        self.check_active(rental, clock.now_ns())
        return rental

    @staticmethod
    def check_active(rental: AccrualState, now_ns: int) -> None:
        """The rule for changing a running rental (samples, extension): it must be ACTIVE and
        not past its term — settled is `contract_already_settled`, else not active / expired."""
        if rental.status == SETTLED:
            raise RentalAlreadySettled(f"contract {rental.id} is already settled")
        if rental.status != ACTIVE:
            raise RentalNotActive(f"contract {rental.id} is {rental.status}")
        if rental.expires_at is not None and now_ns >= rental.expires_at:
            raise RentalExpired(f"contract {rental.id} expired; it will be settled")

    # -- pay-as-you-go cover -----------------------------------------------------
    def renew_cover(self, session: Session, tenant_id: str, rental_id: str, clock: Clock) -> str:
        """Top up a session's rolling hold; terminate it when the wallet can't fund the top-up.

        The hold tracks what the session is charged: time at the locked rate plus power at the
        draw last metered — not the quote's power estimate, which is never charged (see
        `slice_minor`). Cover is what is held beyond what has been used (`committed_minor`),
        counting the power drawn since the last power sample at its draw.

        Usage can run past the holds: a sample after a long gap charges its trapezoid at once
        (more than the cover counted when the draw rose), and a worker that was down let time
        run on. So one hold covers that shortfall *and* the next slice — catching up in one
        sweep, where a slice per sweep left the session on unheld usage for as many sweeps.
        When the wallet cannot fund it the session is terminated; its settlement then collects
        what the wallet can still pay (see `settle`).

        Returns "ok", "renewed" or "terminated".
        """
        rental = self.get(session, tenant_id, rental_id, lock=True)
        if rental.status != ACTIVE or rental.style != PAYG:
            return "ok"
        now = clock.now_ns()
        slice_ = self.slice_minor(rental)
        cover_left = rental.held_minor - self.committed_minor(rental, now)
        # Cover is measured at the slice's own burn rate (time plus the metered draw, what a
        # slice is sized for), in integers: cover_left / (slice / SLICE_S) < RENEW_BELOW_S.
        if cover_left * PAYG_SLICE_S >= slice_ * PAYG_RENEW_BELOW_S:
            return "ok"
        self._accounts_of(session, rental, now)  # (before the hold: see there)
        try:
            self._place_hold(session, rental, slice_ + max(0, -cover_left), "rolling", clock)
        except InsufficientFunds:
            self.settle(session, tenant_id, rental_id, clock, reason="insufficient_funds")
            return "terminated"
        return "renewed"

    @staticmethod
    def slice_minor(rental: RentalState) -> int:
        """The session's next slice: PAYG_SLICE_S of time, and of power at its last metered draw."""
        return slice_minor(rental.rate_num, rental.rate_den, power_rate(rental.quote), rental.last_power_mw or 0,
                           rental.scale)

    def committed_minor(self, rental: RentalState, now_ns: int) -> int:
        """What the session has used by `now_ns`, uncapped by its holds: the accrual, plus the
        power drawn since its last power sample at that sample's draw (the tail rule,
        `accrual.energy2_until`). The next sample charges that interval by the trapezoid rule;
        if none comes, settlement charges it as counted here — so it is spent either way."""
        stop = now_ns if rental.ended_at is None else min(now_ns, rental.ended_at)
        return accrual.accrued_minor(rental.rate_num, rental.rate_den, self._elapsed(rental, now_ns),
                                     self._power_e6_until(rental, stop), accrual.UNCAPPED, rental.rounding)

    @staticmethod
    def _power_e6_until(rental: RentalState, until_ns: int) -> int:
        """The power cost (millionths of a minor unit) metered, plus the tail at the last draw."""
        if not rental.last_power_mw or rental.last_sample_at is None:
            return rental.power_cost_e6
        energy2 = accrual.energy2_until(rental.energy2_mw_ms, rental.last_power_mw, rental.last_sample_at, until_ns)
        return accrual.power_cost_e6(power_rate(rental.quote), rental.scale, energy2)

    # -- settling ------------------------------------------------------------------
    def settle(self, session: Session, tenant_id: str, rental_id: str, clock: Clock, *,
               reason: str = "settled") -> Settlement:
        """End (if still running) and settle in one linked ledger batch. Exactly once.

        The cost (`final_cost`) is posted from the holds (the rest is released to the
        wallet). A pay-as-you-go session's cost beyond its holds is debited from its wallet
        in the same chain, as far as the wallet's available balance goes at this moment;
        what it cannot pay is recorded on the rental as `unpaid_minor`, never dropped.
        What was collected is split between the provider's earnings and the platform fee
        by largest remainder, and the refund is returned through the rail the payment came
        from. Transfer ids are `rent:<id>:…`, so a retried batch never moves money twice.
        """
        rental = self.get(session, tenant_id, rental_id, lock=True)
        if rental.status == SETTLED:
            raise RentalAlreadySettled(f"contract {rental_id} is already settled")
        now = clock.now_ns()
        if rental.status == ACTIVE:
            expired = rental.expires_at is not None and now >= rental.expires_at
            rental.ended_at = rental.expires_at if expired else now
            rental.status = EXPIRED if expired else (TERMINATED if reason == "insufficient_funds" else ENDED)
            rental.end_reason = "expired" if expired else reason
        quote = Quote.from_dict(rental.quote)
        cost = self.final_cost(rental, quote)
        # (Accounts first: created while holding the ledger head, they could deadlock — see there.)
        provider_acct, fee_acct, rail_acct = self._accounts_of(session, rental, now)
        from_holds = min(cost, rental.held_minor)
        overage = 0
        if cost > from_holds:  # (pay-as-you-go only: a prepaid contract's cost is capped at held)
            # Read the wallet and post on it under the ledger head, so the balance read stays
            # true until the post. Its holds are all posted in full in this chain (pending →
            # posted), which leaves its available balance as it is now.
            ledger_service.lock_writes(session, tenant_id)
            available = wallet_service.balance(session, tenant_id, rental.customer_type, rental.customer_id,
                                               rental.asset).available
            overage = min(cost - from_holds, max(0, available))
        used = from_holds + overage
        unpaid = cost - used
        provider_minor, fee_minor = split_fee(quote, used)
        refund = rental.held_minor - from_holds
        rail = known_rail(rental.payment_rail) if rental.refund_to_rail else None
        refund_acct = rail_acct if refund > 0 else None
        transfers = self._settlement_transfers(
            rental, self.holds(session, tenant_id, rental_id), from_holds, provider_minor, fee_minor, refund,
            provider_account_id=provider_acct.id, fee_account_id=fee_acct.id,
            refund_account_id=refund_acct.id if refund_acct is not None else None,
            refund_simulated=rail is not None and rail.simulated, overage=overage,
        )
        self._require_ok(self._post(session, tenant_id, transfers, clock))
        refund_tx = None
        if rail is not None and refund > 0:
            # Simulation answers at once; a real rail's send belongs in a job after commit.
            refund_tx = rail.send(tenant_id, destination=rental.customer_id, amount_minor=refund,
                                  asset=rental.asset, reference=f"rent:{rental.id}:refund").tx_signature
        rental.status = SETTLED
        rental.settled_at = now
        rental.used_minor = used
        rental.refund_minor = refund
        rental.provider_minor = provider_minor
        rental.fee_minor = fee_minor
        rental.refund_tx = refund_tx
        rental.unpaid_minor = unpaid if rental.style == PAYG else None
        session.flush()
        rental_events.settled(session, rental, now)
        return Settlement(rental, used, refund, provider_minor, fee_minor, refund_tx, unpaid)

    def final_cost(self, rental: Rental, quote: Quote) -> int:
        """Cost at the end: the billable seconds (whole seconds elapsed, at least the minimum
        session, rounded up to the granularity) at the locked rate, plus power, rounded once.

        A prepaid contract never bills past its term, nor more than was prepaid (held): its
        price is agreed up front. A pay-as-you-go session is billed in full — power metered
        by the trapezoid rule plus the tail since the last sample at its draw (the rule
        `committed_minor` counts by) — whatever its holds; settlement collects the excess.
        """
        assert rental.ended_at is not None
        billable = billable_seconds(quote, accrual.elapsed_seconds(rental.started_at, rental.ended_at, None))
        if rental.duration_s is not None:
            billable = min(billable, rental.duration_s)  # a prepaid contract never bills past its term
            return accrual.accrued_minor(rental.rate_num, rental.rate_den, billable, rental.power_cost_e6,
                                         rental.held_minor, rental.rounding)
        return accrual.accrued_minor(rental.rate_num, rental.rate_den, billable,
                                     self._power_e6_until(rental, rental.ended_at), accrual.UNCAPPED,
                                     rental.rounding)

    def _settlement_transfers(
        self,
        rental: Rental,
        holds: list[RentalHold],
        used: int,
        provider_minor: int,
        fee_minor: int,
        refund: int,
        *,
        provider_account_id: str | None,
        fee_account_id: str | None,
        refund_account_id: str | None,
        refund_simulated: bool = False,
        overage: int = 0,
    ) -> list[TransferIn]:
        """The settlement as one linked chain: every transfer applies, or none does.

        `used` is what the holds pay; `overage` what the wallet pays beyond them (wallet →
        escrow, `rent:<id>:overage`), so escrow pays out provider + fee == used + overage."""
        base = f"rent:{rental.id}"
        refund_metadata: dict[str, Any] = {"rail": rental.payment_rail}
        if refund_simulated:
            refund_metadata["mode"] = SIMULATION_MODE  # simulated money says so (DESIGN §1.3)
        out: list[TransferIn] = []
        remaining = used
        for hold in holds:
            if remaining > 0:
                # Posting part of a hold releases the rest of it back to the wallet.
                take = min(remaining, hold.amount_minor)
                remaining -= take
                out.append(TransferIn(id=f"{base}:post:{hold.ordinal}", pending_id=hold.transfer_id,
                                      amount=take, flags=POST_LINKED, code="rental_settle",
                                      reference=rental.id))
            else:
                out.append(TransferIn(id=f"{base}:void:{hold.ordinal}", pending_id=hold.transfer_id,
                                      flags=VOID_LINKED, code="rental_release", reference=rental.id))
        if overage > 0:
            out.append(TransferIn(id=f"{base}:overage", debit_account_id=rental.wallet_account_id,
                                  credit_account_id=rental.escrow_account_id, amount=overage,
                                  asset=rental.asset, flags=LINKED, code="rental_overage",
                                  reference=rental.id))
        if provider_minor > 0:
            out.append(TransferIn(id=f"{base}:provider", debit_account_id=rental.escrow_account_id,
                                  credit_account_id=provider_account_id, amount=provider_minor,
                                  asset=rental.asset, flags=LINKED, code="rental_provider_share",
                                  reference=rental.id))
        if fee_minor > 0:
            out.append(TransferIn(id=f"{base}:fee", debit_account_id=rental.escrow_account_id,
                                  credit_account_id=fee_account_id, amount=fee_minor, asset=rental.asset,
                                  flags=LINKED, code="rental_platform_fee", reference=rental.id))
        if refund > 0 and refund_account_id is not None:
            out.append(TransferIn(id=f"{base}:refund", debit_account_id=rental.wallet_account_id,
                                  credit_account_id=refund_account_id, amount=refund, asset=rental.asset,
                                  flags=LINKED, code="rental_refund", reference=rental.id,
                                  metadata=refund_metadata))
        out[-1].flags = int(out[-1].flags) & ~LINKED  # the last transfer closes the chain
        return out

    def due_for_settlement(self, session: Session, now_ns: int, limit: int = 200,
                           after: tuple[int, str, str] | None = None) -> list[tuple[int, str, str]]:
        """(expires_at, tenant, id) of active contracts past their expiry, oldest first.

        Keyset-paged by `after`, so a sweep moves past rentals it could not settle
        instead of re-reading them: one broken row never stalls the ones behind it.
        """
        stmt = select(Rental.expires_at, Rental.tenant_id, Rental.id).where(
            Rental.status == ACTIVE, Rental.expires_at.is_not(None), Rental.expires_at <= now_ns)
        if after is not None:
            stmt = stmt.where(tuple_(Rental.expires_at, Rental.tenant_id, Rental.id) > tuple_(*after))
        stmt = stmt.order_by(Rental.expires_at, Rental.tenant_id, Rental.id).limit(limit)
        return [(int(r[0] or 0), r[1], r[2]) for r in session.execute(stmt)]

    def active_sessions(self, session: Session, limit: int = 1000,
                        after: tuple[str, str] | None = None) -> list[tuple[str, str]]:
        """(tenant, id) of active pay-as-you-go sessions in key order; `after` pages on."""
        stmt = select(Rental.tenant_id, Rental.id).where(Rental.status == ACTIVE, Rental.style == PAYG)
        if after is not None:
            stmt = stmt.where(tuple_(Rental.tenant_id, Rental.id) > tuple_(literal(after[0]), literal(after[1])))
        stmt = stmt.order_by(Rental.tenant_id, Rental.id).limit(limit)
        return [(r[0], r[1]) for r in session.execute(stmt)]

    # -- plumbing -------------------------------------------------------------------
    @staticmethod
    def _post(session: Session, tenant_id: str, transfers: list[TransferIn], clock: Clock) -> list[TransferResult]:
        return ledger_service.post(session, tenant_id, transfers, clock)

    @staticmethod
    def _require_ok(results: list[TransferResult]) -> None:
        bad = [r for r in results if not r.ok]
        if bad:
            detail = ", ".join(f"{r.id}: {r.result}" for r in bad if r.result != "linked_event_failed")
            raise LedgerRefused(f"the ledger refused the batch ({detail})")


def sample_time(rental: AccrualState, now_ns: int) -> int:
    """When a sample counts from: its stamp, but never before the rental started. A stamp
    behind the start (the API process's clock behind the one that started the session)
    integrated power over time before the session existed; it counts from the start."""
    return now_ns if now_ns >= rental.started_at else rental.started_at


def sample_values(clean: dict[str, Decimal]) -> dict[str, str]:
    """A validated sample's values as stored: exact decimal strings."""
    return {k: str(v) for k, v in clean.items()}


def power_rate(quote: dict[str, Any]) -> Decimal:
    """The locked quote's power price per watt-hour."""
    return Decimal(str(quote["power_rate_per_wh"]))


def slice_minor(rate_num: int, rate_den: int, power_rate_per_wh: Decimal, power_mw: int, scale: int) -> int:
    """One rolling slice of a session: PAYG_SLICE_S of time at the locked rate plus as long of
    power at `power_mw`, rounded up — what the session will be charged for the slice if its
    draw holds.

    `power_mw` is the draw last metered, 0 before the first power sample. Not the quote's
    `estimated_power_w`: power is charged only as metered, between samples, so power before
    the first sample is never charged, and after it the measured draw is what accrues. Holding
    the estimate (by default the card's power limit) over-reserved a session whose power is
    not metered or is below it — 2.8× the charge for half a 4090 at its 450 W limit, refusing
    or ending sessions the wallet could pay for — and under-reserved one drawing more than it
    (`watts: 0`), whose charge then ran past its holds and was capped, unbilled.
    """
    energy2 = 2 * power_mw * PAYG_SLICE_S * 1000
    power_e6 = accrual.power_cost_e6(power_rate_per_wh, scale, energy2)
    time_e6 = -(-rate_num * PAYG_SLICE_S * accrual.E6 // rate_den)
    return max(1, -(-(time_e6 + power_e6) // accrual.E6))


def term_price(rental_or_rate: tuple[int, int, str], seconds: int) -> int:
    """The price of `seconds` of a contract at its locked rate (no power: tiers are all-in)."""
    num, den, rounding = rental_or_rate
    return accrual.accrued_minor(num, den, seconds, 0, accrual.UNCAPPED, rounding)


def parse_hours(value: Any, field: str = "duration_hours") -> int:
    """Hours as an exact decimal (JSON number parsed as Decimal, or a string) → whole seconds.

    Refuses floats (a parser bug upstream), sub-second precision and non-positive values.
    """
    if isinstance(value, bool | float) or not isinstance(value, int | Decimal | str):
        raise InvalidRentalRequest(f"{field} must be a number")
    try:
        d = Decimal(value)
    except ArithmeticError:
        raise InvalidRentalRequest(f"{field} must be a number") from None
    if not d.is_finite():
        raise InvalidRentalRequest(f"{field} must be a number")
    if d.adjusted() >= 10:  # (bounded before multiplying, without context: 1e999999999 overflows)
        raise InvalidRentalRequest(f"{field} is too long" if d > 0 else f"{field} must be positive")
    seconds = d * 3600
    if seconds <= 0:
        raise InvalidRentalRequest(f"{field} must be positive")
    if seconds > MAX_TERM_S:
        raise InvalidRentalRequest(f"{field} is too long")
    if seconds != seconds.to_integral_value():
        raise InvalidRentalRequest(f"{field} must be a whole number of seconds")
    return int(seconds)


rental_service = RentalService()
