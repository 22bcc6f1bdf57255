"""The engine's facade: what the CLI and the Celery tasks call.

Each function takes file paths and configs and does the whole step (load the model, read the data,
run the stage), so callers need no knowledge of the engine's insides. ``iter_scores`` yields batch
by batch: the caller persists each batch and may stop between them (a later run with the same
``store_dir`` resumes from the stored gradients).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.engine.data import encode, load_records
from worker.engine.errors import NoResponseTokensError
from worker.engine.progress import ProgressFn, StopFn, check_stop, report
from worker.engine.scoring import (
    RankedRecord,
    ScoreBatch,
    ScoreConfig,
    ScoreStats,
    SelectionConfig,
    score_stream,
)
from worker.engine.scoring import rank as _rank

if TYPE_CHECKING:
    from worker.engine.models import LoadedModel
    from worker.engine.proxy import ProxyConfig

__all__ = [
    "RankedRecord",
    "ScoreBatch",
    "ScoreConfig",
    "ScoreStats",
    "SelectionConfig",
    "SelectionResult",
    "build_proxy_from_files",
    "iter_scores",
    "rank",
    "run_selection",
    "token_counts",
]


def _load(model_ref: str, progress: ProgressFn | None) -> LoadedModel:
    from worker.engine.models import load_model

    report(progress, "loading", 0, 1)
    target = load_model(model_ref)
    report(progress, "loading", 1, 1)
    return target


def build_proxy_from_files(
    model_ref: str,
    data: Path,
    out_dir: Path,
    config: ProxyConfig,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, Any]:
    """Build a proxy of ``model_ref`` from the records of ``data``, save it to ``out_dir`` and
    return its manifest."""
    from worker.engine.proxy import build_proxy, save_proxy

    target = _load(model_ref, progress)
    records = load_records(data)
    proxy = build_proxy(target, records, config, progress=progress, should_stop=should_stop)
    save_proxy(proxy, Path(out_dir))
    return dict(proxy.manifest)


def _scoring_model(
    target: LoadedModel,
    proxy: Path | ProxyConfig | None,
    train: Path,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> tuple[Any, Any, str, dict[str, Any] | None]:
    """The model to score with, its tokenizer, its store key, and the proxy's manifest.

    ``proxy``: a saved proxy directory, a :class:`ProxyConfig` to build one now from the pool,
    or ``None`` for the full target (no manifest).
    """
    from worker.engine.proxy import ProxyConfig, build_proxy, load_proxy
    from worker.engine.scoring.store import tensor_fingerprint

    if proxy is None:
        return target.model, target.tokenizer, f"target:{target.sha256}", None
    if isinstance(proxy, ProxyConfig):
        records = load_records(train)
        built = build_proxy(target, records, proxy, progress=progress, should_stop=should_stop)
    else:
        built = load_proxy(Path(proxy), target)
    model_hash = f"proxy:{tensor_fingerprint(built.model)}"
    return built.model, built.tokenizer, model_hash, built.manifest


def iter_scores(
    model_ref: str,
    train: Path,
    targets: Sequence[Path],
    *,
    proxy: Path | ProxyConfig | None,
    config: ScoreConfig,
    store_dir: Path | None = None,
    indices: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
    stats: ScoreStats | None = None,
) -> Iterator[ScoreBatch]:
    """Scores of the pool ``train`` (or its ``indices``) against the target-task files.

    ``proxy``: a saved proxy directory, a :class:`ProxyConfig` to build one now from the pool, or
    ``None`` to score with the full target model (the baseline). ``stats`` (optional) is filled
    with how many gradients were computed and how many came from the store.
    """
    target = _load(model_ref, progress)
    model, tokenizer, model_hash, _ = _scoring_model(target, proxy, train, progress, None)
    yield from score_stream(
        model,
        tokenizer,
        model_hash,
        Path(train),
        [Path(t) for t in targets],
        config,
        store_dir=store_dir,
        indices=indices,
        progress=progress,
        stats=stats,
    )


def rank(
    train: Path,
    scores: Mapping[int, float],
    selection: SelectionConfig,
    *,
    token_counts: Mapping[int, int] | None = None,
) -> list[RankedRecord]:
    """The selected records of ``train`` in rank order (see :func:`worker.engine.scoring.rank`)."""
    return _rank(Path(train), scores, selection, token_counts=token_counts)


def token_counts(tokenizer: Any, train: Path, max_length: int) -> dict[int, int]:
    """Tokens per record of ``train`` as scoring sees them (after truncation), for token budgets."""
    out = {}
    for rec in load_records(train):
        try:
            out[rec.index] = len(encode(rec, tokenizer, max_length).input_ids)
        except NoResponseTokensError as exc:
            raise NoResponseTokensError(f"{train}: {exc.message}") from None
    return out


@dataclass(frozen=True)
class SelectionResult:
    """The outcome of :func:`run_selection`: the selection, every score, and a summary."""

    ranked: list[RankedRecord]
    scores: dict[int, float]
    ids: dict[int, str]
    summary: dict[str, Any]


def run_selection(
    model_ref: str,
    train: Path,
    targets: Sequence[Path],
    *,
    proxy: ProxyConfig | None,
    config: ScoreConfig,
    selection: SelectionConfig,
    store_dir: Path | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> SelectionResult:
    """The whole pipeline: load the target, build a proxy from the pool (``proxy=None``: score
    with the full target), score the pool against the targets, select.

    The summary holds the sample counts, seconds per stage, the proxy's size and what the
    gradient store reused.
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    target = _load(model_ref, progress)
    timings["loading"] = time.perf_counter() - t
    proxy_info: dict[str, Any] | None = None
    t = time.perf_counter()
    model, tokenizer, model_hash, manifest = _scoring_model(
        target, proxy, train, progress, should_stop
    )
    if manifest is not None:
        timings["proxy"] = time.perf_counter() - t
        keys = ("method", "sparsity", "target_params", "proxy_params")
        proxy_info = {k: manifest.get(k) for k in keys}
    stats = ScoreStats()
    scores: dict[int, float] = {}
    ids: dict[int, str] = {}
    t = time.perf_counter()
    for batch in score_stream(
        model,
        tokenizer,
        model_hash,
        Path(train),
        [Path(p) for p in targets],
        config,
        store_dir=store_dir,
        progress=progress,
        stats=stats,
    ):
        scores.update(zip(batch.indices, batch.scores, strict=True))
        ids.update(zip(batch.indices, batch.ids, strict=True))
        check_stop(should_stop, "scoring")
    timings["scoring"] = time.perf_counter() - t
    t = time.perf_counter()
    report(progress, "ranking", 0, 1)
    counts = token_counts(tokenizer, train, config.max_length) if selection.token_budget else None
    ranked = rank(train, scores, selection, token_counts=counts)
    report(progress, "ranking", 1, 1)
    timings["ranking"] = time.perf_counter() - t
    summary = {
        "model": target.identity,
        "samples": len(scores),
        "selected": len(ranked),
        "targets": [str(p) for p in targets],
        "proxy": proxy_info,
        "score_config": config.to_dict(),
        "selection": selection.to_dict(),
        "gradients": asdict(stats),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    return SelectionResult(ranked, scores, ids, summary)
