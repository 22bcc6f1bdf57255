"""Ranking and writing a subset stream the pool: with a pool generated on the fly at two sizes,
the peak memory of rank + write grows by a small fraction of the pool's growth (an in-memory
pool would grow by more than the file itself)."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

from worker.engine.scoring.config import SelectionConfig
from worker.engine.scoring.output import write_selection
from worker.engine.scoring.select import rank

TEXT = 4000  # characters per record


def _pool(path: Path, n: int) -> dict[int, float]:
    """Write ``n`` records one at a time (never held); return a score per record."""
    rnd = random.Random(n)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            body = "".join(rnd.choice("abcdefgh ") for _ in range(64)) * (TEXT // 64)
            fh.write(json.dumps({"id": f"r{i}", "prompt": f"q{i}", "completion": body}) + "\n")
    return {i: rnd.random() for i in range(n)}


def _peak(tmp: Path, n: int) -> tuple[int, int]:
    pool = tmp / f"pool-{n}.jsonl"
    scores = _pool(pool, n)
    tracemalloc.start()
    try:
        ranked = rank(pool, scores, SelectionConfig(top_k=20))
        write_selection(tmp / f"subset-{n}.parquet", ranked, "parquet")
        write_selection(tmp / f"subset-{n}.jsonl", ranked, "jsonl")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.rank for r in ranked] == list(range(1, 21))
    best = sorted(scores, key=lambda i: (-scores[i], i))[:20]
    assert [r.index for r in ranked] == best
    return peak, pool.stat().st_size


def test_peak_memory_is_flat_in_the_pool_size(tmp_path: Path) -> None:
    _peak(tmp_path, 50)  # one-off costs (pyarrow's first writer) out of the measured runs
    small_peak, small_bytes = _peak(tmp_path, 1500)
    large_peak, large_bytes = _peak(tmp_path, 12000)
    grown = large_bytes - small_bytes  # about 36 MB more pool
    assert large_peak - small_peak < 0.1 * grown, (small_peak, large_peak, grown)
