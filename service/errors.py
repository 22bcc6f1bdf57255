"""Typed application errors, rendered by one handler as RFC 9457 problem+json."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

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


class Forbidden(AppError):
    status = 403
    code = "forbidden"
    title = "This API key may not do this"


class NotFound(AppError):
    status = 404
    code = "not_found"
    title = "Not found"


class MethodNotAllowed(AppError):
    status = 405
    code = "method_not_allowed"
    title = "The resource does not answer this method"


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


class FieldError(BaseModel):
    """One problem with one field of the request."""

    field: str = Field(
        description="Dotted path of the field (body fields without 'body.'; query and header "
        "parameters as query.x, header.x; 'body' for the whole body).",
        examples=["selection.top_k"],
    )
    message: str = Field(
        description="What is wrong with it.", examples=["top_k is 80 but the pool holds 36"]
    )
    line: int | None = Field(
        None, description="Malformed JSON only: the 1-based line of the error.", examples=[4]
    )
    column: int | None = Field(
        None, description="Malformed JSON only: the 1-based column of the error.", examples=[3]
    )


class Problem(BaseModel):
    """An RFC 9457 problem: every error the API answers (media type application/problem+json)."""

    type: str = Field(
        description="A URI naming the kind of problem.",
        examples=["https://iprox.dev/problems/validation_failed"],
    )
    title: str = Field(
        description="The kind of problem, for people.", examples=[ValidationFailed.title]
    )
    status: int = Field(description="The HTTP status.", examples=[422])
    detail: str = Field(
        description="This occurrence, for people.",
        examples=["selection.top_k: top_k is 80 but the pool holds 36"],
    )
    instance: str = Field(description="The request path.", examples=["/jobs"])
    code: str = Field(
        description="Stable machine-readable code (validation_failed, not_found, conflict, "
        "unauthorized, forbidden, database_unavailable, overloaded, ...).",
        examples=["validation_failed"],
    )
    errors: list[FieldError] | None = Field(
        None,
        description="422 only: each field at fault.",
        examples=[[{"field": "selection.top_k", "message": "top_k is 80 but the pool holds 36"}]],
    )


_RESPONSE_TEXT = {
    401: "The API key is missing, unknown or revoked.",
    403: "The API key's scope does not allow this: a key with scope read may only GET.",
    404: "No such resource for this API key (another tenant's ids look missing).",
    405: "The path does not answer this method.",
    409: "The resource is not in a state that allows this.",
    422: "The request is invalid; `errors` names each field.",
    500: "An internal error; it has been logged.",
    503: "A backing service (database, broker, artifact store) is unavailable or the API is "
    "busy; retry after Retry-After seconds.",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each a Problem (main.py moves them to
    application/problem+json)."""
    return {s: {"model": Problem, "description": _RESPONSE_TEXT[s]} for s in statuses}


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


# Starlette's own HTTP errors (an unknown route, a wrong method, a body too large) by status.
_HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "The request is malformed"),
    404: (NotFound.code, NotFound.title),
    405: (MethodNotAllowed.code, MethodNotAllowed.title),
    413: ("payload_too_large", "The request body is too large"),
    415: ("unsupported_media_type", "The request body's media type is not supported"),
}


def _line_column(doc: str, pos: int) -> tuple[int, int]:
    """1-based line and column of character ``pos`` of ``doc``."""
    line = doc.count("\n", 0, pos) + 1
    return line, pos - (doc.rfind("\n", 0, pos) + 1) + 1


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for e in exc.errors():
        if e.get("type") == "json_invalid" and isinstance(exc.body, str | bytes):
            # FastAPI's loc is ("body", character offset); say where, as an editor would.
            doc = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else exc.body
            pos = e["loc"][1] if len(e["loc"]) > 1 and isinstance(e["loc"][1], int) else 0
            line, column = _line_column(doc, pos)
            reason = (e.get("ctx") or {}).get("error") or e["msg"]
            errors.append(
                {
                    "field": "body",
                    "message": f"malformed JSON at line {line}, column {column}: {reason}",
                    "line": line,
                    "column": column,
                }
            )
        else:
            errors.append({"field": _loc(tuple(e["loc"])), "message": e["msg"]})
    return errors


def _allowed_methods(request: Request) -> list[str]:
    """Every method the API documents on this path (read from its OpenAPI paths, which name
    every route; the routers nest, so their own route lists would need a walk)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {m.upper() for m in operations}
    return sorted(methods)


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

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "The request failed"))
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        response = problem(exc.status_code, title, detail, code, request.url.path)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        if exc.status_code == 405:  # Starlette names the first matching route's methods only
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(
            422,
            ValidationFailed.title,
            detail,
            ValidationFailed.code,
            request.url.path,
            errors,
        )
