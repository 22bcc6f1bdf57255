"""``scripts/bench_gpu.py --quick``: the GPU benchmark's CPU twin on a tiny config, end to end."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_gpu.py"
# What the GPU machine has installed (the project aside).
ALLOWED = {"torch", "transformers", "safetensors", "peft", "accelerate", "numpy", "tqdm", "worker"}


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_mode_measures_every_row_and_writes_nothing_into_docs(tmp_path: Path) -> None:
    docs = sorted((p, p.stat().st_mtime_ns) for p in (ROOT / "docs").rglob("*") if p.is_file())
    bench = _script()
    out = tmp_path / "gpu.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    assert (
        sorted((p, p.stat().st_mtime_ns) for p in (ROOT / "docs").rglob("*") if p.is_file()) == docs
    )
    data = json.loads(out.read_text())
    assert data["machine"]["device"] == "cpu" and data["machine"]["dtype"] == "bfloat16"
    (entry,) = data["models"]
    rows = entry["rows"]
    assert set(rows) == {
        "bare_fwd_bwd", "score_exact", "score_projected", "proxy_build", "proxy_score_exact"
    }  # fmt: skip
    for name in ("bare_fwd_bwd", "score_exact", "score_projected", "proxy_score_exact"):
        assert rows[name]["samples_per_s"] > 0 and rows[name]["samples"] == 8, rows[name]
    build = rows["proxy_build"]
    assert build["layers"] == 14 and build["align_steps"] == 2 and build["probe_columns"] == 64
    assert all(build[f"{k}_s"] > 0 for k in ("probes", "factorise", "align"))
    # The docs section renders from the JSON and replaces only its own block.
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\nbefore\n\n{bench.BEGIN}\nSTALE ROWS\n{bench.END}\n\nafter\n")
    bench.write_section(bench.markdown(data), doc)
    text = doc.read_text()
    assert "STALE ROWS" not in text and "before" in text and "after" in text
    assert "| tiny-llama | 0.00B |" in text and text.count(bench.BEGIN) == 1


def test_a_run_that_fails_a_row_keeps_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _script()

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(bench, "proxy_build", broken)
    monkeypatch.setattr(bench, "QUICK", bench.Sizes(16, 8, 2, 0, 1, 64, 2, 2, 1, 1))
    out = tmp_path / "gpu.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["models"][0]["rows"]
    assert rows["proxy_build"] == {"failed": "RuntimeError: no such kernel"}
    assert rows["bare_fwd_bwd"]["samples_per_s"] > 0
    assert "proxy_score_exact" not in rows  # it needs the proxy
    assert "no such kernel" in bench.markdown(json.loads(out.read_text()))


def test_the_full_run_refuses_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _script().main(["--device", "cpu"])
    assert exc.value.code == 2 and "needs a GPU" in capsys.readouterr().err


def test_the_script_imports_only_what_the_gpu_machine_has() -> None:
    tree = ast.parse(SCRIPT.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    third_party = names - set(sys.stdlib_module_names)
    assert third_party <= ALLOWED, third_party - ALLOWED


def test_a_proxy_build_past_the_hard_deadline_stops_and_keeps_its_phases(tmp_path: Path) -> None:
    bench = _script()
    setattr(bench, "QUICK", bench.Sizes(16, 8, 2, 0, 1, 64, 2, 2, 1, 1))  # noqa: B010
    out = tmp_path / "gpu.json"
    # The budget leaves every row time to start; the hard deadline is already past.
    assert bench.main(["--quick", "--out", str(out), "--budget-s", "600", "--grace-s", "-600"]) == 0
    rows = json.loads(out.read_text())["models"][0]["rows"]
    assert rows["bare_fwd_bwd"]["samples_per_s"] > 0
    build = rows["proxy_build"]
    assert build["stopped"] == "time budget: cancelled during compressing"
    assert build["layers"] == 14 and "factorise_s" not in build
    assert "proxy_score_exact" not in rows
    assert "stopped at the time budget" in bench.markdown(json.loads(out.read_text()))
