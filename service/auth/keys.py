"""Creating, hashing and checking API keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import ApiKey, Tenant

KEY_PREFIX = "iprox_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A new key: a fixed prefix (easy to spot in logs and secret scanners) and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class CreatedKey:
    tenant_id: str
    key_id: str
    key: str  # shown once; only its hash is stored


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(
    session: Session, tenant_name: str, *, key: str | None = None, name: str = ""
) -> CreatedKey:
    """Store a key (``key`` given, or a new one) for ``tenant_name``, creating the tenant."""
    tenant = get_or_create_tenant(session, tenant_name)
    plain = key or generate_key()
    row = ApiKey(tenant_id=tenant.id, name=name, key_hash=hash_key(plain), prefix=plain[:12])
    session.add(row)
    session.flush()
    return CreatedKey(tenant_id=tenant.id, key_id=row.id, key=plain)


def ensure_key(session: Session, tenant_name: str, key: str) -> CreatedKey:
    """Make ``key`` valid for ``tenant_name`` (idempotent: the embedded default's local key)."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is not None:
        return CreatedKey(tenant_id=row.tenant_id, key_id=row.id, key=key)
    return create_key(session, tenant_name, key=key, name="local")


def tenant_for_key(session: Session, key: str) -> str | None:
    """The tenant id owning an unrevoked ``key``, else None."""
    row = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    return row.tenant_id if row is not None else None
