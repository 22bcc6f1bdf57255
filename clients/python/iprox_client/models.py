"""The API's bodies as typed models.

They mirror the service's response schemas (``/openapi.json``; the service's test suite checks
that every field named here exists there with the same required-ness). Unknown fields are kept
(``extra="allow"``), so a newer server does not break an older client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Progress(_Model):
    done: int
    total: int


class ErrorInfo(_Model):
    code: str
    message: str


class Job(_Model):
    """A job as ``GET /jobs/{id}`` answers it."""

    id: str
    kind: str
    status: str
    stage: str | None
    progress: Progress
    partial: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    error: ErrorInfo | None
    result: dict[str, Any] | None
    proxy_id: str | None
    metadata: dict[str, str]
    request: dict[str, Any]
    links: dict[str, str]

    @property
    def done(self) -> bool:
        """True once the job ended (succeeded, failed or cancelled)."""
        return self.status in TERMINAL


class Event(_Model):
    """One entry of ``GET /jobs/{id}/events``: a status or stage change, a metric, a webhook
    delivery, a recovery."""

    id: int
    created_at: datetime
    type: str
    stage: str | None
    message: str
    data: dict[str, Any] | None


class Score(_Model):
    """One pool sample's score; ``rank`` is set when scores are listed in rank order."""

    index: int
    id: str
    score: float
    rank: int | None = None
