"""``scripts/bench_downstream.py --quick`` end to end on a tiny model and the shared data."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

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


def _report() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import downstream_report
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return downstream_report


def _row(selector: str, rho: float | None, seed: int, nlls: list[float]) -> dict[str, object]:
    return {
        "selector": selector, "rho": rho, "seed": seed, "task": "gsm8k",
        "nll": sum(nlls) / len(nlls), "nll_se": 0.1, "accuracy": None,
        "selection_seconds": 1.0, "per_example_nll": nlls,
    }  # fmt: skip


def test_paired_gain_is_over_the_same_examples_and_seed_means(tmp_path: Path) -> None:
    report = _report()
    rows = [
        _row("random", None, 0, [2.0, 3.0, 4.0, 5.0]),
        _row("random", None, 1, [2.2, 3.2, 4.2, 5.2]),  # random's per-example mean: x + 0.1
        _row("iprox", 0.5, 0, [1.9, 2.7, 3.8, 4.6]),  # gains 0.2, 0.4, 0.3, 0.5
    ]
    lines = {x["selector"]: x for x in report.summarise(rows)}
    assert lines["random"]["paired_gain"] is None
    assert lines["iprox"]["paired_gain"] == pytest.approx(0.35)
    diffs = torch.tensor([0.2, 0.4, 0.3, 0.5])
    assert lines["iprox"]["paired_se"] == pytest.approx(float(diffs.std() / 2), rel=1e-6)
    # the script rebuilds the table and plot from saved rows
    saved = tmp_path / "downstream.json"
    saved.write_text(json.dumps(rows))
    md = tmp_path / "benchmarks.md"
    md.write_text("<!-- bench:downstream:start -->\nold\n<!-- bench:downstream:end -->\n")
    report.main([str(saved), "--command", "python x.py", "--markdown", str(md)])
    assert "| gsm8k | iprox | 0.5 | 1 |" in md.read_text() and "+0.3500 ± 0.0645" in md.read_text()
    assert (tmp_path / "downstream.png").stat().st_size > 1000
