"""The events a rental emits (docs/events.md): started, extended, usage, settled.

Each is written to the outbox in the transaction that made the change, so a webhook
or NATS consumer sees a rental exactly as it committed.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal
from typing import Any

from sqlalchemy.orm import Session

from meterline.clock import to_rfc3339
from meterline.events.outbox import amount, emit
from meterline.rentals.models import Rental

# The doubled power integral (mW·ms, models.py) per watt-hour; energy is shown to the µWh.
_MW_MS2_PER_WH = Decimal(2 * 1000 * 3_600_000)
_UWH = Decimal("0.000001")


def _base(rental: Rental) -> dict[str, Any]:
    return {
        "rental_id": rental.id, "style": rental.style, "status": rental.status,
        "customer_type": rental.customer_type, "customer_id": rental.customer_id,
        "provider_id": rental.provider_id, "device_id": rental.device_id, "gpu_model": rental.gpu_model,
        "tier": rental.tier, "vram_gb": rental.vram_gb, "asset": rental.asset,
        "hourly_rate": str(rental.quote.get("hourly_rate")), "started_at": to_rfc3339(rental.started_at),
        "held": amount(rental.held_minor, rental.scale),
    }


def started(session: Session, rental: Rental, now_ns: int) -> None:
    data = _base(rental)
    if rental.expires_at is not None:
        data["expires_at"] = to_rfc3339(rental.expires_at)
    emit(session, rental.tenant_id, "rental.started", data, now_ns=now_ns)


def extended(session: Session, rental: Rental, added_seconds: int, added_minor: int, now_ns: int) -> None:
    data = _base(rental) | {"added_seconds": added_seconds, "added": amount(added_minor, rental.scale)}
    if rental.expires_at is not None:
        data["expires_at"] = to_rfc3339(rental.expires_at)
    emit(session, rental.tenant_id, "rental.extended", data, now_ns=now_ns)


def usage(session: Session, rental: Rental, *, elapsed_s: int, cost_minor: int, now_ns: int, bucket: int) -> None:
    """A running rental's cost so far. One per rental per `bucket` (the job's period): a pass
    run twice for the same period writes it once.

    `cost_minor` is `rental_service.running_cost`'s: for a session the committed cost its
    renewal judges cover by, so `cover_left` (held − cost) is the cover renewal sees —
    negative when usage has run past the holds (the next renewal holds the shortfall)."""
    data = _base(rental) | {
        "at": to_rfc3339(now_ns), "elapsed_seconds": elapsed_s, "cost": amount(cost_minor, rental.scale),
        "cover_left": amount(rental.held_minor - cost_minor, rental.scale),
        "energy_wh": str((Decimal(rental.energy2_mw_ms) / _MW_MS2_PER_WH).quantize(_UWH, ROUND_DOWN)),
    }
    emit(session, rental.tenant_id, "rental.usage", data, now_ns=now_ns,
         event_id=f"evt_usage_{rental.id}_{bucket}")


def settled(session: Session, rental: Rental, now_ns: int) -> None:
    scale = rental.scale
    data = _base(rental) | {
        "end_reason": rental.end_reason,
        "ended_at": to_rfc3339(rental.ended_at) if rental.ended_at is not None else None,
        "used": amount(rental.used_minor or 0, scale), "refund": amount(rental.refund_minor or 0, scale),
        # A session's cost = used (collected from holds and wallet) + unpaid (the wallet ran dry).
        "cost": amount((rental.used_minor or 0) + (rental.unpaid_minor or 0), scale),
        "unpaid": amount(rental.unpaid_minor or 0, scale),
        "provider_share": amount(rental.provider_minor or 0, scale),
        "platform_fee": amount(rental.fee_minor or 0, scale), "refund_tx": rental.refund_tx,
    }
    emit(session, rental.tenant_id, "rental.settled", data, now_ns=now_ns)
