"""Run Alembic migrations programmatically (`meterline db upgrade`, `serve --dev`, tests)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"

# PostgreSQL partitions of partitioned tables: created by migrations and the worker at
# run time (one per month), so they have no model. The partitioned parent has one and is
# compared as usual; its partitions would otherwise show up as tables to drop.
_PARTITIONS = re.compile(r"usage_events_(default|y\d{4}m\d{2})")


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic `include_object` hook: leave run-time partitions out of autogenerate, and
    the indexes that exist on one dialect only (`Index.ddl_if`): Alembic does not know
    `ddl_if`, so their migrations create them by hand on the dialect they name."""
    if type_ == "index" and name in _dialect_indexes():
        return False
    return not (type_ == "table" and reflected and compare_to is None and name and _PARTITIONS.fullmatch(name))


def _dialect_indexes() -> set[str]:
    from meterline.db.registry import metadata

    return {str(ix.name) for table in metadata.tables.values() for ix in table.indexes
            if ix._ddl_if is not None}


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)
