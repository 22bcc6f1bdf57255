"""Creating, hashing, checking, listing and revoking API keys. Each key has a scope
(:class:`KeyScope`): ``write`` keys may do everything, ``read`` keys only GET and HEAD."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from service.config import get_settings
from service.errors import NotFound, ValidationFailed
from service.models import ApiKey, KeyScope, Tenant
from service.models.base import utcnow

KEY_PREFIX = "iprox_"
SCOPES = tuple(s.value for s in KeyScope)


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
    scope: KeyScope


@dataclass(frozen=True)
class KeyAccess:
    """Who an unrevoked key speaks for, and what it may do."""

    tenant_id: str
    scope: KeyScope


def parse_scope(scope: str) -> KeyScope:
    """``scope`` as a KeyScope; anything else is a ValidationFailed naming ``scope``."""
    try:
        return KeyScope(scope)
    except ValueError:
        choices = " or ".join(repr(s) for s in SCOPES)
        raise ValidationFailed(f"scope must be {choices}, not {scope!r}", field="scope") from None


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(
    session: Session,
    tenant_name: str,
    *,
    key: str | None = None,
    name: str = "",
    scope: str = KeyScope.WRITE,
) -> CreatedKey:
    """Store a key (``key`` given, or a new one) of ``scope`` for ``tenant_name``, creating the
    tenant. A scope other than read or write is a ValidationFailed naming ``scope``."""
    checked = parse_scope(scope)
    tenant = get_or_create_tenant(session, tenant_name)
    plain = key or generate_key()
    row = ApiKey(
        tenant_id=tenant.id,
        name=name,
        key_hash=hash_key(plain),
        prefix=plain[:12],
        scope=checked,
    )
    session.add(row)
    session.flush()
    return CreatedKey(tenant_id=tenant.id, key_id=row.id, key=plain, scope=checked)


def ensure_key(session: Session, tenant_name: str, key: str) -> CreatedKey:
    """Make ``key`` valid for ``tenant_name`` (idempotent: the embedded default's local key)."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is not None:
        return CreatedKey(tenant_id=row.tenant_id, key_id=row.id, key=key, scope=row.scope)
    return create_key(session, tenant_name, key=key, name="local")


def tenant_for_key(db: Session | Connection, key: str) -> str | None:
    """The tenant id owning an unrevoked ``key``, else None."""
    access = access_for_hash(db, hash_key(key))
    return access.tenant_id if access is not None else None


def access_for_hash(db: Session | Connection, key_hash: str) -> KeyAccess | None:
    """The tenant and scope of the unrevoked key whose hash is ``key_hash``, else None."""
    q = select(ApiKey.tenant_id, ApiKey.scope).where(
        ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)
    )
    found = db.execute(q).first()
    return KeyAccess(found.tenant_id, KeyScope(found.scope)) if found is not None else None


class KeyCache:
    """Tenants and scopes of keys found valid in the last ``ttl_s`` seconds, by key hash (never the key).

    It spares the key lookup (a pooled connection and a round trip) on most requests. The
    price is bounded: a key revoked by another process (``iprox keys revoke``, another API
    replica) keeps working here for at most ``ttl_s`` seconds after its last lookup; a key
    revoked through :func:`revoke_key` in this process stops at once. Unknown and revoked keys
    are never cached, so a new key works at once. ``ttl_s`` 0 turns the cache off.

    Entries are replaced whole (one dict assignment), so the event loop and the threads that
    fill it need no lock; past ``max_entries`` it starts afresh rather than grow.
    """

    def __init__(
        self,
        ttl_s: float,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, tuple[KeyAccess, float]] = {}

    def get(self, key_hash: str) -> KeyAccess | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        access, expires = entry
        if self.clock() >= expires:
            self._entries.pop(key_hash, None)
            return None
        return access

    def put(self, key_hash: str, access: KeyAccess) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries = {}
        self._entries[key_hash] = (access, self.clock() + self.ttl_s)

    def forget(self, key_hash: str) -> None:
        self._entries.pop(key_hash, None)

    def clear(self) -> None:
        self._entries = {}


_key_cache: KeyCache | None = None


def key_cache() -> KeyCache:
    """The process-wide cache, with the TTL of ``IPROX_API_KEY_CACHE_S`` (read once)."""
    global _key_cache
    if _key_cache is None:
        _key_cache = KeyCache(get_settings().api_key_cache_s)
    return _key_cache


def reset_key_cache() -> None:
    """Forget the cache and its TTL (after the settings changed)."""
    global _key_cache
    _key_cache = None


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: never the key itself (only its first characters)."""

    id: str
    tenant: str
    name: str
    prefix: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None


def _info(row: ApiKey, tenant: str) -> KeyInfo:
    return KeyInfo(
        row.id, tenant, row.name, row.prefix, row.scope.value, row.created_at, row.revoked_at
    )


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
    # Only this process's cache can be reached from here; others expire theirs (KeyCache).
    key_cache().forget(row.key_hash)
    return _info(row, tenant), newly
