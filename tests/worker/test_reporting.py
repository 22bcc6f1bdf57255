"""The progress reporter: one unit per stage, ETA, stage metrics in events and logs; the job's
log context; and /metrics scraped after a whole job run by the task steps."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.db import session_scope
from service.jobs import state
from service.jobs.schemas import STAGE_UNITS as API_UNITS
from service.logs import bind, formatter
from tests.worker.inline import InlineQueue
from worker.engine.progress import STAGE_UNITS as ENGINE_UNITS
from worker.tasks.reporting import Reporter


def _events(client: TestClient, auth: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    page = client.get(f"/jobs/{job_id}/events", params={"limit": 1000}, headers=auth).json()
    return list(page["items"])


def test_the_api_and_the_engine_name_the_same_units() -> None:
    assert API_UNITS == ENGINE_UNITS


def test_progress_ticks_become_events_and_log_records_in_one_unit(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id = client.post("/jobs", json=job_body(), headers=auth).json()["id"]
    with session_scope() as s:
        assert state.start(s, job_id) is not None
    reporter = Reporter(job_id, stages=True, interval_s=0.0, event_interval_s=0.0)
    seen: list[dict[str, Any]] = []
    caplog.set_level(logging.INFO, logger="worker.tasks.reporting")
    with bind(job_id=job_id, tenant="t-1"):
        for tick in [("loading", 0, 4), ("loading", 4, 4), ("loading", 4, 4)]:
            reporter.progress(*tick)
        for done in (8, 16):  # probe batches, then layers: one unit, never backwards
            reporter.progress("compressing", done, 16)
            seen.append(client.get(f"/jobs/{job_id}", headers=auth).json()["progress"])
        for done in (13, 210):
            reporter.progress("compressing", done, 210)
            seen.append(client.get(f"/jobs/{job_id}", headers=auth).json()["progress"])
        reporter.progress("aligning", 1, 2, {"step": 1, "L_GA": 0.5, "KL": 0.02})
        reporter.progress("aligning", 2, 2, {"step": 2, "L_GA": 0.25, "KL": 0.03})
        reporter.close()
    assert [(p["done"], p["total"], p["unit"]) for p in seen] == [
        (8, 16, "steps"),
        (16, 16, "steps"),
        (29, 226, "steps"),
        (226, 226, "steps"),
    ]
    progress = [e for e in _events(client, auth, job_id) if e["type"] == "progress"]
    loading = [e["data"]["done"] for e in progress if e["stage"] == "loading"]
    assert loading == [0, 4]  # the repeated last tick is written once
    aligning = [e for e in progress if e["stage"] == "aligning"]
    assert [e["data"]["metrics"] for e in aligning] == [
        {"step": 1.0, "L_GA": 0.5, "KL": 0.02},
        {"step": 2.0, "L_GA": 0.25, "KL": 0.03},
    ]
    assert aligning[-1]["data"]["unit"] == "steps" and aligning[-1]["data"]["eta_s"] == 0.0
    assert aligning[-1]["data"]["rate_per_s"] > 0
    assert aligning[-1]["message"].startswith("aligning 2/2 steps")
    # The same ticks as structured log records, naming job, tenant and stage.
    records = [r for r in caplog.records if r.name == "worker.tasks.reporting"]
    last = json.loads(formatter("json").format(records[-1]))
    assert last["job_id"] == job_id and last["tenant"] == "t-1" and last["stage"] == "aligning"
    assert last["progress"]["metrics"]["L_GA"] == 0.25
    assert "stage=aligning" in formatter("text").format(records[-1])


def _sample(text: str, name: str, labels: str = "") -> float:
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    found = re.search(pattern + r" (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_metrics_after_a_job(
    client: TestClient, auth: dict[str, str], job_body: Callable[..., dict[str, Any]]
) -> None:
    before = client.get("/metrics").text
    job_id = client.post("/jobs", json=job_body(), headers=auth).json()["id"]
    InlineQueue().run(job_id)
    assert client.get(f"/jobs/{job_id}", headers=auth).json()["status"] == "succeeded"
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text
    scored = "iprox_samples_scored_total"
    assert _sample(after, scored) - _sample(before, scored) == 6
    for stage in ("loading", "compressing", "scoring", "ranking"):
        count = "iprox_stage_duration_seconds_count"
        label = f'stage="{stage}"'
        assert _sample(after, count, label) > _sample(before, count, label), stage
    assert _sample(after, "iprox_jobs", 'status="succeeded"') >= 1
    route = 'method="POST",route="/jobs",status="202"'
    assert _sample(after, "iprox_http_request_duration_seconds_count", route) >= 1
    # An unknown path is one label, not one per URL.
    client.get("/no/such/path")
    text = client.get("/metrics").text
    assert 'route="unmatched"' in text and "/no/such/path" not in text
