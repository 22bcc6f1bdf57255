"""Device and dtype selection: resolution, clear errors, every engine command's flags, and a scan
that the engine makes no tensor without saying where."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from worker.cli import main
from worker.engine.device import resolve_device, resolve_dtype, resolve_runtime
from worker.engine.errors import ConfigError

ENGINE = Path(__file__).resolve().parents[2] / "worker" / "engine"


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    # Resolution only: nothing is allocated on these pretend devices.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_auto_is_the_cpu_in_float32_without_cuda(no_cuda: None) -> None:
    rt = resolve_runtime()
    assert rt.device == torch.device("cpu") and rt.dtype is torch.float32
    assert rt.describe() == {"device": "cpu", "dtype": "float32"}
    assert resolve_runtime("cpu", "bfloat16").dtype is torch.bfloat16


def test_auto_is_cuda_in_bfloat16_with_cuda(two_gpus: None) -> None:
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_dtype("auto", torch.device("cuda", 0)) is torch.bfloat16
    assert resolve_dtype("float16", torch.device("cuda", 0)) is torch.float16


def test_cuda_without_cuda_is_a_clear_error(no_cuda: None) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_runtime("cuda", fields=("IPROX_DEVICE", "IPROX_DTYPE"))
    msg = err.value.message
    assert msg.startswith("IPROX_DEVICE: 'cuda' asks for CUDA") and "cpu or auto" in msg


def test_a_gpu_index_past_the_last_is_refused(two_gpus: None) -> None:
    with pytest.raises(ConfigError, match=r"GPU 2, but this machine has 2 \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cpu:0", "cuda:x", "cuda:-1", "mps"])
def test_malformed_devices_name_the_field(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"^--device: .* is not a device; expected auto, cpu"):
        resolve_device(spec, field="--device")


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^dtype: 'float64' is not a dtype"):
        resolve_dtype("float64", torch.device("cpu"))


ENGINE_COMMANDS = [
    ["proxy", "build", "--model", "m", "--data", "d.jsonl", "--out", "o"],
    ["score", "--model", "m", "--train", "t.jsonl", "--target", "x.jsonl", "--out", "o.jsonl"],
    [
        "select",
        "--model",
        "m",
        "--train",
        "t.jsonl",
        "--target",
        "x.jsonl",
        "--out",
        "o",
        "--top-k",
        "1",
    ],
    ["finetune", "--model", "m", "--data", "d.jsonl", "--out", "o"],
    ["warmup", "--model", "m", "--data", "d.jsonl", "--out", "o"],
    ["evaluate", "--model", "m", "--task", "t.jsonl"],
]


@pytest.mark.parametrize("argv", ENGINE_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_every_engine_command_takes_device_and_refuses_missing_cuda(
    argv: list[str], no_cuda: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before any file is read or model loaded: none of these paths exist.
    assert main([*argv, "--device", "cuda", "--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err
    assert "iprox: error [config]: --device: 'cuda' asks for CUDA" in err


@pytest.mark.parametrize("argv", ENGINE_COMMANDS[:1], ids=["proxy build"])
def test_a_bad_dtype_flag_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--dtype", "float64"])
    assert exc.value.code == 2
    assert "--dtype" in capsys.readouterr().err


# Factories whose result lands on the default device unless told otherwise.
_FACTORIES = {
    "zeros",
    "ones",
    "empty",
    "full",
    "tensor",
    "arange",
    "eye",
    "rand",
    "randn",
    "randint",
    "randperm",
    "linspace",
    "as_tensor",
    "Generator",
}


def _undeviced_calls(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        base = node.func.value
        if not (isinstance(base, ast.Name) and base.id == "torch"):
            continue
        if node.func.attr in _FACTORIES and not any(k.arg == "device" for k in node.keywords):
            out.append(f"{path.relative_to(ENGINE)}:{node.lineno} torch.{node.func.attr}")
    return out


def test_the_engine_makes_no_tensor_without_a_device() -> None:
    files = list(ENGINE.rglob("*.py"))
    assert len(files) > 30
    found = [hit for p in sorted(files) for hit in _undeviced_calls(p)]
    assert found == []


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    f = ENGINE / "_scan_probe.py"  # the scan reports paths relative to the engine
    try:
        f.write_text("import torch\nx = torch.zeros(3)\ny = torch.ones(3, device='cpu')\n")
        assert _undeviced_calls(f) == ["_scan_probe.py:2 torch.zeros"]
    finally:
        f.unlink()
