"""Score a pool against target tasks with an already loaded model, batch by batch.

TracIn (one checkpoint): a sample's score for one target task is the mean over the task's samples
of the similarity (cosine, or dot with ``normalize=False``) between its gradient and theirs;
across several target tasks the max (LESS). The mean collapses each task to one direction, so
every pool batch is scored as soon as its gradients exist and is yielded at once.

Influence: ``v^T (G^T G / n + lambda I)^{-1} g`` needs the pool's curvature first, so the pool is
featurized once (into the store when there is one), the system is solved per task, and the scores
come from a second pass over the stored features (from memory without a store).

Several checkpoints (TracIn proper): :func:`task_score_stream` yields each target task's score
separately, so a caller can sum ``lr_c * score_c`` over checkpoints per task and take the max
over tasks only at the end (:func:`worker.engine.pipeline.iter_scores` does this).

With an Adam state (LESS), training gradients are replaced by Adam's update direction under it;
target gradients stay raw.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.engine.data import Example, collate, load_records, pad_token_id
from worker.engine.digest import sha256_path
from worker.engine.errors import ConfigError
from worker.engine.math.scores import CurvatureAccumulator, target_direction
from worker.engine.progress import EventFn, ProgressFn, report
from worker.engine.scoring.config import ScoreConfig
from worker.engine.scoring.exact import ExactScorer, cosine_or_dot, stack_tasks
from worker.engine.scoring.features import (
    Features,
    ScoreStats,
    encode_records,
    fitted_batches,
    length_order,
    oom_retry,
    target_features,
    train_features,
)
from worker.engine.scoring.gradients import (
    GradBlock,
    GradientFeaturizer,
    build_blocks,
    probe_eigen_bases,
    side_energies,
)
from worker.engine.scoring.precondition import AdamState
from worker.engine.scoring.registry import scorer_entry
from worker.engine.scoring.store import GradientStore
from worker.engine.scoring.targets import TARGETS, CachedTask


@dataclass(frozen=True)
class ScoreBatch:
    """Scores of one batch of pool samples (``indices`` into the training file, their ``ids``)."""

    indices: list[int]
    ids: list[str]
    scores: list[float]


@dataclass(frozen=True)
class TaskScoreBatch:
    """Scores of one batch of pool samples against each target task: ``scores (n, tasks)``."""

    indices: list[int]
    ids: list[str]
    scores: torch.Tensor


def _vectors(unit: torch.Tensor, norms: torch.Tensor, normalize: bool) -> torch.Tensor:
    return unit if normalize else unit * norms.unsqueeze(1)


def _pool(
    train: Path, tokenizer: Any, config: ScoreConfig, indices: Sequence[int] | None
) -> tuple[list[Example], dict[int, str]]:
    """The pool's examples to score (``indices`` of ``train``, all when ``None``) and their ids."""
    records = load_records(train)
    if indices is not None:
        bad = [i for i in indices if not 0 <= i < len(records)]
        if bad:
            raise ConfigError(f"{train}: indices out of range 0..{len(records) - 1}: {bad[:5]}")
        records = [records[i] for i in sorted(set(indices))]
    ids = {r.index: r.id for r in records}
    return encode_records(train, records, tokenizer, config.max_length), ids


def projection_blocks(
    model: nn.Module, tokenizer: Any, train: Path, config: ScoreConfig
) -> list[GradBlock]:
    """The projection of ``config`` for ``model``. The probes of an eigen projection (and of an
    energy allocation) are a seeded slice of the whole pool file, so every shard of a job
    projects the same way."""
    if config.projection == "gaussian" and config.projection_allocation == "uniform":
        return build_blocks(model, config.layers, config.proj_dim, config.seed)
    records = load_records(train)
    picked = random.Random(config.seed).sample(
        range(len(records)), min(config.projection_samples, len(records))
    )
    probes = encode_records(
        train, [records[i] for i in sorted(picked)], tokenizer, config.max_length
    )
    pad = pad_token_id(tokenizer)
    ordered = length_order(probes)
    batches = [
        collate(ordered[i : i + config.batch_size], pad)
        for i in range(0, len(ordered), config.batch_size)
    ]
    eigen = config.projection == "eigen"
    return build_blocks(
        model,
        config.layers,
        config.proj_dim,
        config.seed,
        bases=probe_eigen_bases(model, config.layers, batches) if eigen else None,
        allocation=config.projection_allocation,
        energies=None if eigen else side_energies(model, config.layers, batches),
    )


def _task_vector(
    scorer: ExactScorer,
    task: Sequence[Example],
    config: ScoreConfig,
    pad: int,
    events: EventFn | None,
) -> list[torch.Tensor]:
    """One task's exact vector. A batch that runs out of memory restarts the task at half the
    batch size (a half-accumulated vector cannot be resumed; target sets are small)."""

    def attempt(size: int) -> list[torch.Tensor]:
        sums = scorer.task_sums()
        ordered = length_order(task)
        for start in range(0, len(ordered), size):
            batch = collate(ordered[start : start + size], pad)
            scorer.accumulate(sums, batch, len(task), config.normalize)
        return sums

    return oom_retry(config.batch_size, attempt, events)[1]


def _exact_stream(
    model: nn.Module,
    model_hash: str,
    tokenizer: Any,
    examples: Sequence[Example],
    ids: dict[int, str],
    targets: Sequence[Path],
    config: ScoreConfig,
    progress: ProgressFn | None,
    stats: ScoreStats,
    adam: AdamState | None,
    events: EventFn | None,
) -> Iterator[TaskScoreBatch]:
    """Exact scores (see :mod:`worker.engine.scoring.exact`): the target tasks' vectors first,
    then the pool batch by batch."""
    pad = pad_token_id(tokenizer)
    scorer = ExactScorer(model, config.layers)
    per_task = []
    for path in targets:
        key = ("exact", model_hash, sha256_path(path), config.max_length, config.normalize)
        hit = TARGETS.get(model, (*key, config.layers))
        if hit is not None:
            per_task.append(hit.value)
            stats.target_loaded += hit.samples
            continue
        task = encode_records(path, load_records(path), tokenizer, config.max_length)
        per_task.append(_task_vector(scorer, task, config, pad, events))
        TARGETS.put(model, (*key, config.layers), CachedTask(per_task[-1], len(task)))
        stats.target_computed += len(task)
    vectors = stack_tasks(per_task)
    train_scorer = scorer if adam is None else ExactScorer(model, config.layers, adam=adam)
    done = 0

    def compute(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inner, sq = train_scorer(batch, vectors)
        return cosine_or_dot(inner, sq, config.normalize).cpu()

    for chunk, scores in fitted_batches(examples, config.batch_size, pad, compute, events):
        stats.train_computed += len(chunk)
        done += len(chunk)
        report(progress, "scoring", done, len(examples))
        idx = [e.index for e in chunk]
        yield TaskScoreBatch(idx, [ids[i] for i in idx], scores)


def score_stream(
    model: nn.Module,
    tokenizer: Any,
    model_hash: str,
    train: Path,
    targets: Sequence[Path],
    config: ScoreConfig,
    *,
    store_dir: Path | None = None,
    indices: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
    stats: ScoreStats | None = None,
    adam: AdamState | None = None,
    events: EventFn | None = None,
) -> Iterator[ScoreBatch]:
    """Yield :class:`ScoreBatch` es covering ``indices`` of ``train`` (all when ``None``), each
    sample's score being its max over the target tasks.

    Target-task gradients are computed (or loaded from the store) before the first batch.
    ``model_hash`` identifies the model's weights in the store key.
    """
    for b in task_score_stream(
        model,
        tokenizer,
        model_hash,
        train,
        targets,
        config,
        store_dir=store_dir,
        indices=indices,
        progress=progress,
        stats=stats,
        adam=adam,
        events=events,
    ):
        yield ScoreBatch(b.indices, b.ids, b.scores.max(dim=1).values.tolist())


def task_score_stream(
    model: nn.Module,
    tokenizer: Any,
    model_hash: str,
    train: Path,
    targets: Sequence[Path],
    config: ScoreConfig,
    *,
    store_dir: Path | None = None,
    indices: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
    stats: ScoreStats | None = None,
    adam: AdamState | None = None,
    events: EventFn | None = None,
) -> Iterator[TaskScoreBatch]:
    """Like :func:`score_stream`, with one score per target task (in ``targets`` order).
    ``events`` hears of batches halved to fit the device's memory."""
    stats = stats if stats is not None else ScoreStats()
    if not targets:
        raise ConfigError("give at least one target-task file")
    if config.features == "exact":
        if store_dir is not None:
            raise ConfigError(
                "store: the gradient store keeps projected features; score with projected "
                "features to use it (exact scores need no store: they are recomputed as fast)"
            )
        examples, ids = _pool(train, tokenizer, config, indices)
        yield from _exact_stream(
            model,
            model_hash,
            tokenizer,
            examples,
            ids,
            targets,
            config,
            progress,
            stats,
            adam,
            events,
        )
        return
    examples, ids = _pool(train, tokenizer, config, indices)
    featurizer = GradientFeaturizer(
        model,
        config.layers,
        config.proj_dim,
        config.seed,
        blocks=projection_blocks(model, tokenizer, train, config),
    )
    train_featurizer = featurizer
    if adam is not None:
        train_featurizer = GradientFeaturizer(
            model, config.layers, config.proj_dim, config.seed, adam=adam, blocks=featurizer.blocks
        )
    # The pool file is hashed once, and only when something keys on it (it may be large).
    probed = config.projection == "eigen" or config.projection_allocation == "energy"
    pool_sha = sha256_path(train) if store_dir is not None or probed else ""
    store = None
    if store_dir is not None:
        key: dict[str, Any] = {
            "model": model_hash,
            "dataset": pool_sha,
            "seed": config.seed,
            "proj_dim": config.proj_dim,
            "max_length": config.max_length,
            "layers": list(config.layers),
        }
        if config.projection != "gaussian":
            key["projection"] = config.projection
            key["projection_samples"] = config.projection_samples
        if config.projection_allocation != "uniform":
            key["projection_allocation"] = config.projection_allocation
            key["projection_samples"] = config.projection_samples
        if adam is not None:
            key["adam"] = adam.fingerprint
        store = GradientStore(store_dir, key, featurizer.dim)

    directions = []
    projection: tuple[Any, ...] = (config.proj_dim, config.seed, config.projection)
    if probed:  # the basis or the block sizes depend on the pool's probes
        projection += (config.projection_samples, pool_sha, config.projection_allocation)
    for path in targets:
        sha = sha256_path(path)
        task_key = ("projected", model_hash, sha, config.max_length, config.normalize)
        hit = TARGETS.get(model, (*task_key, config.layers, projection))
        if hit is not None:
            directions.append(hit.value[0])
            stats.target_loaded += hit.samples
            continue
        unit, norms = target_features(
            featurizer,
            tokenizer,
            path,
            load_records(path),
            sha,
            max_length=config.max_length,
            batch_size=config.batch_size,
            store=store,
            stats=stats,
            events=events,
        )
        directions.append(target_direction(_vectors(unit, norms, config.normalize)))
        task = CachedTask([directions[-1]], int(unit.shape[0]))
        TARGETS.put(model, (*task_key, config.layers, projection), task)

    def stream(s: ScoreStats, prog: ProgressFn | None) -> Iterator[Features]:
        return train_features(
            train_featurizer,
            examples,
            pad_id=pad_token_id(tokenizer),
            batch_size=config.batch_size,
            shard_size=config.shard_size,
            store=store,
            stats=s,
            progress=prog,
            events=events,
        )

    entry = scorer_entry(config.scorer)
    curvature = None
    if entry.whole_pool:  # its direction needs the pool's curvature: a first pass measures it
        acc = CurvatureAccumulator(featurizer.dim)
        kept: list[Features] = []
        for ids_, unit, norms in stream(stats, progress):
            acc.add(_vectors(unit, norms, config.normalize))
            if store is None:
                kept.append((ids_, unit.half(), norms))
        curvature = acc.matrix()
        batches: Any = iter(kept) if store is None else stream(ScoreStats(), None)
    else:
        batches = stream(stats, progress)
    directions = [entry.direction(v, curvature, config.damping) for v in directions]

    for idx, unit, norms in batches:
        x = _vectors(unit.float(), norms, config.normalize)
        scores = torch.stack([x @ v for v in directions], dim=1)
        yield TaskScoreBatch(idx, [ids[i] for i in idx], scores)
