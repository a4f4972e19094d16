"""Prepaid contracts (SI64): rent, accrue, extend, settle — every figure to the lamport.

M2 is priced at 0.001 SOL/h (the demo book): 1,000,000 lamports per hour, i.e.
2500/9 lamports per second. Every test runs on both backends, in its own tenant,
with real commits (one `db.session()` per request, as the API does).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from meterline.catalog.service import TierNotFound
from meterline.clock import FrozenClock
from meterline.config import Settings
from meterline.db.engine import Database
from meterline.ledger.models import Account, Transfer
from meterline.ledger.types import TransferFlags
from meterline.ledger.verify import verify_ledger
from meterline.money import parse_amount
from meterline.payments.models import PaymentInbox
from meterline.payments.rails import (
    _RAILS,
    SIMULATION_MODE,
    RailDisabled,
    SimulationRail,
    VerifiedPayment,
    configure_rails,
)
from meterline.payments.service import InvalidPaymentProof, PaymentProofReused
from meterline.pricing.service import pricing_service
from meterline.rentals.contracts import contract_service
from meterline.rentals.models import Rental
from meterline.rentals.service import (
    ACTIVE,
    MAX_TERM_S,
    SETTLED,
    InsufficientFunds,
    InsufficientPayment,
    InvalidRentalRequest,
    RentalAlreadySettled,
    RentalExpired,
    RentalNotFound,
    parse_hours,
    rental_service,
)
from meterline.wallets.service import wallet_service
from tests.factories import make_demo_tenant

NS = 1_000_000_000
HOUR = 3600
WALLET = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU"
WAL = f"wal:wallet:{WALLET}:SOL"
ESCROW = "sys:escrow:SOL"
EARN = "earn:provider:si64:SOL"
FEES = "sys:platform_fees:SOL"
EXT = "sys:external:simulation:SOL"
LINKED = int(TransferFlags.LINKED)


def lamports_for(seconds: int) -> int:
    """The M2 price of `seconds`, half-up, computed independently of the service."""
    q, r = divmod(seconds * 1_000_000, HOUR)
    return q + (2 * r >= HOUR)


@pytest.fixture
def tenant(db: Database, tenant_id: str, clock: FrozenClock) -> str:
    with db.session() as s:
        make_demo_tenant(s, tenant_id, clock)
    return tenant_id


def rent(db: Database, tenant: str, clock: FrozenClock, *, seconds: int = HOUR, paid: int | None = 1_000_000,
         proof: str = "tx-1", wallet: str = WALLET, rail: str | None = None) -> str:
    with db.session() as s:
        result = contract_service.rent(s, tenant, wallet=wallet, tier="M2", duration_s=seconds, paid_minor=paid,
                                       proof=proof, rail=rail, clock=clock)
        return result.rental.id


def balance(db: Database, tenant: str, account_id: str) -> tuple[int, int]:
    """(posted balance credit-normal, debits pending) of an account; (0, 0) if it doesn't exist."""
    with db.session(write=False) as s:
        row = s.get(Account, (tenant, account_id))
        return (0, 0) if row is None else (row.credits_posted - row.debits_posted, row.debits_pending)


def rental_row(db: Database, tenant: str, rental_id: str) -> Rental:
    with db.session(write=False) as s:
        return rental_service.get(s, tenant, rental_id)


def transfers(db: Database, tenant: str, **where: Any) -> list[Transfer]:
    with db.session(write=False) as s:
        stmt = select(Transfer).where(Transfer.tenant_id == tenant)
        for k, v in where.items():
            stmt = stmt.where(getattr(Transfer, k) == v)
        return list(s.scalars(stmt.order_by(Transfer.seq)))


def ledger_ok(db: Database, tenant: str) -> None:
    report = verify_ledger(db, tenant)
    assert report.ok, [str(p) for p in report.problems]


# -- rent ----------------------------------------------------------------------------


def test_rent_holds_the_full_price_in_escrow(db, tenant, clock):
    rid = rent(db, tenant, clock)
    r = rental_row(db, tenant, rid)
    assert (r.status, r.style, r.tier, r.provider_id, r.asset, r.scale) == (ACTIVE, "prepaid", "M2", "si64", "SOL", 9)
    assert r.device_id is not None and r.device_id.startswith("device-m2-")
    assert r.held_minor == 1_000_000 and r.expires_at == r.started_at + HOUR * NS
    assert balance(db, tenant, WAL) == (1_000_000, 1_000_000)  # deposited, all of it held
    with db.session(write=False) as s:
        escrow = s.get(Account, (tenant, ESCROW))
        assert (escrow.credits_pending, escrow.credits_posted) == (1_000_000, 0)
        [hold] = rental_service.holds(s, tenant, rid)
        assert (hold.amount_minor, hold.kind) == (1_000_000, "initial")
    [dep] = transfers(db, tenant, code="deposit")
    assert dep.amount == 1_000_000 and dep.metadata_["mode"] == SIMULATION_MODE
    ledger_ok(db, tenant)


def test_accrual_to_the_lamport_and_cost_plus_refund_is_always_what_was_held(db, tenant, clock):
    rid = rent(db, tenant, clock)
    start = clock.now_ns()
    clock.advance(15)
    r = rental_row(db, tenant, rid)
    acc = rental_service.accrual(r, clock.now_ns())
    assert (acc.elapsed_s, acc.cost_minor, acc.refund_minor, acc.held_minor) == (15, 4_167, 995_833, 1_000_000)
    previous = -1
    for t in [*range(0, 120), *range(120, HOUR + 1, 97), HOUR, HOUR + 1, 2 * HOUR]:
        acc = rental_service.accrual(r, start + t * NS + 999_999_999)  # a second not yet complete is not billed
        assert acc.cost_minor == lamports_for(min(t, HOUR))
        assert acc.cost_minor + acc.refund_minor == r.held_minor == 1_000_000
        assert acc.cost_minor >= previous
        previous = acc.cost_minor
    assert rental_service.accrual(r, start + 2 * HOUR * NS).cost_minor == 1_000_000  # stops at expiry


def test_the_seeds_simulation_rents_a_tenth_of_an_hour_for_0_0001_sol(db, tenant, clock):
    seconds = parse_hours(Decimal("0.1"))
    assert seconds == 360
    with db.session(write=False) as s:
        _quote, scale, price = contract_service.price(s, tenant, "M2", seconds)
    assert price == parse_amount("0.0001", scale) == 100_000
    rid = rent(db, tenant, clock, seconds=seconds, paid=price)
    assert rental_row(db, tenant, rid).held_minor == 100_000


def test_a_short_payment_is_402_and_writes_nothing(db, tenant, clock):
    with pytest.raises(InsufficientPayment) as err:
        rent(db, tenant, clock, paid=999_999)
    assert (err.value.status, err.value.code, err.value.extra["price_minor"]) == (402, "insufficient_payment",
                                                                                   1_000_000)
    with db.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(Rental).where(Rental.tenant_id == tenant)) == 0
        assert s.scalar(select(func.count()).select_from(PaymentInbox).where(PaymentInbox.tenant_id == tenant)) == 0
    assert transfers(db, tenant) == []


def test_an_overpayment_is_held_and_refunded_through_the_rail(db, tenant, clock):
    """Paying 1.5× the price: everything paid is held, billing stops at the price, and the
    surplus returns with the refund — nothing is left stranded in the wallet."""
    rid = rent(db, tenant, clock, paid=1_500_000)
    r = rental_row(db, tenant, rid)
    assert r.held_minor == 1_500_000
    clock.advance(2 * HOUR)  # past the one-hour term
    with db.session() as s:
        done = rental_service.settle(s, tenant, rid, clock)
    assert (done.used_minor, done.refund_minor) == (1_000_000, 500_000)  # the price, never more
    assert done.refund_tx == "SIMULATION_MODE"
    assert balance(db, tenant, WAL) == (0, 0)  # the surplus went back through the rail with the refund
    ledger_ok(db, tenant)


def test_a_replayed_payment_proof_is_409_and_writes_nothing(db, tenant, clock):
    rent(db, tenant, clock, proof="5VERv8NMvzbJMEkV8xnrLkEaWRtSz9CosKDYjCJjBRnbJLgp8uirBgmQpjKhoR4tjF3ZpRzrFmBV6UjKdiSZkQUW")
    before = len(transfers(db, tenant))
    with pytest.raises(PaymentProofReused) as err:
        rent(db, tenant, clock, wallet="another-wallet",
             proof="5VERv8NMvzbJMEkV8xnrLkEaWRtSz9CosKDYjCJjBRnbJLgp8uirBgmQpjKhoR4tjF3ZpRzrFmBV6UjKdiSZkQUW")
    assert err.value.status == 409
    assert len(transfers(db, tenant)) == before
    with db.session(write=False) as s:
        assert s.scalar(select(func.count()).select_from(Rental).where(Rental.tenant_id == tenant)) == 1
        assert s.get(Account, (tenant, "wal:wallet:another-wallet:SOL")) is None
    # ... and extending with a proof already used is refused the same way.
    rid = rent(db, tenant, clock, proof="tx-2")
    with pytest.raises(PaymentProofReused), db.session() as s:
        contract_service.extend(s, tenant, rid, added_s=HOUR, proof="tx-2", paid_minor=None, clock=clock)
    assert rental_row(db, tenant, rid).held_minor == 1_000_000
    ledger_ok(db, tenant)


@pytest.mark.parametrize("bad", [1.5, True, None, "abc", "0", "-1", "0.00001", "NaN", "Infinity", "100000",
                                 # (a Decimal overflow once: multiplied by 3600 before being bounded)
                                 Decimal("1e999999999"), Decimal("-1e999999999"), "1e999999"])
def test_bad_durations_are_refused(bad):
    with pytest.raises(InvalidRentalRequest):
        parse_hours(bad)


def test_bad_rent_requests(db, tenant, clock):
    with pytest.raises(TierNotFound):
        _rent_tier(db, tenant, clock, "M9")
    with pytest.raises(InvalidPaymentProof):
        rent(db, tenant, clock, proof="has space")
    with pytest.raises(InvalidPaymentProof):
        rent(db, tenant, clock, proof="x" * 101)
    assert transfers(db, tenant) == []


def _rent_tier(db: Database, tenant: str, clock: FrozenClock, tier: str) -> None:
    with db.session() as s:
        contract_service.rent(s, tenant, wallet=WALLET, tier=tier, duration_s=HOUR, paid_minor=1_000_000,
                              proof="tx-tier", rail=None, clock=clock)


# -- extend --------------------------------------------------------------------------


def test_extend_covers_a_shortfall_with_a_labelled_simulated_payment(db, tenant, clock):
    rid = rent(db, tenant, clock)
    clock.advance(1200)
    with db.session() as s:
        res = contract_service.extend(s, tenant, rid, added_s=HOUR, proof=None, paid_minor=None, clock=clock)
        assert res.added_minor == 1_000_000
    r = rental_row(db, tenant, rid)
    assert (r.held_minor, r.duration_s, r.hold_count) == (2_000_000, 2 * HOUR, 2)
    [sim] = [t for t in transfers(db, tenant, code="deposit") if "sim-extend" in t.id]
    assert sim.amount == 1_000_000 and sim.metadata_["mode"] == SIMULATION_MODE
    assert sim.metadata_["proof"] == f"sim-extend:{rid}:2"
    with db.session(write=False) as s:
        assert [h.kind for h in rental_service.holds(s, tenant, rid)] == ["initial", "extend"]
    acc = rental_service.accrual(r, clock.now_ns())
    assert (acc.cost_minor, acc.refund_minor) == (lamports_for(1200), 2_000_000 - lamports_for(1200))
    ledger_ok(db, tenant)


def test_contracts_of_one_wallet_extended_at_once_each_top_up_what_they_lack(db, tenant, clock):
    """Each extension reads the wallet's balance to size its simulated top-up; read at once,
    they all saw the one standing extension's worth and all but one hold was refused (402)."""
    rids = [rent(db, tenant, clock, proof=f"tx-{i}") for i in range(6)]
    with db.session() as s:  # standing balance: one extension's worth
        wallet_service.deposit(s, tenant, owner_type="wallet", owner_id=WALLET, asset="SOL", amount_minor=1_000_000,
                               rail="simulation", proof="standing", clock=clock)
    barrier = threading.Barrier(len(rids))

    def extend(rid: str) -> int:
        barrier.wait()
        with db.session() as s:
            return contract_service.extend(s, tenant, rid, added_s=HOUR, proof=None, paid_minor=None,
                                           clock=clock).added_minor

    with ThreadPoolExecutor(len(rids)) as pool:
        assert list(pool.map(extend, rids)) == [1_000_000] * len(rids)
    topped_up = sum(t.amount for t in transfers(db, tenant, code="deposit") if "sim-extend" in t.id)
    assert topped_up == 5_000_000  # what the standing balance did not cover, once
    ledger_ok(db, tenant)


def test_a_simulated_top_up_covers_only_the_shortfall(db, tenant, clock):
    rid = rent(db, tenant, clock)
    with db.session() as s:  # 200,000 of standing balance in the wallet
        wallet_service.deposit(s, tenant, owner_type="wallet", owner_id=rental_service.get(s, tenant, rid).customer_id,
                               asset="SOL", amount_minor=200_000, rail="simulation", proof="standing", clock=clock)
    with db.session() as s:
        contract_service.extend(s, tenant, rid, added_s=HOUR, proof=None, paid_minor=None, clock=clock)
    [sim] = [t for t in transfers(db, tenant, code="deposit") if "sim-extend" in t.id]
    assert sim.amount == 800_000
    assert balance(db, tenant, WAL) == (2_000_000, 2_000_000)
    ledger_ok(db, tenant)


def test_extend_with_a_payment_proof(db, tenant, clock):
    rid = rent(db, tenant, clock)
    with db.session() as s:
        contract_service.extend(s, tenant, rid, added_s=1800, proof="tx-ext", paid_minor=None, clock=clock)
    dep = [t for t in transfers(db, tenant, code="deposit") if t.id.endswith("tx-ext")]
    assert [t.amount for t in dep] == [500_000]
    assert rental_row(db, tenant, rid).held_minor == 1_500_000


def test_an_extension_overpaid_with_a_proof_is_held_and_refunded(db, tenant, clock):
    """As `rent` does: all that was paid is held, and what the term did not use comes back at
    settlement (it used to stay in a wallet the SI64 renter has no way to reach)."""
    rid = rent(db, tenant, clock)
    with db.session() as s:
        res = contract_service.extend(s, tenant, rid, added_s=HOUR, proof="tx-over", paid_minor=5_000_000,
                                      clock=clock)
        assert (res.added_minor, res.cost_minor) == (5_000_000, 1_000_000)
    assert rental_row(db, tenant, rid).held_minor == 6_000_000
    clock.advance(HOUR)
    with db.session() as s:
        settled = rental_service.settle(s, tenant, rid, clock)
    assert settled.refund_minor == 6_000_000 - settled.used_minor
    assert balance(db, tenant, WAL)[0] == 0  # nothing left behind in the wallet
    ledger_ok(db, tenant)


class ChainRail(SimulationRail):
    """A rail that is not a simulation: it vouches for what it is shown and sends for real."""

    name = "solana"
    simulated = False

    def verify_incoming(self, tenant_id, proof, *, expected_amount_minor, asset):
        return VerifiedPayment(external_id=proof, amount_minor=expected_amount_minor, asset=asset, simulated=False)


def test_extend_without_funds_on_a_real_rail_is_402(db, tenant, clock, monkeypatch):
    monkeypatch.setitem(_RAILS, "solana", ChainRail())
    rid = rent(db, tenant, clock, rail="solana", proof=f"sig-{tenant}")
    with pytest.raises(InsufficientFunds) as err, db.session() as s:
        contract_service.extend(s, tenant, rid, added_s=HOUR, proof=None, paid_minor=None, clock=clock)
    assert (err.value.status, err.value.code) == (402, "insufficient_funds")
    assert rental_row(db, tenant, rid).held_minor == 1_000_000
    # A payment that names an amount below the extension's price is refused as `rent` refuses
    # one: nothing is deposited, nothing is taken from the wallet or simulated to make it up.
    with pytest.raises(InsufficientPayment) as short, db.session() as s:
        contract_service.extend(s, tenant, rid, added_s=HOUR, proof=f"sig2-{tenant}", paid_minor=10, clock=clock)
    assert (short.value.status, short.value.code) == (402, "insufficient_payment")
    with db.session() as s:
        contract_service.extend(s, tenant, rid, added_s=HOUR, proof=f"sig3-{tenant}", paid_minor=None, clock=clock)
    assert rental_row(db, tenant, rid).held_minor == 2_000_000
    assert all("mode" not in (t.metadata_ or {}) for t in transfers(db, tenant))
    ledger_ok(db, tenant)


def test_extend_past_expiry_is_refused(db, tenant, clock):
    rid = rent(db, tenant, clock)
    clock.advance(HOUR)
    with pytest.raises(RentalExpired) as err, db.session() as s:
        contract_service.extend(s, tenant, rid, added_s=HOUR, proof=None, paid_minor=None, clock=clock)
    assert err.value.status == 409
    assert rental_row(db, tenant, rid).held_minor == 1_000_000
    assert len(transfers(db, tenant, code="deposit")) == 1  # the simulated top-up rolled back too


@pytest.mark.parametrize("added_s", [0, -60])
def test_extend_must_add_time(db, tenant, clock, added_s):
    rid = rent(db, tenant, clock)
    with pytest.raises(InvalidRentalRequest), db.session() as s:
        contract_service.extend(s, tenant, rid, added_s=added_s, proof=None, paid_minor=None, clock=clock)


def test_extensions_never_take_a_term_past_ten_years(db, tenant, clock):
    """Each extension was capped at ten years, not their sum: the 24th of 87,600 hours took
    `expires_at` past 64-bit nanoseconds (a 500). The term as a whole is capped now."""
    rid = rent(db, tenant, clock, paid=None)
    with pytest.raises(InvalidRentalRequest, match="at most 10 years"), db.session() as s:
        contract_service.extend(s, tenant, rid, added_s=MAX_TERM_S, proof=None, paid_minor=None, clock=clock)
    with db.session() as s:  # up to the cap is fine
        contract_service.extend(s, tenant, rid, added_s=MAX_TERM_S - HOUR, proof=None, paid_minor=None, clock=clock)
    assert rental_row(db, tenant, rid).duration_s == MAX_TERM_S


# -- settle --------------------------------------------------------------------------


def test_settle_pays_provider_and_fee_and_refunds_the_rest_through_the_rail(db, tenant, clock):
    rid = rent(db, tenant, clock)
    clock.advance(15)
    with db.session() as s:
        st = rental_service.settle(s, tenant, rid, clock)
    # 15 s is under the one-minute minimum: 60 s are billed, 16,666.67 → 16,667 lamports.
    # Fee 5 %: 15,833.65 / 833.35 → largest remainder gives the unit to the provider.
    assert (st.used_minor, st.provider_minor, st.fee_minor, st.refund_minor) == (16_667, 15_834, 833, 983_333)
    assert st.provider_minor + st.fee_minor == st.used_minor
    assert st.used_minor + st.refund_minor == 1_000_000
    assert st.refund_tx == SIMULATION_MODE
    r = rental_row(db, tenant, rid)
    assert (r.status, r.end_reason, r.used_minor, r.refund_minor, r.refund_tx) == (
        SETTLED, "settled", 16_667, 983_333, SIMULATION_MODE)
    assert r.ended_at == r.started_at + 15 * NS
    assert balance(db, tenant, WAL) == (0, 0)
    assert balance(db, tenant, ESCROW) == (0, 0)
    assert balance(db, tenant, EARN) == (15_834, 0)
    assert balance(db, tenant, FEES) == (833, 0)
    assert balance(db, tenant, EXT) == (-16_667, 0)  # 1,000,000 came in, 983,333 went back
    chain = [t for t in transfers(db, tenant, reference=rid) if t.code != "rental_hold"]
    assert [t.code for t in chain] == ["rental_settle", "rental_provider_share", "rental_platform_fee",
                                       "rental_refund"]
    assert [bool(t.flags & LINKED) for t in chain] == [True, True, True, False]  # one linked chain
    assert chain[0].amount == 16_667 and chain[-1].amount == 983_333
    assert chain[-1].metadata_ == {"rail": "simulation", "mode": SIMULATION_MODE}
    # The settled figures are what the rental shows from now on.
    clock.advance(HOUR)
    acc = rental_service.accrual(rental_row(db, tenant, rid), clock.now_ns())
    assert (acc.cost_minor, acc.refund_minor) == (16_667, 983_333)
    ledger_ok(db, tenant)


def test_simulation_turned_off_still_settles_its_contracts_but_extends_and_rents_nothing(db, tenant, clock):
    rid = rent(db, tenant, clock)
    configure_rails(Settings(dev=False))  # the server restarted without simulation
    clock.advance(1200)
    with db.session() as s, pytest.raises(RailDisabled):
        contract_service.extend(s, tenant, rid, added_s=HOUR, proof=None, paid_minor=None, clock=clock)
    with db.session() as s, pytest.raises(RailDisabled):
        contract_service.rent(s, tenant, wallet=WALLET, tier="M2", duration_s=HOUR, paid_minor=None,
                              proof="tx-2", rail=None, clock=clock)
    with db.session() as s:
        st = rental_service.settle(s, tenant, rid, clock)
    assert (st.used_minor, st.refund_minor, st.refund_tx) == (lamports_for(1200), 1_000_000 - lamports_for(1200),
                                                              SIMULATION_MODE)
    assert balance(db, tenant, ESCROW) == (0, 0)  # nothing stranded in escrow
    ledger_ok(db, tenant)


def test_minimum_minutes_bill_a_minute_for_ten_seconds(db, tenant, clock):
    rid = rent(db, tenant, clock)
    clock.advance(10)
    assert rental_service.accrual(rental_row(db, tenant, rid), clock.now_ns()).cost_minor == 2_778  # running: 10 s
    with db.session() as s:
        st = rental_service.settle(s, tenant, rid, clock)
    assert st.used_minor == lamports_for(60) == 16_667


def test_the_fee_takes_the_leftover_unit_when_its_remainder_is_larger(db, tenant, clock):
    rid = rent(db, tenant, clock)
    clock.advance(64)
    with db.session() as s:
        st = rental_service.settle(s, tenant, rid, clock)
    # 17,777.78 → 17,778; 95 % = 16,889.1, 5 % = 888.9 → the fee's .9 wins the unit.
    assert (st.used_minor, st.provider_minor, st.fee_minor) == (17_778, 16_889, 889)


def test_minute_granularity_rounds_a_started_minute_up(db, tenant, clock):
    with db.session() as s:
        pricing_service.publish_book(s, tenant, {"granularity": "minute"}, "test", clock.now_ns())
    rid = rent(db, tenant, clock)
    clock.advance(61)
    with db.session() as s:
        st = rental_service.settle(s, tenant, rid, clock)
    assert st.used_minor == lamports_for(120) == 33_333


def test_a_contract_settled_before_any_billable_second_refunds_everything(db, tenant, clock):
    with db.session() as s:
        pricing_service.publish_book(s, tenant, {"minimum_session_minutes": 0}, "test", clock.now_ns())
    rid = rent(db, tenant, clock)
    clock.advance(ns=999_999_999)
    with db.session() as s:
        st = rental_service.settle(s, tenant, rid, clock)
    assert (st.used_minor, st.provider_minor, st.fee_minor, st.refund_minor) == (0, 0, 0, 1_000_000)
    chain = [t for t in transfers(db, tenant, reference=rid) if t.code != "rental_hold"]
    assert [(t.code, bool(t.flags & LINKED)) for t in chain] == [("rental_release", True), ("rental_refund", False)]
    assert balance(db, tenant, WAL) == (0, 0) and balance(db, tenant, EXT) == (0, 0)
    assert balance(db, tenant, EARN) == (0, 0) and balance(db, tenant, ESCROW) == (0, 0)
    ledger_ok(db, tenant)


def test_a_contract_never_bills_past_its_term(db, tenant, clock):
    # 30 s contract: the one-minute minimum would be 16,667, but the term is all it can cost.
    short = rent(db, tenant, clock, seconds=30, paid=lamports_for(30), proof="tx-short")
    full = rent(db, tenant, clock, proof="tx-full")
    clock.advance(2 * HOUR)
    with db.session() as s:
        a = rental_service.settle(s, tenant, short, clock)
        b = rental_service.settle(s, tenant, full, clock)
    assert (a.used_minor, a.refund_minor, a.refund_tx) == (8_333, 0, None)
    assert (b.used_minor, b.refund_minor, b.provider_minor, b.fee_minor) == (1_000_000, 0, 950_000, 50_000)
    r = rental_row(db, tenant, full)
    assert (r.status, r.end_reason, r.ended_at) == (SETTLED, "expired", r.expires_at)
    assert balance(db, tenant, ESCROW) == (0, 0)
    ledger_ok(db, tenant)


def test_settling_twice_and_touching_a_settled_contract_are_409(db, tenant, clock):
    rid = rent(db, tenant, clock)
    clock.advance(100)
    with db.session() as s:
        rental_service.settle(s, tenant, rid, clock)
    before = len(transfers(db, tenant))
    calls = [
        lambda s: rental_service.settle(s, tenant, rid, clock),
        lambda s: rental_service.record_sample(s, tenant, rid, {"cpu_percent": 5}, clock),
        lambda s: contract_service.extend(s, tenant, rid, added_s=HOUR, proof=None, paid_minor=None, clock=clock),
        lambda s: contract_service.extend(s, tenant, rid, added_s=HOUR, proof="tx-late", paid_minor=None,
                                          clock=clock),
    ]
    for call in calls:
        with pytest.raises(RentalAlreadySettled) as err, db.session() as s:
            call(s)
        assert (err.value.status, err.value.code) == (409, "contract_already_settled")
    assert len(transfers(db, tenant)) == before
    ledger_ok(db, tenant)


def test_another_tenants_contract_does_not_exist(db, tenant, clock):
    rid = rent(db, tenant, clock)
    other = f"{tenant}-other"
    with db.session() as s:
        make_demo_tenant(s, other, clock)
    calls = [
        lambda s: rental_service.get(s, other, rid),
        lambda s: rental_service.settle(s, other, rid, clock),
        lambda s: rental_service.record_sample(s, other, rid, {"cpu_percent": 5}, clock),
        lambda s: contract_service.extend(s, other, rid, added_s=HOUR, proof=None, paid_minor=None, clock=clock),
        lambda s: rental_service.samples(s, other, rid),
    ]
    for call in calls:
        with pytest.raises(RentalNotFound) as err, db.session() as s:
            call(s)
        assert err.value.status == 404
    with db.session(write=False) as s:
        assert rental_service.list_rentals(s, other)[0] == []
        assert rental_service.totals(s, other, clock.now_ns())["active_count"] == 0
    assert rental_row(db, tenant, rid).status == ACTIVE
    # The same simulated proof text in another tenant is another payment (namespaced by tenant).
    rent(db, other, clock, proof="tx-1")


# -- concurrency ---------------------------------------------------------------------


def test_concurrent_settle_extend_and_metrics_settle_exactly_once(db, tenant, clock):
    rid = rent(db, tenant, clock)
    clock.advance(300)
    # The last thread to reach the barrier tends to run first: make it an extend, so the
    # race usually has extends/samples landing before the settlement as well as after.
    ops = ["settle", "sample"] * 4 + ["sample", "extend"] * 4
    barrier = threading.Barrier(len(ops))
    outcomes: list[tuple[str, str]] = []
    lock = threading.Lock()

    def run(op: str, i: int) -> None:
        barrier.wait()
        try:
            with db.session() as s:
                if op == "settle":
                    rental_service.settle(s, tenant, rid, clock)
                elif op == "extend":
                    contract_service.extend(s, tenant, rid, added_s=600, proof=None, paid_minor=None, clock=clock)
                else:
                    rental_service.record_sample(s, tenant, rid, {"cpu_percent": i, "power_w": 30}, clock)
            outcome = "ok"
        except RentalAlreadySettled as exc:
            assert exc.status == 409
            outcome = "409"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        with lock:
            outcomes.append((op, outcome))

    threads = [threading.Thread(target=run, args=(op, i)) for i, op in enumerate(ops)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(outcomes) == len(ops)
    assert all(o in ("ok", "409") for _, o in outcomes), outcomes
    assert sorted(o for op, o in outcomes if op == "settle") == ["409", "409", "409", "ok"]

    r = rental_row(db, tenant, rid)
    extends = sum(1 for op, o in outcomes if op == "extend" and o == "ok")
    samples = sum(1 for op, o in outcomes if op == "sample" and o == "ok")
    assert r.status == SETTLED and r.hold_count == 1 + extends and r.sample_count == samples
    assert r.held_minor == 1_000_000 + extends * lamports_for(600)
    assert r.used_minor == lamports_for(300) and r.used_minor + r.refund_minor == r.held_minor
    assert len(transfers(db, tenant, id=f"rent:{rid}:provider")) == 1
    assert balance(db, tenant, ESCROW) == (0, 0)
    assert balance(db, tenant, WAL)[1] == 0  # no hold left open
    ledger_ok(db, tenant)


def test_rentals_list_in_creation_order_and_page_by_keyset(db, tenant, clock):
    """Contract ids are random, so listing follows creation time; a cursor walks every row once."""
    created = []
    for i in range(5):
        created.append(rent(db, tenant, clock, proof=f"tx-order-{i}"))
        clock.advance(1)
    seen, cursor = [], None
    with db.session(write=False) as s:
        while True:
            rows, cursor = rental_service.list_rentals(s, tenant, after=cursor, limit=2)
            seen += [r.id for r in rows]
            if cursor is None:
                break
        newest, _ = rental_service.list_rentals(s, tenant, limit=10, newest_first=True)
        with pytest.raises(InvalidRentalRequest):
            rental_service.list_rentals(s, tenant, after="not-a-cursor")
    assert seen == created
    assert [r.id for r in newest] == created[::-1]
