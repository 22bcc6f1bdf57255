"""Selection: rank scored pool records and keep the best under a size or token budget."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.engine.data import Record, load_records
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


def _source(rec: Record, field: str, train: Path) -> str:
    if field not in rec.fields:
        raise DataFormatError(
            f"{train}: record {rec.index} (id {rec.id!r}) has no field '{field}' for the quota"
        )
    return str(rec.fields[field])


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
    """
    if not scores:
        raise ConfigError(f"{train}: no scores to rank")
    records = load_records(train)
    out_of_range = [i for i in scores if not 0 <= i < len(records)]
    if out_of_range:
        raise ConfigError(f"{train}: scored indices not in the file: {sorted(out_of_range)[:5]}")
    order = order_by_score(scores)
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
        if cap is not None and selection.quota_field is not None:
            src = _source(records[i], selection.quota_field, train)
            if used.get(src, 0.0) + cost > cap:
                continue
            used[src] = used.get(src, 0.0) + cost
        chosen.append(i)
        spent += cost
    return [
        RankedRecord(rank=r, index=i, id=records[i].id, score=scores[i], fields=records[i].fields)
        for r, i in enumerate(chosen, start=1)
    ]
