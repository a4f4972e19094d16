"""Settings from METERLINE_* environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METERLINE_", extra="ignore")

    database_url: str = "sqlite:///./meterline.db"
    dev: bool = False
    default_tenant: str = "default"
    # Platform Ed25519 signing key (32-byte seed, hex or raw) for ledger blocks and receipts.
    # In dev mode a key is generated into data_dir when missing; in production it must exist.
    signing_key_file: Path | None = None
    data_dir: Path = Path(".meterline")
    redis_url: str | None = None
    nats_url: str | None = None

    # The simulation payment rail takes every claimed payment as paid (DESIGN §1.3: an
    # explicit, labelled mode). None: on in dev mode only. A staging server that must take
    # test payments without dev mode sets METERLINE_SIMULATION=true.
    simulation: bool | None = None

    max_body_bytes: int = 4 * 1024 * 1024
    max_batch: int = 1000
    # Group commit: how long the batcher waits for more work once it has some, and its cap.
    batch_window_ms: float = 1.0
    batch_max_transfers: int = 8000
    # Metrics samples: a sample commit starts at most this often (0: as soon as work waits).
    # Each commit costs a fixed ~0.4 ms of CPU, so pacing trades a few ms of sample latency
    # for fewer, larger commits (docs/scaling.md).
    sample_pace_ms: float = Field(default=10.0, ge=0, le=1000)
    # PostgreSQL: the ledger writer may keep a second batch in flight behind an unread commit
    # when it measures that this answers more callers per second (`db.group_commit._Splitter`).
    ledger_overlap: bool = True
    # Worker cadence.
    sweep_interval_s: float = 1.0
    seal_interval_s: float = 2.0
    block_max_transfers: int = 10_000
    # API keys are cached in-process this long; a revocation made by another process
    # takes effect within this window (the revoking process clears its own cache at once).
    key_cache_ttl_s: float = 2.0
    sqlite_busy_timeout_ms: int = 30_000
    # Payouts above a per-asset threshold need operator approval: "USDC=1000,SOL=5" (major units).
    payout_approval_threshold: str = ""
    payout_required_approvals: int = 1
    # Licensing (seeds/002): answer cache TTLs, dead-device culling, audit log, offline files.
    license_cache_ttl_s: float = 3600.0
    entitlement_cache_ttl_s: float = 300.0
    device_dead_after_s: float = 600.0
    release_dead_device_cameras: bool = True
    license_audit_retention_days: int = 90
    license_audit_queue_max: int = 100_000
    license_audit_flush_interval_s: float = 0.1
    license_file_days: int = 30
    license_file_grace_days: int = 7
    # Usage metering: events older than now - lateness are refused (`too_late`), ones more
    # than the skew ahead of now are refused (`in_future`); raw events are kept this long.
    usage_lateness_s: int = 7 * 24 * 3600
    usage_future_skew_s: int = 300
    usage_retention_days: int = 90
    # Events (docs/events.md): the worker fans the outbox out to webhook endpoints and, with
    # METERLINE_NATS_URL set, publishes it to JetStream (Dante's documented subjects).
    events_interval_s: float = Field(default=1.0, gt=0)
    event_retention_days: int = Field(default=30, ge=1)
    nats_stream: str = Field(default="METERLINE_EVENTS", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    nats_usage_subject: str = "dante.billing.usage"
    nats_payments_subject: str = "dante.billing.payments"
    # Usage from NATS: the worker consumes this subject (e.g. "meterline.usage.>") through the
    # durable consumer named below (docs/metering.md). Unset: no consumer.
    nats_ingest_subject: str | None = None
    nats_ingest_durable: str = Field(default="meterline-usage-ingest", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # Seconds to wait after each failed delivery attempt; after the last, the delivery fails.
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60)
    # Plain-http webhook URLs. None: allowed in dev mode only (https everywhere else).
    webhook_allow_http: bool | None = None
    # Each running rental's usage so far, as a `rental.usage` event this often (0: never).
    usage_event_interval_s: int = Field(default=60, ge=0)

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, text: str) -> str:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not all(p.isascii() and p.isdigit() and len(p) <= 9 for p in parts):
            raise ValueError("must be comma-separated whole seconds, e.g. 5,300,1800")
        return ",".join(parts)

    @property
    def webhook_retry_waits(self) -> tuple[int, ...]:
        """The waits after attempts 1, 2, …; a delivery fails after len + 1 attempts."""
        return tuple(int(p) for p in self.webhook_retry_schedule.split(",") if p)

    @model_validator(mode="after")
    def _normalise(self) -> Settings:
        url = self.database_url
        if "://" not in url:
            self.database_url = f"sqlite:///{url}"
        elif url.startswith("postgresql://") or url.startswith("postgres://"):
            self.database_url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return self

    @property
    def webhook_http_allowed(self) -> bool:
        return self.dev if self.webhook_allow_http is None else self.webhook_allow_http

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def simulation_enabled(self) -> bool:
        return self.dev if self.simulation is None else self.simulation

    def signing_key_path(self) -> Path:
        return self.signing_key_file or (self.data_dir / "signing.key")


class _Holder:
    settings: Settings | None = None


def get_settings() -> Settings:
    if _Holder.settings is None:
        _Holder.settings = Settings()
    return _Holder.settings


def set_settings(settings: Settings) -> None:
    _Holder.settings = settings


