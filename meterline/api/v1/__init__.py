"""The native /v1 API: one router per resource, assembled here."""

from fastapi import APIRouter

from meterline.api.v1 import (
    accounts,
    assets,
    billing,
    blocks,
    catalog,
    holds,
    licenses,
    meters,
    payouts,
    pricing,
    rentals,
    transfers,
    wallets,
    webhooks,
)

router = APIRouter(prefix="/v1")
router.include_router(assets.router)
router.include_router(accounts.router)
router.include_router(transfers.router)
router.include_router(holds.router)
router.include_router(blocks.router)
router.include_router(catalog.router)
router.include_router(pricing.router)
router.include_router(wallets.router)
router.include_router(rentals.router)
router.include_router(payouts.router)
router.include_router(meters.router)
router.include_router(licenses.router)
router.include_router(billing.router)
router.include_router(webhooks.router)

# Hot routes dispatched ahead of the router (meterline.api.fastpath); each is also declared above.
FAST_ROUTES = [*transfers.FAST_ROUTES]
