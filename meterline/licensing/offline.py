"""Signed offline license files: what an edge device checks when it cannot reach the server.

File format (JSON, UTF-8)::

    {"format": "meterline-license/1",
     "payload": {...terms..., "issued_at": 1761000000, "expires_at": 1763592000, "grace_seconds": 604800},
     "signature": "<hex Ed25519 signature of canonical(payload)>",
     "public_key": "<hex, informational — verify with the key you already trust>"}

``canonical(payload)`` is ``json.dumps(payload, sort_keys=True, separators=(",", ":"),
ensure_ascii=True)`` encoded as ASCII. Times are Unix seconds (integers), so a
device in any language can compare them without a date parser.

The file expires (`expires_at`, default 30 days after issue) so a device must
refresh it from time to time; for `grace_seconds` after that it is still
accepted, answering ``within_grace`` so the device can warn. The license's own
end (`valid_until`) has no grace: a trial ends when it ends.

`verify_license_file` below depends only on the standard library and PyNaCl;
it is meant to be copied into device software as is.
"""

from __future__ import annotations

import json
from typing import Any

from meterline.ledger.signing import Signer
from meterline.licensing.service import LicenseSnapshot

FORMAT = "meterline-license/1"
NS = 1_000_000_000


def canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def build_license_file(
    signer: Signer, snapshot: LicenseSnapshot, *, features: list[str], issued_at_ns: int, valid_days: int,
    grace_days: int,
) -> dict[str, Any]:
    """Sign the license's terms with the platform key. The file never outlives the license."""
    issued = issued_at_ns // NS
    payload: dict[str, Any] = {
        "license_id": snapshot.license_id,
        "tenant_id": snapshot.licensee_id,
        "issuer_tenant": snapshot.tenant_id,
        "plan_id": snapshot.plan_id,
        "license_mode": snapshot.mode,
        "status": snapshot.status,
        "valid_from": snapshot.valid_from // NS,
        "valid_until": snapshot.valid_until // NS,
        "cameras_allowed": snapshot.cameras_allowed,
        "devices_allowed": snapshot.devices_allowed,
        "enabled_growth_packs": list(snapshot.packs),
        "features": sorted(features),
        "license_version": snapshot.version,
        "issued_at": issued,
        "expires_at": min(issued + valid_days * 86_400, snapshot.valid_until // NS),
        "grace_seconds": grace_days * 86_400,
    }
    return {"format": FORMAT, "payload": payload, "signature": signer.sign(canonical(payload)),
            "public_key": signer.public_key_hex}


# --- copy from here into device software (needs only PyNaCl) ---------------------------------


def verify_license_file(text: str, public_key_hex: str, now_s: int) -> dict[str, Any]:
    """Check a Meterline offline license file without the server.

    Returns ``{"valid": bool, "code": str, "payload": dict | None}`` where code is one of
    ``ok``, ``within_grace`` (file expired but inside its grace period: still valid,
    refresh soon), ``expired`` (file and grace both passed), ``license_expired`` (the
    license itself ended), ``license_not_yet_valid``, ``license_suspended``,
    ``bad_signature`` (tampered, or signed by another key) or ``malformed``.
    """
    import json as _json

    from nacl.exceptions import BadSignatureError as _Bad
    from nacl.signing import VerifyKey as _VerifyKey

    def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # A key given twice is a tampered file: a reader keeping the first would see other
        # terms than the ones this check verifies (json.loads keeps the last).
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise ValueError("duplicate key")
        return obj

    try:
        doc = _json.loads(text, object_pairs_hook=_unique)
        payload = doc["payload"]
        signature = bytes.fromhex(doc["signature"])
        if doc.get("format") != "meterline-license/1" or not isinstance(payload, dict):
            raise ValueError("format")
        message = _json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        key = _VerifyKey(bytes.fromhex(public_key_hex.strip()))
    except (ValueError, KeyError, TypeError, AttributeError):
        return {"valid": False, "code": "malformed", "payload": None}
    try:
        key.verify(message, signature)  # constant-time inside libsodium
    except (_Bad, ValueError):
        return {"valid": False, "code": "bad_signature", "payload": None}
    try:
        expires_at, grace = int(payload["expires_at"]), int(payload["grace_seconds"])
        valid_from, valid_until = int(payload["valid_from"]), int(payload["valid_until"])
    except (KeyError, TypeError, ValueError):
        return {"valid": False, "code": "malformed", "payload": None}
    if payload.get("status") == "suspended":
        return {"valid": False, "code": "license_suspended", "payload": payload}
    if now_s >= valid_until:
        return {"valid": False, "code": "license_expired", "payload": payload}
    if now_s < valid_from:
        return {"valid": False, "code": "license_not_yet_valid", "payload": payload}
    if now_s < expires_at:
        return {"valid": True, "code": "ok", "payload": payload}
    if now_s < expires_at + grace:
        return {"valid": True, "code": "within_grace", "payload": payload}
    return {"valid": False, "code": "expired", "payload": payload}
