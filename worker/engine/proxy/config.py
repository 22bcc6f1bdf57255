"""Hyperparameters of proxy construction, saved beside every proxy they produced."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from worker.engine.configio import config_from_dict, config_to_dict
from worker.engine.errors import ConfigError

Method = Literal["ipsvd", "svd", "random"]
METHODS: tuple[str, ...] = ("ipsvd", "svd", "random")
Recipe = Literal["iprox", "official"]
RECIPES: tuple[str, ...] = ("iprox", "official")
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

    recipe: Recipe = field(
        default="iprox",
        metadata=_help(
            "official: the authors' defaults (csr16/IProX: rank rounded up to a multiple of 128, "
            "absolute ridge 1e-3 on raw covariances, probes on all tokens, per-factor L_GA, no "
            "KL, AdamW lr 1e-4 constant with weight decay 0.01, 5 epochs over 90% of a 1% "
            "slice); iprox: this project's defaults, chosen by bench:fidelity. Fields given "
            "explicitly override the recipe's values (see ProxyConfig.for_recipe)"
        ),
    )
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
    rank_rule: Literal["matched", "official"] = field(
        default="matched",
        metadata=_help(
            "matched: the parameter-matched rank floor((1 - rho) out in / (out + in)), rounded "
            "down to rank_multiple; official: rounded to nearest, then UP to rank_multiple, "
            "dense when that reaches min(out, in) (keeps more than 1 - rho)"
        ),
    )
    rank_multiple: int = field(
        default=1,
        metadata=_help("round ranks to a multiple of this (1: no rounding)"),
    )
    rank_allocation: Literal["uniform", "global"] = field(
        default="uniform",
        metadata=_help(
            "uniform: every layer gets its own parameter-matched rank; global: the same total "
            "budget spent across layers where it removes the most weighted error per "
            "parameter (greedy over the whitened spectra; ipsvd and svd only)"
        ),
    )
    rank_floor: float = field(
        default=0.25,
        metadata=_help(
            "global allocation: each layer keeps at least this fraction of its uniform rank"
        ),
    )
    balance: bool = field(
        default=True,
        metadata=_help(
            "give each rank component the same norm in A and B (|a_i| = |b_i|) after "
            "factorising and after alignment; the proxy's function is unchanged, but factor "
            "gradients (alignment's cosines, Adam's steps, scoring features) stop being "
            "dominated by one factor"
        ),
    )
    probe_samples: int = field(default=64, metadata=_help("records in the probe set (ipsvd only)"))
    probe_tokens: Literal["response", "all"] = field(
        default="response",
        metadata=_help(
            "response: probes at response tokens, gradients of the response loss; all: probes "
            "at every attended token, gradients of the loss on every token (the authors')"
        ),
    )
    probe_positions: int = field(
        default=16,
        metadata=_help(
            "response-token positions sampled per probe sequence, so long sequences do not "
            "dominate; probe columns per layer = probe_samples * probe_positions at most"
        ),
    )
    ridge_mode: Literal["relative", "absolute"] = field(
        default="relative",
        metadata=_help(
            "relative: ridge times each covariance's mean eigenvalue; absolute: ridge added "
            "as is to the raw covariances (the authors', whose 1e-3 is hundreds of times the "
            "output-gradient covariance's mean eigenvalue on SmolLM2)"
        ),
    )
    ridge: float = field(
        # Measured on SmolLM2-135M at rho 0.5 (docs/benchmarks.md, bench:proxy): held-out loss
        # 12.2 / 11.2 / 8.0 / 8.3 / 9.4 / 12.1 / 16.7 for ridge 1e-3 / 1e-2 / 0.1 / 0.3 / 1 / 3 /
        # 10 (plain SVD, the infinite-ridge limit: 19.7): 0.1 is the best value measured.
        default=1e-1,
        metadata=_help(
            "ridge added to each probe covariance (see ridge_mode); it weighs the directions "
            "the probes do not span (too small makes their inverse root explode)"
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
    align_epochs: float | None = field(
        default=None,
        metadata=_help(
            "when set, alignment runs this many passes over the alignment set instead of "
            "align_steps (steps = ceil(epochs * records / batch))"
        ),
    )
    align_samples: int | None = field(
        default=None,
        metadata=_help(
            "records in the alignment set (default: align_fraction of the pool, at least one batch)"
        ),
    )
    align_fraction: float = field(
        default=0.01,
        metadata=_help("share of the pool in the alignment set when align_samples is unset"),
    )
    align_batch_size: int = field(default=4, metadata=_help("records per alignment step"))
    align_hvp: Literal["exact", "finite"] = field(
        default="exact",
        metadata=_help(
            "how alignment differentiates L_GA (a function of the proxy's gradient): exact: a "
            "double backward; finite: a forward difference of two gradients (one more "
            "first-order pass, no double backward, fused attention allowed)"
        ),
    )
    align_fd_step: float = field(
        default=1e-3,
        metadata=_help(
            "finite alignment: the difference step as a fraction of |factors| / |dL_GA/dg|"
        ),
    )
    align_max_length: int | None = field(
        default=None,
        metadata=_help(
            "tokens per alignment record at most (default: max_length); alignment costs "
            "grow with it faster than scoring's"
        ),
    )
    ga_weight: float = field(
        default=1.0, metadata=_help("weight of L_GA (batch-mean gradient alignment)")
    )
    gram_weight: float = field(
        default=0.0,
        metadata=_help(
            "weight of the per-sample gradient geometry term: the proxy's matrix of gradient "
            "cosines between a batch's samples against the target's (0: off; exact "
            "align_hvp only)"
        ),
    )
    kl_weight: float = field(
        default=1.0, metadata=_help("lambda_KL, the weight of the KL term against L_GA")
    )
    temperature: float = field(
        default=2.0, metadata=_help("softmax temperature of the KL term (scaled by T^2)")
    )
    lr: float = field(default=5e-5, metadata=_help("peak AdamW learning rate for the factors"))
    lr_schedule: Literal["cosine", "constant"] = field(
        default="cosine",
        metadata=_help("cosine: linear warm-up then cosine decay to zero; constant: lr throughout"),
    )
    warmup_fraction: float = field(
        default=0.1, metadata=_help("fraction of alignment steps with linear warm-up (cosine)")
    )
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay of the factors"))
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
        for name in ("kl_weight", "max_grad_norm", "ga_weight", "gram_weight"):
            if getattr(self, name) < 0.0:
                problems.append(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.temperature <= 0.0 or self.lr <= 0.0:
            problems.append(
                f"temperature and lr must be positive, got {self.temperature} and {self.lr}"
            )
        choices = {
            "recipe": RECIPES,
            "rank_rule": ("matched", "official"),
            "rank_allocation": ("uniform", "global"),
            "probe_tokens": ("response", "all"),
            "ridge_mode": ("relative", "absolute"),
            "lr_schedule": ("cosine", "constant"),
            "align_hvp": ("exact", "finite"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if self.rank_allocation == "global" and self.method == "random":
            problems.append("rank_allocation global needs a spectrum: use method ipsvd or svd")
        if not 0.0 < self.rank_floor <= 1.0:
            problems.append(f"rank_floor must be in (0, 1], got {self.rank_floor}")
        if self.align_epochs is not None and self.align_epochs <= 0:
            problems.append(f"align_epochs must be positive, got {self.align_epochs}")
        if not 0.0 < self.align_fraction <= 1.0:
            problems.append(f"align_fraction must be in (0, 1], got {self.align_fraction}")
        if self.gram_weight > 0 and self.align_hvp == "finite":
            problems.append("gram_weight needs align_hvp exact (its gradient is a double backward)")
        if self.gram_weight > 0 and self.align_batch_size < 2:
            problems.append("gram_weight needs align_batch_size of at least 2 (pairs of samples)")
        if not 0.0 < self.align_fd_step < 1.0:
            problems.append(f"align_fd_step must be in (0, 1), got {self.align_fd_step}")
        if self.align_max_length is not None and self.align_max_length < 2:
            problems.append(f"align_max_length must be at least 2, got {self.align_max_length}")
        if self.weight_decay < 0.0:
            problems.append(f"weight_decay must be non-negative, got {self.weight_decay}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            problems.append(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.factor_dtype not in ("float64", "float32"):
            problems.append(f"factor_dtype must be float64 or float32, got {self.factor_dtype!r}")
        if problems:
            raise ConfigError("proxy config: " + "; ".join(problems))

    @property
    def aligns(self) -> bool:
        """Whether the build has an alignment stage."""
        return self.align_steps > 0 or self.align_epochs is not None

    @classmethod
    def for_recipe(cls, recipe: str = "iprox", **given: Any) -> ProxyConfig:
        """The recipe's settings with ``given`` fields over them (ConfigError if invalid).

        ``official`` reproduces csr16/IProX's defaults; ``given`` still wins (a user may change
        one setting of the paper's recipe), and the manifest records the resolved values.
        """
        if recipe not in RECIPES:
            raise ConfigError(
                f"proxy config: recipe must be one of {', '.join(RECIPES)}, got {recipe!r}"
            )
        return cls.from_dict({**RECIPE_SETTINGS[recipe], **given, "recipe": recipe})

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


# The authors' defaults (csr16/IProX ``init_iprox.py``, ``utils/init_with_ipsvd.py``,
# ``utils/grad_align.py``), field by field. Probes: 1,024 columns per layer from 64 sequences.
OFFICIAL: dict[str, Any] = {
    "rank_rule": "official",
    "rank_multiple": 128,
    "rank_allocation": "uniform",
    "balance": False,
    "probe_tokens": "all",
    "probe_positions": 16,
    "ridge_mode": "absolute",
    "ridge": 1e-3,
    "align_epochs": 5.0,
    "align_fraction": 0.009,
    "align_batch_size": 4,
    "kl_weight": 0.0,
    "temperature": 2.0,
    "lr": 1e-4,
    "lr_schedule": "constant",
    "warmup_fraction": 0.0,
    "weight_decay": 0.01,
    "max_grad_norm": 0.0,
}

# This project's recipe: the dataclass defaults (chosen by bench:fidelity, docs/benchmarks.md).
RECIPE_SETTINGS: dict[str, dict[str, Any]] = {"iprox": {}, "official": OFFICIAL}
