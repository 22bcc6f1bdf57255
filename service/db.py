"""Database engine and sessions for Postgres (production) and SQLite (the embedded default).

Sessions commit at the boundary only: :func:`session_scope` commits on success and rolls back on
error; everything inside flushes. A request handler opens its session where it uses it and
closes it before it returns, all in the one thread that runs it: a session held across a wait
(for a threadpool slot, a remote HEAD, a dependency's teardown) holds a pooled connection that
the requests it waits for may need, which is how the API once wedged under load.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from service.config import get_settings


def _sqlite_pragmas(engine: Engine) -> None:
    """SQLite serves an API and a worker process at once: WAL, waits instead of errors, and
    BEGIN IMMEDIATE so that a transaction takes the write lock up front (SQLite has no
    SELECT ... FOR UPDATE; this is what keeps the named state transitions atomic)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below emit BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    pool_timeout_s: float = 2.0,
    connect_timeout_s: int = 3,
) -> Engine:
    """An engine for ``url``; SQLite gets the pragmas above. A server database gets a bounded
    pool whose waits and connects time out quickly, so that an outage or overload is answered
    (503) instead of queueing requests behind it."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_pragmas(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args["connect_timeout"] = connect_timeout_s
    return create_engine(
        url,
        # No pre-ping: it is a round trip per checkout. A connection found dead raises a
        # disconnect error instead, which invalidates the whole pool (the next checkout
        # connects afresh) and is answered 503 by the API / retried by a task.
        pool_pre_ping=False,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout_s,
        connect_args=connect_args,
    )


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine for the configured database."""
    settings = get_settings()
    url = settings.resolved_database_url
    if url.startswith("sqlite") and settings.database_url is None:
        settings.home.mkdir(parents=True, exist_ok=True)
    return make_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout_s=settings.db_pool_timeout_s,
        connect_timeout_s=settings.db_connect_timeout_s,
    )


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """One unit of work (a request handler, a task, an admin command): commit or roll back."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_connection() -> Iterator[Connection]:
    """A connection for one read that needs no transaction (a key lookup): on a server
    database in autocommit, so it costs no BEGIN/COMMIT round trips. SQLite keeps its usual
    transactions (its BEGIN IMMEDIATE hook must be paired with an end)."""
    engine = get_engine()
    with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn
