"""Request dependencies: the runtime, one transaction per request, and the caller.

`WriteSession` / `ReadSession` open the request's single transaction and commit
it after the handler returns (rollback on any exception) — the only place in
the request path that commits. `require(scope)` resolves the API key to a
typed `Principal` and checks one scope; in dev mode an unauthenticated call
from loopback is the default tenant's admin.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from meterline.api.runtime import Runtime
from meterline.errors import Forbidden, Unauthenticated
from meterline.identity.service import Principal, hash_key, identity_service


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _session(runtime: Runtime, *, write: bool) -> Iterator[Session]:
    with runtime.db.session(write=write) as session:
        yield session


def write_session(request: Request) -> Iterator[Session]:
    yield from _session(get_runtime(request), write=True)


def read_session(request: Request) -> Iterator[Session]:
    yield from _session(get_runtime(request), write=False)


# scope="function": commit (or roll back) when the handler returns, *before* the response
# is sent — with FastAPI's default ("request") the client could see 201 for a transaction
# whose commit then failed.
WriteSession = Annotated[Session, Depends(write_session, scope="function")]
ReadSession = Annotated[Session, Depends(read_session, scope="function")]


def _is_loopback(request: Request) -> bool:
    client = request.scope.get("client")  # (host, port) or None; Starlette's Address costs more
    return _loopback_host(client[0] if client else "")


@functools.lru_cache(maxsize=1024)
def _loopback_host(host: str) -> bool:
    # Cached: parsing the address on every dev-mode request showed up in profiles.
    if host in ("testclient", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _presented_key(request: Request) -> str | None:
    # Read straight from the ASGI headers: building Starlette's Headers mapping and looking
    # up two names in it cost more than the rest of a cached authentication.
    auth = api_key = None
    for name, value in request.scope["headers"]:
        if name == b"authorization" and auth is None:
            auth = value.decode("latin-1")
        elif name == b"x-api-key" and api_key is None:
            api_key = value.decode("latin-1")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise Unauthenticated("use 'Authorization: Bearer <api key>'")
        return value.strip()
    return api_key


@functools.lru_cache(maxsize=64)
def _dev_admin(tenant_id: str) -> Principal:
    return Principal(tenant_id, "admin", None, frozenset({"admin"}))


def _keyless(request: Request) -> Principal:
    """No key presented: the default tenant's admin for a dev-mode loopback call, else 401."""
    runtime = get_runtime(request)
    if runtime.settings.dev and _is_loopback(request):
        return _dev_admin(runtime.settings.default_tenant)
    raise Unauthenticated("an API key is required (Authorization: Bearer ml_live_…)")


_PRINCIPAL = "meterline.principal"  # the request's resolved caller, kept in the ASGI scope


def resolved_principal(request: Request) -> Principal | None:
    """The caller, if this request's authentication already ran (every route that writes)."""
    return request.scope.get(_PRINCIPAL)


def current_principal(request: Request) -> Principal:
    cached: Principal | None = request.scope.get(_PRINCIPAL)
    if cached is not None:
        return cached
    runtime = get_runtime(request)
    secret = _presented_key(request)
    if secret is None:
        principal = _keyless(request)
    else:
        principal = identity_service.authenticate(
            lambda: runtime.db.session(write=False), secret, ttl=runtime.settings.key_cache_ttl_s
        )
    request.scope[_PRINCIPAL] = principal
    return principal


def _check(principal: Principal, scope: str, staff: bool) -> Principal:
    if not principal.has(scope):
        raise Forbidden(f"this action needs the '{scope}' scope")
    if staff and not principal.is_staff:
        # The raw ledger names any account of the tenant: a customer or provider key with
        # `ledger:write` (which the wallet routes need) moved other people's money through it.
        raise Forbidden("the raw ledger is for admin and operator keys; customers and providers use "
                        "their wallets, rentals, earnings and payouts")
    return principal


def require(scope: str, *, staff: bool = False) -> Callable[[Request], Principal]:
    """`scope`, and with `staff` an admin or operator principal (the raw ledger's routes)."""

    def dependency(request: Request) -> Principal:
        return _check(current_principal(request), scope, staff)

    dependency.__name__ = f"require_{scope.replace(':', '_')}{'_staff' if staff else ''}"
    return dependency


AnyPrincipal = Annotated[Principal, Depends(current_principal)]


def require_async(scope: str, *, staff: bool = False) -> Callable[[Request], Awaitable[Principal]]:
    """`require` for `async def` hot paths: a cached key (or dev loopback) is resolved on the
    event loop; only a cache miss, which reads the database, goes to the threadpool. (A sync
    dependency costs a threadpool hop on every request, and queues behind blocking handlers
    for the pool's limited tokens.)"""

    async def dependency(request: Request) -> Principal:
        principal: Principal | None = request.scope.get(_PRINCIPAL)
        if principal is None:
            secret = _presented_key(request)
            if secret is None:
                principal = request.scope[_PRINCIPAL] = _keyless(request)  # no I/O either way
            else:
                ttl = get_runtime(request).settings.key_cache_ttl_s
                principal = identity_service.cache.get(hash_key(secret), ttl)
                if principal is not None:
                    request.scope[_PRINCIPAL] = principal
                else:
                    principal = await run_in_threadpool(current_principal, request)
        return _check(principal, scope, staff)

    dependency.__name__ = f"require_{scope.replace(':', '_')}{'_staff' if staff else ''}_async"
    return dependency
