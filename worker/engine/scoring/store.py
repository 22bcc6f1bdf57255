"""On-disk store of projected training gradients: fp16 safetensors shards + a JSON manifest.

Layout: ``<root>/<key digest>/manifest.json``, ``train-00000.safetensors``, ...,
``targets/<file sha256>.safetensors``. The key holds everything that changes the features (model
or proxy hash, dataset hash, projection seed, feature budget, max length, layers, scheme), so runs
that share a key share gradients: a second target task reuses the pool's gradients, and a run that
was interrupted resumes from the last complete shard.

Each shard holds ``indices`` (int64), unit-norm ``features`` (fp16, ``(n, dim)``) and ``norms``
(float32, the gradients' L2 norms, so dot-product scoring stays exact up to fp16 rounding). A
shard is written to a temporary name and renamed, then the manifest is rewritten the same way:
a crash leaves at worst an orphan shard that the manifest does not list, never a listed shard
that is incomplete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from worker.engine.errors import ArtifactError

SCHEME = "kron-gaussian-v1"


def tensor_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a module's parameter names, shapes and bytes (identifies a proxy's weights)."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        # Raw bytes via uint8: numpy has no bfloat16 (the same bytes as before for float32).
        h.update(p.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def key_digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


class GradientStore:
    """The shards of one key under ``root``; ``dim`` is the feature size."""

    def __init__(self, root: Path, key: Mapping[str, Any], dim: int) -> None:
        self.key = dict(key, scheme=SCHEME)
        self.dim = dim
        self.dir = Path(root) / key_digest(self.key)[:20]
        self.manifest_path = self.dir / "manifest.json"
        self.shards: list[dict[str, Any]] = []
        if self.manifest_path.exists():
            try:
                manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ArtifactError(f"{self.manifest_path}: corrupt manifest ({exc.msg})") from None
            if manifest.get("key") != self.key or manifest.get("dim") != dim:
                raise ArtifactError(f"{self.manifest_path}: written for another key or dimension")
            self.shards = list(manifest["shards"])
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._write_manifest()

    def _write_manifest(self) -> None:
        doc = {"key": self.key, "dim": self.dim, "shards": self.shards}
        _atomic_write(
            self.manifest_path,
            lambda p: p.write_text(json.dumps(doc, indent=1, sort_keys=True), encoding="utf-8"),
        )

    def done(self) -> set[int]:
        """Indices of the pool samples whose gradients are stored."""
        return {i for s in self.shards for i in s["indices"]}

    def add_shard(self, indices: list[int], features: torch.Tensor, norms: torch.Tensor) -> None:
        """Store unit-norm ``features: (n, dim)`` and ``norms: (n,)`` for pool ``indices``."""
        if features.shape != (len(indices), self.dim) or norms.shape != (len(indices),):
            raise ValueError("shard shapes do not match its indices and the store's dimension")
        name = f"train-{len(self.shards):05d}.safetensors"
        tensors = {
            "indices": torch.tensor(indices, dtype=torch.int64, device="cpu"),  # written to disk
            "features": features.to(torch.float16).contiguous(),
            "norms": norms.float().contiguous(),
        }
        _atomic_write(self.dir / name, lambda p: save_file(tensors, str(p)))
        self.shards.append({"file": name, "indices": list(indices)})
        self._write_manifest()

    def _load(self, path: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise ArtifactError(f"{path}: unreadable gradient shard ({exc})") from None

    def iter_shards(self) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """``(indices, features (n, dim) fp16, norms (n,))`` for each complete shard."""
        for s in self.shards:
            t = self._load(self.dir / s["file"])
            if t["features"].shape[1] != self.dim:
                raise ArtifactError(f"{self.dir / s['file']}: feature width is not {self.dim}")
            yield t["indices"].tolist(), t["features"], t["norms"]

    def target(self, sha: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Stored ``(features, norms)`` of a target file with content hash ``sha``, if any."""
        path = self.dir / "targets" / f"{sha}.safetensors"
        if not path.exists():
            return None
        t = self._load(path)
        return t["features"], t["norms"]

    def put_target(self, sha: str, features: torch.Tensor, norms: torch.Tensor) -> None:
        (self.dir / "targets").mkdir(exist_ok=True)
        tensors = {"features": features.to(torch.float16).contiguous(), "norms": norms.float()}
        _atomic_write(
            self.dir / "targets" / f"{sha}.safetensors", lambda p: save_file(tensors, str(p))
        )
