"""Typed application errors, rendered by one handler as RFC 9457 problem+json."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class AppError(Exception):
    """Base of every error the API answers with; ``code`` is stable, ``detail`` is for people."""

    status = 500
    code = "internal"
    title = "Internal error"
    retry_after: int | None = None  # seconds, sent as Retry-After

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra


class ValidationFailed(AppError):
    status = 422
    code = "validation_failed"
    title = "The request is invalid"


class IdempotencyConflict(AppError):
    status = 422
    code = "idempotency_key_reused"
    title = "Idempotency-Key reused with a different request"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"
    title = "Missing or invalid API key"


class NotFound(AppError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(AppError):
    status = 409
    code = "conflict"
    title = "The resource is not in a state that allows this"


class Unavailable(AppError):
    status = 503
    code = "unavailable"
    title = "A backing service is unavailable"
    retry_after = 5


class DatabaseUnavailable(Unavailable):
    code = "database_unavailable"
    title = "The database is unavailable"


class Overloaded(Unavailable):
    code = "overloaded"
    title = "The API is busy; retry shortly"
    retry_after = 1


def database_error(exc: sa_exc.SQLAlchemyError) -> AppError | None:
    """The answer to a database error that is not a bug: an outage or a full pool is a 503,
    a value the database refused a 422. None for anything else (a real internal error)."""
    if isinstance(exc, sa_exc.TimeoutError):
        return DatabaseUnavailable("no database connection became free in time")
    if isinstance(exc, sa_exc.DBAPIError) and (
        exc.connection_invalidated
        or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
    ):
        return DatabaseUnavailable(f"the database is unreachable ({type(exc.orig).__name__})")
    if isinstance(exc, sa_exc.DataError):
        return ValidationFailed("a value in the request cannot be stored by the database")
    return None


def problem(
    status: int,
    title: str,
    detail: str,
    code: str,
    instance: str,
    errors: list[dict[str, Any]] | None = None,
    retry_after: int | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://iprox.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
    }
    if errors:
        body["errors"] = errors
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    # ("body", "selection", "top_k") -> "selection.top_k"; query/header keep their origin.
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the API as problem+json, including FastAPI's own validation."""

    def render(request: Request, exc: AppError) -> JSONResponse:
        errors = [{"field": exc.field, "message": exc.detail}] if exc.field else None
        return problem(
            exc.status,
            exc.title,
            exc.detail,
            exc.code,
            request.url.path,
            errors,
            retry_after=exc.retry_after,
            **exc.extra,
        )

    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return render(request, exc)

    @app.exception_handler(sa_exc.SQLAlchemyError)
    async def _database(request: Request, exc: sa_exc.SQLAlchemyError) -> JSONResponse:
        answer = database_error(exc)
        if answer is None:
            log.error("database error on %s", request.url.path, exc_info=exc)
            answer = AppError("an internal error occurred; it has been logged")
        else:
            log.warning("%s on %s: %s", answer.code, request.url.path, exc)
        return render(request, answer)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the exception; the client gets problem+json, never text/plain.
        return render(request, AppError("an internal error occurred; it has been logged"))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": _loc(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(
            422,
            ValidationFailed.title,
            detail,
            ValidationFailed.code,
            request.url.path,
            errors,
        )
