"""Wallets: accounts, deposits, withdrawals, balances, history — with the ledger checked exactly."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from meterline.errors import AmountNotPositive, AmountOverflow, IdempotencyConflict, InvalidAmount
from meterline.ledger.models import Account, Hold, Transfer
from meterline.ledger.service import AccountExists, AssetNotFound, ledger_service
from meterline.ledger.types import AccountFlags, TransferFlags, TransferIn
from meterline.payments import rails
from meterline.payments.models import PaymentInbox
from meterline.payments.rails import (
    SIMULATION_MODE,
    RailSendFailed,
    SendResult,
    SimulationRail,
    UnknownRail,
)
from meterline.payments.service import PaymentProofReused
from meterline.wallets.service import (
    InsufficientFunds,
    InvalidWalletOwner,
    WalletNotFound,
    owned_account_id,
    wallet_service,
)
from tests.factories import make_deposit, make_tenant

SOLANA_ADDRESS = "7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV"  # 43-44 base58 chars


@pytest.fixture
def tenant(session, tenant_id, clock):
    return make_tenant(session, tenant_id, clock)


def ledger_balance(session, tenant_id: str, account_id: str) -> tuple[int, int, int, int]:
    """(debits_pending, debits_posted, credits_pending, credits_posted), fresh from the database."""
    row = session.get(Account, (tenant_id, account_id), populate_existing=True)
    assert row is not None
    return row.debits_pending, row.debits_posted, row.credits_pending, row.credits_posted


def transfer_count(session, tenant_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Transfer).where(Transfer.tenant_id == tenant_id))


EXT = "sys:external:simulation:USD"


# -- accounts -----------------------------------------------------------------------


def test_wallet_account_is_one_per_owner_and_asset(session, tenant, clock):
    now = clock.now_ns()
    a = wallet_service.wallet_account(session, tenant, owner_type="customer", owner_id="alice", asset="USD", now_ns=now)
    again = wallet_service.wallet_account(session, tenant, owner_type="customer", owner_id="alice", asset="USD",
                                          now_ns=now)
    sol = wallet_service.wallet_account(session, tenant, owner_type="customer", owner_id="alice", asset="SOL",
                                        now_ns=now)
    assert a.id == again.id == "wal:customer:alice:USD"
    assert sol.id != a.id
    assert a.kind == "customer_wallet"
    assert a.flags == AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    assert (a.owner_type, a.owner_id, a.asset) == ("customer", "alice", "USD")


def test_wallet_ids_fit_64_chars_and_never_collide(session, tenant, clock):
    now = clock.now_ns()
    solana = wallet_service.wallet_account(session, tenant, owner_type="provider", owner_id=SOLANA_ADDRESS,
                                           asset="USDC", now_ns=now)
    assert solana.id == f"wal:provider:{SOLANA_ADDRESS}:USDC"
    long_a, long_b = "x" * 127 + "a", "x" * 127 + "b"
    ids = {
        wallet_service.wallet_account(session, tenant, owner_type="principal", owner_id=o, asset="USDC",
                                      now_ns=now).id
        for o in (long_a, long_b)
    }
    assert len(ids) == 2
    assert all(len(i) <= 64 and i.startswith("wal:") and i.endswith(":USDC") for i in ids)
    assert owned_account_id("wal", "principal", long_a, "USDC") in ids  # deterministic


def test_wallet_account_without_create_and_bad_owners(session, tenant, clock):
    with pytest.raises(WalletNotFound) as e:
        wallet_service.wallet_account(session, tenant, owner_type="customer", owner_id="ghost", asset="USD",
                                      now_ns=clock.now_ns(), create=False)
    assert (e.value.status, e.value.code) == (404, "wallet_not_found")
    for owner_type, owner_id in [("", "a"), ("a:b", "c"), ("customer", ""), ("customer", "x" * 129),
                                 ("customer", "   "), ("customer", " alice"), ("customer", "alice\n"),
                                 ("customer", "al\x07ice")]:
        with pytest.raises(InvalidWalletOwner):
            wallet_service.wallet_account(session, tenant, owner_type=owner_type, owner_id=owner_id, asset="USD",
                                          now_ns=clock.now_ns())
    with pytest.raises(AssetNotFound):
        wallet_service.wallet_account(session, tenant, owner_type="customer", owner_id="a", asset="XXX",
                                      now_ns=clock.now_ns())


def test_system_and_earnings_accounts(session, tenant, clock):
    now = clock.now_ns()
    escrow = wallet_service.system_account(session, tenant, "escrow", "USD", now)
    ext = wallet_service.system_account(session, tenant, "external:solana", "SOL", now)
    treasury = wallet_service.system_account(session, tenant, "treasury", "USD", now)
    earn = wallet_service.provider_earnings_account(session, tenant, SOLANA_ADDRESS, "USDC", now)
    assert (escrow.id, escrow.kind, escrow.flags) == ("sys:escrow:USD", "escrow",
                                                      AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
    assert (ext.kind, ext.flags, treasury.flags) == ("external:solana", 0, 0)
    assert (earn.kind, earn.owner_type, earn.owner_id) == ("provider_earnings", "provider", SOLANA_ADDRESS)
    assert earn.flags == AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    assert wallet_service.system_account(session, tenant, "escrow", "USD", now).id == escrow.id
    with pytest.raises(ValueError):
        wallet_service.system_account(session, tenant, "slush_fund", "USD", now)


# -- deposits -----------------------------------------------------------------------


def test_deposit_credits_wallet_from_external_and_is_labelled_simulation(session, tenant, clock):
    dep = wallet_service.deposit(session, tenant, owner_type="customer", owner_id="alice", asset="USD",
                                 amount_minor=12_345, rail="simulation", proof="tx-1", clock=clock)
    assert (dep.transfer_id, dep.amount_minor, dep.simulated) == ("dep:simulation:tx-1", 12_345, True)
    assert ledger_balance(session, tenant, dep.account_id) == (0, 0, 0, 12_345)
    assert ledger_balance(session, tenant, EXT) == (0, 12_345, 0, 0)
    bal = wallet_service.balance(session, tenant, "customer", "alice", "USD")
    assert (bal.asset, bal.scale, bal.posted, bal.pending, bal.available) == ("USD", 2, 12_345, 0, 12_345)

    t = ledger_service.get_transfer(session, tenant, "dep:simulation:tx-1")
    assert (t.debit_account_id, t.credit_account_id, t.amount, t.code) == (EXT, dep.account_id, 12_345, "deposit")
    assert t.metadata_ == {"rail": "simulation", "proof": "tx-1", "mode": SIMULATION_MODE}
    inbox = session.get(PaymentInbox, ("simulation", f"{tenant}:tx-1"))
    assert inbox is not None
    assert (inbox.tenant_id, inbox.kind, inbox.owner, inbox.amount_minor, inbox.status, inbox.transfer_id) == (
        tenant, "deposit", "customer:alice", 12_345, "processed", "dep:simulation:tx-1")


def test_reused_proof_is_409_even_for_another_owner(session, tenant, clock):
    make_deposit(session, tenant, clock, owner_id="alice", amount_minor=500, proof="tx-dup")
    before = transfer_count(session, tenant)
    for owner in ("alice", "bob"):
        with pytest.raises(PaymentProofReused) as e:
            make_deposit(session, tenant, clock, owner_id=owner, amount_minor=500, proof="tx-dup")
        assert (e.value.status, e.value.code) == (409, "payment_proof_reused")
    assert transfer_count(session, tenant) == before
    assert wallet_service.balance(session, tenant, "customer", "alice", "USD").posted == 500
    assert wallet_service.balance(session, tenant, "customer", "bob", "USD").posted == 0
    assert ledger_balance(session, tenant, EXT) == (0, 500, 0, 0)


def test_deposit_rejects_bad_input(session, tenant, clock):
    kw = dict(owner_type="customer", owner_id="alice", asset="USD", clock=clock)
    with pytest.raises(UnknownRail) as e:
        wallet_service.deposit(session, tenant, amount_minor=1, rail="paypal", proof="p1", **kw)
    assert (e.value.status, e.value.code) == (422, "unknown_rail")
    for bad in (0, -5):
        with pytest.raises(AmountNotPositive):
            wallet_service.deposit(session, tenant, amount_minor=bad, rail="simulation", proof="p2", **kw)
    with pytest.raises(InvalidAmount):
        wallet_service.deposit(session, tenant, amount_minor=True, rail="simulation", proof="p3", **kw)
    with pytest.raises(AmountOverflow):
        wallet_service.deposit(session, tenant, amount_minor=2**63, rail="simulation", proof="p4", **kw)
    assert transfer_count(session, tenant) == 0


def test_deposit_rolled_back_with_its_transaction_leaves_nothing(db, tenant_id, clock):
    with db.session() as s:
        make_tenant(s, tenant_id, clock)

    class Crash(Exception):
        pass

    with pytest.raises(Crash), db.session() as s:
        make_deposit(s, tenant_id, clock, owner_id="alice", amount_minor=700, proof="tx-crash")
        raise Crash  # after the inbox row and the transfer were written, before commit

    with db.session() as s:
        assert s.get(PaymentInbox, ("simulation", f"{tenant_id}:tx-crash")) is None
        assert s.get(Transfer, (tenant_id, "dep:simulation:tx-crash")) is None
        assert wallet_service.balance(s, tenant_id, "customer", "alice", "USD").posted == 0
        # The proof was never used, so it still credits — once.
        make_deposit(s, tenant_id, clock, owner_id="alice", amount_minor=700, proof="tx-crash")
    with db.session() as s:
        assert wallet_service.balance(s, tenant_id, "customer", "alice", "USD").posted == 700
        assert ledger_balance(s, tenant_id, EXT) == (0, 700, 0, 0)


# -- withdrawals --------------------------------------------------------------------


def test_withdraw_debits_wallet_through_the_rail(session, tenant, clock):
    dep = make_deposit(session, tenant, clock, owner_id="alice", amount_minor=10_000)
    wd = wallet_service.withdraw(session, tenant, owner_type="customer", owner_id="alice", asset="USD",
                                 amount_minor=2_500, rail="simulation", destination="bank-1", clock=clock,
                                 idempotency_id="w1")
    assert (wd.tx_signature, wd.simulated, wd.amount_minor) == (SIMULATION_MODE, True, 2_500)
    assert ledger_balance(session, tenant, dep.account_id) == (0, 2_500, 0, 10_000)
    assert ledger_balance(session, tenant, EXT) == (0, 10_000, 0, 2_500)
    bal = wallet_service.balance(session, tenant, "customer", "alice", "USD")
    assert (bal.posted, bal.pending, bal.available) == (7_500, 0, 7_500)
    hold = session.get(Hold, (tenant, wd.hold_transfer_id), populate_existing=True)
    assert (hold.state, hold.posted_amount) == ("posted", 2_500)
    sent = ledger_service.get_transfer(session, tenant, wd.transfer_id)
    assert sent.metadata_ == {"rail": "simulation", "destination": "bank-1", "mode": SIMULATION_MODE,
                              "tx_signature": SIMULATION_MODE}


def test_withdraw_replay_returns_same_result_without_second_debit(session, tenant, clock):
    make_deposit(session, tenant, clock, owner_id="alice", amount_minor=10_000)
    kw = dict(owner_type="customer", owner_id="alice", asset="USD", rail="simulation", destination="bank-1",
              clock=clock, idempotency_id="w-replay")
    first = wallet_service.withdraw(session, tenant, amount_minor=4_000, **kw)
    count = transfer_count(session, tenant)
    again = wallet_service.withdraw(session, tenant, amount_minor=4_000, **kw)
    assert again == first
    assert transfer_count(session, tenant) == count
    assert wallet_service.balance(session, tenant, "customer", "alice", "USD").posted == 6_000
    with pytest.raises(IdempotencyConflict):
        wallet_service.withdraw(session, tenant, amount_minor=4_001, **kw)
    with pytest.raises(IdempotencyConflict):
        wallet_service.withdraw(session, tenant, amount_minor=4_000, **{**kw, "destination": "bank-2"})
    assert wallet_service.balance(session, tenant, "customer", "alice", "USD").posted == 6_000


def test_withdraw_more_than_available_is_402(session, tenant, clock):
    make_deposit(session, tenant, clock, owner_id="alice", amount_minor=1_000)
    kw = dict(owner_type="customer", asset="USD", rail="simulation", destination="bank-1", clock=clock)
    with pytest.raises(InsufficientFunds) as e:
        wallet_service.withdraw(session, tenant, owner_id="alice", amount_minor=1_001, idempotency_id="w2", **kw)
    assert (e.value.status, e.value.code) == (402, "insufficient_funds")
    with pytest.raises(InsufficientFunds):
        wallet_service.withdraw(session, tenant, owner_id="nobody", amount_minor=1, idempotency_id="w3", **kw)
    bal = wallet_service.balance(session, tenant, "customer", "alice", "USD")
    assert (bal.posted, bal.pending, bal.available) == (1_000, 0, 1_000)
    assert session.get(Transfer, (tenant, "wd:w2")) is None


def test_failed_send_rolls_the_hold_back_with_the_transaction(db, tenant_id, clock, monkeypatch):
    class BrokenRail(SimulationRail):
        def send(self, tenant_id, *, destination, amount_minor, asset, reference) -> SendResult:
            raise RailSendFailed("node unreachable")

    monkeypatch.setitem(rails._RAILS, "simulation", BrokenRail())
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        make_deposit(s, tenant_id, clock, owner_id="alice", amount_minor=900)
    with pytest.raises(RailSendFailed), db.session() as s:
        wallet_service.withdraw(s, tenant_id, owner_type="customer", owner_id="alice", asset="USD",
                                amount_minor=900, rail="simulation", destination="d", clock=clock,
                                idempotency_id="w-broken")
    with db.session() as s:
        assert s.get(Transfer, (tenant_id, "wd:w-broken")) is None
        bal = wallet_service.balance(s, tenant_id, "customer", "alice", "USD")
        assert (bal.posted, bal.pending, bal.available) == (900, 0, 900)


# -- balances and history -----------------------------------------------------------


def test_balance_counts_holds_as_pending(session, tenant, clock):
    dep = make_deposit(session, tenant, clock, owner_id="alice", amount_minor=5_000)
    escrow = wallet_service.system_account(session, tenant, "escrow", "USD", clock.now_ns())
    [r] = ledger_service.post(session, tenant, [TransferIn("hold-1", dep.account_id, escrow.id, 1_200, "USD",
                                                           flags=int(TransferFlags.PENDING))], clock)
    assert r.result == "ok"
    bal = wallet_service.balance(session, tenant, "customer", "alice", "USD")
    assert (bal.posted, bal.pending, bal.available) == (5_000, 1_200, 3_800)
    with pytest.raises(InsufficientFunds):
        wallet_service.withdraw(session, tenant, owner_type="customer", owner_id="alice", asset="USD",
                                amount_minor=3_801, rail="simulation", destination="d", clock=clock,
                                idempotency_id="w-held")
    assert wallet_service.balance(session, tenant, "customer", "nobody", "USD") == type(bal)("USD", 2, 0, 0, 0)


def test_history_pages_signed_entries(session, tenant, clock):
    for i in range(3):
        make_deposit(session, tenant, clock, owner_id="alice", amount_minor=100 * (i + 1), proof=f"h{i}")
    wallet_service.withdraw(session, tenant, owner_type="customer", owner_id="alice", asset="USD", amount_minor=50,
                            rail="simulation", destination="d", clock=clock, idempotency_id="wh")
    page1 = wallet_service.history(session, tenant, "customer", "alice", "USD", limit=3)
    assert [e.amount_minor for e in page1.items] == [100, 200, 300]
    assert page1.next_cursor is not None
    page2 = wallet_service.history(session, tenant, "customer", "alice", "USD", after_seq=int(page1.next_cursor))
    assert [(e.amount_minor, e.status, e.code) for e in page2.items] == [
        (-50, "pending", "withdrawal"), (-50, "posted", "withdrawal")]
    assert page2.next_cursor is None
    assert page2.items[0].counterparty_account_id == EXT
    assert page1.items[0].metadata["mode"] == SIMULATION_MODE
    empty = wallet_service.history(session, tenant, "customer", "nobody", "USD")
    assert (empty.items, empty.next_cursor) == ([], None)


def test_tenants_never_see_each_others_wallets(session, tenant, clock):
    other = make_tenant(session, tenant + "-b", clock)
    make_deposit(session, tenant, clock, owner_id="alice", amount_minor=300, proof="same-proof")
    assert wallet_service.balance(session, other, "customer", "alice", "USD").posted == 0
    assert wallet_service.history(session, other, "customer", "alice", "USD").items == []
    # A simulated proof means nothing outside its tenant, so the other tenant may use the same string.
    make_deposit(session, other, clock, owner_id="alice", amount_minor=40, proof="same-proof")
    assert wallet_service.balance(session, other, "customer", "alice", "USD").posted == 40
    assert wallet_service.balance(session, tenant, "customer", "alice", "USD").posted == 300


def test_two_owners_may_use_the_same_withdrawal_id(session, tenant_id, clock):
    """Withdrawal ids are scoped per wallet: the same client id from two owners is two withdrawals."""
    from meterline.wallets.service import wallet_service
    from tests.factories import make_tenant

    make_tenant(session, tenant_id, clock)
    for owner in ("alice", "bob"):
        wallet_service.deposit(session, tenant_id, owner_type="user", owner_id=owner, asset="USD",
                               amount_minor=1000, rail="simulation", proof=f"p-{owner}", clock=clock)
    for owner in ("alice", "bob"):
        w = wallet_service.withdraw(session, tenant_id, owner_type="user", owner_id=owner, asset="USD",
                                    amount_minor=400, rail="simulation", destination="bank", clock=clock,
                                    idempotency_id="req-1")
        assert w.amount_minor == 400
    for owner in ("alice", "bob"):
        assert wallet_service.balance(session, tenant_id, "user", owner, "USD").available == 600


def test_one_withdrawal_id_sent_twice_at_once_is_one_withdrawal_and_one_replay(db, tenant_id, clock):
    """The second request queues behind the first's ledger lock and finds the hold already
    posted: that is the first request's withdrawal, answered as a replay — never "released
    without being sent", which would invite a retry under a new id (a second debit)."""
    with db.session() as s:
        make_tenant(s, tenant_id, clock)
        make_deposit(s, tenant_id, clock, owner_id="alice", amount_minor=10_000)
    kw = dict(owner_type="customer", owner_id="alice", asset="USD", amount_minor=4_000, rail="simulation",
              destination="bank-1", clock=clock, idempotency_id="w-twice")
    first_sent = threading.Event()

    def first() -> object:
        with db.session() as s:
            done = wallet_service.withdraw(s, tenant_id, **kw)
            first_sent.set()
            time.sleep(0.2)  # still uncommitted while the second arrives
            return done

    def second() -> object:
        first_sent.wait(10)
        with db.session() as s:
            return wallet_service.withdraw(s, tenant_id, **kw)

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(first), pool.submit(second)
        assert a.result() == b.result()
    with db.session(write=False) as s:
        assert wallet_service.balance(s, tenant_id, "customer", "alice", "USD").posted == 6_000


def test_an_account_under_a_wallets_id_but_not_a_wallet_is_never_adopted(session, tenant, clock):
    """Clients may not create `wal:…` ids any more; one that exists anyway (made some other
    way) without the wallet's non-negative flag would let its owner overdraw: it is refused."""
    from meterline.ledger.service import AccountCreate
    from meterline.wallets.service import owned_account_id

    acc_id = owned_account_id("wal", "customer", "mallory", "USD")
    ledger_service.create_account(session, tenant, AccountCreate(asset="USD", kind="customer_wallet", id=acc_id,
                                                                 owner_type="customer", owner_id="mallory"),
                                  clock.now_ns())
    with pytest.raises(AccountExists):
        wallet_service.withdraw(session, tenant, owner_type="customer", owner_id="mallory", asset="USD",
                                amount_minor=1_000, rail="simulation", destination="bank-1", clock=clock,
                                idempotency_id="w-squat")
