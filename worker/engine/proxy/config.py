"""Hyperparameters of proxy construction, saved beside every proxy they produced."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from worker.engine.configio import config_from_dict, config_to_dict
from worker.engine.errors import ConfigError

Method = Literal["ipsvd", "svd", "random"]
METHODS: tuple[str, ...] = ("ipsvd", "svd", "random")
DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


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
    fidelity_samples: int = field(
        default=64,
        metadata=_help(
            "records of the fidelity report's calibration slice: a seeded slice of the pool, "
            "disjoint from the probe and alignment records, scored exactly by the proxy and the "
            "target (Spearman, top-10% overlap, seconds per sample); fewer when the pool has "
            "fewer left; 0: no report"
        ),
    )
    fidelity_targets: int = field(
        default=32,
        metadata=_help(
            "target records the fidelity report scores against at most: a seeded sample of the "
            "job's target set, or without one, this many more pool records (disjoint from the "
            "rest) as their own target"
        ),
    )

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 <= self.sparsity < 1.0:
            problems.append(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not self.target_modules:
            problems.append("target_modules must name at least one layer suffix")
        positive = ("rank_multiple", "probe_samples", "probe_positions", "align_batch_size")
        for name in (*positive, "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_length < 2:
            problems.append(f"max_length must be at least 2, got {self.max_length}")
        if self.ridge <= 0.0:
            problems.append(f"ridge must be positive, got {self.ridge}")
        if self.align_steps < 0:
            problems.append(f"align_steps must be non-negative, got {self.align_steps}")
        if self.align_samples is not None and self.align_samples < 1:
            problems.append(f"align_samples must be at least 1, got {self.align_samples}")
        for name in ("kl_weight", "max_grad_norm"):
            if getattr(self, name) < 0.0:
                problems.append(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.temperature <= 0.0 or self.lr <= 0.0:
            problems.append(
                f"temperature and lr must be positive, got {self.temperature} and {self.lr}"
            )
        if not 0.0 <= self.warmup_fraction < 1.0:
            problems.append(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.fidelity_samples != 0 and self.fidelity_samples < 2:
            problems.append(
                "fidelity_samples must be 0 (no fidelity report) or at least 2 (a rank "
                f"correlation needs two records), got {self.fidelity_samples}"
            )
        if self.fidelity_targets < 1:
            problems.append(f"fidelity_targets must be at least 1, got {self.fidelity_targets}")
        if self.factor_dtype not in ("float64", "float32"):
            problems.append(f"factor_dtype must be float64 or float32, got {self.factor_dtype!r}")
        if problems:
            raise ConfigError("proxy config: " + "; ".join(problems))

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
