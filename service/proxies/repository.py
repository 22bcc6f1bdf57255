"""All SQL of the proxies domain."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from service.models import Proxy


def get_proxy(session: Session, tenant_id: str, proxy_id: str) -> Proxy | None:
    return session.scalar(select(Proxy).where(Proxy.id == proxy_id, Proxy.tenant_id == tenant_id))


def get_proxy_any_tenant(session: Session, proxy_id: str) -> Proxy | None:
    """For the worker, which acts on a job already checked for its tenant."""
    return session.get(Proxy, proxy_id)


def find_by_job(session: Session, job_id: str) -> Proxy | None:
    return session.scalar(select(Proxy).where(Proxy.job_id == job_id))


def add_proxy(session: Session, proxy: Proxy) -> Proxy:
    session.add(proxy)
    session.flush()
    return proxy


def list_proxies(
    session: Session, tenant_id: str, *, cursor: tuple[datetime, str] | None, limit: int
) -> list[Proxy]:
    q = select(Proxy).where(Proxy.tenant_id == tenant_id)
    if cursor is not None:
        at, row_id = cursor
        q = q.where(or_(Proxy.created_at < at, and_(Proxy.created_at == at, Proxy.id < row_id)))
    return list(session.scalars(q.order_by(Proxy.created_at.desc(), Proxy.id.desc()).limit(limit)))
