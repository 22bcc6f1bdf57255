"""The Celery configuration the issue asks for, and the task names the API sends."""

from __future__ import annotations

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
