"""Database engine and sessions for Postgres (production) and SQLite (the embedded default).

Sessions commit at the boundary only: the request dependency and :func:`session_scope` commit
on success and roll back on error; everything inside flushes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy import Engine, create_engine, event
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


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets the pragmas above and a parent folder."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_pragmas(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine for the configured database."""
    settings = get_settings()
    url = settings.resolved_database_url
    if url.startswith("sqlite") and settings.database_url is None:
        settings.home.mkdir(parents=True, exist_ok=True)
    return make_engine(url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """One unit of work outside a request (tasks, admin commands): commit or roll back."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_session() -> Iterator[Session]:
    """Request dependency: one session per request, committed when the handler succeeds."""
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
