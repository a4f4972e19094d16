"""The native /v1 API: one router per resource, assembled here."""

from fastapi import APIRouter

router = APIRouter(prefix="/v1")
