"""The Celery application's configuration, shared by the API (which only sends tasks, by name)
and the worker (which registers them). The API never imports the worker's task code."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Protocol

from celery import Celery

from service.config import Settings, get_settings

TASK_RUN_JOB = "iprox.run_job"
TASK_SCORE_SHARD = "iprox.score_shard"
TASK_RANK_JOB = "iprox.rank_job"
TASK_RECONCILE = "iprox.reconcile"
TASK_DELIVER_WEBHOOK = "iprox.deliver_webhook"

CONTROL_WORKER_INFO = "iprox_worker_info"
"""A remote-control command each worker registers (worker/celery_app.py): its device, dtype and
queues, for GET /readyz."""


def make_celery(settings: Settings) -> Celery:
    """Redis in production; the embedded default uses kombu's filesystem transport (no server)."""
    app = Celery("iprox", broker=settings.resolved_broker_url)
    conf: dict[str, object] = dict(
        task_default_queue=settings.queue,
        # Acknowledge after the task ran. A pool process that dies (OOM kill) is not redelivered
        # by Celery: the reconciler (service/jobs/recovery.py) finds its stale heartbeat and
        # re-queues the work, up to IPROX_MAX_RETRIES, so one poisonous job cannot kill
        # workers in a loop.
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,  # jobs are long: never hoard messages
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        task_ignore_result=True,  # job state lives in the database, not in a result backend
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Celery beat (``celery -A worker.celery_app beat``, or a worker's ``-B``) sends the
        # reconciler; a tick that waits longer than an interval in the queue is dropped.
        beat_schedule={
            "iprox-reconcile": {
                "task": TASK_RECONCILE,
                "schedule": settings.reconcile_interval_s,
                "options": {"expires": settings.reconcile_interval_s},
            }
        },
        beat_schedule_filename=str(settings.home / "celerybeat-schedule"),
    )
    if settings.is_embedded_broker:
        folder = settings.broker_folder
        for sub in ("out", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            # Without this kombu writes its fanout exchange files to ./control in whatever
            # directory the worker was started from.
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    else:
        # Redis redelivers an unacknowledged message after this long; keep it above the hard
        # time limit or a long task would be delivered twice. Recovery does not wait for it:
        # the reconciler re-queues stranded work from the database.
        conf["broker_transport_options"] = {"visibility_timeout": settings.task_time_limit_s + 600}
    app.conf.update(conf)
    return app


class Dispatcher(Protocol):
    def enqueue(self, task_name: str, *args: object) -> None: ...

    def ping(self) -> None: ...

    def workers(self, timeout_s: float) -> list[dict[str, Any]]: ...


class CeleryDispatcher:
    """Sends tasks by name with ids only (never objects)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def enqueue(self, task_name: str, *args: object) -> None:
        self.app.send_task(task_name, args=list(args))

    def ping(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)

    def workers(self, timeout_s: float) -> list[dict[str, Any]]:
        """The workers that answer a broadcast within ``timeout_s``, by name, with the device,
        dtype and queues they report."""
        replies = self.app.control.broadcast(CONTROL_WORKER_INFO, reply=True, timeout=timeout_s)
        found = []
        for reply in replies or []:
            for name, info in reply.items():
                info = info if isinstance(info, dict) else {}
                found.append(
                    {
                        "name": name,
                        "device": info.get("device"),
                        "dtype": info.get("dtype"),
                        "queues": list(info.get("queues") or []),
                    }
                )
        return sorted(found, key=lambda w: w["name"])


@lru_cache
def get_dispatcher() -> Dispatcher:
    return CeleryDispatcher(make_celery(get_settings()))
