"""Standard Webhooks signatures (https://www.standardwebhooks.com), as Svix, Resend and
others send them — so a receiver verifies Meterline's webhooks with an existing library.

    webhook-id:        the event id (the same on every retry: the receiver's dedup key)
    webhook-timestamp: Unix seconds of this attempt
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">

The key is the base64 part of the `whsec_…` secret, decoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)


class InvalidSignature(ValueError):
    pass


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error as exc:
        raise ValueError("a webhook secret is whsec_ followed by base64") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def verify(secret: str, received: dict[str, str], body: bytes, *, now_s: int, tolerance_s: int = 300) -> None:
    """What a receiver does: raise `InvalidSignature` unless one of the (space-separated)
    v1 signatures matches and the timestamp is within `tolerance_s` of now (replays)."""
    lower = {k.lower(): v for k, v in received.items()}
    try:
        msg_id, ts = lower["webhook-id"], int(lower["webhook-timestamp"])
        given = lower["webhook-signature"].split(" ")
    except (KeyError, ValueError) as exc:
        raise InvalidSignature("missing or malformed webhook headers") from exc
    if abs(now_s - ts) > tolerance_s:
        raise InvalidSignature("timestamp outside the tolerance")
    expected = sign(secret, msg_id, ts, body)
    if not any(hmac.compare_digest(expected, g) for g in given if g.startswith("v1,")):
        raise InvalidSignature("no signature matches")
