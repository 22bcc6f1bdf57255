"""A worker process loads a job's target once, not once per shard (IPROX_MODEL_CACHE_SIZE)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import get_settings
from tests.worker.inline import InlineQueue
from tests.worker.test_steps import submit
from worker.tasks.runtime import clear_model_caches, model_cache


@pytest.fixture
def four_shards() -> Iterator[None]:
    settings = get_settings()
    old = settings.shard_size
    settings.shard_size = 2  # the 6-record pool: three shards
    clear_model_caches()
    yield
    settings.shard_size = old
    clear_model_caches()


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from worker.engine import models

    loads: list[str] = []
    real = models.load_model

    def counting(ref: str, **kw: Any) -> Any:
        loads.append(ref)
        return real(ref, **kw)

    monkeypatch.setattr(models, "load_model", counting)
    return loads


def test_the_shards_of_a_job_share_one_loaded_model(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    four_shards: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = _count_loads(monkeypatch)
    job_id = submit(client, auth, job_body())
    InlineQueue().run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    cache = model_cache(get_settings())
    assert cache is not None
    # Proxy build + 3 shards: one load, three reuses (the proxy build left the target intact).
    assert len(loads) == 1 and (cache.misses, cache.hits) == (1, 3)


def test_cache_size_zero_loads_for_every_task(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    four_shards: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(get_settings(), "model_cache_size", 0)
    loads = _count_loads(monkeypatch)
    job_id = submit(client, auth, job_body())
    InlineQueue().run(job_id)
    assert client.get(f"/jobs/{job_id}", headers=auth).json()["status"] == "succeeded"
    assert len(loads) == 4
    assert model_cache(get_settings()) is None
