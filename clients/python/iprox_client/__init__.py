"""A Python client for the iprox-service API (httpx and pydantic; no torch)."""

from iprox_client.client import Client
from iprox_client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    IproxError,
    JobFailed,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    WaitTimeout,
)
from iprox_client.models import Event, Job, Score
from iprox_client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "ApiError",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Event",
    "Forbidden",
    "IproxError",
    "Job",
    "JobFailed",
    "NotFound",
    "RateLimited",
    "Score",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "WaitTimeout",
    "WebhookVerificationError",
    "verify_webhook",
]
