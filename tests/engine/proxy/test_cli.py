"""``iprox proxy build`` end to end on a tiny model directory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine.tiny_gguf import write_tiny_llama_gguf
from tests.tiny import save_tiny_model
from worker.cli import main
from worker.engine.device import resolve_runtime
from worker.engine.models import load_model
from worker.engine.proxy import load_proxy


def _rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"q{i}",
            "instruction": f"Count to {i % 7 + 2}.",
            "output": " ".join(str(k) for k in range(i % 7 + 2)),
        }
        for i in range(n)
    ]


def test_build_writes_manifest_and_weights(
    tmp_path: Path,
    write_jsonl: Callable[[list[dict[str, Any]], str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir = save_tiny_model(tmp_path / "tiny", "qwen2")
    data = write_jsonl(_rows(20), "pool.jsonl")
    out = tmp_path / "proxy"
    argv = [
        "proxy", "build", "--model", str(model_dir), "--data", str(data), "--out", str(out),
        "--method", "ipsvd", "--sparsity", "0.6", "--probe-samples", "6", "--align-steps", "2",
        "--kl-weight", "0.5", "--seed", "3", "--max-length", "48", "--cache-dir", str(tmp_path / "c"),
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "iprox proxy: aligning 2/2" in captured.err
    summary = json.loads(captured.out)
    manifest = json.loads((out / "proxy.json").read_text())
    for key in ("method", "sparsity", "target_params", "proxy_params", "layers"):
        assert key in manifest
    assert manifest["method"] == "ipsvd" and manifest["sparsity"] == 0.6
    assert manifest["config"]["kl_weight"] == 0.5 and manifest["seed"] == 3
    assert manifest["probe"]["records"] == 6
    assert summary["proxy_params"] == manifest["proxy_params"] < manifest["target_params"]
    assert (out / "factors.safetensors").is_file()
    target = load_model(str(model_dir), cache_dir=tmp_path / "c")
    assert manifest["target"]["sha256"] == target.sha256
    proxy = load_proxy(out, target)
    assert proxy.manifest["layers"] == manifest["layers"]
    # Without a target argument, load_proxy loads the one the manifest names.
    again = load_proxy(out)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(again.model(input_ids=ids).logits, proxy.model(input_ids=ids).logits)


def test_build_in_bf16_with_a_float32_factorisation(
    tmp_path: Path,
    write_jsonl: Callable[[list[dict[str, Any]], str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir = save_tiny_model(tmp_path / "tiny", "llama")
    data = write_jsonl(_rows(12), "pool.jsonl")
    out = tmp_path / "proxy"
    argv = [
        "proxy", "build", "--model", str(model_dir), "--data", str(data), "--out", str(out),
        "--probe-samples", "4", "--align-steps", "1", "--max-length", "48",
        "--device", "cpu", "--dtype", "bfloat16", "--factor-dtype", "float32", "--checkpointing",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["runtime"] == {"device": "cpu", "dtype": "bfloat16"}
    manifest = json.loads((out / "proxy.json").read_text())
    assert manifest["config"]["factor_dtype"] == "float32"
    assert manifest["config"]["checkpointing"] is True
    target = load_model(str(model_dir), runtime=resolve_runtime("cpu", "bfloat16"))
    proxy = load_proxy(out, target)
    assert {p.dtype for p in proxy.model.parameters()} == {torch.bfloat16}


def test_bad_arguments_exit_non_zero_with_the_field_named(
    tmp_path: Path,
    write_jsonl: Callable[[list[dict[str, Any]], str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir = save_tiny_model(tmp_path / "tiny", "llama")
    data = write_jsonl(_rows(4), "pool.jsonl")
    base = ["proxy", "build", "--model", str(model_dir), "--data", str(data)]
    assert main([*base, "--out", str(tmp_path / "o"), "--sparsity", "1.5"]) == 2
    assert "sparsity must be in [0, 1)" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "o"), "--target-modules", "nope"]) == 2
    assert "target_modules" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "o"), "--fidelity-samples", "1"]) == 2
    assert "fidelity_samples must be 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--out", str(tmp_path / "o"), "--method", "pca"])


def test_build_from_a_gguf_file(
    tmp_path: Path,
    write_jsonl: Callable[[list[dict[str, Any]], str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    gguf, _, _ = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    data = write_jsonl(_rows(8), "pool.jsonl")
    out = tmp_path / "proxy"
    argv = [
        "proxy", "build", "--model", str(gguf), "--data", str(data), "--out", str(out),
        "--method", "svd", "--sparsity", "0.5", "--align-steps", "0", "--max-length", "32",
        "--cache-dir", str(tmp_path / "c"),
    ]  # fmt: skip
    assert main(argv) == 0
    manifest = json.loads((out / "proxy.json").read_text())
    assert manifest["target"]["identity"] == str(gguf.resolve())
    assert manifest["compressed_layers"] > 0
    target = load_model(str(gguf), cache_dir=tmp_path / "c")
    assert manifest["target"]["sha256"] == target.sha256
    assert load_proxy(out, target).manifest["proxy_params"] == manifest["proxy_params"]


def test_build_prints_the_fidelity_report(
    tmp_path: Path,
    write_jsonl: Callable[[list[dict[str, Any]], str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir = save_tiny_model(tmp_path / "tiny", "llama")
    data = write_jsonl(_rows(20), "pool.jsonl")
    targets = write_jsonl(
        [{"id": f"t{i}", "question": f"{i} + 1?", "answer": str(i + 1)} for i in range(5)],
        "target.jsonl",
    )
    out = tmp_path / "proxy"
    argv = [
        "proxy", "build", "--model", str(model_dir), "--data", str(data), "--out", str(out),
        "--method", "svd", "--align-steps", "0", "--max-length", "48", "--fidelity-samples", "8",
        "--fidelity-targets", "3", "--target", str(targets), "--cache-dir", str(tmp_path / "c"),
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    line = next(x for x in captured.err.splitlines() if "fidelity:" in x)
    assert line.startswith("iprox proxy: fidelity: Spearman ") and "top-10% overlap" in line
    assert "8 calibration records vs 3 target records (the job's)" in line
    report = json.loads((out / "proxy.json").read_text())["fidelity"]
    summary = json.loads(captured.out)["fidelity"]
    assert summary["spearman"] == report["spearman"] is not None
    assert summary["targets"]["source"] == "job" and summary["targets"]["available"] == 5
    assert (
        "record_ids" not in summary["calibration"] and len(report["calibration"]["record_ids"]) == 8
    )
    assert set(report["targets"]["record_ids"]) <= {f"t{i}" for i in range(5)}
