"""All SQL of the webhooks domain: the tenant's signing secret. Functions flush; the caller's
boundary commits."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Tenant


def secret_of(session: Session, tenant_id: str) -> str | None:
    return session.scalar(select(Tenant.webhook_secret).where(Tenant.id == tenant_id))


def set_secret(session: Session, tenant_id: str, secret: str) -> None:
    tenant = session.get(Tenant, tenant_id, with_for_update=True)
    if tenant is None:
        raise LookupError(tenant_id)
    tenant.webhook_secret = secret
    session.flush()
