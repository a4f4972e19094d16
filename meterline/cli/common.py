"""Shared CLI plumbing: settings from the environment plus `--database-url`."""

from __future__ import annotations

from meterline.config import Settings, set_settings


def load_settings(database_url: str | None = None, **overrides: object) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if database_url:
        values["database_url"] = database_url
    settings = Settings(**values)  # type: ignore[arg-type]
    set_settings(settings)
    return settings
