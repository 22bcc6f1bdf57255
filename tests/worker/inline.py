"""Running the task steps in-process: what a worker would do with each message, in order."""

from __future__ import annotations

from collections import deque

from service.config import get_settings
from service.queue import TASK_RANK_JOB, TASK_RUN_JOB, TASK_SCORE_SHARD
from worker.tasks import steps


class InlineQueue:
    """Collects sent messages and runs them FIFO under the same guard as the Celery tasks."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[object, ...]]] = []
        self._todo: deque[tuple[str, tuple[object, ...]]] = deque()

    def __call__(self, task_name: str, *args: object) -> None:
        self.sent.append((task_name, args))
        self._todo.append((task_name, args))

    def run(self, job_id: str) -> None:
        """Submit ``run_job`` and drain the queue."""
        self(TASK_RUN_JOB, job_id)
        self.drain()

    def drain(self) -> None:
        settings = get_settings()
        while self._todo:
            name, args = self._todo.popleft()
            job_id = str(args[0])
            with steps.job_guard(job_id):
                if name == TASK_RUN_JOB:
                    steps.run_job(job_id, settings, self)
                elif name == TASK_SCORE_SHARD:
                    steps.score_shard(job_id, int(args[1]), settings, self)  # type: ignore[call-overload]
                elif name == TASK_RANK_JOB:
                    steps.rank_job(job_id, settings)
                else:
                    raise AssertionError(f"unknown task {name}")

    def names(self) -> list[str]:
        return [n for n, _ in self.sent]
