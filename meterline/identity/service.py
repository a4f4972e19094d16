"""Tenants, principals and API keys.

Keys look like ``ml_live_<secret>`` / ``ml_test_<secret>``. The full key is shown
once at creation; only its SHA-256 is stored (a key is high-entropy, so a fast
hash is the right tool — there is nothing to brute-force). Lookups compare the
hash through the unique index; the in-process cache is keyed by that hash too.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from meterline.errors import Conflict, MeterlineError, NotFound, Unauthenticated
from meterline.identity.models import MAX_PRINCIPAL_ID, ApiKey, Tenant
from meterline.ledger.service import ledger_service, new_id

PRINCIPAL_KINDS = ("admin", "operator", "customer", "provider", "device")
STAFF_KINDS = frozenset({"admin", "operator"})

# Scopes a key may carry. `admin` implies every other scope.
SCOPES = (
    "admin",
    "ledger:read",
    "ledger:write",
    "assets:write",
    "usage:read",
    "usage:write",
    "licenses:read",
    "licenses:write",
    "licenses:validate",
    "billing:read",
    "billing:write",
)
DEFAULT_SCOPES = {
    "admin": ["admin"],
    "operator": ["ledger:read", "ledger:write"],
    "customer": ["ledger:read"],
    "provider": ["ledger:read"],
    "device": ["licenses:validate"],
}


class IdentityError(MeterlineError):
    code = "identity_error"


class TenantNotFound(IdentityError, NotFound):
    code = "tenant_not_found"
    title = "No such tenant"


class TenantExists(IdentityError, Conflict):
    code = "tenant_exists"
    title = "A tenant with this id already exists"


class InvalidKeyRequest(IdentityError):
    status = 422
    code = "invalid_key_request"
    title = "The key request is not valid"


class ApiKeyNotFound(IdentityError, NotFound):
    code = "api_key_not_found"
    title = "No such API key"


class InvalidApiKey(Unauthenticated):
    code = "invalid_api_key"
    title = "The API key is not valid or has been revoked"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved once per request, passed to every service call."""

    tenant_id: str
    kind: str
    id: str | None
    scopes: frozenset[str] = field(default_factory=frozenset)
    key_id: str | None = None

    def has(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    @property
    def is_staff(self) -> bool:
        """An admin-scoped key or an admin/operator principal: sees and acts on the whole tenant.
        Anyone else (customer, provider, device) acts only on what is theirs."""
        return self.has("admin") or self.kind in STAFF_KINDS


@dataclass(slots=True)
class CreatedKey:
    key: ApiKey
    secret: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class _KeyCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str, ttl: float) -> Principal | None:
        hit = self._entries.get(key_hash)
        if hit is None or time.monotonic() - hit[0] > ttl:
            return None
        return hit[1]

    def put(self, key_hash: str, principal: Principal) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key_hash] = (time.monotonic(), principal)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class IdentityService:
    def __init__(self) -> None:
        self.cache = _KeyCache()

    # -- tenants -----------------------------------------------------------------
    def create_tenant(self, session: Session, tenant_id: str, name: str | None, now_ns: int) -> Tenant:
        if not tenant_id or len(tenant_id) > 64 or not all(c.isalnum() or c in "-_." for c in tenant_id):
            raise InvalidKeyRequest("tenant id must be 1-64 letters, digits, '-', '_' or '.'")
        if name is not None and len(name) > 200:
            raise InvalidKeyRequest("a tenant's name is at most 200 characters")
        if session.get(Tenant, tenant_id) is not None:
            raise TenantExists(f"tenant {tenant_id} already exists")
        tenant = Tenant(id=tenant_id, name=name or tenant_id, created_at=now_ns)
        try:  # a savepoint: the same tenant created at once elsewhere (`keys create` ×2) is a clean miss
            with session.begin_nested():
                session.add(tenant)
                session.flush()
        except IntegrityError:
            raise TenantExists(f"tenant {tenant_id} already exists") from None
        ledger_service.ensure_standard_assets(session, tenant_id, now_ns)
        return tenant

    def ensure_tenant(self, session: Session, tenant_id: str, now_ns: int) -> Tenant:
        tenant = session.get(Tenant, tenant_id)
        if tenant is not None:
            return tenant
        try:
            return self.create_tenant(session, tenant_id, None, now_ns)
        except TenantExists:  # created at this moment by another process
            return self.get_tenant(session, tenant_id)

    def get_tenant(self, session: Session, tenant_id: str) -> Tenant:
        tenant = session.get(Tenant, tenant_id)
        if tenant is None:
            raise TenantNotFound(f"tenant {tenant_id} does not exist")
        return tenant

    def list_tenants(self, session: Session) -> list[Tenant]:
        return list(session.scalars(select(Tenant).order_by(Tenant.id)))

    # -- keys --------------------------------------------------------------------
    def create_key(
        self,
        session: Session,
        *,
        tenant_id: str,
        kind: str = "admin",
        scopes: list[str] | None = None,
        principal_id: str | None = None,
        name: str = "",
        live: bool = True,
        now_ns: int,
    ) -> CreatedKey:
        self.get_tenant(session, tenant_id)
        if kind not in PRINCIPAL_KINDS:
            raise InvalidKeyRequest(f"kind must be one of {', '.join(PRINCIPAL_KINDS)}")
        if principal_id is not None and not 1 <= len(principal_id) <= MAX_PRINCIPAL_ID:
            raise InvalidKeyRequest(f"a principal id is 1-{MAX_PRINCIPAL_ID} characters")
        if len(name) > 200:
            raise InvalidKeyRequest("a key's name is at most 200 characters")
        chosen = sorted(set(scopes)) if scopes else DEFAULT_SCOPES[kind]
        unknown = [s for s in chosen if s not in SCOPES]
        if unknown:
            raise InvalidKeyRequest(f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(SCOPES)}")
        secret = f"ml_{'live' if live else 'test'}_{secrets.token_urlsafe(32)}"
        row = ApiKey(
            id=new_id("key"), tenant_id=tenant_id, key_hash=hash_key(secret), prefix=secret[:16],
            name=name, principal_kind=kind, principal_id=principal_id, scopes=chosen, created_at=now_ns,
        )
        session.add(row)
        session.flush()
        return CreatedKey(row, secret)

    def revoke_key(self, session: Session, key_id_or_prefix: str, now_ns: int, *, tenant_id: str | None = None) -> ApiKey:
        stmt = select(ApiKey).where((ApiKey.id == key_id_or_prefix) | (ApiKey.prefix == key_id_or_prefix))
        if tenant_id is not None:
            stmt = stmt.where(ApiKey.tenant_id == tenant_id)
        rows = list(session.scalars(stmt))
        if len(rows) != 1:
            raise ApiKeyNotFound(f"no single key matches {key_id_or_prefix!r}")
        row = rows[0]
        if row.revoked_at is None:
            session.execute(update(ApiKey).where(ApiKey.id == row.id).values(revoked_at=now_ns))
            row.revoked_at = now_ns
        self.cache.clear()
        return row

    def list_keys(self, session: Session, tenant_id: str | None = None) -> list[ApiKey]:
        stmt = select(ApiKey).order_by(ApiKey.created_at)
        if tenant_id:
            stmt = stmt.where(ApiKey.tenant_id == tenant_id)
        return list(session.scalars(stmt))

    def authenticate(self, session_factory: object, secret: str, *, ttl: float) -> Principal:
        """Resolve a presented key to its principal; `InvalidApiKey` when unknown or revoked."""
        if not secret.startswith(("ml_live_", "ml_test_")) or len(secret) > 200:
            raise InvalidApiKey()
        h = hash_key(secret)
        cached = self.cache.get(h, ttl)
        if cached is not None:
            return cached
        with session_factory() as session:  # type: ignore[operator]
            row = session.scalars(select(ApiKey).where(ApiKey.key_hash == h)).first()
        if row is None or row.revoked_at is not None:
            raise InvalidApiKey()
        principal = Principal(row.tenant_id, row.principal_kind, row.principal_id, frozenset(row.scopes), row.id)
        self.cache.put(h, principal)
        return principal


identity_service = IdentityService()
