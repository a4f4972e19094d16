"""Imports every table module so `metadata` is complete (Alembic, test setup)."""

from meterline.billing import models as billing_models  # noqa: F401
from meterline.catalog import models as catalog_models  # noqa: F401
from meterline.db import idempotency  # noqa: F401
from meterline.db.base import metadata
from meterline.events import models as events_models  # noqa: F401
from meterline.identity import models as identity_models  # noqa: F401
from meterline.ledger import models as ledger_models  # noqa: F401
from meterline.licensing import models as licensing_models  # noqa: F401
from meterline.metering import models as metering_models  # noqa: F401
from meterline.payments import models as payments_models  # noqa: F401
from meterline.payouts import models as payouts_models  # noqa: F401
from meterline.pricing import models as pricing_models  # noqa: F401
from meterline.rentals import models as rentals_models  # noqa: F401
from meterline.worker import models as worker_models  # noqa: F401

__all__ = ["metadata"]
