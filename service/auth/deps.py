"""The request dependency that turns ``Authorization: Bearer <key>`` into a tenant id."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth.keys import tenant_for_key
from service.db import read_connection
from service.errors import Unauthorized
from service.text import unstorable

_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer iprox_...`")


def current_tenant(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The key's tenant. Its connection is returned here: holding it until the handler runs
    would keep a pooled connection idle while the request waits for a worker thread."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("send 'Authorization: Bearer <API key>'")
    if unstorable(credentials.credentials):
        raise Unauthorized("the API key is unknown or revoked")
    with read_connection() as conn:
        tenant = tenant_for_key(conn, credentials.credentials)
    if tenant is None:
        raise Unauthorized("the API key is unknown or revoked")
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]
