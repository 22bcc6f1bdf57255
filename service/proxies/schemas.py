"""Response bodies of /proxies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from service.pagination import Page


class ProxyRead(BaseModel):
    id: str
    job_id: str | None
    target_model: str
    method: str
    sparsity: float
    sha256: str
    manifest: dict[str, Any]
    created_at: datetime


class ProxyPage(Page[ProxyRead]):
    """The tenant's proxies, newest first."""
