"""Fixtures of the service and worker tiers (loaded by tests/conftest.py as a plugin): the real
app against a fresh Postgres (migrated by Alembic) and a real Redis broker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service.kit import (
    REDIS_DB_SERVICE,
    drop_queue,
    fresh_postgres,
    redis_url,
    require_redis,
    service_env,
    service_environ,
)


@pytest.fixture(scope="session")
def svc_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("iprox-service")
    out = {"home": base / "home", "data": base / "data", "models": base / "models"}
    for p in out.values():
        p.mkdir()
    return out


@pytest.fixture(scope="session")
def service_db(svc_roots: dict[str, Path]) -> Iterator[str]:
    require_redis()
    with fresh_postgres() as url:
        env = service_env(
            url,
            redis_url(REDIS_DB_SERVICE),
            svc_roots["home"],
            svc_roots["data"],
            svc_roots["models"],
        )
        with service_environ(env):
            try:
                yield url
            finally:
                drop_queue(REDIS_DB_SERVICE, env["IPROX_QUEUE"])


@pytest.fixture
def client(service_db: str) -> Iterator[TestClient]:
    from service.main import create_app

    with TestClient(create_app()) as c:
        yield c


def new_key(tenant: str | None = None, scope: str = "write") -> str:
    from service.auth.keys import create_key
    from service.db import session_scope

    with session_scope() as session:
        name = tenant or f"tenant-{uuid.uuid4().hex[:8]}"
        return create_key(session, name, scope=scope).key


@pytest.fixture
def auth(service_db: str) -> dict[str, str]:
    """Headers of a fresh tenant's key."""
    return {"Authorization": f"Bearer {new_key()}"}


@pytest.fixture
def other_auth(service_db: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_key()}"}


@pytest.fixture
def data_file(svc_roots: dict[str, Path]) -> Callable[..., str]:
    """Write rows under the data root; returns the file:// URI."""

    def _write(rows: list[dict[str, Any]] | str, suffix: str = ".jsonl") -> str:
        path = svc_roots["data"] / f"{uuid.uuid4().hex[:10]}{suffix}"
        if isinstance(rows, str):
            path.write_text(rows, encoding="utf-8")
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path.as_uri()

    return _write


@pytest.fixture
def model_dir(svc_roots: dict[str, Path]) -> str:
    """A folder that passes the API's light model check (config.json under the model root)."""
    path = svc_roots["models"] / "tiny-llama"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text("{}", encoding="utf-8")
    return str(path)


@pytest.fixture
def select_body(data_file: Callable[..., str], model_dir: str) -> dict[str, Any]:
    pool = data_file([{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)])
    target = data_file([{"question": "q", "answer": "a"}])
    return {
        "kind": "select",
        "dataset_uri": pool,
        "target_model": model_dir,
        "target_uri": target,
        "selection": {"top_k": 2},
        "metadata": {"team": "nlp"},
    }
