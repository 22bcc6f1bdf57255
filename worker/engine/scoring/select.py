"""Selection: rank scored pool records and keep the best under a size or token budget."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.engine.data import Record, iter_records
from worker.engine.errors import ConfigError, DataFormatError
from worker.engine.scoring.config import SelectionConfig


@dataclass(frozen=True)
class RankedRecord:
    """A selected record: ``rank`` 1 is the best; ``fields`` are the record's original fields."""

    rank: int
    index: int
    id: str
    score: float
    fields: Mapping[str, Any]


def order_by_score(scores: Mapping[int, float]) -> list[int]:
    """Indices by descending score; ties broken by ascending index (deterministic)."""
    bad = [i for i, s in scores.items() if math.isnan(s)]
    if bad:
        raise ConfigError(f"scores of records {sorted(bad)[:5]} are NaN")
    return sorted(scores, key=lambda i: (-scores[i], i))


def _chosen(
    order: list[int],
    selection: SelectionConfig,
    token_counts: Mapping[int, int] | None,
    source_of: Callable[[int], str] | None,
) -> list[int]:
    """Walk the ranking and keep what fits the budget (and the quota)."""
    if selection.token_budget is not None:
        if token_counts is None:
            raise ConfigError("a token budget needs the records' token counts")
        size: float = selection.token_budget
    elif selection.top_k is not None:
        size = min(selection.top_k, len(order))
    else:
        size = math.ceil((selection.fraction or 0.0) * len(order))
    cap = None
    if selection.quota is not None:
        cap = max(1.0, math.floor(selection.quota * size))
    used: dict[str, float] = {}
    chosen: list[int] = []
    spent = 0.0
    for i in order:
        cost = (
            float(token_counts[i]) if token_counts is not None and selection.token_budget else 1.0
        )
        if spent + cost > size:
            if selection.token_budget is None:
                break
            continue
        if cap is not None and source_of is not None:
            src = source_of(i)
            if used.get(src, 0.0) + cost > cap:
                continue
            used[src] = used.get(src, 0.0) + cost
        chosen.append(i)
        spent += cost
    return chosen


def rank(
    train: Path,
    scores: Mapping[int, float],
    selection: SelectionConfig,
    *,
    token_counts: Mapping[int, int] | None = None,
) -> list[RankedRecord]:
    """The selected records of ``train`` in rank order.

    ``scores`` maps record index to score (a subset of the file is fine: only scored records
    compete). ``fraction`` keeps ``ceil(fraction * n_scored)``. ``token_budget`` walks the ranking
    and keeps each record whose tokens (``token_counts[index]``, required) still fit, skipping
    those that do not. With a quota, a source (the value of ``quota_field``) may fill at most
    ``floor(quota * size)`` places (at least one), or that share of the token budget; the
    selection may then come out smaller than asked.

    The pool is streamed, never held: the choice needs only the scores (and, with a quota, one
    pass collecting each scored record's source), and one pass keeps the chosen records, so
    memory grows with the selection, not with the pool.
    """
    if not scores:
        raise ConfigError(f"{train}: no scores to rank")
    order = order_by_score(scores)
    source_of: Callable[[int], str] | None = None
    if selection.quota is not None and selection.quota_field is not None:
        field = selection.quota_field
        found: dict[int, str] = {}
        missing: dict[int, str] = {}  # index -> id: an error once the walk reaches it
        for rec in iter_records(train):
            if rec.index in scores:
                if field in rec.fields:
                    found[rec.index] = str(rec.fields[field])
                else:
                    missing[rec.index] = rec.id

        def source_of(i: int) -> str:
            if i in missing:
                raise DataFormatError(
                    f"{train}: record {i} (id {missing[i]!r}) has no field '{field}' for the quota"
                )
            return found[i]

    chosen = _chosen(order, selection, token_counts, source_of)
    wanted = set(chosen)
    kept: dict[int, Record] = {}
    size = 0
    for rec in iter_records(train):
        size += 1
        if rec.index in wanted:
            kept[rec.index] = rec
    out_of_range = [i for i in scores if not 0 <= i < size]
    if out_of_range:
        raise ConfigError(f"{train}: scored indices not in the file: {sorted(out_of_range)[:5]}")
    return [
        RankedRecord(rank=r, index=i, id=kept[i].id, score=scores[i], fields=kept[i].fields)
        for r, i in enumerate(chosen, start=1)
    ]
