"""The paper's recipe through the API on a tiny model: warm-up, a proxy per checkpoint, Adam
preconditioning; the job's scores are the engine's for the same run, and the request's checks."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from service.config import get_settings
from tests.worker.conftest import FAST_PROXY, FAST_SCORER
from tests.worker.inline import InlineQueue
from worker.tasks.configs import proxy_config, score_config
from worker.tasks.steps import job_dir
from worker.tasks.warmup import WARMUP_DIR

WARMUP = {"fraction": 0.5, "checkpoints": 2, "epochs": 1, "batch_size": 2, "max_length": 48}


def _engine_scores(body: dict[str, Any], run: Path, adam: bool) -> dict[int, float]:
    from worker.engine.pipeline import iter_scores

    path = lambda uri: Path(urlsplit(uri).path)  # noqa: E731
    out: dict[int, float] = {}
    for batch in iter_scores(
        body["target_model"],
        path(body["dataset_uri"]),
        [path(body["target_uri"])],
        proxy=proxy_config(FAST_PROXY),
        config=score_config(FAST_SCORER),
        checkpoints=run,
        adam=adam,
    ):
        out.update(zip(batch.indices, batch.scores, strict=True))
    return out


def _sample(metrics: str, name: str) -> float:
    found = re.search("^" + re.escape(name) + r" (\S+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_warmed_up_adam_job_scores_as_the_engine_does(
    client: TestClient, auth: dict[str, str], job_body: Callable[..., dict[str, Any]]
) -> None:
    body = job_body(warmup=WARMUP, scorer=FAST_SCORER | {"adam": True})
    before = client.get("/metrics").text
    r = client.post("/jobs", json=body, headers=auth)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    InlineQueue().run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    after = client.get("/metrics").text
    for stage in ("warmup", "ranking"):
        count = f'iprox_stage_duration_seconds_count{{stage="{stage}"}}'
        assert _sample(after, count) > _sample(before, count), stage
    assert job["proxy_id"] is None  # proxies were built per checkpoint, not saved as one
    warm = job["result"]["warmup"]
    assert warm["adam"] is True and len(warm["checkpoints"]) == 2
    events = client.get(f"/jobs/{job_id}/events", headers=auth).json()["items"]
    stages = [e["message"] for e in events if e["type"] == "stage"]
    assert stages.index("warmup") < stages.index("scoring")
    assert any(e["message"] == "warm-up done" for e in events)

    scores = {
        s["index"]: s["score"]
        for s in client.get(f"/jobs/{job_id}/scores", headers=auth).json()["items"]
    }
    run = job_dir(get_settings(), job_id) / WARMUP_DIR
    assert scores == pytest.approx(_engine_scores(body, run, adam=True), rel=1e-4, abs=1e-6)
    plain = _engine_scores(body, run, adam=False)
    assert scores != pytest.approx(plain, rel=1e-3)  # Adam preconditioning changed them


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scorer": {"adam": True}}, "scorer.adam"),
        ({"warmup": WARMUP | {"lora_rank": 4}, "scorer": {"adam": True}}, "scorer.adam"),
        ({"warmup": WARMUP, "proxy": {"proxy_id": "p"}}, "proxy.proxy_id"),
        ({"warmup": WARMUP | {"fraction": 0}}, "warmup.fraction"),
        ({"warmup": WARMUP | {"checkpoints": 0}}, "warmup.checkpoints"),
        ({"warmup": WARMUP | {"steps": 3}}, "warmup.steps"),
    ],
)
def test_recipe_requests_that_cannot_run_are_422s_naming_the_field(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    change: dict[str, Any],
    field: str,
) -> None:
    r = client.post("/jobs", json=job_body(**change), headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field


def test_a_proxy_build_job_takes_no_warmup(
    client: TestClient, auth: dict[str, str], job_body: Callable[..., dict[str, Any]]
) -> None:
    r = client.post("/jobs", json=job_body("proxy_build", warmup=WARMUP), headers=auth)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "warmup"


def test_a_lora_warm_up_runs_the_recipe(
    client: TestClient, auth: dict[str, str], job_body: Callable[..., dict[str, Any]]
) -> None:
    body = job_body(warmup=WARMUP | {"lora_rank": 4})
    job_id = client.post("/jobs", json=body, headers=auth).json()["id"]
    InlineQueue().run(job_id)
    job = client.get(f"/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["selected"] == 3 and len(job["result"]["warmup"]["checkpoints"]) == 2
