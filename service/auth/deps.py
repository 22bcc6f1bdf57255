"""The request dependencies that turn ``Authorization: Bearer <key>`` into the key's tenant and
scope, refusing what the scope does not allow (the one place scopes are enforced)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from service.auth.keys import KeyAccess, access_for_hash, hash_key, key_cache
from service.db import read_connection
from service.errors import Forbidden, Unauthorized
from service.logs import bind_values
from service.models import KeyScope
from service.text import unstorable

_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer iprox_...`")

# What a read key may call: the methods that change nothing (RFC 9110 safe methods the API has).
READ_METHODS = frozenset({"GET", "HEAD"})


def _lookup(key_hash: str) -> KeyAccess | None:
    # Opened and returned in the one worker thread: holding the connection until the handler
    # runs would keep a pooled connection idle while the request waits for a worker thread.
    with read_connection() as conn:
        return access_for_hash(conn, key_hash)


def needed_scope(method: str) -> KeyScope:
    """The scope a request of ``method`` needs."""
    return KeyScope.READ if method.upper() in READ_METHODS else KeyScope.WRITE


async def current_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> KeyAccess:
    """The key's tenant and scope; 401 for no or a bad key, 403 when the scope does not cover
    the request's method. On the event loop when the key was checked in the last
    ``IPROX_API_KEY_CACHE_S`` seconds (service.auth.keys.KeyCache); else one lookup in a
    worker thread."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("send 'Authorization: Bearer <API key>'")
    if unstorable(credentials.credentials):
        raise Unauthorized("the API key is unknown or revoked")
    key_hash = hash_key(credentials.credentials)
    cache = key_cache()
    access = cache.get(key_hash)
    if access is None:
        access = await run_in_threadpool(_lookup, key_hash)
        if access is None:
            raise Unauthorized("the API key is unknown or revoked")
        cache.put(key_hash, access)
    bind_values(tenant=access.tenant_id)  # every log record of the request names its tenant
    if needed_scope(request.method) is KeyScope.WRITE:
        _require_write(request, access)
    return access


def _require_write(request: Request, access: KeyAccess) -> None:
    if access.scope is not KeyScope.WRITE:
        raise Forbidden(
            f"this API key has scope '{access.scope}'; {request.method} {request.url.path} "
            f"needs a key with scope '{KeyScope.WRITE}'"
        )


async def current_tenant(access: Annotated[KeyAccess, Depends(current_key)]) -> str:
    """The tenant id of the request's key (checked by :func:`current_key`)."""
    return access.tenant_id


async def writer_tenant(
    request: Request, access: Annotated[KeyAccess, Depends(current_key)]
) -> str:
    """The tenant id of a write key, for the few reads a read key must not make: the webhook
    signing secret lets whoever holds it forge deliveries, so reading it needs write."""
    _require_write(request, access)
    return access.tenant_id


KeyDep = Annotated[KeyAccess, Depends(current_key)]
TenantDep = Annotated[str, Depends(current_tenant)]
WriterDep = Annotated[str, Depends(writer_tenant)]
