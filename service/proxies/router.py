"""HTTP routes of /proxies."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.auth.deps import TenantDep
from service.db import session_scope
from service.errors import problem_responses
from service.pagination import CursorQuery, limit_query
from service.proxies import service
from service.proxies.schemas import ProxyPage, ProxyRead

router = APIRouter(prefix="/proxies", tags=["proxies"])


@router.get(
    "",
    response_model=ProxyPage,
    operation_id="listProxies",
    summary="List proxies",
    responses=problem_responses(401, 422, 500, 503),
)
def list_proxies(
    tenant: TenantDep,
    cursor: CursorQuery = None,
    limit: Annotated[int, limit_query(50)] = 50,
) -> ProxyPage:
    """The tenant's built proxies, newest first."""
    with session_scope() as session:
        return service.list_proxies(session, tenant, cursor, limit)


@router.get(
    "/{proxy_id}",
    response_model=ProxyRead,
    operation_id="getProxy",
    summary="Get a proxy",
    responses=problem_responses(401, 404, 422, 500, 503),
)
def get_proxy(
    proxy_id: Annotated[
        str,
        Path(description="The proxy's id.", examples=["0b1e5c7e-3f0e-4a51-9d7c-2f4c1b8a9e10"]),
    ],
    tenant: TenantDep,
) -> ProxyRead:
    """A built proxy with its manifest; pass its id as ``proxy.proxy_id`` to reuse it."""
    with session_scope() as session:
        return service.get_proxy(session, tenant, proxy_id)
