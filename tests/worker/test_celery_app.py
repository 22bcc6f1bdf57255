"""The Celery configuration the issue asks for, and the task names the API sends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service.config import Settings
from service.queue import TASK_RANK_JOB, TASK_RUN_JOB, TASK_SCORE_SHARD, make_celery


def test_reliability_settings(tmp_path: Path) -> None:
    app = make_celery(Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/13"))
    conf = app.conf
    assert conf.task_acks_late is True and conf.worker_prefetch_multiplier == 1
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.task_ignore_result is True  # state lives in the database
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


def test_embedded_broker_needs_no_server(tmp_path: Path) -> None:
    app = make_celery(Settings(home=tmp_path, broker_url=None))
    assert app.conf.broker_url.startswith("filesystem://")
    assert (tmp_path / "broker" / "out").is_dir()


def test_worker_registers_every_task_the_api_sends(service_db: str) -> None:
    from worker.celery_app import app

    app.loader.import_default_modules()
    assert {TASK_RUN_JOB, TASK_SCORE_SHARD, TASK_RANK_JOB} <= set(app.tasks)


def test_worker_refuses_to_start_with_an_unusable_artifact_root(tmp_path: Path) -> None:
    """A missing fsspec back end stops the worker at start-up, not a job half way."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPROX_")}
    env |= {"IPROX_HOME": str(tmp_path), "IPROX_ARTIFACT_ROOT": "nosuchfs://bucket/artifacts"}
    env["PYTHONPATH"] = str(root)
    proc = subprocess.run(
        [sys.executable, "-c", "import worker.celery_app"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("iprox worker: invalid configuration")
    assert "IPROX_ARTIFACT_ROOT='nosuchfs://bucket/artifacts' needs fsspec" in proc.stderr


def test_worker_asked_for_missing_cuda_refuses_to_start(tmp_path: Path) -> None:
    """IPROX_DEVICE=cuda on a machine without CUDA: the worker exits at start-up, naming it."""
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has CUDA: the refusal cannot be shown here")
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPROX_")}
    env |= {"IPROX_HOME": str(tmp_path), "IPROX_DEVICE": "cuda", "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-c", "import worker.celery_app"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "iprox worker: IPROX_DEVICE: 'cuda' asks for CUDA" in proc.stderr
