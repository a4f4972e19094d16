"""Pay-as-you-go sessions (Dante): a rolling hold one slice ahead, renewed until the wallet runs dry.

A whole RTX 4090 at an idle pool is 0.50 DGPU/h (1250/9 micro-DGPU per second);
power is 0.001 DGPU/Wh as metered (the quote estimates 450 W, the card's limit, but
that is never held). One slice is five minutes of what the session is charged: of
time, 41,666.67 → 41,667 micro-DGPU rounded up; at a metered 450 W, 37,500 more.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from meterline.clock import FrozenClock
from meterline.db.engine import Database
from meterline.ledger.models import Account, Transfer
from meterline.ledger.verify import verify_ledger
from meterline.pricing.service import pricing_service
from meterline.rentals.contracts import contract_service
from meterline.rentals.models import Rental
from meterline.rentals.service import (
    ACTIVE,
    PAYG,
    PREPAID,
    SETTLED,
    InsufficientFunds,
    InvalidRentalRequest,
    NoDeviceAvailable,
    RentalAlreadySettled,
    RentalNotActive,
    RentalNotFound,
    Settlement,
    rental_service,
)
from meterline.rentals.sessions import session_service
from meterline.wallets.service import wallet_service
from tests.factories import make_demo_tenant

NS = 1_000_000_000
SLICE = 41_667  # five minutes of time: the first slice (no power is metered yet)
USER = "alice"
WAL = f"wal:user:{USER}:DGPU"
ESCROW = "sys:escrow:DGPU"
EARN = "earn:provider:demo-provider:DGPU"
FEES = "sys:platform_fees:DGPU"


def micro_for(seconds: int) -> int:
    """0.5 DGPU/h for `seconds`, half-up, in micro-DGPU."""
    q, r = divmod(seconds * 500_000, 3600)
    return q + (2 * r >= 3600)


@pytest.fixture
def tenant(db: Database, tenant_id: str, clock: FrozenClock) -> str:
    with db.session() as s:
        make_demo_tenant(s, tenant_id, clock)
    return tenant_id


def fund(db: Database, tenant: str, clock: FrozenClock, amount_minor: int, user: str = USER) -> None:
    with db.session() as s:
        wallet_service.deposit(s, tenant, owner_type="user", owner_id=user, asset="DGPU", amount_minor=amount_minor,
                               rail="simulation", proof=f"fund-{uuid.uuid4().hex}", clock=clock)


def start(db: Database, tenant: str, clock: FrozenClock, *, device_id: str | None = None,
          gpu_model: str | None = "nvidia_rtx_4090", vram_gb: int | None = None, user: str = USER,
          watts: int | None = None) -> Rental:
    with db.session() as s:
        return session_service.start(s, tenant, customer_id=user, device_id=device_id,
                                     gpu_model=None if device_id else gpu_model, vram_gb=vram_gb, watts=watts,
                                     clock=clock)


def get(db: Database, tenant: str, rid: str) -> Rental:
    with db.session(write=False) as s:
        return rental_service.get(s, tenant, rid)


def renew(db: Database, tenant: str, rid: str, clock: FrozenClock) -> str:
    with db.session() as s:
        return rental_service.renew_cover(s, tenant, rid, clock)


def sample(db: Database, tenant: str, rid: str, clock: FrozenClock, **values: object) -> None:
    with db.session() as s:
        rental_service.record_sample(s, tenant, rid, dict(values), clock)


def balance(db: Database, tenant: str, account_id: str) -> tuple[int, int]:
    with db.session(write=False) as s:
        row = s.get(Account, (tenant, account_id))
        return (0, 0) if row is None else (row.credits_posted - row.debits_posted, row.debits_pending)


def ledger_ok(db: Database, tenant: str) -> None:
    report = verify_ledger(db, tenant)
    assert report.ok, [str(p) for p in report.problems]


def end(db: Database, tenant: str, rid: str, clock: FrozenClock) -> Settlement:
    with db.session() as s:
        return session_service.end(s, tenant, rid, clock)


def overage(db: Database, tenant: str, rid: str) -> int:
    """What the settlement debited from the wallet beyond the holds (`rent:<id>:overage`)."""
    with db.session(write=False) as s:
        row = s.get(Transfer, (tenant, f"rent:{rid}:overage"))
        return 0 if row is None else row.amount


def sweep(db: Database, tenant: str, rid: str, clock: FrozenClock, seconds: int, every: int) -> None:
    """The worker renewing the session's cover every `every` seconds for `seconds`."""
    for _ in range(seconds // every):
        clock.advance(every)
        renew(db, tenant, rid, clock)


def test_a_session_starts_against_the_wallet_holding_one_slice(db, tenant, clock):
    fund(db, tenant, clock, 1_000_000)
    r = start(db, tenant, clock)
    assert (r.status, r.style, r.asset, r.device_id, r.vram_gb, r.expires_at) == (
        ACTIVE, "payg", "DGPU", "gpu-4090-001", 24, None)
    assert Decimal(r.quote["hourly_rate"]) == Decimal("0.5") and r.quote["estimated_power_w"] == 450
    assert r.held_minor == SLICE == rental_service.slice_minor(r)
    assert balance(db, tenant, WAL) == (1_000_000, SLICE)
    with db.session(write=False) as s:
        [hold] = rental_service.holds(s, tenant, r.id)
        assert (hold.kind, hold.amount_minor) == ("initial", SLICE)
    ledger_ok(db, tenant)


def test_a_session_on_a_wallet_that_cannot_fund_one_slice_is_402_and_writes_nothing(db, tenant, clock):
    fund(db, tenant, clock, SLICE - 1)
    with pytest.raises(InsufficientFunds) as err:
        start(db, tenant, clock)
    assert (err.value.status, err.value.code) == (402, "insufficient_funds")
    with db.session(write=False) as s:
        assert rental_service.list_rentals(s, tenant)[0] == []
    assert balance(db, tenant, WAL) == (SLICE - 1, 0)


def test_the_hold_is_renewed_when_less_than_two_minutes_of_cover_remain(db, tenant, clock):
    fund(db, tenant, clock, 1_000_000)
    r = start(db, tenant, clock)
    # Burn rate of a slice: 41,667 per 300 s. Renew below 120 s of it: cover < 16,666.8.
    clock.advance(180)  # cost 25,000 exactly → cover 16,667: still two minutes
    assert renew(db, tenant, r.id, clock) == "ok"
    clock.advance(1)  # cost 25,138.9 → 25,139 → cover 16,528
    assert renew(db, tenant, r.id, clock) == "renewed"
    assert renew(db, tenant, r.id, clock) == "ok"  # one slice at a time
    r = get(db, tenant, r.id)
    assert (r.held_minor, r.hold_count) == (2 * SLICE, 2)
    acc = rental_service.accrual(r, clock.now_ns())
    assert (acc.cost_minor, acc.refund_minor) == (micro_for(181), 2 * SLICE - micro_for(181))
    assert balance(db, tenant, WAL) == (1_000_000, 2 * SLICE)
    ledger_ok(db, tenant)


def test_metered_power_counts_against_the_cover(db, tenant, clock):
    fund(db, tenant, clock, 1_000_000)
    r = start(db, tenant, clock)
    sample(db, tenant, r.id, clock, power_w=450, gpu_util_percent=99)
    clock.advance(30)
    sample(db, tenant, r.id, clock, power_w=450, gpu_util_percent=99)
    # 30 s: time 4,166.67 + power 450 W × 30 s = 3.75 Wh → 3,750 = 7,916.67 → 7,917.
    assert rental_service.accrual(get(db, tenant, r.id), clock.now_ns()).cost_minor == 7_917
    # At the metered draw a slice is 41,667 + 37,500 = 79,167: renew below 31,666.8 of cover.
    clock.advance(7)  # 37 s, with 7 s of power since the last sample: 9,763.9 → cover 31,903
    assert renew(db, tenant, r.id, clock) == "ok"
    clock.advance(1)  # 38 s: 10,027.8 → cover 31,639 — though 262 s of time alone remain
    assert renew(db, tenant, r.id, clock) == "renewed"
    r = get(db, tenant, r.id)
    assert r.held_minor == SLICE + 79_167
    assert rental_service.accrual(r, clock.now_ns()).cost_minor == 9_028  # power only up to the last sample


def test_when_the_wallet_runs_dry_the_session_is_terminated_and_settled(db, tenant, clock):
    fund(db, tenant, clock, 200_000)
    r = start(db, tenant, clock)
    for at in (181, 481, 781):  # each time cover falls below 16,666.8
        clock.advance(at - (clock.now_ns() - r.started_at) // NS)
        assert renew(db, tenant, r.id, clock) == "renewed"
    # 200,000 - 4 × 41,667 = 33,332 left: not a slice.
    clock.advance(1081 - 781)  # cost 150,138.9 → 150,139; cover 16,529: the next slice is due
    assert renew(db, tenant, r.id, clock) == "terminated"
    r = get(db, tenant, r.id)
    assert (r.status, r.end_reason, r.ended_at) == (SETTLED, "insufficient_funds", r.started_at + 1081 * NS)
    assert r.used_minor == micro_for(1081) == 150_139 and r.used_minor <= r.held_minor == 4 * SLICE
    assert r.refund_tx is None  # a session's unused cover simply stays in its wallet
    assert r.provider_minor + r.fee_minor == r.used_minor
    assert balance(db, tenant, WAL) == (200_000 - 150_139, 0)
    assert balance(db, tenant, ESCROW) == (0, 0)
    assert balance(db, tenant, EARN) == (r.provider_minor, 0)
    assert balance(db, tenant, FEES) == (r.fee_minor, 0)
    assert renew(db, tenant, r.id, clock) == "ok"  # nothing left to renew
    ledger_ok(db, tenant)


def test_a_session_past_its_holds_pays_from_its_wallet_and_the_rest_is_recorded_unpaid(db, tenant, clock):
    """The worker never came: two hours on five minutes of cover. The settlement was capped at
    the 41,667 held, and 958,333 of use went unbilled while the wallet still held 8,333. Now
    the holds pay first, the wallet pays what it can, and the rest is recorded as unpaid."""
    fund(db, tenant, clock, 50_000)
    r = start(db, tenant, clock)
    clock.advance(2 * 3600)
    with db.session(write=False) as s:
        row = rental_service.get(s, tenant, r.id)
        assert rental_service.accrual(row, clock.now_ns()).cost_minor == SLICE  # capped by the holds
        assert rental_service.committed_minor(row, clock.now_ns()) == 1_000_000  # what it used
    assert renew(db, tenant, r.id, clock) == "terminated"  # 958,333 + a slice is past the wallet
    r = get(db, tenant, r.id)
    assert (r.used_minor, r.refund_minor) == (50_000, 0)
    assert r.unpaid_minor == 950_000
    assert (r.provider_minor, r.fee_minor) == (47_500, 2_500)  # what was collected, 95 / 5
    assert balance(db, tenant, WAL) == (0, 0)
    assert balance(db, tenant, ESCROW) == (0, 0)
    assert overage(db, tenant, r.id) == 50_000 - SLICE
    ledger_ok(db, tenant)


def test_ending_a_session_settles_at_once(db, tenant, clock):
    fund(db, tenant, clock, 1_000_000)
    r = start(db, tenant, clock)
    clock.advance(30)
    with db.session() as s:
        st = session_service.end(s, tenant, r.id, clock)
    assert st.used_minor == micro_for(60) == 8_333  # the one-minute minimum
    assert (st.provider_minor, st.fee_minor, st.refund_minor, st.refund_tx) == (7_916, 417, SLICE - 8_333, None)
    r = get(db, tenant, r.id)
    assert (r.status, r.end_reason) == (SETTLED, "ended")
    assert balance(db, tenant, WAL) == (1_000_000 - 8_333, 0)
    with db.session(write=False) as s:
        refunds = s.query(Transfer).filter(Transfer.tenant_id == tenant, Transfer.code == "rental_refund").all()
        assert refunds == []
    ledger_ok(db, tenant)


def test_a_session_is_not_sampled_as_a_contract(db, tenant, clock):
    """A caller addressing prepaid contracts (the SI64 profile) finds no session by its id."""
    fund(db, tenant, clock, 1_000_000)
    r = start(db, tenant, clock)
    with pytest.raises(RentalNotFound), db.session() as s:
        rental_service.record_sample(s, tenant, r.id, {"power_w": 450}, clock, style=PREPAID)
    assert get(db, tenant, r.id).sample_count == 0
    with db.session() as s:
        rental_service.record_sample(s, tenant, r.id, {"power_w": 450}, clock, style=PAYG)
    assert get(db, tenant, r.id).sample_count == 1


def test_sessions_are_not_extended(db, tenant, clock):
    fund(db, tenant, clock, 1_000_000)
    r = start(db, tenant, clock)
    with pytest.raises(RentalNotActive), db.session() as s:
        contract_service.extend(s, tenant, r.id, added_s=600, proof=None, paid_minor=None, clock=clock)
    with pytest.raises(RentalNotActive), db.session() as s:
        rental_service.extend(s, tenant, r.id, added_seconds=600, added_minor=1000, clock=clock)
    assert get(db, tenant, r.id).held_minor == SLICE


def test_fractional_vram_shares_a_card_until_it_is_full(db, tenant, clock):
    fund(db, tenant, clock, 1_000_000)
    a = start(db, tenant, clock, device_id="gpu-4090-001", vram_gb=12)
    b = start(db, tenant, clock, device_id="gpu-4090-001", vram_gb=12)
    assert (a.device_id, b.device_id, a.vram_gb, b.vram_gb) == ("gpu-4090-001",) * 2 + (12, 12)
    assert Decimal(a.quote["hourly_rate"]) == Decimal("0.25")  # half the card, half the base rate
    with pytest.raises(NoDeviceAvailable) as err:
        start(db, tenant, clock, device_id="gpu-4090-001", vram_gb=12)
    assert err.value.status == 409
    with pytest.raises(NoDeviceAvailable):
        start(db, tenant, clock, gpu_model="nvidia_rtx_4090", vram_gb=25)
    with db.session() as s:
        session_service.end(s, tenant, a.id, clock)
    c = start(db, tenant, clock, device_id="gpu-4090-001", vram_gb=12)  # freed VRAM is rentable again
    assert c.device_id == "gpu-4090-001"
    # By model, the least-allocated card that fits is chosen.
    assert start(db, tenant, clock, vram_gb=12).device_id == "gpu-4090-002"


def test_starts_arriving_together_never_overfill_a_card(db, tenant, clock):
    """16 starts of half a card at once, over the demo's three 4090s: six fit (two per card),
    the rest are refused — however the requests interleave."""
    fund(db, tenant, clock, 10_000_000)
    barrier = threading.Barrier(16)

    def go(_: int) -> str:
        barrier.wait()
        try:
            return start(db, tenant, clock, vram_gb=12).device_id or ""
        except NoDeviceAvailable:
            return "refused"

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(go, range(16)))
    assert sorted(outcomes) == ["gpu-4090-001"] * 2 + ["gpu-4090-002"] * 2 + ["gpu-4090-003"] * 2 + ["refused"] * 10


def test_a_session_creates_the_accounts_its_settlement_credits_before_its_first_hold(db, tenant, clock):
    """A ledger post holds the tenant's ledger head until commit; an account created after it
    in the same transaction waits for whoever created that account first — who may be waiting
    for the head. A new provider's first two settlements (one session ended, another ended
    by the worker for lack of funds) deadlocked that way on PostgreSQL. So the accounts a
    settlement credits exist from the first hold on, and settling creates none."""
    fund(db, tenant, clock, 1_000_000)
    rental = start(db, tenant, clock, device_id="gpu-4090-001")
    with db.session(write=False) as s:
        kinds = set(s.scalars(select(Account.kind).where(Account.tenant_id == tenant)))
    assert {"provider_earnings", "platform_fees"} <= kinds
    clock.advance(60)
    with db.session() as s:
        before = s.scalar(select(func.count()).select_from(Account).where(Account.tenant_id == tenant))
        session_service.end(s, tenant, rental.id, clock)
        assert s.scalar(select(func.count()).select_from(Account).where(Account.tenant_id == tenant)) == before


@pytest.mark.parametrize("kw", [{"gpu_model": None}, {"vram_gb": 0}, {"vram_gb": -4}])
def test_bad_session_requests(db, tenant, clock, kw):
    fund(db, tenant, clock, 1_000_000)
    with pytest.raises(InvalidRentalRequest):
        start(db, tenant, clock, **kw)


def test_the_demand_multiplier_rises_with_utilisation(db, tenant, clock):
    fund(db, tenant, clock, 10_000_000)
    rates = [Decimal(start(db, tenant, clock).quote["hourly_rate"]) for _ in range(3)]
    # 0/3 and 1/3 busy: the curve is flat (×1) up to half the pool. 2/3 busy: 1 + 0.25 × (1/6) / 0.3
    # = 41/36, so 0.5 × 41/36 = 0.56944… DGPU/h.
    assert rates[:2] == [Decimal("0.5"), Decimal("0.5")]
    assert rates[2].quantize(Decimal("1e-15")) == Decimal("0.569444444444444")
    with pytest.raises(NoDeviceAvailable):
        start(db, tenant, clock)  # all three 4090s are taken
    # The locked quote is what each session is charged, whatever demand does later.
    with db.session(write=False) as s:
        sessions = rental_service.list_rentals(s, tenant, status=ACTIVE)[0]
    assert sorted(r.held_minor for r in sessions)[-1] > SLICE


# -- the hold is what the session is charged, not the quote's power estimate ------------------


def sweep_until_terminated(db: Database, tenant: str, rid: str, clock: FrozenClock, limit_s: int) -> int:
    """Run the worker's renewal every second (its default interval); the second it terminated."""
    for second in range(1, limit_s + 1):
        clock.advance(1)
        if renew(db, tenant, rid, clock) == "terminated":
            return second
    raise AssertionError("still running")


def test_without_metered_power_the_wallet_pays_for_time_only_and_the_hold_follows(db, tenant, clock):
    """Nothing reports power (the Dante profile has no samples endpoint), so the session is
    charged for time only. The hold used to include the quote's estimated 450 W (the card's
    limit): a slice of 79,167 for 41,667 of charge. A wallet of 100,000 then ended the session
    after 343 s, 52,361 unspent; now each slice is the 41,667 of time it will be charged."""
    fund(db, tenant, clock, 100_000)
    r = start(db, tenant, clock)
    assert r.quote["estimated_power_w"] == 450  # shown in the quote, never held
    assert r.held_minor == SLICE  # 41,666.67 rounded up
    # Renewed at 181 s (cover 16,528 < two minutes of 41,667 / 300 s), then at 481 s the
    # 16,666 left cannot fund a third slice.
    assert sweep_until_terminated(db, tenant, r.id, clock, 900) == 481
    r = get(db, tenant, r.id)
    assert (r.end_reason, r.used_minor, r.held_minor) == ("insufficient_funds", micro_for(481), 2 * SLICE)
    assert balance(db, tenant, WAL) == (100_000 - micro_for(481), 0)
    ledger_ok(db, tenant)


def test_a_wallet_that_pays_for_the_time_can_start(db, tenant, clock):
    """It was refused (402) unless it also held five minutes of the estimated power."""
    fund(db, tenant, clock, SLICE)
    r = start(db, tenant, clock)
    assert r.held_minor == SLICE and balance(db, tenant, WAL) == (SLICE, SLICE)


def test_power_drawn_above_the_estimate_is_held_as_it_is_metered(db, tenant, clock):
    """Started with `watts: 0`, the device draws 450 W. The hold was sized and its cover judged
    at the estimate (time only): the worker saw 120 s of cover left until 180 s, so when the
    second power sample landed at 170 s the charge (44,861) had run past the holds (41,667)
    and ending then billed only what was held — 3,194 of use never charged. Now the slice and
    the cover follow the metered draw (and count the power drawn since the last sample)."""
    fund(db, tenant, clock, 1_000_000)
    r = start(db, tenant, clock, watts=0)
    assert r.held_minor == SLICE
    sample(db, tenant, r.id, clock, power_w=450)
    renewed = []
    for second in range(1, 170):
        clock.advance(1)
        if renew(db, tenant, r.id, clock) == "renewed":
            renewed.append(second)
    # 450 W + time is 263.9 a second: a slice of 79,167; renewed once cover < 31,667 (at 38 s).
    assert renewed == [38]
    assert get(db, tenant, r.id).held_minor == SLICE + 79_167
    clock.advance(1)
    sample(db, tenant, r.id, clock, power_w=450)
    # 170 s: time 23,611.1 + 450 W × 170 s = 21.25 Wh → 21,250: 44,861.1 → 44,861.
    assert rental_service.accrual(get(db, tenant, r.id), clock.now_ns()).cost_minor == 44_861
    with db.session() as s:
        st = session_service.end(s, tenant, r.id, clock)
    assert st.used_minor == 44_861 and st.refund_minor == SLICE + 79_167 - 44_861
    ledger_ok(db, tenant)


def test_the_cover_counts_power_drawn_since_the_last_sample(db, tenant, clock):
    """The next sample charges the interval since the last one at (about) its draw, so that
    power is spent already: a device that samples rarely is not under-held in between."""
    fund(db, tenant, clock, 1_000_000)
    r = start(db, tenant, clock, watts=0)
    sample(db, tenant, r.id, clock, power_w=450)
    clock.advance(10)
    with db.session(write=False) as s:
        row = rental_service.get(s, tenant, r.id)
        # 10 s: time 1,388.9 + 450 W × 10 s = 1.25 Wh → 1,250 (not in the accrual yet).
        assert rental_service.accrual(row, clock.now_ns()).cost_minor == micro_for(10)
        assert rental_service.committed_minor(row, clock.now_ns()) == 1_389 + 1_250
        assert rental_service.slice_minor(row) == 79_167


# -- usage past the holds (found by an independent audit model) ---------------------------


def test_a_power_jump_between_sparse_samples_is_billed_in_full(db, tenant, clock):
    """0 W, then 10 kW ten minutes later, the worker sweeping throughout. The second sample's
    trapezoid charges (0 + 10 kW) / 2 × 600 s = 833.3 Wh at once, past the cover (which counted
    the interval at the last draw, 0 W): the settlement was capped at the holds, and 0.79 DGPU
    of it went unbilled though the wallet held 100 DGPU. The wallet now pays the excess."""
    fund(db, tenant, clock, 100_000_000)
    r = start(db, tenant, clock)
    sample(db, tenant, r.id, clock, power_w=0)
    sweep(db, tenant, r.id, clock, 600, every=10)
    sample(db, tenant, r.id, clock, power_w=10_000)
    held = get(db, tenant, r.id).held_minor
    st = end(db, tenant, r.id, clock)
    # time 83,333.3 + power 833.3 Wh × 0.001 = 833,333.3 → 916,666.7 → 916,667, rounded once
    assert (st.used_minor, st.unpaid_minor, st.refund_minor) == (916_667, 0, 0)
    assert held < 916_667 and overage(db, tenant, r.id) == 916_667 - held
    assert st.provider_minor + st.fee_minor == 916_667
    assert balance(db, tenant, WAL) == (100_000_000 - 916_667, 0)
    assert balance(db, tenant, ESCROW) == (0, 0)
    ledger_ok(db, tenant)


def test_one_renewal_holds_what_a_jump_ran_past_the_holds_and_the_next_slice(db, tenant, clock):
    fund(db, tenant, clock, 100_000_000)
    r = start(db, tenant, clock)
    sample(db, tenant, r.id, clock, power_w=0)
    clock.advance(100)
    sample(db, tenant, r.id, clock, power_w=10_000)  # 138.9 Wh at once: 152,778 used, 41,667 held
    assert renew(db, tenant, r.id, clock) == "renewed"
    with db.session(write=False) as s:
        row = rental_service.get(s, tenant, r.id)
        committed = rental_service.committed_minor(row, clock.now_ns())
        slice_ = rental_service.slice_minor(row)
    assert (committed, slice_) == (152_778, 875_000)  # a slice at 10 kW: 41,667 + 833,333.3
    assert row.held_minor - committed == slice_  # covered again, a slice ahead, in one hold
    assert (row.hold_count, renew(db, tenant, r.id, clock)) == (2, "ok")
    ledger_ok(db, tenant)


def test_power_after_the_last_sample_is_charged_at_its_draw(db, tenant, clock):
    """One sample at 10 kW, then an hour with no other: the cover counted 10 kW as spent (and
    held for it), but the settlement charged none of it — no later sample ever integrated it.
    Now the tail from the last sample to the end is charged at the last draw, as the cover
    counts it: a device that stops reporting does not get its power free."""
    fund(db, tenant, clock, 100_000_000)
    r = start(db, tenant, clock)
    sample(db, tenant, r.id, clock, power_w=10_000)
    sweep(db, tenant, r.id, clock, 3600, every=30)
    with db.session(write=False) as s:
        committed = rental_service.committed_minor(rental_service.get(s, tenant, r.id), clock.now_ns())
    st = end(db, tenant, r.id, clock)
    # time 0.5/h × 1 h = 500,000; power 10 kWh × 0.001 = 10,000,000
    assert st.used_minor == 10_500_000
    assert committed == st.used_minor and st.unpaid_minor == 0  # charged as the cover counted it
    assert balance(db, tenant, WAL) == (100_000_000 - 10_500_000, 0)
    ledger_ok(db, tenant)


@pytest.mark.parametrize(("minutes", "minimum_cost"), [(6, 50_000), (60, 500_000)])
def test_a_minimum_session_longer_than_a_slice_is_held_and_charged(db, tenant, clock, minutes, minimum_cost):
    """The first hold was one five-minute slice (41,667), and the settlement was capped at it:
    a book's 6- or 60-minute minimum session billed 41,667. The first hold now covers the
    minimum, and the minimum is charged."""
    with db.session() as s:
        pricing_service.publish_book(s, tenant, {"minimum_session_minutes": minutes}, "test", clock.now_ns())
    fund(db, tenant, clock, 100_000_000)
    r = start(db, tenant, clock)
    assert r.held_minor == minimum_cost
    clock.advance(10)
    st = end(db, tenant, r.id, clock)
    assert (st.used_minor, st.unpaid_minor, st.refund_minor) == (minimum_cost, 0, 0)
    ledger_ok(db, tenant)


def test_after_a_worker_outage_one_sweep_restores_the_cover(db, tenant, clock):
    """An hour without the worker, then it sweeps: it placed one slice per sweep, so the session
    ran on unheld use for the next 55 sweeps (and ending then billed only what was held)."""
    fund(db, tenant, clock, 100_000_000)
    r = start(db, tenant, clock)
    clock.advance(3600)
    assert renew(db, tenant, r.id, clock) == "renewed"
    row = get(db, tenant, r.id)
    assert (row.hold_count, row.held_minor) == (2, micro_for(3600) + SLICE)  # used so far + one slice
    clock.advance(3)
    assert renew(db, tenant, r.id, clock) == "ok"
    st = end(db, tenant, r.id, clock)
    assert (st.used_minor, overage(db, tenant, r.id)) == (micro_for(3603), 0)  # all from the holds
    ledger_ok(db, tenant)


def test_a_sample_stamped_before_the_start_counts_from_the_start(db, tenant, clock):
    """An API process whose clock is ten minutes behind stamps the first sample before the
    session started; the next sample then integrated 10 kW over ten minutes before it existed."""
    fund(db, tenant, clock, 100_000_000)
    r = start(db, tenant, clock)
    sample(db, tenant, r.id, FrozenClock(clock.now_ns() - 600 * NS), power_w=10_000)
    clock.advance(1)
    sample(db, tenant, r.id, clock, power_w=10_000)
    row = get(db, tenant, r.id)
    assert row.energy2_mw_ms == 2 * 10_000_000 * 1000  # one second at 10 kW, doubled
    with db.session(write=False) as s:
        stamps = sorted(x.ts for x in rental_service.samples(s, tenant, r.id))
    assert stamps == [r.started_at, r.started_at + NS]  # stored as counted


def test_a_settlement_with_a_wallet_debit_happens_once(db, tenant, clock):
    """Two ends racing: one settles (and debits the wallet beyond the holds), the other finds
    it settled; the overage transfer exists once (its id is the rental's)."""
    fund(db, tenant, clock, 100_000_000)
    r = start(db, tenant, clock)
    clock.advance(3600)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def go() -> None:
        barrier.wait()
        try:
            end(db, tenant, r.id, clock)
            outcomes.append("settled")
        except (RentalAlreadySettled, RentalNotActive) as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes)[-1] == "settled" and outcomes.count("settled") == 1
    with db.session(write=False) as s:
        debits = s.scalar(select(func.count()).select_from(Transfer).where(
            Transfer.tenant_id == tenant, Transfer.reference == r.id, Transfer.code == "rental_overage"))
    assert debits == 1 and overage(db, tenant, r.id) == micro_for(3600) - SLICE
    assert balance(db, tenant, WAL) == (100_000_000 - micro_for(3600), 0)
    ledger_ok(db, tenant)
