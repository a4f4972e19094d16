"""Prepaid contracts (the SI64 style): pay for a term up front, extend, settle with a refund.

A rent call is one transaction: the payment proof is verified and claimed once
(a replayed proof is 409), it funds the customer's wallet, and the whole
payment is held wallet → escrow. The cost can never exceed the term's price
(billing stops at the term), so an overpayment comes back with the refund,
through the rail it came from, instead of lingering in a wallet the SI64
interface has no way to withdraw from. Under the simulation rail (the dev default) an
extension the wallet cannot cover is funded by a simulated payment, recorded
as such, so the documented extend call (which carries no payment) works.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from meterline.catalog.models import Device
from meterline.catalog.service import catalog_service
from meterline.clock import Clock
from meterline.ledger.service import ledger_service
from meterline.payments.rails import get_rail
from meterline.payments.service import INTERNAL_PROOF_PREFIX
from meterline.pricing.engine import Quote, quote_tier
from meterline.pricing.service import pricing_service
from meterline.rentals import accrual
from meterline.rentals.models import Rental
from meterline.rentals.service import (
    ACTIVE,
    PREPAID,
    ExtendResult,
    InsufficientFunds,
    InsufficientPayment,
    NoDeviceAvailable,
    RentalNotActive,
    rental_service,
    term_price,
)
from meterline.wallets.service import wallet_service

WALLET_OWNER = "wallet"


@dataclass(frozen=True, slots=True)
class RentResult:
    rental: Rental
    quote: Quote
    price_minor: int
    paid_minor: int


def active_leases(session: Session, tenant_id: str, device_ids: list[str]) -> dict[str, int]:
    """Active rentals per device, in one grouped query."""
    if not device_ids:
        return {}
    rows = session.execute(
        select(Rental.device_id, func.count())
        .where(Rental.tenant_id == tenant_id, Rental.status == ACTIVE, Rental.device_id.in_(device_ids))
        .group_by(Rental.device_id)
    )
    return {str(r[0]): int(r[1] or 0) for r in rows}


class ContractService:
    def price(self, session: Session, tenant_id: str, tier: str, duration_s: int) -> tuple[Quote, int, int]:
        """(quote, scale, price in minor units) for renting `tier` for `duration_s`."""
        catalog_service.get_tier(session, tenant_id, tier)
        quote = quote_tier(pricing_service.current_book(session, tenant_id), tier)
        scale = ledger_service.get_asset(session, tenant_id, quote.asset).scale
        locked = accrual.lock_rate(quote.hourly_rate, scale)
        num, den = accrual.rate_fraction(locked, scale)
        return quote, scale, term_price((num, den, quote.rounding.value), duration_s)

    def rent(
        self,
        session: Session,
        tenant_id: str,
        *,
        wallet: str,
        tier: str,
        duration_s: int,
        paid_minor: int | None,
        proof: str,
        rail: str | None,
        clock: Clock,
    ) -> RentResult:
        quote, scale, price = self.price(session, tenant_id, tier, duration_s)
        paid = price if paid_minor is None else paid_minor
        if paid < price:
            raise InsufficientPayment(
                f"the payment of {paid} minor units does not cover the price of {price}",
                price_minor=price,
            )
        device = self._pick_device(session, tenant_id, tier)
        rail_ = get_rail(rail)
        # Every account the rental will touch exists before the deposit's ledger post (see
        # `RentalService.settlement_accounts`: created after it, they can deadlock).
        escrow = wallet_service.system_account(session, tenant_id, "escrow", quote.asset, clock.now_ns())
        rental_service.settlement_accounts(session, tenant_id, provider_id=device.provider_id, asset=quote.asset,
                                           refund_rail=rail_.name, now=clock.now_ns())
        deposit = wallet_service.deposit(
            session, tenant_id, owner_type=WALLET_OWNER, owner_id=wallet, asset=quote.asset,
            amount_minor=paid, rail=rail_.name, proof=proof, clock=clock,
        )
        rental = rental_service.create(
            session, tenant_id, style=PREPAID, customer_type=WALLET_OWNER, customer_id=wallet,
            wallet_account_id=deposit.account_id, escrow_account_id=escrow.id, asset=quote.asset, scale=scale,
            quote=quote, duration_s=duration_s, initial_hold_minor=paid, payment_rail=rail_.name,
            payment_proof=proof, refund_to_rail=True, provider_id=device.provider_id, device_id=device.id,
            tier=tier, gpu_model=device.gpu_model_id, vram_gb=None, clock=clock,
        )
        return RentResult(rental, quote, price, paid)

    def _pick_device(self, session: Session, tenant_id: str, tier: str) -> Device:
        """The available device of the tier with the fewest active leases (ties: by id)."""
        devices = catalog_service.list_devices(session, tenant_id, tier=tier, status="available")
        if not devices:
            raise NoDeviceAvailable(f"no device of tier {tier} is available")
        leases = active_leases(session, tenant_id, [d.id for d in devices])
        return min(devices, key=lambda d: (leases.get(d.id, 0), d.id))

    def extend(
        self,
        session: Session,
        tenant_id: str,
        rental_id: str,
        *,
        added_s: int,
        proof: str | None,
        paid_minor: int | None,
        clock: Clock,
    ) -> ExtendResult:
        rental = rental_service.get(session, tenant_id, rental_id, lock=True)
        if rental.style != PREPAID:
            raise RentalNotActive("sessions are not extended; their hold renews while the wallet can fund it")
        price = term_price((rental.rate_num, rental.rate_den, rental.rounding), added_s)
        rail = get_rail(rental.payment_rail)
        # What this extension holds: its price — or, paid with a proof, all that was paid, as
        # `rent` holds it, so an overpayment comes back with the refund instead of staying in
        # a wallet the renter cannot reach.
        hold = price
        if proof is not None:
            paid = price if paid_minor is None else paid_minor
            if paid < price:  # as `rent`: a payment that names its amount must cover the price
                raise InsufficientPayment(
                    f"the payment of {paid} minor units does not cover the extension's price of {price}",
                    price_minor=price,
                )
            wallet_service.deposit(
                session, tenant_id, owner_type=rental.customer_type, owner_id=rental.customer_id,
                asset=rental.asset, amount_minor=paid, rail=rail.name, proof=proof, clock=clock,
            )
            hold = max(price, paid)
        ledger_service.lock_writes(session, tenant_id)  # the balance read below holds until the hold
        available = wallet_service.balance(session, tenant_id, rental.customer_type, rental.customer_id,
                                           rental.asset).available
        shortfall = hold - available
        if shortfall > 0:
            if not rail.simulated:
                raise InsufficientFunds(
                    f"the wallet holds {available} and the extension costs {price} (minor units); "
                    "send a payment proof with the extension"
                )
            wallet_service.deposit(
                session, tenant_id, owner_type=rental.customer_type, owner_id=rental.customer_id,
                asset=rental.asset, amount_minor=shortfall, rail=rail.name,
                proof=f"{INTERNAL_PROOF_PREFIX}{rental.id}:{rental.hold_count + 1}", clock=clock, internal=True,
            )
        result = rental_service.extend(session, tenant_id, rental_id, added_seconds=added_s,
                                       added_minor=hold, clock=clock)
        return replace(result, cost_minor=price)


contract_service = ContractService()
