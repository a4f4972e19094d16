"""Pay-as-you-go sessions (the Dante style): a rolling hold a few minutes ahead of use.

A session starts against the customer's standing wallet with one slice
(PAYG_SLICE_S of time at the locked rate, or the minimum session if that is
longer) held in escrow; the worker tops the hold up while the wallet can fund
it — each top-up the next slice, sized at what the session is charged (time
plus power at the draw last metered), plus any usage that ran past the holds
(`rental_service.renew_cover`) — and terminates and settles the session with
reason `insufficient_funds` when it cannot. Settlement bills the session in
full: the holds pay first, then the wallet, and what it cannot pay is recorded
as unpaid. The quote's estimated power is shown, never held: power is
charged only as metered, and nothing is metered before the first sample. The price
is quoted dynamically (GPU model, VRAM fraction, demand, provider minimum)
and locked into the session.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from meterline.catalog.models import Device
from meterline.catalog.service import catalog_service
from meterline.clock import Clock
from meterline.ledger.service import ledger_service
from meterline.pricing.engine import billable_seconds
from meterline.pricing.service import pricing_service
from meterline.rentals import accrual
from meterline.rentals.models import Rental
from meterline.rentals.service import (
    ACTIVE,
    PAYG,
    InvalidRentalRequest,
    NoDeviceAvailable,
    Settlement,
    rental_service,
    slice_minor,
)
from meterline.wallets.service import wallet_service

USER_OWNER = "user"


def allocated_vram(session: Session, tenant_id: str, device_ids: list[str]) -> dict[str, int]:
    """VRAM (GB) held by active sessions per device, in one grouped query."""
    if not device_ids:
        return {}
    rows = session.execute(
        select(Rental.device_id, func.coalesce(func.sum(Rental.vram_gb), 0))
        .where(Rental.tenant_id == tenant_id, Rental.status == ACTIVE, Rental.device_id.in_(device_ids))
        .group_by(Rental.device_id)
    )
    return {str(r[0]): int(r[1] or 0) for r in rows}


def _lock_devices(session: Session, tenant_id: str, device_ids: list[str]) -> list[Device]:
    """Lock the candidate devices (in id order, so two starts never wait on each other in a
    cycle) and read them afresh, before their VRAM is counted.

    Without it, starts arriving together on PostgreSQL each count the same committed sessions
    and all fit on one card (16 starts of 12 GB on a 24 GB card were measured to succeed).
    With it, a start waits for the one holding the lock to commit, and its count — a new
    statement — sees that session. On SQLite the write transaction already holds the
    database's only write lock, and FOR UPDATE is not rendered."""
    if not device_ids:
        return []
    stmt = (select(Device).where(Device.tenant_id == tenant_id, Device.id.in_(device_ids))
            .order_by(Device.id).with_for_update().execution_options(populate_existing=True))
    return list(session.scalars(stmt))


def busy_devices(session: Session, tenant_id: str) -> set[str]:
    rows = session.execute(
        select(Rental.device_id).where(Rental.tenant_id == tenant_id, Rental.status == ACTIVE,
                                       Rental.device_id.is_not(None)).distinct()
    )
    return {str(r[0]) for r in rows}


class SessionService:
    def start(
        self,
        session: Session,
        tenant_id: str,
        *,
        customer_id: str,
        device_id: str | None,
        gpu_model: str | None,
        vram_gb: int | None,
        watts: int | None,
        clock: Clock,
        customer_type: str = USER_OWNER,
    ) -> Rental:
        device = self._choose(session, tenant_id, device_id=device_id, gpu_model=gpu_model, vram_gb=vram_gb)
        wanted = device.vram_gb if vram_gb is None else vram_gb
        utilisation = catalog_service.utilisation(
            session, tenant_id, gpu_model=device.gpu_model_id, tier=None if device.gpu_model_id else device.tier_id,
            busy_device_ids=busy_devices(session, tenant_id),
        )
        quote = pricing_service.quote_for_device(session, tenant_id, device, vram_gb_requested=wanted,
                                                 watts=watts, utilisation=utilisation)
        scale = ledger_service.get_asset(session, tenant_id, quote.asset).scale
        now = clock.now_ns()
        wallet = wallet_service.wallet_account(session, tenant_id, owner_type=customer_type,
                                               owner_id=customer_id, asset=quote.asset, now_ns=now)
        escrow = wallet_service.system_account(session, tenant_id, "escrow", quote.asset, now)
        num, den = accrual.rate_fraction(accrual.lock_rate(quote.hourly_rate, scale), scale)
        first = slice_minor(num, den, quote.power_rate_per_wh, 0, scale)  # no power metered yet
        # A minimum session longer than a slice is charged even if the session ends at once:
        # hold it up front (rounded up), so the first hold covers the least it can cost.
        minimum = -(-num * billable_seconds(quote, 0) // den)
        first = max(first, minimum)
        return rental_service.create(
            session, tenant_id, style=PAYG, customer_type=customer_type, customer_id=customer_id,
            wallet_account_id=wallet.id, escrow_account_id=escrow.id, asset=quote.asset, scale=scale,
            quote=quote, duration_s=None, initial_hold_minor=first, payment_rail="wallet", payment_proof=None,
            refund_to_rail=False, provider_id=device.provider_id, device_id=device.id, tier=device.tier_id,
            gpu_model=device.gpu_model_id, vram_gb=wanted, clock=clock,
        )

    def _choose(self, session: Session, tenant_id: str, *, device_id: str | None, gpu_model: str | None,
                vram_gb: int | None) -> Device:
        """The named device, or the available device of the model with the least VRAM allocated
        that still fits the request (fractional rentals share a card up to its VRAM)."""
        if device_id is None and gpu_model is None:
            raise InvalidRentalRequest("name a device_id or a gpu_model")
        if device_id is not None:
            candidates = [catalog_service.get_device(session, tenant_id, device_id)]
        else:
            candidates = catalog_service.list_devices(session, tenant_id, gpu_model=gpu_model, status="available")
        if vram_gb is not None and vram_gb <= 0:
            raise InvalidRentalRequest("vram_gb must be positive")
        candidates = _lock_devices(session, tenant_id, [d.id for d in candidates])
        used = allocated_vram(session, tenant_id, [d.id for d in candidates])
        fits = [d for d in candidates
                if d.status == "available" and used.get(d.id, 0) + (vram_gb or d.vram_gb) <= d.vram_gb]
        if not fits:
            raise NoDeviceAvailable("no available device has that much free VRAM")
        return min(fits, key=lambda d: (used.get(d.id, 0), d.id))

    def end(self, session: Session, tenant_id: str, rental_id: str, clock: Clock) -> Settlement:
        return rental_service.settle(session, tenant_id, rental_id, clock, reason="ended")


session_service = SessionService()
