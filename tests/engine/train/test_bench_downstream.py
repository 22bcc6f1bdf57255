"""``scripts/bench_downstream.py --quick`` end to end on a tiny model and the shared data."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "bench_downstream.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_downstream", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_mode_runs_end_to_end(tiny_dir: Path, tmp_path: Path, shared_data: Path) -> None:
    bench = _script()
    md = tmp_path / "benchmarks.md"
    md.write_text("# B\n\n<!-- bench:downstream:start -->\nold\n<!-- bench:downstream:end -->\n")
    results = tmp_path / "res"
    rows = bench.main(
        [
            *("--quick", "--model", str(tiny_dir), "--data-root", str(shared_data)),
            *("--markdown", str(md), "--results", str(results), "--work-dir", str(tmp_path)),
        ]
    )
    s = bench.QUICK
    n_selectors = s.random_seeds + 1 + len(s.rhos) - 1 + s.proxy_seeds + 3
    assert len(rows) == 2 * (n_selectors + 1)  # two tasks; + the no-finetune baseline
    saved = json.loads((results / "downstream.json").read_text())
    assert len(saved) == len(rows)
    for row in saved:
        assert {"selector", "rho", "seed", "task", "nll", "nll_se", "accuracy"} <= set(row)
        assert "selection_seconds" in row and row["nll"] > 0
        assert (row["accuracy"] is None) == (row["task"] == "gsm8k")
    proxies = [r for r in saved if r["selector"] == "iprox"]
    assert all(r["proxy_params"] < r["target_params"] for r in proxies)
    assert all(r["selected"] == 2 for r in saved if r["selector"] != "no-finetune")
    text = md.read_text()
    assert "old" not in text and "| mmlu | iprox | 0.5 |" in text and "2-core CPU" in text
    assert (results / "downstream.png").stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bench-downstream-")]
