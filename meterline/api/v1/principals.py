"""Who sees what inside a tenant, for the marketplace routers (rentals, wallets, payouts, rates)
and the licensing and metering ones (licenses, their cameras and devices, validation, usage
reports and usage queries).

Scopes (`ledger:read`, `ledger:write`, `admin`) say what a key may *do*; this
module says whose rows it may do it to:

- **staff** — an `admin`-scoped key or a principal of kind admin/operator — sees
  the whole tenant;
- anyone else sees only rows that are theirs: a `customer` principal the rentals,
  wallets, subscriptions and invoices whose customer/owner id is its principal id;
  a `provider` principal the payouts and rates of the providers whose `owner_id` is
  its id; a `customer` principal also the license whose licensee id is its principal
  id (BrinkByte's "tenant-123" is a customer of the platform).

Someone else's row answers 404, exactly like a missing one, so its existence
doesn't leak (STYLE "Auth and tenancy").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy.orm import Session

from meterline.catalog.service import catalog_service
from meterline.errors import Forbidden
from meterline.identity.service import Principal

T = TypeVar("T")

def is_staff(principal: Principal) -> bool:
    return principal.is_staff


def actor_id(principal: Principal) -> str:
    """A stable name for the caller in audit fields (payout `requested_by`, approvals)."""
    if principal.id:
        return principal.id
    return f"key:{principal.key_id}" if principal.key_id else principal.kind


# Matches no customer id: ids never hold NUL (refused at the edge, `api/body.py`).
_NOBODY = "\x00"


def owner_filter(principal: Principal) -> str | None:
    """The customer id whose rows (wallets, rentals, subscriptions, invoices) a caller may
    see and act on; None for staff, who may act on everyone's. Only a `customer` principal
    owns such rows: a provider or device key that happens to carry a customer's id is
    another principal, and matches nothing."""
    if principal.is_staff:
        return None
    return principal.id if principal.kind == "customer" and principal.id else _NOBODY


def list_filter(principal: Principal, requested: str | None) -> tuple[str | None, bool]:
    """The customer filter a list of customer rows applies for this caller, and whether it
    can match anything: staff filter as asked; a customer sees only its own (its id, implied
    or asked for); anyone else nothing — the same rule as `owns`, for lists."""
    allowed = owner_filter(principal)
    if allowed is None:
        return requested, True
    if allowed == _NOBODY or requested not in (None, allowed):
        return None, False
    return allowed, True


def owns(principal: Principal, owner_id: str | None) -> bool:
    """Staff own everything; a customer only what carries its principal id."""
    allowed = owner_filter(principal)
    return allowed is None or allowed == owner_id


def speaks_for(principal: Principal, licensee_id: str) -> bool:
    """Whether a device-facing licensing call (validate, entitlement check, heartbeat, usage
    report — the licensee named in the body or path) may name this licensee. Staff may name
    any licensee of their tenant; a `device` key made with a principal id is bound to the
    licensee of that id (a customer's edge box), one made without is the platform's fleet
    key and may name any; a customer only itself; anyone else (a provider key) none. Every
    other licensee answers as one without a license, so its existence doesn't leak."""
    if principal.is_staff:
        return True
    if principal.kind == "device":
        return principal.id is None or principal.id == licensee_id
    return principal.kind == "customer" and principal.id == licensee_id


def licensee_filter(principal: Principal, requested: str | None) -> tuple[str | None, bool]:
    """The licensee filter a read of licensee-keyed usage applies for this caller, and whether
    it can match anything — `speaks_for` for reads: who may report a licensee's usage may read
    it. Staff and device keys filter as asked (None: the whole tenant); a customer reads only
    its own (its id, implied or asked for); anyone else nothing. A licensee the caller may not
    read answers as one without usage, the way lists hide other customers' rows."""
    if principal.kind == "device" and principal.id is None:
        return requested, True  # the fleet key
    if principal.kind == "device":  # bound to its licensee, as a customer to itself
        return (principal.id, True) if requested in (None, principal.id) else (None, False)
    return list_filter(principal, requested)


def reported_licensee(principal: Principal, named: str) -> str:
    """The licensee a usage report is for. A body that names none ("", the tenant's
    unattributed usage) from a customer key (or a device key bound to one) is the customer's own: a customer's usage is
    always its own, as a customer's list without a filter is its own rows. Anyone else's
    stays as named; `speaks_for` then decides whether the caller may report it."""
    if not named and principal.kind in ("customer", "device") and principal.id and not principal.is_staff:
        return principal.id  # (a bound device key's unnamed usage is its licensee's)
    return named


def require_self(principal: Principal, customer_id: str, what: str) -> None:
    """A non-staff key acts only for itself (creating or funding in another's name is 403)."""
    if not owns(principal, customer_id):
        raise Forbidden(f"this key can only use its own {what} ({principal.id or 'none'})")


def require_operator(principal: Principal) -> None:
    """Approvals and rejections are for people who review money: operators and admins."""
    if not is_staff(principal):
        raise Forbidden("only an operator or admin key may approve or reject payouts")


def owned_provider_ids(session: Session, principal: Principal) -> list[str] | None:
    """The providers a non-staff principal owns; None for staff (every provider). Only a
    principal of kind `provider` owns any: a customer key that happens to carry the same id
    is another principal."""
    if is_staff(principal):
        return None
    if principal.kind != "provider" or principal.id is None:
        return []
    tenant = principal.tenant_id
    return [p.id for p in catalog_service.providers_of(session, tenant, principal.id)]


def merge_pages(pages: Sequence[tuple[list[T], str | None]], limit: int, key: Callable[[T], str]) -> tuple[list[T], str | None]:
    """One page from several disjoint queries, each ordered by `key` and fetched with the
    same cursor and limit: their first `limit` rows together hold the merged first
    `limit`. There is more when any query had more, or the union overflowed the page."""
    rows = sorted((row for items, _ in pages for row in items), key=key)
    more = len(rows) > limit or any(cursor is not None for _, cursor in pages)
    rows = rows[:limit]
    return rows, (key(rows[-1]) if more and rows else None)
