"""Seed API profiles: each seed's documented endpoints at their documented paths.

Each profile module exposes `router`; `ROUTERS` lists them for the app factory.
Profiles are thin: they parse the seed's shapes, call the same services as the
native API, and answer in the seed's shapes.
"""

from __future__ import annotations

from fastapi import APIRouter

from meterline.api.fastpath import FastRoute
from meterline.api.profiles import brinkbyte, brinkbyte_usage, dante, si64

ROUTERS: list[APIRouter] = [si64.router, dante.router, brinkbyte_usage.router, brinkbyte.router]
# Hot routes dispatched ahead of the router (meterline.api.fastpath); each is also in ROUTERS.
FAST_ROUTES: list[FastRoute] = [*si64.FAST_ROUTES, *brinkbyte_usage.FAST_ROUTES, *brinkbyte.FAST_ROUTES]
