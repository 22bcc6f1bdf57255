"""``ModelCache``: one load per (model, device, dtype) while the weights on disk stay the same."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.tiny import save_tiny_model
from worker.engine.device import CPU, Runtime
from worker.engine.errors import ConfigError
from worker.engine.pipeline import ModelCache

BF16 = Runtime(torch.device("cpu"), torch.bfloat16)


def test_hits_share_the_model_and_dtypes_are_separate(tmp_path: Path) -> None:
    ref = str(save_tiny_model(tmp_path / "m"))
    cache = ModelCache(max_models=2)
    first = cache.get(ref)
    assert cache.get(ref) is first and (cache.misses, cache.hits) == (1, 1)
    bf = cache.get(ref, BF16)
    assert bf is not first and next(bf.model.parameters()).dtype == torch.bfloat16
    assert cache.get(ref, CPU) is first and cache.misses == 2


def test_least_recently_used_goes_first(tmp_path: Path) -> None:
    a, b = (str(save_tiny_model(tmp_path / n, seed=i)) for i, n in enumerate("ab"))
    cache = ModelCache(max_models=1)
    first = cache.get(a)
    cache.get(b)
    assert cache.get(a) is not first and cache.misses == 3


def test_rewritten_weights_are_loaded_again(tmp_path: Path) -> None:
    ref = str(save_tiny_model(tmp_path / "m", seed=0))
    cache = ModelCache()
    old = cache.get(ref)
    save_tiny_model(tmp_path / "m", seed=1)  # same folder, new weights (e.g. a new fine-tune)
    weights = tmp_path / "m" / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse clocks
    new = cache.get(ref)
    assert new is not old and new.sha256 != old.sha256


def test_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_models"):
        ModelCache(max_models=0)


def test_the_cache_benchmark_runs_on_the_tiny_model(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util
    import json
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_model_cache.py"
    spec = importlib.util.spec_from_file_location("bench_model_cache", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert module.main(["--models", "tiny", "--repeats", "2", "--threads", "1"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["model"] == "tiny" and row["repeats"] == 2
    assert 0 < row["cache_hit_s_median"] < row["load_s_median"]
