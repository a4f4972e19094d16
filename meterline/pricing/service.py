"""Pricing operations: publish and read price books, providers' minimums, device quotes.

The arithmetic is in `engine.py` (pure); this module adds storage and the
tenant scope. Pricing doesn't import the catalog (they are sibling layers): a
device is anything with the catalog's device fields (`DeviceSpec`), and
provider rows are referenced through a foreign key to the `providers` table.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, Table, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from meterline.db import upsert
from meterline.db.scoping import scoped
from meterline.errors import Conflict, NotFound
from meterline.ledger.service import AssetNotFound, ledger_service
from meterline.pricing.engine import (
    GpuModelNotPriced,
    InvalidDuration,
    InvalidEnergy,
    InvalidPower,
    InvalidPriceBook,
    InvalidQuote,
    InvalidRate,
    InvalidUtilisation,
    InvalidVram,
    PriceBook,
    PricingError,
    Quote,
    TierNotPriced,
    check_rate,
    parse_book,
    quote_gpu,
    quote_tier,
)
from meterline.pricing.models import PriceBookRow, ProviderRate

__all__ = [
    "DeviceSpec",
    "GpuModelNotPriced",
    "InvalidDuration",
    "InvalidEnergy",
    "InvalidPower",
    "InvalidPriceBook",
    "InvalidQuote",
    "InvalidRate",
    "InvalidUtilisation",
    "InvalidVram",
    "PriceBookMissing",
    "PriceBookVersionConflict",
    "PriceBookVersionNotFound",
    "PricingError",
    "PricingService",
    "ProviderRateNotFound",
    "TierNotPriced",
    "UnknownProvider",
    "pricing_service",
]

# -- errors (the engine's are re-exported above) -----------------------------------------


class PriceBookMissing(PricingError, NotFound):
    code = "price_book_missing"
    title = "No price book has been published for this tenant"


class PriceBookVersionNotFound(PricingError, NotFound):
    code = "price_book_version_not_found"
    title = "No such price book version"


class PriceBookVersionConflict(PricingError, Conflict):
    code = "price_book_version_conflict"
    title = "Another price book was published at the same time; retry"


class UnknownProvider(PricingError, NotFound):
    code = "provider_not_found"
    title = "No such provider"


class ProviderRateNotFound(PricingError, NotFound):
    code = "provider_rate_not_found"
    title = "The provider has no minimum rate for this GPU model"


class DeviceSpec(Protocol):
    """What a quote needs to know about a device (the catalog's `Device` has these)."""

    @property
    def provider_id(self) -> str: ...
    @property
    def tier_id(self) -> str: ...
    @property
    def gpu_model_id(self) -> str | None: ...
    @property
    def vram_gb(self) -> int: ...
    @property
    def power_limit_w(self) -> int: ...


# Mapping-valued fields whose `changes` merge key by key (a null value removes the key);
# every other field is replaced whole.
_MERGED = ("base_rates", "tier_rates")

DEMO_BOOK: dict[str, Any] = {
    "asset": "DGPU",
    "base_rates": {"nvidia_rtx_4090": "0.50", "nvidia_a100": "2.00", "nvidia_h100": "4.00"},
    "tier_rates": {"M2": {"asset": "SOL", "hourly": "0.001"}},
    "power_multiplier": "0.001",
    "platform_fee_percent": "5.0",
    "minimum_session_minutes": 1,
    "granularity": "second",
    "rounding": "half_up",
    # Flat while at most half the pool is busy, then up to ×1.5 when all of it is.
    "demand_curve": [["0", "1.0"], ["0.5", "1.0"], ["0.8", "1.25"], ["1.0", "1.5"]],
}


class PricingService:
    # -- price books ------------------------------------------------------------------
    def current_book(self, session: Session, tenant_id: str) -> PriceBook:
        row = self._latest_row(session, tenant_id)
        if row is None:
            raise PriceBookMissing("no price book has been published; publish one first")
        return self._load(row)

    def get_book(self, session: Session, tenant_id: str, version: int) -> PriceBook:
        """A past version, e.g. to show which prices a rental's quote came from."""
        row = session.get(PriceBookRow, (tenant_id, version))
        if row is None:
            raise PriceBookVersionNotFound(f"price book version {version} does not exist")
        return self._load(row)

    def list_books(self, session: Session, tenant_id: str) -> list[PriceBookRow]:
        """Every version, newest first: the audit trail of price changes."""
        stmt = scoped(select(PriceBookRow), PriceBookRow, tenant_id).order_by(PriceBookRow.version.desc())
        return list(session.scalars(stmt))

    def publish_book(
        self, session: Session, tenant_id: str, changes: dict[str, Any], actor: str, now_ns: int,
    ) -> PriceBook:
        """Publish the current book with `changes` applied as a new version.

        `base_rates`/`tier_rates` merge per key (``{"nvidia_h100": "5.00"}`` changes
        one rate; ``null`` removes one); other fields replace. The first book must
        name at least `asset`. The whole result is validated — every bad field is
        reported at once — and its assets must exist in the tenant's ledger.
        """
        if "version" in changes:
            raise InvalidPriceBook("the version is assigned on publish", errors=[
                {"field": "version", "code": "read_only", "detail": "assigned on publish"}])
        latest = self._latest_row(session, tenant_id)
        data = copy.deepcopy(latest.data) if latest is not None else {}
        for name, value in changes.items():
            if name in _MERGED and isinstance(value, dict) and isinstance(data.get(name), dict):
                merged = dict(data[name])
                for k, v in value.items():
                    if v is None:
                        merged.pop(k, None)
                    else:
                        merged[k] = v
                data[name] = merged
            else:
                data[name] = value
        version = (latest.version if latest is not None else 0) + 1
        data["version"] = version
        book = parse_book(data)
        self._check_assets(session, tenant_id, book)
        row = PriceBookRow(tenant_id=tenant_id, version=version, created_at=now_ns,
                           created_by=actor[:128], data=book.to_dict())
        try:
            # A savepoint: two concurrent publishers both pick N+1; the loser gets a 409
            # (retryable) and its request transaction stays usable.
            with session.begin_nested():
                session.add(row)
                session.flush()
        except IntegrityError:
            raise PriceBookVersionConflict(f"price book version {version} was just published") from None
        return book

    # -- provider minimums --------------------------------------------------------------
    def set_provider_min(
        self, session: Session, tenant_id: str, provider_id: str, gpu_model: str, min_hourly: Decimal,
        now_ns: int, *, asset: str | None = None,
    ) -> ProviderRate:
        """Set (or replace) a provider's floor for a GPU model, in the book's asset by default."""
        rate = check_rate(min_hourly, "min_hourly")
        if asset is None:
            asset = self.current_book(session, tenant_id).asset
        else:
            self._require_asset(session, tenant_id, asset, "asset")
        # One statement, so two requests setting the same floor at once never meet at the key.
        text, table = format(rate, "f"), cast(Table, ProviderRate.__table__)
        stmt = upsert.insert(session, table).values(
            tenant_id=tenant_id, provider_id=provider_id, gpu_model_id=gpu_model, asset=asset, min_hourly=text,
            updated_at=now_ns,
        ).on_conflict_do_update(index_elements=["tenant_id", "provider_id", "gpu_model_id", "asset"],
                                set_={"min_hourly": text, "updated_at": now_ns})
        try:
            with session.begin_nested():
                session.execute(stmt)
        except IntegrityError:
            # The key's conflict is the statement's own; what can fail is the provider FK.
            raise UnknownProvider(f"provider {provider_id} does not exist") from None
        row = session.get(ProviderRate, (tenant_id, provider_id, gpu_model, asset), populate_existing=True)
        assert row is not None
        return row

    def get_provider_min(
        self, session: Session, tenant_id: str, provider_id: str, gpu_model: str, *, asset: str,
    ) -> Decimal | None:
        """The provider's floor, or None when it has set none (the dynamic rate stands)."""
        row = session.get(ProviderRate, (tenant_id, provider_id, gpu_model, asset))
        return None if row is None else Decimal(row.min_hourly)

    def list_provider_rates(self, session: Session, tenant_id: str, provider_id: str) -> list[ProviderRate]:
        stmt = scoped(select(ProviderRate), ProviderRate, tenant_id).where(ProviderRate.provider_id == provider_id)
        return list(session.scalars(stmt.order_by(ProviderRate.gpu_model_id, ProviderRate.asset)))

    def delete_provider_min(
        self, session: Session, tenant_id: str, provider_id: str, gpu_model: str, *, asset: str,
    ) -> None:
        """Remove a floor; `ProviderRateNotFound` if there is none (or another request just
        removed it: one statement, so a concurrent removal is a miss, not a 500)."""
        gone = session.execute(
            delete(ProviderRate).where(ProviderRate.tenant_id == tenant_id, ProviderRate.provider_id == provider_id,
                                       ProviderRate.gpu_model_id == gpu_model, ProviderRate.asset == asset)
            .execution_options(synchronize_session="fetch"))
        if not cast(CursorResult[Any], gone).rowcount:
            raise ProviderRateNotFound(f"provider {provider_id} has no minimum for {gpu_model} in {asset}")

    # -- quotes -------------------------------------------------------------------------
    def quote_for_device(
        self, session: Session, tenant_id: str, device: DeviceSpec, *, vram_gb_requested: int | None = None,
        watts: int | None = None, utilisation: Decimal,
    ) -> Quote:
        """Quote a device from the current book: a GPU device by its model (dynamic
        price, provider floor), a device without a GPU model by its tier's flat rate.

        `vram_gb_requested` defaults to the whole card and `watts` to the device's
        power limit (the most it can draw — an honest upper estimate). `utilisation`
        comes from `catalog_service.utilisation`, which needs rentals' busy set.
        """
        book = self.current_book(session, tenant_id)
        if device.gpu_model_id is None:
            return quote_tier(book, device.tier_id)
        floor = self.get_provider_min(session, tenant_id, device.provider_id, device.gpu_model_id,
                                      asset=book.asset)
        return quote_gpu(
            book, gpu_model=device.gpu_model_id, vram_gb_total=device.vram_gb,
            vram_gb_requested=device.vram_gb if vram_gb_requested is None else vram_gb_requested,
            watts=device.power_limit_w if watts is None else watts, utilisation=utilisation,
            provider_min_hourly=floor,
        )

    # -- demo ---------------------------------------------------------------------------
    def seed_demo(self, session: Session, tenant_id: str, now_ns: int) -> PriceBook:
        """Version 1 with Dante's rates and SI64's M2 tier; a no-op once any book exists."""
        if self._latest_row(session, tenant_id) is not None:
            return self.current_book(session, tenant_id)
        return self.publish_book(session, tenant_id, copy.deepcopy(DEMO_BOOK), "system:seed", now_ns)

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    def _latest_row(session: Session, tenant_id: str) -> PriceBookRow | None:
        stmt = scoped(select(PriceBookRow), PriceBookRow, tenant_id).order_by(PriceBookRow.version.desc()).limit(1)
        return session.scalars(stmt).first()

    @staticmethod
    def _load(row: PriceBookRow) -> PriceBook:
        # The column is authoritative for the version, whatever the JSON says.
        return parse_book({**row.data, "version": row.version})

    def _check_assets(self, session: Session, tenant_id: str, book: PriceBook) -> None:
        """A book may only price in assets the ledger knows, or no rental could be charged."""
        errors = []
        for field_name, code in [("asset", book.asset)] + [
            (f"tier_rates.{t}.asset", r.asset) for t, r in sorted(book.tier_rates.items())
        ]:
            try:
                ledger_service.get_asset(session, tenant_id, code)
            except AssetNotFound:
                errors.append({"field": field_name, "code": "asset_not_found", "detail": f"no asset {code}"})
        if errors:
            raise InvalidPriceBook("the price book names unknown assets", errors=errors)

    def _require_asset(self, session: Session, tenant_id: str, code: str, field_name: str) -> None:
        try:
            ledger_service.get_asset(session, tenant_id, code)
        except AssetNotFound:
            raise InvalidPriceBook(f"no asset {code}", errors=[
                {"field": field_name, "code": "asset_not_found", "detail": f"no asset {code}"}]) from None


pricing_service = PricingService()
