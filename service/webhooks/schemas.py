"""Bodies of /webhooks and the ``notify`` part of a job request."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.text import StoredText

NotifyEvent = Literal["succeeded", "failed", "cancelled"]


def _all_endings() -> list[NotifyEvent]:
    return ["succeeded", "failed", "cancelled"]


class NotifySpec(BaseModel):
    """Where to announce that the job ended: a POST to ``url`` per event, signed with the
    tenant's secret (GET /webhooks/secret) as Standard Webhooks describes."""

    model_config = ConfigDict(extra="forbid")

    url: StoredText = Field(
        min_length=1,
        max_length=2000,
        description="http(s) URL that receives the deliveries; it must resolve to public "
        "addresses only (or hosts in IPROX_ALLOWED_HOSTS), checked at submission and at "
        "every delivery.",
        examples=["https://hooks.example.com/iprox"],
    )
    events: list[NotifyEvent] = Field(
        default_factory=_all_endings,
        min_length=1,
        description="The job endings to announce (default: all three).",
        examples=[["succeeded", "failed"]],
    )

    @field_validator("events")
    @classmethod
    def _distinct(cls, value: list[NotifyEvent]) -> list[NotifyEvent]:
        if len(set(value)) != len(value):
            raise ValueError("list each event once")
        return value


class WebhookSecret(BaseModel):
    """The secret that signs a tenant's webhook deliveries (Standard Webhooks)."""

    secret: str = Field(
        description="The tenant's signing secret: whsec_ and the base64 of the HMAC-SHA256 key.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )
