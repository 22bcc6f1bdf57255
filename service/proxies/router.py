"""HTTP routes of /proxies."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from service.auth.deps import TenantDep
from service.db import session_scope
from service.pagination import CursorQuery, limit_query
from service.proxies import service
from service.proxies.schemas import ProxyPage, ProxyRead

router = APIRouter(prefix="/proxies", tags=["proxies"])


@router.get("", response_model=ProxyPage)
def list_proxies(
    tenant: TenantDep,
    cursor: CursorQuery = None,
    limit: Annotated[int, limit_query(50)] = 50,
) -> ProxyPage:
    with session_scope() as session:
        return service.list_proxies(session, tenant, cursor, limit)


@router.get("/{proxy_id}", response_model=ProxyRead)
def get_proxy(proxy_id: str, tenant: TenantDep) -> ProxyRead:
    """A built proxy with its manifest; pass its id as ``proxy.proxy_id`` to reuse it."""
    with session_scope() as session:
        return service.get_proxy(session, tenant, proxy_id)
