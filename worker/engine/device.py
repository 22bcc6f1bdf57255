"""Where the engine computes and in what precision: one resolved :class:`Runtime`.

``device``: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
``dtype``: ``auto`` (bfloat16 on CUDA, float32 on the CPU), ``bfloat16``, ``float16`` or
``float32``. The dtype is the model's weights and activations; scores, norms, probes and every
accumulation stay float32 (or float64 where the math needs it) whatever it is.

Both are resolved once, up front, so a request for a device that is not there fails with a
:class:`ConfigError` naming the setting before anything is loaded, never in the middle of a job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from worker.engine.errors import ConfigError

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"
DTYPES: Mapping[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
DTYPE_CHOICES = ("auto", *DTYPES)
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class Runtime:
    """A resolved device and model dtype."""

    device: torch.device
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def describe(self) -> dict[str, str]:
        """JSON-ready ``{"device": ..., "dtype": ...}`` (and the GPU's name on CUDA)."""
        out = {"device": str(self.device), "dtype": self.dtype_name}
        if self.device.type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(self.device)
        return out


CPU = Runtime(torch.device("cpu"), torch.float32)
"""The engine's historical default: float32 on the CPU."""


def resolve_device(spec: str = "auto", *, field: str = "device") -> torch.device:
    """The device ``spec`` names; :class:`ConfigError` naming ``field`` when it is malformed or
    not present on this machine (``cuda`` without a CUDA device, ``cuda:3`` on a 2-GPU box)."""
    text = (spec or "auto").strip().lower()
    m = _DEVICE_RE.match(text)
    if m is None or (m.group(1) != "cuda" and m.group(2) is not None):
        raise ConfigError(f"{field}: {spec!r} is not a device; expected {DEVICE_FORMS}")
    kind, index = m.group(1), m.group(2)
    if kind == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built = torch.version.cuda
        why = (
            "this torch is a CPU-only build (install a CUDA build of torch)"
            if built is None
            else f"torch (CUDA {built}) sees no GPU (check the driver and CUDA_VISIBLE_DEVICES)"
        )
        raise ConfigError(f"{field}: {spec!r} asks for CUDA, but {why}; use cpu or auto")
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise ConfigError(
            f"{field}: {spec!r} asks for GPU {index}, but this machine has {count} "
            f"(cuda:0 to cuda:{count - 1})"
        )
    return torch.device("cuda", int(index) if index is not None else 0)


def resolve_dtype(spec: str, device: torch.device, *, field: str = "dtype") -> torch.dtype:
    """The model dtype ``spec`` names; ``auto`` is bfloat16 on CUDA and float32 on the CPU."""
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if text not in DTYPES:
        raise ConfigError(f"{field}: {spec!r} is not a dtype; expected {', '.join(DTYPE_CHOICES)}")
    dtype = DTYPES[text]
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{field}: this GPU has no bfloat16 support; use float16 or float32")
    return dtype


def resolve_runtime(
    device: str = "auto", dtype: str = "auto", *, fields: tuple[str, str] = ("device", "dtype")
) -> Runtime:
    """``device`` and ``dtype`` resolved together (see the module doc); errors name ``fields``
    (``--device`` on the command line, ``IPROX_DEVICE`` in a worker)."""
    dev = resolve_device(device, field=fields[0])
    return Runtime(dev, resolve_dtype(dtype, dev, field=fields[1]))


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a collated batch on ``device`` (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
