"""The engine's facade: what the CLI and the Celery tasks call.

Each function takes file paths and configs and does the whole step (load the model, read the data,
run the stage), so callers need no knowledge of the engine's insides. ``iter_scores`` yields batch
by batch: the caller persists each batch and may stop between them (a later run with the same
``store_dir`` resumes from the stored gradients).

Checkpoints (TracIn proper): given a fine-tuning or warm-up run directory, the pool is scored
with every checkpoint in turn (a proxy is built from each checkpoint when a proxy config is
given) and a sample's score for a target task is ``sum_c mean_lr_c * score_c``, ``mean_lr_c``
being the mean learning rate of the steps that checkpoint ends; the max over target tasks comes
last. With ``adam=True`` the training gradients are preconditioned with each checkpoint's saved
Adam moments (LESS).

Every function takes a resolved :class:`~worker.engine.device.Runtime` (device and model dtype;
default float32 on the CPU) and, optionally, a :class:`ModelCache`: a worker scoring the shards
of one job passes the same cache to each call, so the target is loaded once per process rather
than once per shard.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from worker.engine.data import encode, iter_records, load_records
from worker.engine.device import CPU, Runtime
from worker.engine.errors import ArtifactError, ConfigError, NoResponseTokensError, math_boundary
from worker.engine.progress import EventFn, ProgressFn, StopFn, check_stop, report
from worker.engine.scoring import (
    RankedRecord,
    ScoreBatch,
    ScoreConfig,
    ScoreStats,
    SelectionConfig,
)
from worker.engine.scoring import rank as _rank
from worker.engine.scoring.run import task_score_stream

if TYPE_CHECKING:
    from worker.engine.models import LoadedModel
    from worker.engine.proxy import ProxyConfig

__all__ = [
    "ModelCache",
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


def _weights_signature(path: Path | None) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and mtimes of the weight files at ``path``: changes when they are rewritten."""
    if path is None:
        return ()
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    out = []
    for f in files:
        st = f.stat()
        out.append((f.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class ModelCache:
    """Targets loaded in this process, kept for later calls; at most ``max_models`` (least
    recently used goes first).

    Keyed by the model reference, device and dtype; an entry is used only while the reference
    still resolves to the same identity and the same weight files (name, size, mtime), so a
    model directory rewritten in place is loaded again. Callers must not modify the model
    (the engine's stages copy it before changing weights).
    """

    def __init__(self, max_models: int = 1) -> None:
        if max_models < 1:
            raise ConfigError(f"max_models must be >= 1, got {max_models}")
        self.max_models = max_models
        self._entries: OrderedDict[tuple[str, str, str], tuple[Any, LoadedModel]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(
        self, model_ref: str, runtime: Runtime = CPU, progress: ProgressFn | None = None
    ) -> LoadedModel:
        """The loaded ``model_ref`` on ``runtime``, from the cache when still current
        (``progress`` as :func:`~worker.engine.models.load_model`'s, on a miss)."""
        from worker.engine.models import load_model, resolve_model

        source = resolve_model(model_ref)
        fingerprint = (source.identity, _weights_signature(source.path))
        key = (model_ref, str(runtime.device), runtime.dtype_name)
        hit = self._entries.get(key)
        if hit is not None and hit[0] == fingerprint:
            self._entries.move_to_end(key)
            self.hits += 1
            return hit[1]
        self._entries.pop(key, None)
        while len(self._entries) >= self.max_models:  # free memory before the next load
            self._entries.popitem(last=False)
        loaded = load_model(model_ref, runtime=runtime, progress=progress)
        self._entries[key] = (fingerprint, loaded)
        self.misses += 1
        return loaded

    def peek(self, model_ref: str, runtime: Runtime = CPU) -> LoadedModel | None:
        """The loaded ``model_ref`` if this cache holds a current copy; never loads, and is
        not counted as a hit or a miss."""
        from worker.engine.models import resolve_model

        source = resolve_model(model_ref)
        fingerprint = (source.identity, _weights_signature(source.path))
        hit = self._entries.get((model_ref, str(runtime.device), runtime.dtype_name))
        return hit[1] if hit is not None and hit[0] == fingerprint else None

    def clear(self) -> None:
        self._entries.clear()


def _load(
    model_ref: str,
    progress: ProgressFn | None,
    runtime: Runtime = CPU,
    models: ModelCache | None = None,
) -> LoadedModel:
    from worker.engine.models import LOAD_STEPS, load_model

    report(progress, "loading", 0, LOAD_STEPS)
    if models is not None:
        target = models.get(model_ref, runtime, progress=progress)
    else:
        target = load_model(model_ref, runtime=runtime, progress=progress)
    report(progress, "loading", LOAD_STEPS, LOAD_STEPS)  # a cache hit skips the steps
    return target


def build_proxy_from_files(
    model_ref: str,
    data: Path,
    out_dir: Path,
    config: ProxyConfig,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    runtime: Runtime = CPU,
    models: ModelCache | None = None,
    targets: Sequence[Path] = (),
) -> dict[str, Any]:
    """Build a proxy of ``model_ref`` from the records of ``data`` on ``runtime``, save it to
    ``out_dir`` and return its manifest. The manifest's fidelity report scores against the
    records of the ``targets`` files together (none: a slice of the pool)."""
    from worker.engine.proxy import build_proxy, save_proxy

    target = _load(model_ref, progress, runtime, models)
    records = load_records(data)
    target_records = [r for path in targets for r in load_records(Path(path))] or None
    with math_boundary():
        proxy = build_proxy(
            target,
            records,
            config,
            progress=progress,
            should_stop=should_stop,
            targets=target_records,
        )
    save_proxy(proxy, Path(out_dir))
    return dict(proxy.manifest)


def _scoring_model(
    target: LoadedModel,
    proxy: Path | ProxyConfig | None,
    train: Path,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    targets: Sequence[Path] = (),
) -> tuple[Any, Any, str, dict[str, Any] | None]:
    """The model to score with, its tokenizer, its store key, and the proxy's manifest.

    ``proxy``: a saved proxy directory, a :class:`ProxyConfig` to build one now from the pool
    (its fidelity report against the ``targets`` files), or ``None`` for the full target (no
    manifest).
    """
    from worker.engine.proxy import ProxyConfig, build_proxy, load_proxy
    from worker.engine.scoring.store import tensor_fingerprint

    if proxy is None:
        return target.model, target.tokenizer, f"target:{target.sha256}", None
    if isinstance(proxy, ProxyConfig):
        records = load_records(train)
        target_records = [r for path in targets for r in load_records(Path(path))] or None
        built = build_proxy(
            target,
            records,
            proxy,
            progress=progress,
            should_stop=should_stop,
            targets=target_records,
        )
    else:
        built = load_proxy(Path(proxy), target)
    model_hash = f"proxy:{tensor_fingerprint(built.model)}"
    return built.model, built.tokenizer, model_hash, built.manifest


@dataclass(frozen=True)
class _Scorer:
    """One model to score with, the weight of its scores, and its Adam state (or None)."""

    model: Any
    tokenizer: Any
    model_hash: str
    manifest: dict[str, Any] | None
    weight: float
    adam: Any
    label: str
    build_s: float  # seconds spent loading the checkpoint and building the proxy


def _scorers(
    target: LoadedModel,
    proxy: Path | ProxyConfig | None,
    train: Path,
    checkpoints: Path | None,
    adam: bool,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    targets: Sequence[Path] = (),
) -> Iterator[_Scorer]:
    """The models to score with, one at a time (one model in memory at once): the target or its
    proxy; or, with ``checkpoints``, each checkpoint of that run (or a proxy built from it)."""
    if checkpoints is None:
        if adam:
            raise ConfigError(
                "Adam preconditioning needs checkpoints: the moments are saved with each "
                "checkpoint of a warm-up or fine-tuning run (give its directory)"
            )
        t = time.perf_counter()
        model, tok, key, manifest = _scoring_model(
            target, proxy, train, progress, should_stop, targets
        )
        yield _Scorer(model, tok, key, manifest, 1.0, None, "model", time.perf_counter() - t)
        return
    from worker.engine.proxy import ProxyConfig
    from worker.engine.scoring.precondition import load_adam_state
    from worker.engine.train.checkpoints import list_checkpoints, load_checkpoint, read_manifest

    if proxy is not None and not isinstance(proxy, ProxyConfig):
        raise ConfigError(
            "a saved proxy was built from one set of weights; with checkpoints, give a proxy "
            "config so a proxy is built from each checkpoint, or score with the checkpoints"
        )
    base = read_manifest(Path(checkpoints)).get("base", {})
    if base.get("sha256") != target.sha256:
        raise ArtifactError(
            f"{checkpoints}: the run was fine-tuned from {base.get('ref')!r} "
            f"(weights {str(base.get('sha256'))[:12]}…), not from {target.ref!r}"
        )
    for ckpt in list_checkpoints(Path(checkpoints)):
        t = time.perf_counter()
        state = load_adam_state(ckpt.path) if adam else None  # fail before the costly part
        loaded = load_checkpoint(ckpt, base=target)
        model, tok, key, manifest = _scoring_model(
            loaded, proxy, train, progress, should_stop, targets
        )
        label = f"step {ckpt.step}"
        yield _Scorer(
            model, tok, key, manifest, ckpt.mean_lr, state, label, time.perf_counter() - t
        )
        del loaded, model, state  # before the next checkpoint loads


def _weighted_scores(
    scorers: Iterator[_Scorer],
    train: Path,
    targets: Sequence[Path],
    config: ScoreConfig,
    *,
    store_dir: Path | None,
    indices: Sequence[int] | None,
    progress: ProgressFn | None,
    stats: ScoreStats | None,
    single: bool,
    should_stop: StopFn | None = None,
    seen: list[dict[str, Any]] | None = None,
    events: EventFn | None = None,
) -> Iterator[ScoreBatch]:
    """``sum_c weight_c * score_c`` per target task, then the max over tasks. A ``single``
    scorer streams batch by batch; several are accumulated (one float per sample and task).
    ``seen`` receives a summary of each scorer (not the model: one model in memory at a time)."""
    totals: dict[int, torch.Tensor] = {}
    ids: dict[int, str] = {}
    for scorer in scorers:
        if seen is not None:
            seen.append(
                {
                    "checkpoint": scorer.label,
                    "weight": scorer.weight,
                    "adam": scorer.adam is not None,
                    "build_s": scorer.build_s,
                    "manifest": scorer.manifest,
                    "tokenizer": scorer.tokenizer,
                }
            )
        batches = task_score_stream(
            scorer.model,
            scorer.tokenizer,
            scorer.model_hash,
            Path(train),
            [Path(t) for t in targets],
            config,
            store_dir=store_dir,
            indices=indices,
            progress=progress,
            stats=stats,
            adam=scorer.adam,
            events=events,
        )
        if single:
            for b in batches:
                check_stop(should_stop, "scoring")
                yield ScoreBatch(b.indices, b.ids, b.scores.max(dim=1).values.tolist())
            return
        for b in batches:
            check_stop(should_stop, "scoring")
            ids.update(zip(b.indices, b.ids, strict=True))
            for i, row in zip(b.indices, b.scores, strict=True):
                totals[i] = totals[i] + scorer.weight * row if i in totals else scorer.weight * row
        del batches, scorer
    order = sorted(totals)
    for start in range(0, len(order), config.batch_size):
        chunk = order[start : start + config.batch_size]
        yield ScoreBatch(chunk, [ids[i] for i in chunk], [float(totals[i].max()) for i in chunk])


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
    checkpoints: Path | None = None,
    adam: bool = False,
    runtime: Runtime = CPU,
    models: ModelCache | None = None,
    events: EventFn | None = None,
) -> Iterator[ScoreBatch]:
    """Scores of the pool ``train`` (or its ``indices``) against the target-task files.

    ``proxy``: a saved proxy directory, a :class:`ProxyConfig` to build one now from the pool (from
    each checkpoint with ``checkpoints``), or ``None`` to score with the full target model (the
    baseline). ``checkpoints``: a fine-tuning/warm-up run directory whose checkpoints are summed
    with learning-rate weights; ``adam``: precondition with their Adam moments. ``stats``
    (optional) is filled with how many gradients were computed and how many came from the store;
    ``events`` hears of batches halved to fit the device's memory. ``runtime`` places the model;
    ``models`` keeps it loaded between calls.
    """
    target = _load(model_ref, progress, runtime, models)
    scorers = _scorers(target, proxy, Path(train), checkpoints, adam, progress, None, targets)
    with math_boundary():
        yield from _weighted_scores(
            scorers,
            Path(train),
            targets,
            config,
            store_dir=store_dir,
            indices=indices,
            progress=progress,
            stats=stats,
            single=checkpoints is None,
            events=events,
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
    for rec in iter_records(train):  # streamed: one record in memory at a time
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
    checkpoints: Path | None = None,
    adam: bool = False,
    runtime: Runtime = CPU,
    models: ModelCache | None = None,
    events: EventFn | None = None,
) -> SelectionResult:
    """The whole pipeline: load the target, build a proxy from the pool (``proxy=None``: score
    with the full target), score the pool against the targets, select. ``checkpoints`` and
    ``adam`` as in :func:`iter_scores`.

    The summary holds the sample counts, seconds per stage, the proxy's size and what the
    gradient store reused.
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    target = _load(model_ref, progress, runtime, models)
    timings["loading"] = time.perf_counter() - t
    proxy_info: dict[str, Any] | None = None
    stats = ScoreStats()
    scores: dict[int, float] = {}
    ids: dict[int, str] = {}
    seen: list[dict[str, Any]] = []
    t = time.perf_counter()
    # Proxy builds happen inside the stream (one per checkpoint); their time is split out below.
    with math_boundary():
        for batch in _weighted_scores(
            _scorers(target, proxy, Path(train), checkpoints, adam, progress, should_stop, targets),
            Path(train),
            targets,
            config,
            store_dir=store_dir,
            indices=None,
            progress=progress,
            stats=stats,
            single=checkpoints is None,
            should_stop=should_stop,
            seen=seen,
            events=events,
        ):
            scores.update(zip(batch.indices, batch.scores, strict=True))
            ids.update(zip(batch.indices, batch.ids, strict=True))
    build_s = sum(s["build_s"] for s in seen)
    if seen[0]["manifest"] is not None:
        timings["proxy"] = build_s
        keys = ("method", "sparsity", "target_params", "proxy_params")
        proxy_info = {k: seen[0]["manifest"].get(k) for k in keys}
        from worker.engine.proxy.fidelity import without_record_ids

        proxy_info["fidelity"] = without_record_ids(seen[0]["manifest"].get("fidelity"))
    timings["scoring"] = time.perf_counter() - t - build_s
    tokenizer = seen[0]["tokenizer"]
    t = time.perf_counter()
    report(progress, "ranking", 0, len(scores))  # the stage counts samples ranked
    counts = token_counts(tokenizer, train, config.max_length) if selection.token_budget else None
    ranked = rank(train, scores, selection, token_counts=counts)
    report(progress, "ranking", len(scores), len(scores))
    timings["ranking"] = time.perf_counter() - t
    summary = {
        "model": target.identity,
        "runtime": runtime.describe(),
        "samples": len(scores),
        "selected": len(ranked),
        "targets": [str(p) for p in targets],
        "proxy": proxy_info,
        "score_config": config.to_dict(),
        "selection": selection.to_dict(),
        "checkpoints": [{k: s[k] for k in ("checkpoint", "weight", "adam")} for s in seen],
        "gradients": asdict(stats),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    return SelectionResult(ranked, scores, ids, summary)
