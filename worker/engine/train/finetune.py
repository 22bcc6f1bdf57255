"""Full or LoRA fine-tuning of a causal LM on records, on the CPU, loss on response tokens only.

The loop is deliberately plain (no ``Trainer``): seeded data order, AdamW over the trainable
parameters, the schedule in :mod:`worker.engine.train.schedule`, gradient clipping, and
checkpoints at the steps the config names, each recorded with its learning rate for TracIn.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.engine.data import Example, Record, collate, encode, pad_token_id
from worker.engine.device import model_device
from worker.engine.errors import ArtifactError, EmptyDatasetError, NoResponseTokensError
from worker.engine.math.nll import token_mean_loss
from worker.engine.models import LoadedModel
from worker.engine.progress import ProgressFn, StopFn, check_stop, report
from worker.engine.scoring.precondition import save_adam_state
from worker.engine.train.checkpoints import checkpoint_dir, write_manifest
from worker.engine.train.config import FinetuneConfig
from worker.engine.train.schedule import lr_at, warmup_steps

STAGE = "training"


def records_sha256(records: Sequence[Record]) -> str:
    """A hash of what the model is trained on: each record's id, prompt turns and response."""
    digest = hashlib.sha256()
    for r in records:
        row = [r.id, [dict(m) for m in r.prompt], r.response, r.plain]
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class FinetuneResult:
    """What a run produced: the trained model (merged, eval mode) and the saved manifest."""

    model: nn.Module
    manifest: dict[str, Any]
    out_dir: Path


def _encode_records(
    records: Sequence[Record], tokenizer: Any, max_length: int
) -> tuple[list[Example], list[str]]:
    examples, skipped = [], []
    for r in records:
        try:
            examples.append(encode(r, tokenizer, max_length))
        except NoResponseTokensError:
            skipped.append(r.id)
    if not examples:
        raise EmptyDatasetError("no training record has a response token to learn from")
    return examples, skipped


def _with_lora(model: nn.Module, config: FinetuneConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha or 2 * config.lora_rank,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",  # every decoder projection; peft leaves the LM head out
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)  # type: ignore[arg-type]


def _batch_order(n: int, batch_size: int, total_steps: int, seed: int) -> list[list[int]]:
    """Index batches for ``total_steps`` steps: a fresh seeded permutation every epoch."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    order: list[list[int]] = []
    while len(order) < total_steps:
        perm = torch.randperm(n, generator=gen, device="cpu").tolist()
        order.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return order[:total_steps]


def _save(model: nn.Module, tokenizer: Any, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)  # type: ignore[operator]
    tokenizer.save_pretrained(path)


def finetune(
    target: LoadedModel,
    records: Sequence[Record],
    config: FinetuneConfig,
    out_dir: Path,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    extra_manifest: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``target.model`` on ``records`` and save the run into ``out_dir``.

    ``target`` itself is left untouched. Records without a response token are skipped and
    listed in the manifest. Checkpoints are saved after the steps in ``config.save_steps`` that
    the run reaches, and after the last step; the merged final model goes into ``out_dir``.
    Raises :class:`~worker.engine.errors.Cancelled` between steps when ``should_stop()``.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        # Checkpoints of two runs in one directory would be indistinguishable in the manifest.
        raise ArtifactError(f"{out_dir}: output directory is not empty; choose a new one")
    tokenizer = target.tokenizer
    examples, skipped = _encode_records(records, tokenizer, config.max_length)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = max(1, math.ceil(config.epochs * steps_per_epoch))
    warm = warmup_steps(total, config.warmup_ratio)
    save_at = {s for s in config.save_steps if s <= total} | {total}

    torch.manual_seed(config.seed)  # LoRA initialisation and dropout
    model: nn.Module = copy.deepcopy(target.model)
    if config.lora:
        model = _with_lora(model, config)  # freezes the base, trains the adapters
    else:
        model.requires_grad_(True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    pad = pad_token_id(tokenizer)
    device = model_device(model)

    losses: list[float] = []
    checkpoints: list[dict[str, Any]] = []
    lrs_since: list[float] = []
    for step, idx in enumerate(_batch_order(len(examples), config.batch_size, total, config.seed)):
        check_stop(should_stop, STAGE)
        lr = lr_at(step, total, config.lr, warm, config.schedule)
        for group in optim.param_groups:
            group["lr"] = lr
        batch = collate([examples[i] for i in idx], pad, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = token_mean_loss(logits, batch["labels"])
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optim.step()
        losses.append(float(loss.detach()))
        lrs_since.append(lr)
        done = step + 1
        if done in save_at:
            if done == total and not config.lora:
                path = out_dir  # the final model, saved there below: no second full copy
            else:
                path = checkpoint_dir(out_dir, done)
                _save(model, tokenizer, path)
            if config.save_optimizer_state:
                save_adam_state(optim, model, path)
            checkpoints.append(
                {
                    "step": done,
                    "epoch": done / steps_per_epoch,
                    "lr": lr,
                    "mean_lr": sum(lrs_since) / len(lrs_since),
                    "kind": "lora" if config.lora else "full",
                    "path": str(path.relative_to(out_dir)),  # "." for the final model
                    "train_loss": sum(losses[-len(lrs_since) :]) / len(lrs_since),
                }
            )
            lrs_since = []
        report(progress, STAGE, done, total)

    optim.zero_grad(set_to_none=True)  # the caller gets the model without a model-sized .grad
    del optim
    if config.lora:
        model = model.merge_and_unload()  # type: ignore[operator]
    model.eval()
    _save(model, tokenizer, out_dir)
    manifest: dict[str, Any] = {
        "kind": "finetune",
        "config": config.to_dict(),
        "base": {"ref": target.ref, "identity": target.identity, "sha256": target.sha256},
        "data": {
            "sha256": records_sha256(records),
            "records": len(records),
            "examples": len(examples),
            "truncated": sum(e.truncated for e in examples),
            "skipped_ids": skipped,
        },
        "steps": total,
        "steps_per_epoch": steps_per_epoch,
        "warmup_steps": warm,
        "losses": losses,
        "checkpoints": checkpoints,
        "seconds": time.perf_counter() - started,
        **(extra_manifest or {}),
    }
    write_manifest(out_dir, manifest)
    return FinetuneResult(model=model, manifest=manifest, out_dir=out_dir)
