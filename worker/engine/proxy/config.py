"""Hyperparameters of proxy construction, saved beside every proxy they produced."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from worker.engine.configio import config_from_dict, config_to_dict
from worker.engine.errors import ConfigError
from worker.engine.layers import DEFAULT_LAYERS
from worker.engine.params import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Range, check_params

Method = Literal["ipsvd", "svd", "random"]
METHODS: tuple[str, ...] = ("ipsvd", "svd", "random")
DEFAULT_TARGET_MODULES: tuple[str, ...] = DEFAULT_LAYERS


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class ProxyConfig:
    """How to compress a target model into a proxy and align it. ``field.metadata['help']``
    holds each parameter's description (the CLI shows it)."""

    method: Method = field(
        default="ipsvd",
        metadata=_help(
            "ipsvd: influence-preserving SVD from probe covariances; svd: truncated SVD of each "
            "weight; random: each weight restricted to a random input subspace"
        ),
    )
    sparsity: float = field(
        default=0.5,
        metadata=_help("rho, the fraction of each compressed layer's parameters removed"),
    )
    target_modules: tuple[str, ...] = field(
        default=DEFAULT_TARGET_MODULES,
        metadata=_help("nn.Linear layers whose name ends with one of these are compressed"),
    )
    rank_multiple: int = field(
        default=1,
        metadata=_help("round ranks down to a multiple of this (1: no rounding)"),
    )
    probe_samples: int = field(default=64, metadata=_help("records in the probe set (ipsvd only)"))
    probe_positions: int = field(
        default=16,
        metadata=_help(
            "response-token positions sampled per probe sequence, so long sequences do not "
            "dominate; probe columns per layer = probe_samples * probe_positions at most"
        ),
    )
    ridge: float = field(
        # Measured on SmolLM2-135M at rho 0.5 (docs/benchmarks.md, bench:proxy): held-out loss
        # 12.2 / 11.2 / 8.0 / 8.3 / 9.4 / 12.1 / 16.7 for ridge 1e-3 / 1e-2 / 0.1 / 0.3 / 1 / 3 /
        # 10 (plain SVD, the infinite-ridge limit: 19.7): 0.1 is the best value measured.
        default=1e-1,
        metadata=_help(
            "ridge added to each probe covariance, relative to its mean eigenvalue; it weighs "
            "the directions the probes do not span (too small makes their inverse root explode)"
        ),
    )
    factor_dtype: Literal["float64", "float32"] = field(
        default="float64",
        metadata=_help(
            "precision of the factorisation (covariance roots, whitening, truncation), on the "
            "model's device; float32 for GPUs with slow float64 (weighted error within 1e-4 "
            "relative of float64 at ridge 0.1, 1e-3 at ridge 0.01, on SmolLM2's shapes)"
        ),
    )
    checkpointing: bool = field(
        default=False,
        metadata=_help(
            "activation checkpointing of decoder layers during probing and alignment: each "
            "layer's activations are recomputed in the backward pass (less memory, about one "
            "more forward pass); probes and gradients are unchanged"
        ),
    )
    align_steps: int = field(
        default=20, metadata=_help("optimiser steps of alignment (0: no alignment)")
    )
    align_samples: int | None = field(
        default=None,
        metadata=_help(
            "records in the alignment set (default: 1% of the pool, at least one batch)"
        ),
    )
    align_batch_size: int = field(default=4, metadata=_help("records per alignment step"))
    kl_weight: float = field(
        default=1.0, metadata=_help("lambda_KL, the weight of the KL term against L_GA")
    )
    temperature: float = field(
        default=2.0, metadata=_help("softmax temperature of the KL term (scaled by T^2)")
    )
    lr: float = field(default=5e-5, metadata=_help("peak AdamW learning rate for the factors"))
    warmup_fraction: float = field(
        default=0.1, metadata=_help("fraction of alignment steps with linear warm-up, then cosine")
    )
    max_grad_norm: float = field(
        default=1.0, metadata=_help("gradient-norm clip for alignment steps (0: no clipping)")
    )
    batch_size: int = field(default=8, metadata=_help("records per probe forward/backward pass"))
    max_length: int = field(
        default=256, metadata=_help("tokens per record at most (truncation keeps the response)")
    )
    seed: int = field(
        default=0, metadata=_help("seeds the probe/alignment split, positions and random method")
    )

    def __post_init__(self) -> None:
        check_params(self, RANGES)
        if not self.target_modules:
            raise ConfigError(
                "target_modules must name at least one layer suffix", field="target_modules"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; tuples become lists."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProxyConfig:
        """Inverse of ``to_dict``; unknown keys are an error (a manifest from another version)."""
        return config_from_dict(cls, data, "proxy config")

    @staticmethod
    def help_for(name: str) -> str:
        """The help text of field ``name``."""
        for f in fields(ProxyConfig):
            if f.name == name:
                return str(f.metadata.get("help", ""))
        raise KeyError(name)


RANGES: dict[str, Range] = {
    "sparsity": Range(ge=0, lt=1),
    "rank_multiple": AT_LEAST_ONE,
    "probe_samples": AT_LEAST_ONE,
    "probe_positions": AT_LEAST_ONE,
    "ridge": POSITIVE,
    "align_steps": NON_NEGATIVE,
    "align_samples": AT_LEAST_ONE,
    "align_batch_size": AT_LEAST_ONE,
    "kl_weight": NON_NEGATIVE,
    "temperature": POSITIVE,
    "lr": POSITIVE,
    "warmup_fraction": Range(ge=0, lt=1),
    "max_grad_norm": NON_NEGATIVE,
    "batch_size": AT_LEAST_ONE,
    "max_length": Range(ge=2),
    "seed": NON_NEGATIVE,
}
"""The range of each numeric field of :class:`ProxyConfig` (choices come from its ``Literal``
types); :func:`worker.engine.params.check_params` is the one check. Kept beside the field list
until the fields carry them in their metadata as ``ScoreConfig``'s do; a test fails when a
numeric field has no range."""
