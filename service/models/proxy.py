"""Built proxies: files under the artifact root; the row holds path, hash and manifest."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, new_id, utcnow
from service.models.types import UTCDateTime


class Proxy(Base):
    __tablename__ = "proxies"
    __table_args__ = (Index("ix_proxies_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # The job that built it; not a foreign key, so that jobs -> proxies stays acyclic.
    job_id: Mapped[str | None] = mapped_column(String(36), default=None)
    target_model: Mapped[str] = mapped_column(String(1000))
    method: Mapped[str] = mapped_column(String(32))
    sparsity: Mapped[float] = mapped_column(Float)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
