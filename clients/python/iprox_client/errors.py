"""Errors the client raises. An API error (RFC 9457 problem+json) becomes an :class:`ApiError`
subclass chosen by its status, carrying the problem's ``code``, ``detail`` and the ``field`` it
names (for a 422)."""

from __future__ import annotations

from typing import Any


class IproxError(Exception):
    """Base of every error this client raises."""


class ApiError(IproxError):
    """The API answered with an error status."""

    def __init__(self, status: int, body: dict[str, Any], retry_after: float | None = None) -> None:
        self.status = status
        self.body = body
        self.code = str(body.get("code") or "http_error")
        self.title = str(body.get("title") or f"HTTP {status}")
        self.detail = str(body.get("detail") or self.title)
        self.errors: list[dict[str, Any]] = list(body.get("errors") or [])
        self.field: str | None = self.errors[0].get("field") if self.errors else None
        self.retry_after = retry_after
        where = f" ({self.field})" if self.field else ""
        super().__init__(f"HTTP {status} {self.code}{where}: {self.detail}")


class BadRequest(ApiError):
    """400: the request could not be read."""


class Unauthorized(ApiError):
    """401: the API key is missing, wrong or revoked."""


class Forbidden(ApiError):
    """403: the key may not do this."""


class NotFound(ApiError):
    """404: no such job (or another tenant's)."""


class Conflict(ApiError):
    """409: the job is not in a state that allows this (no subset yet, already finished)."""


class ValidationFailed(ApiError):
    """422: the request is invalid; ``field`` names the part at fault."""


class RateLimited(ApiError):
    """429: too many requests (raised once the client's retries are spent)."""


class Unavailable(ApiError):
    """503: the API or what it needs is down or busy (raised once the retries are spent)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: ValidationFailed,
    429: RateLimited,
    503: Unavailable,
}


def api_error(status: int, body: dict[str, Any], retry_after: float | None = None) -> ApiError:
    """The typed error for a status and its problem body."""
    return _BY_STATUS.get(status, ApiError)(status, body, retry_after)


class ConnectionFailed(IproxError):
    """The API could not be reached (after the client's retries)."""


class WaitTimeout(IproxError):
    """:meth:`Client.wait` ran out of time; ``job`` is the last state seen."""

    def __init__(self, job: Any, timeout: float) -> None:
        self.job = job
        super().__init__(f"job {job.id} still {job.status} after {timeout:g} s")


class JobFailed(IproxError):
    """The job ended failed or cancelled; ``job`` holds its error."""

    def __init__(self, job: Any) -> None:
        self.job = job
        reason = f": [{job.error.code}] {job.error.message}" if job.error else ""
        super().__init__(f"job {job.id} {job.status}{reason}")
