"""Test support for the service, worker and integration tiers: a fresh Postgres database
migrated by Alembic, a dedicated Redis database, and settings pointed at them."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get(
    "IPROX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# Redis database numbers reserved for the test tiers (each run also has a queue of its own).
# Not 13/14, which earlier versions of these tests flushed whole: a run of such a version in
# another checkout must not wipe this run's messages.
REDIS_DB_SERVICE, REDIS_DB_INTEGRATION = 10, 11


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    url = make_url(PG_ADMIN_URL)
    if not _reachable(url.host or "127.0.0.1", url.port or 5432):
        pytest.skip(f"PostgreSQL is not reachable at {url.host}:{url.port}")


def require_redis() -> None:
    if not _reachable(REDIS_HOST, REDIS_PORT):
        pytest.skip(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}")


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new database ``iprox_test_<random>`` migrated to head; dropped afterwards."""
    from service.migrate import upgrade

    require_postgres()
    name = f"iprox_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def flush_redis(db: int) -> None:
    import redis

    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).flushdb()


def drop_queue(db: int, queue: str) -> None:
    """Delete one queue's messages and routing from a Redis database, leaving other queues
    (another checkout's test run may share the database) alone."""
    import redis

    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).delete(queue, f"_kombu.binding.{queue}")


def reset_caches() -> None:
    """Forget the process-wide settings, engine and dispatcher (after changing IPROX_* env)."""
    from service.auth.keys import reset_key_cache
    from service.config import get_settings
    from service.db import get_engine, get_sessionmaker
    from service.queue import get_dispatcher

    if get_engine.cache_info().currsize:
        get_engine().dispose()
    for cached in (get_settings, get_engine, get_sessionmaker, get_dispatcher):
        cached.cache_clear()
    reset_key_cache()


@contextmanager
def service_environ(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` for the service's settings (caches reset) and restore the previous values."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_caches()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_caches()


def service_env(
    database_url: str, broker_url: str, home: Path, data_root: Path, model_root: Path
) -> dict[str, str]:
    return {
        # A queue of its own: test runs of several checkouts may share one Redis database, and
        # a worker must never take another run's messages.
        "IPROX_QUEUE": f"iprox-test-{uuid.uuid4().hex[:8]}",
        "IPROX_DATABASE_URL": database_url,
        "IPROX_BROKER_URL": broker_url,
        "IPROX_HOME": str(home),
        "IPROX_ARTIFACT_ROOT": str(home / "artifacts"),
        "IPROX_DATA_ROOTS": str(data_root),
        "IPROX_MODEL_ROOTS": str(model_root),
        # No private address is reachable unless a tier says so (the integration tier allows
        # its 127.0.0.1 webhook receivers); set here so one tier's choice never leaks into
        # another's through the process environment.
        "IPROX_ALLOWED_HOSTS": "",
    }
