"""Streams of unit-norm gradient features for a pool and for target sets, through the store."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from worker.engine.data import Example, Record, collate, encode, pad_token_id
from worker.engine.errors import EmptyDatasetError, NoResponseTokensError, OutOfMemoryError
from worker.engine.math.scores import l2_normalize
from worker.engine.progress import EventFn, ProgressFn, emit, report
from worker.engine.scoring.gradients import GradientFeaturizer
from worker.engine.scoring.store import GradientStore

T = TypeVar("T")

Features = tuple[list[int], torch.Tensor, torch.Tensor]
"""``(pool indices, unit-norm features (n, dim), gradient norms (n,))``."""


@dataclass
class ScoreStats:
    """What a scoring run computed and what it reused (tests and summaries read it)."""

    train_computed: int = 0
    train_loaded: int = 0
    target_computed: int = 0
    target_loaded: int = 0


def encode_records(
    path: Path, records: Sequence[Record], tokenizer: Any, max_length: int
) -> list[Example]:
    """Tokenise ``records`` of ``path``; an empty file or a record without response tokens is an
    error naming the file and the record."""
    if not records:
        raise EmptyDatasetError(f"{path}: holds no records")
    out = []
    for rec in records:
        try:
            ex = encode(rec, tokenizer, max_length)
        except NoResponseTokensError as exc:
            raise NoResponseTokensError(f"{path}: {exc.message}") from None
        # The first token predicts nothing: a record whose only loss token is at position 0 has
        # no loss after the next-token shift.
        if all(t == -100 for t in ex.labels[1:]):
            raise NoResponseTokensError(
                f"{path}: record {rec.index} (id {rec.id!r}): no response token left after "
                f"truncation to {max_length} tokens"
            )
        out.append(ex)
    return out


def length_order(examples: Sequence[Example]) -> list[Example]:
    # Batching samples of similar length wastes little compute on padding; the order is a pure
    # function of the data, so an interrupted run resumes over the same batches.
    return sorted(examples, key=lambda e: (len(e.input_ids), e.index))


_OOM: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
    torch.cuda.OutOfMemoryError,
)


def oom_retry(
    size: int, attempt: Callable[[int], T], events: EventFn | None = None
) -> tuple[int, T]:
    """``(size, attempt(size))``, halving ``size`` and trying again each time the attempt runs
    out of device memory (an event each time); at size 1 an ``OutOfMemoryError``. ``attempt``
    must leave nothing half-done when it raises (callers restart what it was building)."""
    while True:
        try:
            return size, attempt(size)
        except _OOM:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if size == 1:
                raise OutOfMemoryError(
                    "a batch of one sample does not fit in the device's memory; lower "
                    "max_length or use a larger device"
                ) from None
            smaller = max(1, size // 2)
            emit(events, "batch halved: out of memory", {"from": size, "to": smaller})
            size = smaller


def fitted_batches(
    examples: Sequence[Example],
    batch_size: int,
    pad_id: int,
    compute: Callable[[dict[str, torch.Tensor]], T],
    events: EventFn | None = None,
) -> Iterator[tuple[list[Example], T]]:
    """``compute`` over ``examples`` in length order, ``batch_size`` at a time; a batch that runs
    out of device memory is halved and retried (:func:`oom_retry`), and later batches keep the
    smaller size (they are no shorter). Scores do not depend on the batch size."""
    ordered = length_order(examples)
    size, start = batch_size, 0
    while start < len(ordered):

        def attempt(k: int, at: int = start) -> T:
            return compute(collate(ordered[at : at + k], pad_id))

        size, result = oom_retry(size, attempt, events)
        chunk = ordered[start : start + size]
        yield chunk, result
        start += len(chunk)


def featurize(
    featurizer: GradientFeaturizer,
    examples: Sequence[Example],
    batch_size: int,
    pad_id: int,
    events: EventFn | None = None,
) -> Iterator[Features]:
    """Unit-norm features of ``examples`` batch by batch, in length order.

    Features are rounded to fp16 (the store's precision) whether or not a store is used, so a
    score does not depend on whether its gradient was computed now or loaded from a shard.
    """
    for chunk, feats in fitted_batches(examples, batch_size, pad_id, featurizer, events):
        unit, norms = l2_normalize(feats.cpu())
        yield [e.index for e in chunk], unit.half().float(), norms


def target_features(
    featurizer: GradientFeaturizer,
    tokenizer: Any,
    path: Path,
    records: Sequence[Record],
    sha: str,
    *,
    max_length: int,
    batch_size: int,
    store: GradientStore | None,
    stats: ScoreStats,
    events: EventFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(unit features (m, dim), norms (m,))`` of a target file, from the store when it has them."""
    if store is not None and (hit := store.target(sha)) is not None:
        stats.target_loaded += int(hit[0].shape[0])
        return hit[0].float(), hit[1]
    examples = encode_records(path, records, tokenizer, max_length)
    parts = list(featurize(featurizer, examples, batch_size, pad_token_id(tokenizer), events))
    unit = torch.cat([p[1] for p in parts])
    norms = torch.cat([p[2] for p in parts])
    stats.target_computed += len(examples)
    if store is not None:
        store.put_target(sha, unit, norms)
    return unit, norms


def train_features(
    featurizer: GradientFeaturizer,
    examples: Sequence[Example],
    *,
    pad_id: int,
    batch_size: int,
    shard_size: int,
    store: GradientStore | None,
    stats: ScoreStats,
    progress: ProgressFn | None = None,
    events: EventFn | None = None,
) -> Iterator[Features]:
    """Features of every example: stored shards first, then the rest computed batch by batch.

    Computed batches are buffered and written as a shard once ``shard_size`` samples are ready
    (and at the end), so an interrupted run loses at most one shard of work.
    """
    wanted = {e.index for e in examples}
    total, done = len(examples), 0
    have: set[int] = set()
    if store is not None:
        for idx, feats, norms in store.iter_shards():
            keep = [k for k, i in enumerate(idx) if i in wanted and i not in have]
            if not keep:
                continue
            sel = torch.tensor(keep, device=feats.device)
            ids = [idx[k] for k in keep]
            have.update(ids)
            stats.train_loaded += len(ids)
            done += len(ids)
            report(progress, "scoring", done, total)
            yield ids, feats[sel].float(), norms[sel]
    todo = [e for e in examples if e.index not in have]
    buf: list[Features] = []
    for ids, unit, norms in featurize(featurizer, todo, batch_size, pad_id, events):
        stats.train_computed += len(ids)
        done += len(ids)
        report(progress, "scoring", done, total)
        if store is not None:
            buf.append((ids, unit, norms))
            if sum(len(b[0]) for b in buf) >= shard_size:
                _flush(store, buf)
        yield ids, unit, norms
    if store is not None and buf:
        _flush(store, buf)


def _flush(store: GradientStore, buf: list[Features]) -> None:
    store.add_shard(
        [i for b in buf for i in b[0]],
        torch.cat([b[1] for b in buf]),
        torch.cat([b[2] for b in buf]),
    )
    buf.clear()
