"""``iprox score`` (gradient scores of a pool against target tasks) and ``iprox select`` (the whole
pipeline: build a proxy, score, select).

Progress goes to stderr (tqdm bars); a JSON summary goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from worker.commands.runtime import add_runtime_args, runtime_of
from worker.engine.params import add_flag, choices_of, default_of, help_of
from worker.engine.proxy.config import ProxyConfig
from worker.engine.scoring.config import ScoreConfig, SelectionConfig

_METHODS = (*(choices_of(ProxyConfig, "method") or ()), "none")


def _add_scoring(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="preset name, local HF directory, .gguf file or hub id org/name[@revision]",
    )
    add_runtime_args(p)
    p.add_argument("--train", type=Path, required=True, help="the pool to score (any format)")
    p.add_argument(
        "--target",
        type=Path,
        required=True,
        action="append",
        help="target-task file (JSONL/JSON, MMLU CSV or folder, LESS JSON); repeat for several "
        "tasks (a sample's score is its max over tasks)",
    )
    # Flags, defaults and help come from the ScoreConfig fields (features: None = the scorer's).
    add_flag(p, ScoreConfig, "scorer")
    add_flag(p, ScoreConfig, "features", default=None)
    for name in (
        "proj_dim",
        "projection",
        "projection_samples",
        "projection_allocation",
        "batch_size",
        "max_length",
        "seed",
        "damping",
    ):
        add_flag(p, ScoreConfig, name)
    p.add_argument(
        "--dot", action="store_true", help="score by dot product instead of cosine (no normalising)"
    )
    p.add_argument(
        "--store",
        type=Path,
        default=None,
        help="gradient store directory (reuse and resume; projected features only)",
    )
    p.add_argument(
        "--checkpoints",
        type=Path,
        default=None,
        help="a warm-up or fine-tuning run directory of --model (iprox warmup/finetune): score "
        "with each of its checkpoints and sum the scores weighted by their mean learning rate "
        "(TracIn); with a proxy, one proxy is built per checkpoint",
    )
    p.add_argument(
        "--adam",
        action="store_true",
        help="precondition training gradients with each checkpoint's saved Adam moments (LESS; "
        "needs --checkpoints of a run saved with its optimizer state)",
    )


def register(subparsers: Any) -> None:
    score = subparsers.add_parser(
        "score",
        help="score a training pool against target tasks by their gradients (exact TracIn by "
        "default)",
        description="Write OUT: one JSON line {index, id, score} per pool sample.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_scoring(score)
    score.add_argument(
        "--proxy", type=Path, default=None, help="saved proxy directory (default: full model)"
    )
    score.add_argument("--out", type=Path, required=True, help="scores file to write (JSONL)")
    score.set_defaults(func=_score)

    select = subparsers.add_parser(
        "select",
        help="build a proxy, score the pool and write the selected records",
        description="Write OUT (the selected records in rank order, original fields plus rank "
        "and score) and the full scores file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_scoring(select)
    select.add_argument(
        "--out",
        type=Path,
        required=True,
        help="selected records: Parquet for a .parquet name, a JSON list for .json, else JSONL",
    )
    select.add_argument(
        "--scores-out", type=Path, default=None, help="full scores file (default: OUT.scores.jsonl)"
    )
    size = select.add_mutually_exclusive_group(required=True)
    for name in ("fraction", "top_k", "token_budget"):
        add_flag(size, SelectionConfig, name)
    add_flag(select, SelectionConfig, "quota_field")
    add_flag(select, SelectionConfig, "quota")
    select.add_argument(
        "--method",
        choices=_METHODS,
        default=default_of(ProxyConfig, "method"),
        help=f"proxy method: {help_of(ProxyConfig, 'method')}; none: the full target model",
    )
    add_flag(select, ProxyConfig, "sparsity")
    add_flag(select, ProxyConfig, "align_steps")
    add_flag(select, ProxyConfig, "probe_samples")
    add_flag(select, ProxyConfig, "fidelity_samples", default=None)
    select.set_defaults(func=_select)


class _Bars:
    """One tqdm bar per stage on stderr."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def __call__(
        self, stage: str, done: int, total: int, metrics: Mapping[str, float] | None = None
    ) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, leave=True)
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _config(args: argparse.Namespace) -> ScoreConfig:
    return ScoreConfig(
        scorer=args.scorer,
        features=args.features,
        proj_dim=args.proj_dim,
        projection=args.projection,
        projection_samples=args.projection_samples,
        projection_allocation=args.projection_allocation,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        damping=args.damping,
        normalize=not args.dot,
    )


def _score(args: argparse.Namespace) -> int:
    import time

    from worker.engine.pipeline import ScoreStats, iter_scores
    from worker.engine.scoring.output import write_scores

    config = _config(args)
    runtime = runtime_of(args)
    bars, stats = _Bars(), ScoreStats()
    scores: dict[int, float] = {}
    ids: dict[int, str] = {}
    start = time.perf_counter()
    try:
        for batch in iter_scores(
            args.model,
            args.train,
            args.target,
            proxy=args.proxy,
            config=config,
            store_dir=args.store,
            progress=bars,
            stats=stats,
            checkpoints=args.checkpoints,
            adam=args.adam,
            runtime=runtime,
        ):
            scores.update(zip(batch.indices, batch.scores, strict=True))
            ids.update(zip(batch.indices, batch.ids, strict=True))
    finally:
        bars.close()
    write_scores(args.out, scores, ids)
    summary = {
        "samples": len(scores),
        "scores": str(args.out),
        "proxy": str(args.proxy) if args.proxy else None,
        "checkpoints": str(args.checkpoints) if args.checkpoints else None,
        "adam": args.adam,
        "gradients": vars(stats),
        "runtime": runtime.describe(),
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(summary, indent=2))
    return 0


def _select(args: argparse.Namespace) -> int:

    from worker.engine.pipeline import SelectionConfig, run_selection
    from worker.engine.proxy import ProxyConfig
    from worker.engine.scoring.output import format_of, write_scores, write_selection

    runtime = runtime_of(args)
    selection = SelectionConfig(
        top_k=args.top_k,
        fraction=args.fraction,
        token_budget=args.token_budget,
        quota_field=args.quota_field,
        quota=args.quota,
    )
    proxy = None
    if args.method != "none":
        proxy = ProxyConfig(
            method=args.method,
            sparsity=args.sparsity,
            max_length=args.max_length,
            align_steps=args.align_steps,
            probe_samples=args.probe_samples,
        )
        if args.fidelity_samples is not None:
            proxy = replace(proxy, fidelity_samples=args.fidelity_samples)
    bars = _Bars()
    try:
        result = run_selection(
            args.model,
            args.train,
            args.target,
            proxy=proxy,
            config=_config(args),
            selection=selection,
            store_dir=args.store,
            progress=bars,
            checkpoints=args.checkpoints,
            adam=args.adam,
            runtime=runtime,
        )
    finally:
        bars.close()
    scores_out = args.scores_out or args.out.with_name(args.out.stem + ".scores.jsonl")
    write_selection(args.out, result.ranked, format_of(args.out))
    write_scores(scores_out, result.scores, result.ids)
    summary = dict(result.summary, selected_file=str(args.out), scores_file=str(scores_out))
    print(json.dumps(summary, indent=2))
    return 0
