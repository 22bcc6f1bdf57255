"""The FastAPI application: routers, health probes, metrics, docs, the web page and the
problem+json handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import fastapi_offline
from fastapi import FastAPI, Query
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy import text

from service import metrics
from service.config import get_settings
from service.db import get_engine
from service.errors import (
    PROBLEM_JSON,
    DatabaseUnavailable,
    Unavailable,
    install_error_handlers,
    problem_responses,
)
from service.jobs.router import router as jobs_router
from service.limits import InflightLimit
from service.logs import RequestContext, configure_logging
from service.proxies.router import router as proxies_router
from service.queue import get_dispatcher
from service.webhooks.router import router as webhooks_router

# Swagger UI and ReDoc bundles shipped inside the fastapi-offline wheel (both MIT / Apache-2.0),
# so /docs and /redoc work with no network.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
UI_DIR = Path(__file__).parent / "ui"

DESCRIPTION = """Influence-preserving proxies (IProX) for gradient-based data selection.

Submit a `select` job (`createJob`) with a pool, a target task and a budget; follow it with
`getJob` and `listJobEvents`; download the ranked subset with `getJobSubset`. Every error is
`application/problem+json` (RFC 9457) with a stable `code`; every list pages with `cursor`,
`next_cursor` and `has_more`. A web page for people is at `/ui`, metrics at `/metrics`.
"""


class Health(BaseModel):
    """The process is up."""

    status: str = Field(description="Always ok.", examples=["ok"])


class WorkerInfo(BaseModel):
    """A worker that answered the readiness ping."""

    name: str = Field(description="Celery node name.", examples=["celery@gpu-0"])
    device: str | None = Field(description="The torch device it computes on.", examples=["cuda:0"])
    dtype: str | None = Field(description="Its model dtype.", examples=["bfloat16"])
    queues: list[str] = Field(description="The queues it consumes.", examples=[["iprox"]])


class Readiness(BaseModel):
    """The database and the broker answered; ``workers`` are those that answered a ping."""

    status: str = Field(description="ready.", examples=["ready"])
    database: str = Field(description="ok when a query answered.", examples=["ok"])
    broker: str = Field(description="ok when the broker accepted a connection.", examples=["ok"])
    workers: list[WorkerInfo] = Field(
        description="Workers consuming this API's queue (IPROX_QUEUE) that answered within "
        "IPROX_READYZ_WORKER_TIMEOUT_S.",
        examples=[
            [{"name": "celery@w1", "device": "cpu", "dtype": "float32", "queues": ["iprox"]}]
        ],
    )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Read the settings at start-up, so that a bad one (say an artifact URL whose fsspec back end
    # is not installed) stops the server here rather than failing its first requests.
    get_settings()
    yield


def _problem_media_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Declared error responses carry application/problem+json, which is what the API sends
    (FastAPI would document them as application/json); FastAPI's own validation error schema,
    which the API never sends, goes."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    content[PROBLEM_JSON] = content.pop("application/json")
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def create_app() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    app = FastAPI(
        title="iprox-service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(InflightLimit, limit=settings.api_max_inflight)
    app.add_middleware(RequestContext)
    app.add_middleware(metrics.RequestMetrics)
    app.include_router(jobs_router)
    app.include_router(proxies_router)
    app.include_router(webhooks_router)
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.mount("/ui/assets", StaticFiles(directory=UI_DIR), name="ui-assets")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = _problem_media_types(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="iprox-service API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="iprox-service API",
            redoc_js_url="/docs-assets/redoc.standalone.js",
            redoc_favicon_url="/docs-assets/favicon.png",
            with_google_fonts=False,
        )

    @app.get("/ui", include_in_schema=False)
    def ui() -> HTMLResponse:
        return HTMLResponse((UI_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get(
        "/metrics",
        tags=["health"],
        operation_id="getMetrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format.",
                "content": {
                    "text/plain": {
                        "schema": {"type": "string"},
                        "example": 'iprox_jobs{status="running"} 1.0\n',
                    }
                },
            }
        },
    )
    def prometheus_metrics() -> Response:
        """Request latency by route and status, jobs by status, stage durations, samples
        scored and, on CUDA workers, GPU memory."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get(
        "/healthz",
        tags=["health"],
        operation_id="getHealth",
        summary="Liveness",
        response_model=Health,
    )
    def healthz() -> Health:
        """The process is up (no dependency is checked)."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        tags=["health"],
        operation_id="getReadiness",
        summary="Readiness and live workers",
        response_model=Readiness,
        responses=problem_responses(422, 500, 503),
    )
    def readyz(
        min_workers: Annotated[
            int,
            Query(
                ge=0,
                le=10_000,
                description="Answer 503 unless at least this many workers answer the ping.",
                examples=[1],
            ),
        ] = 0,
    ) -> Readiness:
        """The database and the broker are reachable; lists the workers that answer a ping
        within ``IPROX_READYZ_WORKER_TIMEOUT_S``, with their device and queues."""
        try:
            with get_engine().connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise DatabaseUnavailable(f"database unreachable ({type(exc).__name__})") from exc
        dispatcher = get_dispatcher()
        try:
            dispatcher.ping()
        except Exception as exc:
            raise Unavailable(f"broker unreachable ({type(exc).__name__})") from exc
        try:
            found = dispatcher.workers(get_settings().readyz_worker_timeout_s)
        except Exception as exc:
            raise Unavailable(f"the worker ping failed ({type(exc).__name__})") from exc
        queue = get_settings().queue  # a worker of another queue serves another deployment
        workers = [WorkerInfo(**w) for w in found if queue in w["queues"]]
        if len(workers) < min_workers:
            raise Unavailable(
                f"{len(workers)} worker(s) answered the ping; min_workers is {min_workers}"
            )
        return Readiness(status="ready", database="ok", broker="ok", workers=workers)

    return app


app = create_app()
