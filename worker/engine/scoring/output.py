"""Writing scores and selections as JSONL (one object per line, UTF-8)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from worker.engine.errors import DataFormatError
from worker.engine.scoring.select import RankedRecord

RESERVED = ("rank", "score")


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)


def write_scores(path: Path, scores: Mapping[int, float], ids: Mapping[int, str]) -> None:
    """``{"index", "id", "score"}`` for every scored sample, by index."""
    _write_lines(
        path,
        [json.dumps({"index": i, "id": ids[i], "score": scores[i]}) + "\n" for i in sorted(scores)],
    )


def write_selection(path: Path, ranked: Sequence[RankedRecord]) -> None:
    """The selected records in rank order: original fields unchanged, plus ``rank`` and ``score``.

    A record that already has a ``rank`` or ``score`` field is an error (it would be overwritten).
    """
    lines = []
    for r in ranked:
        clash = [k for k in RESERVED if k in r.fields]
        if clash:
            raise DataFormatError(
                f"record {r.index} (id {r.id!r}) already has field(s) {', '.join(clash)}; "
                "the selection output adds 'rank' and 'score'"
            )
        lines.append(json.dumps({**r.fields, "rank": r.rank, "score": r.score}) + "\n")
    _write_lines(path, lines)
