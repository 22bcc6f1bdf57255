"""dry_run estimates: nothing stored or queued; the built-in table before any job ran; after one
calibration job, the rates it measured predict a like job (stage seconds fixed, so the check is
of the arithmetic, not of a shared machine's speed), and a job's result sets its estimate
against what it took."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from tests.tiny import save_tiny_model
from tests.worker.inline import InlineQueue


@pytest.fixture
def own_model(svc_roots: dict[str, Path]) -> str:
    """A model reference no other test's jobs calibrated."""
    return str(save_tiny_model(svc_roots["models"] / f"tiny-{uuid.uuid4().hex[:8]}", "llama"))


def test_a_dry_run_stores_nothing_and_uses_the_built_in_table_at_first(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    own_model: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[str] = []
    monkeypatch.setattr(
        "service.jobs.router.get_dispatcher",
        lambda: type("Q", (), {"enqueue": lambda self, *a: sent.append(str(a[0]))})(),
    )
    body = job_body(target_model=own_model, dry_run=True)
    r = client.post("/jobs", json=body, headers=auth | {"Idempotency-Key": "dry"})
    assert r.status_code == 200, r.text
    est = r.json()
    assert est["dry_run"] is True and est["samples"] == 6
    size = Path(urlsplit(body["dataset_uri"]).path).stat().st_size
    assert est["pool_bytes"] == size and est["tokens"] == int(size * 0.2)
    assert est["tokens_error"] == 0.5 and est["calibration"]["source"].startswith("built-in")
    assert set(est["stages"]) == {"loading", "proxy", "scoring", "ranking"}
    assert est["total_seconds"] == pytest.approx(sum(s["seconds"] for s in est["stages"].values()))
    assert client.get("/jobs", headers=auth).json()["items"] == [] and sent == []
    bad = client.post("/jobs", json=body | {"selection": {"top_k": 7}}, headers=auth)
    assert bad.status_code == 422  # validated as a real submission is


FAKE_STAGE_S = {"loading": 3.0, "compressing": 5.0, "aligning": 7.0, "scoring": 11.0}
"""Seconds each stage is said to last: wall time on a shared machine swings by up to 3x between
identical jobs, which would make this a timed test; the estimator's arithmetic is what it
checks (how close real estimates come is a property of the machine, not of the code)."""


@pytest.fixture
def fixed_stage_seconds(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, float]]:
    """Every job's stages (the names its real stage events give) last ``FAKE_STAGE_S``; the
    real per-stage seconds of each job are kept in the returned list."""
    from worker.tasks import calibrate

    real = calibrate.stage_seconds
    seen: list[dict[str, float]] = []

    def fixed(job_id: str, ended: Any) -> dict[str, float]:
        measured = real(job_id, ended)
        seen.append(measured)
        return {name: FAKE_STAGE_S.get(name, 1.0) for name in measured}

    monkeypatch.setattr(calibrate, "stage_seconds", fixed)
    return seen


def test_after_one_calibration_job_its_rates_predict_a_like_job(
    client: TestClient,
    auth: dict[str, str],
    job_body: Callable[..., dict[str, Any]],
    own_model: str,
    fixed_stage_seconds: list[dict[str, float]],
) -> None:
    body = job_body(target_model=own_model)
    first = client.post("/jobs", json=body, headers=auth).json()["id"]
    InlineQueue().run(first)
    assert client.get(f"/jobs/{first}", headers=auth).json()["status"] == "succeeded"
    assert {"loading", "scoring"} <= set(fixed_stage_seconds[0])  # real events were read

    est = client.post("/jobs", json=body | {"dry_run": True}, headers=auth).json()
    assert est["calibration"]["source"] == "measured" and est["calibration"]["jobs"] == [first]
    assert est["tokens_error"] == 0.25
    stages = est["stages"]
    assert stages["loading"]["seconds"] == pytest.approx(FAKE_STAGE_S["loading"], rel=0.01)
    # the calibration job's scoring rate, per token, times the same pool's tokens
    assert stages["scoring"]["seconds"] == pytest.approx(FAKE_STAGE_S["scoring"], rel=0.01)

    like = client.post("/jobs", json=body, headers=auth).json()["id"]
    InlineQueue().run(like)
    job = client.get(f"/jobs/{like}", headers=auth).json()
    assert job["status"] == "succeeded", job["error"]
    vs = job["result"]["estimate_vs_actual"]
    assert vs["tokens"]["estimated"] == vs["tokens"]["counted"]  # same pool, same ratio
    assert set(vs["stages"]) >= {"loading", "proxy", "scoring", "ranking"}
    for name in ("loading", "scoring"):
        assert vs["stages"][name]["estimated_s"] == pytest.approx(
            vs["stages"][name]["actual_s"], rel=0.01
        ), name
    # ranking is the one stage timed for real (milliseconds beside the fixed stages)
    assert vs["total"]["estimated_s"] / vs["total"]["actual_s"] == pytest.approx(1.0, abs=0.05)
