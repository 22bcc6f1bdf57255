"""Tenants and their API keys (stored as SHA-256 hashes, never in clear)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, new_id, utcnow
from service.models.types import UTCDateTime, checked_enum


class KeyScope(enum.StrEnum):
    """What a key may do: ``read`` only the safe methods (GET, HEAD), ``write`` everything."""

    READ = "read"
    WRITE = "write"


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Signs the tenant's webhook deliveries (``whsec_`` + base64 of 32 random bytes); made on
    # the first job that asks for notifications, replaced by POST /webhooks/secret.
    webhook_secret: Mapped[str | None] = mapped_column(String(64), default=None)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # Keys carry 256 random bits, so a fast hash is enough: nothing to brute-force.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    # The server default is what keys made before scopes existed got (they could do anything).
    scope: Mapped[KeyScope] = mapped_column(
        checked_enum(KeyScope), default=KeyScope.WRITE, server_default=KeyScope.WRITE.value
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
