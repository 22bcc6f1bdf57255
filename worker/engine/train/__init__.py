"""Fine-tuning (full or LoRA), warm-up with checkpoints for TracIn, and evaluation."""

from worker.engine.train.checkpoints import (
    Checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_manifest,
)
from worker.engine.train.choice import option_logprobs
from worker.engine.train.config import FinetuneConfig
from worker.engine.train.evaluate import EvalReport, ExampleResult, evaluate
from worker.engine.train.finetune import FinetuneResult, finetune, records_sha256
from worker.engine.train.forward import Scored, score_examples
from worker.engine.train.warmup import random_slice, sample_records, warmup

__all__ = [
    "Checkpoint",
    "EvalReport",
    "ExampleResult",
    "FinetuneConfig",
    "FinetuneResult",
    "Scored",
    "evaluate",
    "finetune",
    "list_checkpoints",
    "load_checkpoint",
    "option_logprobs",
    "random_slice",
    "read_manifest",
    "records_sha256",
    "sample_records",
    "score_examples",
    "warmup",
]
