"""Response bodies of /proxies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service.pagination import Page


class ProxyRead(BaseModel):
    """A built proxy: its identity, size and fidelity report (in ``manifest``)."""

    id: str = Field(
        description="Pass as proxy.proxy_id to reuse it.",
        examples=["0b1e5c7e-3f0e-4a51-9d7c-2f4c1b8a9e10"],
    )
    job_id: str | None = Field(
        description="The job that built it.", examples=["6c1f6a8e-9a8b-4f57-8f0e-2b1d3c4e5f60"]
    )
    target_model: str = Field(
        description="The model it was derived from, as the API resolved it.",
        examples=["smollm2-135m-instruct"],
    )
    method: str = Field(description="Compression method.", examples=["ipsvd"])
    sparsity: float = Field(description="Fraction of parameters removed.", examples=[0.5])
    sha256: str = Field(description="Hash of the proxy's factors file.", examples=["9f2c" * 16])
    manifest: dict[str, Any] = Field(
        description="Everything recorded at build: per-layer ranks and parameter counts, "
        "totals, probe and alignment settings and losses, seed, library versions.",
        examples=[{"method": "ipsvd", "proxy_params": 67000000, "target_params": 134000000}],
    )
    created_at: datetime = Field(
        description="When it was built.", examples=["2026-12-01T12:00:00Z"]
    )


class ProxyPage(Page[ProxyRead]):
    """The tenant's proxies, newest first."""

    items: list[ProxyRead] = Field(
        description="This page's proxies.",
        examples=[[{"id": "0b1e5c7e-3f0e-4a51-9d7c-2f4c1b8a9e10", "method": "ipsvd"}]],
    )
