"""``iprox finetune``, ``iprox warmup`` and ``iprox evaluate``.

Each prints a JSON summary on stdout (progress goes to stderr), so scripts can parse results.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from worker.commands.runtime import add_runtime_args, runtime_of
from worker.engine.train.config import FinetuneConfig


def _help(name: str) -> str:
    f = next(f for f in fields(FinetuneConfig) if f.name == name)
    return f"{f.metadata['help']} (default: {f.default})"


def _steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--save-steps: expected comma-separated step numbers, got {text!r}"
        ) from None


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="preset name, local Hugging Face directory (e.g. a fine-tuning output), .gguf file, "
        "or hub id org/name[@revision]",
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="model cache (GGUF conversions)")
    add_runtime_args(p)


def _add_training(p: argparse.ArgumentParser, epochs: float) -> None:
    p.add_argument("--data", type=Path, required=True, help="training records (JSONL/JSON/CSV)")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--epochs", type=float, default=epochs, help=_help("epochs"))
    p.add_argument("--lr", type=float, default=FinetuneConfig.lr, help=_help("lr"))
    p.add_argument(
        "--batch-size", type=int, default=FinetuneConfig.batch_size, help=_help("batch_size")
    )
    p.add_argument(
        "--max-length", type=int, default=FinetuneConfig.max_length, help=_help("max_length")
    )
    p.add_argument(
        "--lora-rank", type=int, default=FinetuneConfig.lora_rank, help=_help("lora_rank")
    )
    p.add_argument(
        "--lora-alpha", type=int, default=FinetuneConfig.lora_alpha, help=_help("lora_alpha")
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=FinetuneConfig.weight_decay,
        help=_help("weight_decay"),
    )
    p.add_argument(
        "--warmup-ratio",
        type=float,
        default=FinetuneConfig.warmup_ratio,
        help=_help("warmup_ratio"),
    )
    p.add_argument(
        "--schedule",
        choices=("linear", "constant"),
        default=FinetuneConfig.schedule,
        help=_help("schedule"),
    )
    p.add_argument("--seed", type=int, default=FinetuneConfig.seed, help=_help("seed"))


def register(subparsers: Any) -> None:
    ft = subparsers.add_parser(
        "finetune",
        help="fine-tune a model (full or LoRA) on a record file, saving checkpoints",
        description="Full or LoRA fine-tuning (on --device) with the loss on response tokens only. "
        "The merged final model is written into --out (loadable with --model OUT); "
        "checkpoints go to OUT/checkpoints/, the manifest to OUT/finetune.json.",
    )
    _add_model(ft)
    _add_training(ft, epochs=FinetuneConfig.epochs)
    ft.add_argument(
        "--save-steps", type=_steps, default=(), help="e.g. 10,20: " + _help("save_steps")
    )
    ft.add_argument(
        "--save-optimizer-state", action="store_true", help=_help("save_optimizer_state")
    )
    ft.set_defaults(func=_finetune)

    wu = subparsers.add_parser(
        "warmup",
        help="briefly fine-tune on a random slice of the pool, keeping checkpoints for TracIn",
    )
    _add_model(wu)
    _add_training(wu, epochs=4.0)
    wu.add_argument("--fraction", type=float, default=0.05, help="share of the pool to train on")
    wu.add_argument("--checkpoints", type=int, default=4, help="checkpoints, evenly spaced")
    wu.set_defaults(func=_warmup)

    ev = subparsers.add_parser(
        "evaluate",
        help="per-example NLL of reference answers (mean +- SE), and MMLU accuracy",
        description="Prints mean and standard error of the per-token NLL of each reference "
        "response; when every record is multiple choice (MMLU CSV), also accuracy by comparing "
        "the four options' likelihoods.",
    )
    _add_model(ev)
    ev.add_argument("--task", type=Path, required=True, help="evaluation records (JSONL/JSON/CSV)")
    ev.add_argument("--max-length", type=int, default=512, help="tokens per record (default: 512)")
    ev.add_argument("--batch-size", type=int, default=8, help="records per forward pass")
    ev.add_argument(
        "--sample", type=int, default=None, help="evaluate a seeded random sample of N records"
    )
    ev.add_argument("--seed", type=int, default=0, help="seed for --sample (default: 0)")
    ev.add_argument("--no-accuracy", action="store_true", help="skip multiple-choice accuracy")
    ev.add_argument(
        "--choice-scoring",
        choices=("letter", "option"),
        default="letter",
        help="multiple choice: compare the options' first (letter) token, free with the NLL "
        "pass, or their whole responses, one more forward per record (default: letter)",
    )
    ev.add_argument(
        "--out", type=Path, default=None, help="also write the report with per-example rows"
    )
    ev.set_defaults(func=_evaluate)


def _progress(
    stage: str, done: int, total: int, metrics: Mapping[str, float] | None = None
) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"{stage}: {done}/{total}", file=sys.stderr, flush=True)


def _config(args: argparse.Namespace, save_steps: tuple[int, ...] = ()) -> FinetuneConfig:
    return FinetuneConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        schedule=args.schedule,
        save_steps=save_steps,
        seed=args.seed,
        save_optimizer_state=getattr(args, "save_optimizer_state", False),
    )


def _summary(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    losses = manifest["losses"]
    return {
        "out": str(out),
        "steps": manifest["steps"],
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "checkpoints": [c["path"] for c in manifest["checkpoints"]],
        "skipped_ids": manifest["data"]["skipped_ids"],
        "seconds": round(manifest["seconds"], 2),
    }


def _finetune(args: argparse.Namespace) -> int:
    from worker.engine.data import load_records
    from worker.engine.models import load_model
    from worker.engine.train import finetune

    runtime = runtime_of(args)
    config = _config(args, args.save_steps)
    records = load_records(args.data)
    target = load_model(args.model, cache_dir=args.cache_dir, runtime=runtime)
    result = finetune(target, records, config, args.out, progress=_progress)
    print(json.dumps(_summary(result.manifest, args.out), indent=2))
    return 0


def _warmup(args: argparse.Namespace) -> int:
    from worker.engine.data import load_records
    from worker.engine.models import load_model
    from worker.engine.train import warmup

    runtime = runtime_of(args)
    config = _config(args)
    pool = load_records(args.data)
    target = load_model(args.model, cache_dir=args.cache_dir, runtime=runtime)
    result = warmup(
        target,
        pool,
        config,
        args.out,
        fraction=args.fraction,
        checkpoints=args.checkpoints,
        progress=_progress,
    )
    print(json.dumps(_summary(result.manifest, args.out), indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from worker.engine.data import load_records
    from worker.engine.errors import ConfigError
    from worker.engine.models import load_model
    from worker.engine.train import evaluate, sample_records

    runtime = runtime_of(args)
    records = load_records(args.task)
    if args.sample is not None:
        if args.sample < 1:
            raise ConfigError(f"--sample must be >= 1, got {args.sample}")
        if args.sample < len(records):
            records = sample_records(records, args.sample, args.seed)
    loaded = load_model(args.model, cache_dir=args.cache_dir, runtime=runtime)
    report = evaluate(
        loaded.model,
        loaded.tokenizer,
        records,
        max_length=args.max_length,
        batch_size=args.batch_size,
        accuracy="never" if args.no_accuracy else "auto",
        choice_scoring=args.choice_scoring,
        progress=_progress,
    )
    summary = {
        "model": loaded.identity,
        "sha256": loaded.sha256,
        "task": str(args.task),
        "runtime": runtime.describe(),
    }
    summary.update(report.to_dict(with_examples=False))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**summary, **report.to_dict()}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0
