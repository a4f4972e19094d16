"""Assemble a server: migrations, dev seed, runtime, app, and the in-process worker."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from meterline.api.app import create_app
from meterline.api.runtime import Runtime
from meterline.billing.service import billing_service
from meterline.catalog.service import catalog_service
from meterline.clock import system_clock
from meterline.config import Settings
from meterline.db import migrate
from meterline.db.engine import Database
from meterline.identity.service import identity_service
from meterline.ledger.signing import load_signer
from meterline.licensing.service import licensing_service
from meterline.metering.service import metering_service
from meterline.pricing.service import pricing_service
from meterline.worker.runner import Worker


def _banner(settings: Settings) -> None:
    lines = [
        "",
        "  Meterline — DEV MODE",
        f"  database: {settings.database_url}",
        f"  unauthenticated calls from 127.0.0.1 act as tenant '{settings.default_tenant}' admin",
        "  never expose a dev server: use `meterline serve` with API keys in production",
        "",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def seed_demo(db: Database, tenant_id: str) -> None:
    """The dev tenant with its standard assets, the demo catalog and price book (idempotent)."""
    now = system_clock.now_ns()
    with db.session() as session:
        identity_service.ensure_tenant(session, tenant_id, now)
        catalog_service.seed_demo(session, tenant_id, now)
        pricing_service.seed_demo(session, tenant_id, now)
        licensing_service.seed_demo(session, tenant_id, now)
        metering_service.seed_demo(session, tenant_id, now)
        billing_service.seed_demo(session, tenant_id, now)


def build_server_app(settings: Settings, *, run_worker: bool, announce: bool = False) -> FastAPI:
    if settings.dev:
        migrate.upgrade(settings.database_url)
    db = Database(settings.database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    if settings.dev:
        seed_demo(db, settings.default_tenant)
    signer = load_signer(settings.signing_key_path(), create=settings.dev)
    runtime = Runtime(settings=settings, db=db, clock=system_clock, signer=signer)
    if announce and settings.dev:
        _banner(settings)

    worker_lifespan = None
    if run_worker:

        @asynccontextmanager
        async def worker_lifespan(rt: Runtime) -> AsyncIterator[None]:
            worker = Worker(db=rt.db, clock=rt.clock, batcher=rt.ledger, settings=rt.settings, signer=signer)
            worker.start()
            try:
                yield
            finally:
                worker.stop()

    return create_app(runtime, extra_lifespan=worker_lifespan)
