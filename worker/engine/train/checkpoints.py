"""Fine-tuning run directories: checkpoints, the run manifest, and loading checkpoints back.

A run directory looks like::

    out/
      finetune.json               manifest: config, base model, data hash, steps, checkpoints
      config.json, model.safetensors, tokenizer files   the final model (always merged, full)
      checkpoints/step-000010/    a checkpoint: a full model, or a LoRA adapter over the base
                                  (a full run's last checkpoint is the final model itself: ".")

The final model is a plain Hugging Face directory, so ``load_model(out)`` and ``iprox evaluate
--model out`` open it like any other model. Checkpoints of LoRA runs hold only the adapter
(``adapter_model.safetensors``): they are applied to a copy of the base model when loaded.
Every checkpoint records the learning rate at its step, which TracIn uses to weight the
checkpoints' gradient similarities.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from worker.engine.device import Runtime
from worker.engine.errors import ArtifactError
from worker.engine.models import LoadedModel, dir_sha256, load_model

MANIFEST = "finetune.json"


@dataclass(frozen=True)
class Checkpoint:
    """One saved checkpoint of a run.

    ``lr`` is the learning rate of the checkpoint's step, ``mean_lr`` the mean rate over the
    steps since the previous checkpoint (the weight TracIn gives the segment it ends).
    """

    step: int
    epoch: float
    lr: float
    mean_lr: float
    kind: Literal["full", "lora"]
    path: Path


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> Path:
    path = run_dir / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{run_dir}: no {MANIFEST}; not a fine-tuning run directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
        raise ArtifactError(f"{path}: expected an object with a 'checkpoints' list")
    return data


def list_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """The run's checkpoints in step order; raises :class:`ArtifactError` if one is missing."""
    run_dir = Path(run_dir)
    out = []
    for i, c in enumerate(read_manifest(run_dir)["checkpoints"]):
        try:
            ckpt = Checkpoint(
                step=int(c["step"]),
                epoch=float(c["epoch"]),
                lr=float(c["lr"]),
                mean_lr=float(c["mean_lr"]),
                kind=c["kind"],
                path=run_dir / str(c["path"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"{run_dir / MANIFEST}: checkpoints[{i}] is malformed ({exc})"
            ) from None
        if not ckpt.path.is_dir():
            raise ArtifactError(
                f"{run_dir / MANIFEST}: checkpoint directory {ckpt.path} is missing"
            )
        out.append(ckpt)
    return sorted(out, key=lambda c: c.step)


def load_checkpoint(
    checkpoint: Checkpoint,
    base: LoadedModel | None = None,
    cache_dir: Path | None = None,
    runtime: Runtime | None = None,
) -> LoadedModel:
    """A checkpoint as a full model (LoRA adapters merged into a copy of the base).

    ``base`` is the run's base model; when ``None`` it is loaded from the reference in the run
    manifest. ``runtime`` (default: the base's, else float32 on the CPU) places the model.
    Raises :class:`ArtifactError` when the given base is not the one the run used.
    """
    if runtime is None:
        runtime = base.runtime if base is not None else Runtime(torch.device("cpu"), torch.float32)
    if checkpoint.kind == "full":
        return load_model(str(checkpoint.path), cache_dir=cache_dir, runtime=runtime)
    run_dir = checkpoint.path.parent.parent
    recorded = read_manifest(run_dir)["base"]
    if base is None:
        base = load_model(recorded["ref"], cache_dir=cache_dir, runtime=runtime)
    if base.sha256 != recorded["sha256"]:
        raise ArtifactError(
            f"{checkpoint.path}: the adapter was trained on weights {recorded['sha256'][:12]}… "
            f"({recorded['ref']}), not on {base.sha256[:12]}… ({base.ref})"
        )
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(base.model), checkpoint.path)
    merged = model.merge_and_unload().eval()
    return LoadedModel(
        model=merged,
        tokenizer=base.tokenizer,
        ref=str(checkpoint.path),
        identity=str(checkpoint.path.resolve()),
        # The merged weights are determined by base + adapter: hash the pair.
        sha256=hashlib.sha256(f"{base.sha256}+{dir_sha256(checkpoint.path)}".encode()).hexdigest(),
        runtime=base.runtime,
    )
