"""Adam preconditioning of training gradients (LESS), from a checkpoint's saved optimizer state.

LESS scores a training sample by the direction Adam would move the weights for it, not by its raw
gradient: with the checkpoint's first and second moments ``m``, ``v`` and the optimizer's
``beta1``, ``beta2``, ``eps``, a per-sample gradient ``g`` becomes

    m' = beta1 m + (1 - beta1) g,    v' = beta2 v + (1 - beta2) g^2,    u = m' / (sqrt(v') + eps)

elementwise (no bias correction, as LESS). Target-task gradients stay raw (LESS uses plain SGD
gradients on the target side). Because the update is elementwise, the per-sample gradient of a
block has to exist for a moment: the featurizer forms it one sample and one layer at a time, then
projects ``u`` with the same Kronecker projection as the raw gradient.

Where the state lives: :func:`save_adam_state` writes ``optimizer.safetensors`` into a checkpoint
directory (``exp_avg.<param>`` and ``exp_avg_sq.<param>`` for every trained parameter, with the
betas and eps as metadata); ``iprox finetune --save-optimizer-state`` and ``iprox warmup`` write
it at every checkpoint.

A proxy's factors have no state of their own: the target's state for the layer's weight ``W`` is
mapped into factor space. The gradients of the factors are ``g_A = g_W B^T`` and ``g_B = A^T g_W``,
so the first moment maps exactly (``m_A = m_W B^T``, ``m_B = A^T m_W``, the moment being linear
in the gradients); the second moment is mapped as if the entries of ``g_W`` were uncorrelated
(``v_A = v_W (B*B)^T``, ``v_B = (A*A)^T v_W``), an approximation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from worker.engine.digest import sha256_path
from worker.engine.errors import ArtifactError, ConfigError
from worker.engine.lowrank import LowRankLinear

STATE_FILE = "optimizer.safetensors"


@dataclass(frozen=True)
class AdamState:
    """First and second moments per parameter name, and the optimizer's constants."""

    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    beta1: float
    beta2: float
    eps: float
    source: str
    fingerprint: str

    def update(self, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Adam's update direction for gradient ``g`` given moments ``m``, ``v`` (same shape)."""
        m2 = self.beta1 * m + (1.0 - self.beta1) * g
        v2 = self.beta2 * v + (1.0 - self.beta2) * g * g
        return m2 / (v2.sqrt() + self.eps)

    def moments(
        self, module_name: str, module: nn.Module, param: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m, v)`` shaped like ``module.<param>``: the stored state, or for a low-rank factor
        the state of the layer's dense weight mapped into factor space (see the module doc)."""
        own = f"{module_name}.{param}"
        if own in self.exp_avg:
            m, v = self.exp_avg[own].float(), self.exp_avg_sq[own].float()
        elif isinstance(module, LowRankLinear) and f"{module_name}.weight" in self.exp_avg:
            mw = self.exp_avg[f"{module_name}.weight"].float()
            vw = self.exp_avg_sq[f"{module_name}.weight"].float()
            A, B = module.A.detach().float(), module.B.detach().float()
            if param == "A":
                m, v = mw @ B.T, vw @ (B * B).T
            else:
                m, v = A.T @ mw, (A * A).T @ vw
        else:
            raise ConfigError(
                f"{self.source}: the optimizer state holds no moments for parameter {own!r} "
                "(was the checkpoint trained with LoRA, or from another model?)"
            )
        expected = tuple(getattr(module, param).shape)
        if tuple(m.shape) != expected:
            raise ConfigError(
                f"{self.source}: optimizer state for {own!r} has shape {tuple(m.shape)}, "
                f"the model's parameter has {expected}"
            )
        return m, v


def save_adam_state(optim: torch.optim.Optimizer, model: nn.Module, directory: Path) -> Path:
    """Write the moments of ``optim`` (an Adam/AdamW over parameters of ``model``) into
    ``directory / optimizer.safetensors``, keyed by parameter name."""
    from safetensors.torch import save_file

    names = {id(p): n for n, p in model.named_parameters()}
    tensors: dict[str, torch.Tensor] = {}
    group = optim.param_groups[0]
    for p, state in optim.state.items():
        if "exp_avg" not in state or id(p) not in names:
            continue
        name = names[id(p)]
        tensors[f"exp_avg.{name}"] = state["exp_avg"].detach().contiguous()
        tensors[f"exp_avg_sq.{name}"] = state["exp_avg_sq"].detach().contiguous()
    beta1, beta2 = group["betas"]
    meta = {"beta1": str(beta1), "beta2": str(beta2), "eps": str(group["eps"])}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_adam_state(directory: Path) -> AdamState:
    """The state saved by :func:`save_adam_state` in a checkpoint directory."""
    from safetensors import safe_open

    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{directory}: no {STATE_FILE}; fine-tune with --save-optimizer-state (warm-up runs "
            "save it) to precondition with Adam"
        )
    m: dict[str, torch.Tensor] = {}
    v: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        for key in sorted(fh.keys()):
            kind, _, name = key.partition(".")
            tensor = fh.get_tensor(key)
            if kind == "exp_avg":
                m[name] = tensor
            elif kind == "exp_avg_sq":
                v[name] = tensor
    if set(m) != set(v):
        raise ArtifactError(f"{path}: first and second moments name different parameters")
    try:
        beta1, beta2, eps = float(meta["beta1"]), float(meta["beta2"]), float(meta["eps"])
    except (KeyError, ValueError):
        raise ArtifactError(
            f"{path}: metadata lacks beta1/beta2/eps ({json.dumps(meta)})"
        ) from None
    return AdamState(m, v, beta1, beta2, eps, str(path), sha256_path(path))
