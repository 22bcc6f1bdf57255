"""The warm-up of a select job that asks for one (the paper's and LESS's recipe): a brief
fine-tune of the target on a seeded slice of the pool, keeping ``checkpoints`` checkpoints with
their Adam moments. Scoring then builds a proxy from each checkpoint and sums the checkpoints'
scores weighted by their learning rates (worker/engine/pipeline.py), Adam-preconditioned with
``scorer.adam``.

The run lands in the job's folder and is reused by a redelivered task: it is written under a
temporary name and renamed once its manifest is there.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from service.config import Settings
from service.db import session_scope
from service.jobs import state
from service.models import JobStage
from worker.engine.progress import Metrics
from worker.tasks.reporting import Reporter
from worker.tasks.runtime import model_cache, worker_runtime

WARMUP_DIR = "warmup"


def finetune_config(spec: dict[str, Any]) -> Any:
    """The request's ``warmup`` over the engine's FinetuneConfig defaults."""
    from worker.engine.train.config import FinetuneConfig

    keys = ("epochs", "lr", "batch_size", "max_length", "lora_rank", "seed")
    config = FinetuneConfig()
    return replace(config, **{k: spec[k] for k in keys if spec.get(k) is not None})


def ensure_warmup(
    job_id: str, request: dict[str, Any], model: str, pool: Path, folder: Path, settings: Settings
) -> Path:
    """The job's warm-up run directory, trained now unless an earlier delivery finished it."""
    from worker.engine.data import load_records
    from worker.engine.pipeline import ModelCache
    from worker.engine.train import warmup
    from worker.engine.train.checkpoints import MANIFEST

    out = folder / WARMUP_DIR
    if (out / MANIFEST).is_file():
        return out
    spec = request["warmup"]
    reporter = Reporter(job_id, stages=True)

    def progress(
        stage: str, done: int, total: int, metrics: Metrics | None = None, /
    ) -> None:  # fine-tuning steps, as warmup
        name = JobStage.WARMUP.value if stage == "training" else stage
        reporter.progress(name, done, total, metrics)

    target = (model_cache(settings) or ModelCache()).get(model, worker_runtime(settings))
    tmp = folder / f"{WARMUP_DIR}.{uuid.uuid4().hex[:8]}.part"
    try:
        result = warmup(
            target,
            load_records(pool),
            finetune_config(spec),
            tmp,
            fraction=spec["fraction"],
            checkpoints=spec["checkpoints"],
            progress=progress,
            should_stop=reporter.should_stop,
        )
        reporter.close()  # the warm-up stage ended: observe its duration
        if out.exists():  # an overlapping delivery finished first: keep its run
            return out
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with session_scope() as s:
        state.metric(
            s,
            job_id,
            "warm-up done",
            {
                "records": len(result.manifest["warmup"]["ids"]),
                "checkpoints": [c["step"] for c in result.manifest["checkpoints"]],
            },
        )
    return out
