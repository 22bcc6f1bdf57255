"""Reading proxies; they are created by the worker when a build finishes."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.errors import NotFound
from service.models import Proxy
from service.pagination import keyset_position, paginate
from service.proxies import repository as repo
from service.proxies.schemas import FidelityRead, ProxyPage, ProxyRead
from service.text import unstorable


def fidelity_of(manifest: dict[str, Any]) -> FidelityRead | None:
    """The manifest's fidelity report; ``None`` when it has none or one of another shape."""
    report = manifest.get("fidelity")
    if not isinstance(report, dict):
        return None
    try:
        return FidelityRead.model_validate(report)
    except ValidationError:
        return None


def to_read(p: Proxy) -> ProxyRead:
    return ProxyRead(
        id=p.id,
        job_id=p.job_id,
        target_model=p.target_model,
        method=p.method,
        sparsity=p.sparsity,
        sha256=p.sha256,
        manifest=p.manifest,
        fidelity=fidelity_of(p.manifest),
        created_at=p.created_at,
    )


def get_proxy(session: Session, tenant_id: str, proxy_id: str) -> ProxyRead:
    proxy = repo.get_proxy(session, tenant_id, proxy_id) if not unstorable(proxy_id) else None
    if proxy is None:
        raise NotFound(f"no proxy {proxy_id}")
    return to_read(proxy)


def list_proxies(session: Session, tenant_id: str, cursor: str | None, limit: int) -> ProxyPage:
    after = keyset_position("proxies", cursor)
    rows = repo.list_proxies(session, tenant_id, cursor=after, limit=limit + 1)
    page, nxt, more = paginate("proxies", rows, limit, lambda p: (p.created_at, p.id))
    return ProxyPage(items=[to_read(p) for p in page], next_cursor=nxt, has_more=more)
