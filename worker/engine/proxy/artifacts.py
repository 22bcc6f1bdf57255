"""Saving and loading proxies: safetensors weights plus a ``proxy.json`` manifest.

Two layouts:

* ``factors`` (default): only the factors ``A``/``B`` of each compressed layer, in
  ``factors.safetensors``; every other tensor comes from the target, which the manifest names by
  identity and sha256. Loading checks that hash, so a proxy is never silently rebuilt on a
  different model.
* ``standalone``: the whole proxy in ``proxy.safetensors``, with the model config and the
  tokenizer beside it; loads without the target.

Both are written file by file with ``proxy.json`` last (its presence means the artifact is
complete), record the weights file's sha256 (checked on load), and never pickle.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from worker.engine.device import CPU, Runtime
from worker.engine.digest import sha256_file
from worker.engine.errors import ArtifactError
from worker.engine.lowrank import LowRankLinear
from worker.engine.models import LoadedModel
from worker.engine.proxy.build import Proxy
from worker.engine.proxy.compress import balance_proxy, factor_modules, replace_layer
from worker.engine.proxy.config import ProxyConfig

MANIFEST = "proxy.json"
FACTORS_FILE = "factors.safetensors"
STANDALONE_FILE = "proxy.safetensors"
Storage = Literal["factors", "standalone"]


def save_proxy(proxy: Proxy, out_dir: Path, *, storage: Storage = "factors") -> Path:
    """Write ``proxy`` under ``out_dir`` (created); returns the path of ``proxy.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    manifest_path.unlink(missing_ok=True)  # an old manifest must not vouch for new weights
    if storage == "factors":
        weights = out_dir / FACTORS_FILE
        tensors = {}
        for name, mod in factor_modules(proxy.model).items():
            tensors[f"{name}.A"] = mod.A.detach().contiguous()
            tensors[f"{name}.B"] = mod.B.detach().contiguous()
        save_file(tensors, str(weights), metadata={"format": "iprox-proxy-factors"})
    elif storage == "standalone":
        weights = out_dir / STANDALONE_FILE
        save_model(proxy.model, str(weights), metadata={"format": "iprox-proxy-standalone"})
        proxy.model.config.save_pretrained(out_dir / "model")  # type: ignore[union-attr,operator]
        proxy.tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    else:
        raise ValueError(f"storage must be 'factors' or 'standalone', got {storage!r}")
    manifest = dict(proxy.manifest)
    manifest["storage"] = {"kind": storage, "file": weights.name, "sha256": sha256_file(weights)}
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, manifest_path)
    return manifest_path


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The parsed ``proxy.json`` of ``out_dir``; ``ArtifactError`` when absent or malformed."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: no proxy manifest (was the proxy build completed?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest: {exc}") from exc
    for key in ("format_version", "method", "layers", "target", "config", "storage"):
        if not isinstance(manifest, dict) or key not in manifest:
            raise ArtifactError(f"{path}: manifest lacks field '{key}'")
    return manifest


def _weights_path(out_dir: Path, manifest: dict[str, Any]) -> Path:
    storage = manifest["storage"]
    path = Path(out_dir) / str(storage.get("file", ""))
    if not path.is_file():
        raise ArtifactError(f"{path}: weights file named by the manifest is missing")
    if sha256_file(path) != storage.get("sha256"):
        raise ArtifactError(f"{path}: sha256 does not match the manifest (file changed or corrupt)")
    return path


def _lowrank_shell(model: nn.Module, manifest: dict[str, Any]) -> None:
    """Put zero-filled ``LowRankLinear`` layers of the manifest's ranks into ``model``."""
    for entry in manifest["layers"]:
        if entry.get("kind") != "lowrank":
            continue
        name, rank = entry["name"], int(entry["rank"])
        try:
            dense = model.get_submodule(name)
        except AttributeError as exc:
            raise ArtifactError(f"manifest layer {name!r} is not in the model") from exc
        if not isinstance(dense, nn.Linear) or (dense.out_features, dense.in_features) != (
            entry["out_features"],
            entry["in_features"],
        ):
            raise ArtifactError(f"manifest layer {name!r} does not match the model's layer")
        dtype, device = dense.weight.dtype, dense.weight.device
        A = torch.zeros(dense.out_features, rank, dtype=dtype, device=device)
        B = torch.zeros(rank, dense.in_features, dtype=dtype, device=device)
        bias = dense.bias.detach() if dense.bias is not None else None
        replace_layer(model, name, LowRankLinear(A, B, bias))


def _freeze_all_but_factors(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for mod in factor_modules(model).values():
        mod.A.requires_grad_(True)
        mod.B.requires_grad_(True)


def _load_factors(
    out_dir: Path, manifest: dict[str, Any], target: LoadedModel | None, runtime: Runtime
) -> tuple[nn.Module, Any]:
    expected = manifest["target"]
    if target is None:
        from worker.engine.models import load_model

        target = load_model(str(expected["identity"]), runtime=runtime)
    if target.sha256 != expected.get("sha256"):
        raise ArtifactError(
            f"{out_dir}: proxy was built from {expected.get('identity')} (sha256 "
            f"{str(expected.get('sha256'))[:12]}...), but the given target {target.identity} has "
            f"sha256 {target.sha256[:12]}..."
        )
    tensors = load_file(str(_weights_path(out_dir, manifest)), device=str(target.runtime.device))
    model = copy.deepcopy(target.model)
    _lowrank_shell(model, manifest)
    modules = factor_modules(model)
    expected_keys = {f"{n}.{f}" for n in modules for f in ("A", "B")}
    if set(tensors) != expected_keys:
        missing = sorted(expected_keys - set(tensors))[:3]
        extra = sorted(set(tensors) - expected_keys)[:3]
        raise ArtifactError(
            f"{out_dir}: factors do not match the manifest (missing {missing}, extra {extra})"
        )
    with torch.no_grad():
        for name, mod in modules.items():
            for f in ("A", "B"):
                t, p = tensors[f"{name}.{f}"], getattr(mod, f)
                if t.shape != p.shape:
                    raise ArtifactError(
                        f"{out_dir}: {name}.{f} has shape {tuple(t.shape)}, manifest says {tuple(p.shape)}"
                    )
                p.copy_(t)
    return model, target.tokenizer


def _load_standalone(
    out_dir: Path, manifest: dict[str, Any], runtime: Runtime
) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    weights = _weights_path(out_dir, manifest)
    config = AutoConfig.from_pretrained(out_dir / "model", trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    model = model.to(device=runtime.device, dtype=runtime.dtype)
    _lowrank_shell(model, manifest)
    missing, unexpected = load_model(model, str(weights), strict=False, device=str(runtime.device))
    if missing or unexpected:
        raise ArtifactError(
            f"{weights}: tensors do not match the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    tokenizer = AutoTokenizer.from_pretrained(out_dir / "tokenizer", trust_remote_code=False)
    return model, tokenizer


def load_proxy(
    out_dir: Path, target: LoadedModel | None = None, runtime: Runtime | None = None
) -> Proxy:
    """Load a proxy saved by :func:`save_proxy`; outputs are bit-identical to the saved one
    (when loaded in the dtype it was saved in).

    For the ``factors`` layout the target is needed: pass it, or it is loaded from the
    manifest's identity. The proxy lands on ``runtime`` (default: the target's, else float32 on
    the CPU); factors saved in another dtype are cast. ``ArtifactError`` when files are
    missing, corrupt, or the target's sha256 differs from the one the proxy was built from.
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    kind = manifest["storage"].get("kind")
    if runtime is None:
        runtime = target.runtime if target is not None else CPU
    if kind == "factors":
        model, tokenizer = _load_factors(out_dir, manifest, target, runtime)
    elif kind == "standalone":
        model, tokenizer = _load_standalone(out_dir, manifest, runtime)
    else:
        raise ArtifactError(f"{out_dir / MANIFEST}: unknown storage kind {kind!r}")
    _freeze_all_but_factors(model)
    model.eval()
    try:
        config = ProxyConfig.from_dict(dict(manifest["config"]))
    except Exception as exc:
        raise ArtifactError(f"{out_dir / MANIFEST}: bad config: {exc}") from exc
    if "gauge" not in manifest:
        # Built before factors were balanced: balance them now (the function is unchanged;
        # the factor gradients that scoring uses stop being dominated by one factor).
        balance_proxy(model)
        manifest["gauge"] = "balanced on load"
    manifest.pop("storage", None)
    return Proxy(model, tokenizer, config, manifest)
