"""Imports every table module so `metadata` is complete (Alembic, test setup)."""

from meterline.db import idempotency  # noqa: F401  (keep first: no deps)
from meterline.db.base import metadata
from meterline.identity import models as identity_models  # noqa: F401
from meterline.ledger import models as ledger_models  # noqa: F401
from meterline.worker import models as worker_models  # noqa: F401

__all__ = ["metadata"]
