"""The FastAPI application: routers, health probes, the problem+json handler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import text

from service.config import get_settings
from service.db import get_engine
from service.errors import DatabaseUnavailable, Unavailable, install_error_handlers
from service.jobs.router import router as jobs_router
from service.limits import InflightLimit
from service.proxies.router import router as proxies_router
from service.queue import get_dispatcher
from service.webhooks.router import router as webhooks_router


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Read the settings at start-up, so that a bad one (say an artifact URL whose fsspec back end
    # is not installed) stops the server here rather than failing its first requests.
    get_settings()
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        title="iprox-service",
        version="0.1.0",
        description="Influence-preserving proxies (IProX) for gradient-based data selection.",
        lifespan=_lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(InflightLimit, limit=get_settings().api_max_inflight)
    app.include_router(jobs_router)
    app.include_router(proxies_router)
    app.include_router(webhooks_router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> dict[str, str]:
        """The database and the broker are reachable."""
        try:
            with get_engine().connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise DatabaseUnavailable(f"database unreachable ({type(exc).__name__})") from exc
        try:
            get_dispatcher().ping()
        except Exception as exc:
            raise Unavailable(f"broker unreachable ({type(exc).__name__})") from exc
        return {"status": "ready", "database": "ok", "broker": "ok"}

    return app


app = create_app()
