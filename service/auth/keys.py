"""Creating, hashing, checking, listing and revoking API keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from service.errors import NotFound
from service.models import ApiKey, Tenant
from service.models.base import utcnow

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


def tenant_for_key(db: Session | Connection, key: str) -> str | None:
    """The tenant id owning an unrevoked ``key``, else None."""
    q = select(ApiKey.tenant_id).where(
        ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)
    )
    return db.scalar(q)


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: never the key itself (only its first characters)."""

    id: str
    tenant: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def _info(row: ApiKey, tenant: str) -> KeyInfo:
    return KeyInfo(row.id, tenant, row.name, row.prefix, row.created_at, row.revoked_at)


def list_keys(session: Session, tenant_name: str | None = None) -> list[KeyInfo]:
    """Every key (of one tenant when named), oldest first."""
    q = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
    if tenant_name is not None:
        q = q.where(Tenant.name == tenant_name)
    rows = session.execute(q.order_by(ApiKey.created_at, ApiKey.id))
    return [_info(key, tenant) for key, tenant in rows]


def revoke_key(session: Session, key_id: str) -> tuple[KeyInfo, bool]:
    """Revoke a key at once; returns (the key, newly revoked). Revoking twice changes nothing."""
    found = session.execute(
        select(ApiKey, Tenant.name)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.id == key_id)
        .with_for_update(of=ApiKey)
    ).first()
    if found is None:
        raise NotFound(f"no API key with id {key_id!r} (iprox keys list shows them)")
    row, tenant = found
    newly = row.revoked_at is None
    if newly:
        row.revoked_at = utcnow()
        session.flush()
    return _info(row, tenant), newly
