"""What a worker saves per shard by keeping the job's target loaded (``IPROX_MODEL_CACHE_SIZE``).

Without the cache every shard task calls ``load_model`` (read the safetensors, build the model,
hash check from the memo); with it, a shard after the first pays ``ModelCache.get`` on a hit
(resolve the reference and stat the weight files). Both are timed ``--repeats`` times after one
untimed load (which also fills the OS page cache and, for a GGUF preset, the conversion cache),
so the figures are the warm steady state a worker sees from its second shard on.

    python scripts/bench_model_cache.py --models tiny,smollm2-135m-instruct --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.engine.device import resolve_runtime  # noqa: E402
from worker.engine.models import load_model  # noqa: E402
from worker.engine.pipeline import ModelCache  # noqa: E402


def _tiny(folder: Path) -> str:
    from tests.tiny import save_tiny_model

    return str(save_tiny_model(folder / "tiny-llama", "llama"))


def measure(ref: str, repeats: int, device: str, dtype: str) -> dict[str, Any]:
    runtime = resolve_runtime(device, dtype)
    load_model(ref, runtime=runtime)  # untimed: page cache, GGUF conversion
    loads = []
    for _ in range(repeats):
        start = time.perf_counter()
        load_model(ref, runtime=runtime)
        loads.append(time.perf_counter() - start)
    cache = ModelCache()
    cache.get(ref, runtime)
    hits = []
    for _ in range(repeats):
        start = time.perf_counter()
        cache.get(ref, runtime)
        hits.append(time.perf_counter() - start)
    assert cache.hits == repeats
    load_s, hit_s = statistics.median(loads), statistics.median(hits)
    return {
        "model": ref,
        "runtime": runtime.describe(),
        "repeats": repeats,
        "load_s_median": round(load_s, 4),
        "load_s_min_max": [round(min(loads), 4), round(max(loads), 4)],
        "cache_hit_s_median": round(hit_s, 6),
        "saved_per_shard_s": round(load_s - hit_s, 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="tiny", help="comma-separated refs; 'tiny' = a tiny Llama")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ref in (m.strip() for m in args.models.split(",") if m.strip()):
            real = _tiny(Path(tmp)) if ref == "tiny" else ref
            row = measure(real, args.repeats, args.device, args.dtype)
            row["model"] = ref
            rows.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
