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
Recipe = Literal["iprox", "official"]
RECIPES: tuple[str, ...] = ("iprox", "official")
DEFAULT_TARGET_MODULES: tuple[str, ...] = DEFAULT_LAYERS


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
        # Measured on SmolLM2-135M at rho 0.5 (docs/benchmarks.md, bench:fidelity), after the
        # 200 distillation steps, on two build seeds: 150 L_GA steps ranked GSM8K at 0.59 and
        # 0.59 against 20 steps' 0.48 and 0.40 (MMLU 0.58 / 0.53 against 0.61 / 0.56), for
        # about 3x the alignment time. The build is a fixed cost, scoring the pool is not.
        default=150,
        metadata=_help("optimiser steps of alignment (0: no alignment)"),
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
            "records in the alignment set (default: align_fraction of the pool, at least one "
            "batch, or a fresh batch per distillation step if more, at most half the records "
            "left after probing)"
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
    distill_steps: int = field(
        # Measured on SmolLM2-135M at rho 0.5 (docs/benchmarks.md, bench:fidelity): 200 steps
        # before 20 L_GA steps took the held-out loss from 6.47 to 4.77 and the exact
        # ranking's Spearman from 0.33 / 0.26 to 0.48 / 0.61 (GSM8K / MMLU).
        default=200,
        metadata=_help(
            "optimiser steps of the distillation phase that opens alignment (only when the "
            "build aligns: align_steps or align_epochs): the KL term alone, first order "
            "(about a training step of the proxy each, against a double backward for an L_GA "
            "step), on batches of the alignment set; 0: none"
        ),
    )
    distill_lr: float = field(
        default=1e-4,
        metadata=_help("peak AdamW learning rate of the distillation phase (warm-up, cosine)"),
    )
    hidden_weight: float = field(
        default=0.0,
        metadata=_help(
            "weight of hidden-state matching in the distillation phase: every decoder layer's "
            "output against the target's, relative squared error per attended position, "
            "beside the KL term (0: KL alone)"
        ),
    )
    ga_weight: float = field(default=1.0, metadata=_help("weight of L_GA (gradient alignment)"))
    ga_unit: Literal["batch", "sample"] = field(
        default="batch",
        metadata=_help(
            "whose gradients L_GA's cosines compare: batch: the batch-mean gradients (the "
            "paper's); sample: each record's own, the step's objective the mean over its "
            "records (what scoring compares: one record's gradient against the target's), at "
            "one pass per record"
        ),
    )
    gram_weight: float = field(
        default=0.0,
        metadata=_help(
            "weight of the per-sample gradient geometry term: the proxy's matrix of gradient "
            "cosines between a batch's samples against the target's (0: off; exact "
            "align_hvp only)"
        ),
    )
    delta_weight: float = field(
        default=0.0,
        metadata=_help(
            "weight of output-gradient matching in the alignment phase: at every compressed "
            "layer, each record's per-token output gradients dL/dy against the target's "
            "(1 - cos per record), the side of a per-sample gradient a proxy loses most "
            "(0: off; exact align_hvp only)"
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
        check_params(self, RANGES)
        if not self.target_modules:
            raise ConfigError(
                "target_modules must name at least one layer suffix", field="target_modules"
            )
        # Rules between fields (each field's own range is in RANGES).
        if self.rank_allocation == "global" and self.method == "random":
            raise ConfigError(
                "rank_allocation global needs a spectrum: use method ipsvd or svd",
                field="rank_allocation",
            )
        if self.gram_weight > 0 and self.align_hvp == "finite":
            raise ConfigError(
                "gram_weight needs align_hvp exact (its gradient is a double backward)",
                field="gram_weight",
            )
        if self.delta_weight > 0 and self.align_hvp == "finite":
            raise ConfigError(
                "delta_weight needs align_hvp exact (its gradient is a double backward)",
                field="delta_weight",
            )
        if self.delta_weight > 0 and self.gram_weight > 0:
            raise ConfigError(
                "delta_weight and gram_weight cannot both be set (each takes its own "
                "second-order pass): set one of them to 0",
                field="delta_weight",
            )
        if self.gram_weight > 0 and self.ga_unit == "sample":
            raise ConfigError(
                "gram_weight needs ga_unit batch (it compares the records of one batch)",
                field="gram_weight",
            )
        if self.fidelity_samples == 1:
            raise ConfigError(
                "fidelity_samples must be 0 (no fidelity report) or at least 2 (a rank "
                "correlation needs two records), got 1",
                field="fidelity_samples",
            )
        if self.gram_weight > 0 and self.align_batch_size < 2:
            raise ConfigError(
                "gram_weight needs align_batch_size of at least 2 (pairs of samples)",
                field="gram_weight",
            )

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
                f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}", field="recipe"
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


RANGES: dict[str, Range] = {
    "sparsity": Range(ge=0, lt=1),
    "rank_multiple": AT_LEAST_ONE,
    "probe_samples": AT_LEAST_ONE,
    "probe_positions": AT_LEAST_ONE,
    "ridge": POSITIVE,
    "align_steps": NON_NEGATIVE,
    "distill_steps": NON_NEGATIVE,
    "distill_lr": POSITIVE,
    "hidden_weight": NON_NEGATIVE,
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
    "rank_floor": Range(gt=0, le=1),
    "align_epochs": POSITIVE,
    "align_fraction": Range(gt=0, le=1),
    "align_max_length": Range(ge=2),
    "align_fd_step": Range(gt=0, lt=1),
    "ga_weight": NON_NEGATIVE,
    "gram_weight": NON_NEGATIVE,
    "delta_weight": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "fidelity_samples": Range(ge=0, le=100_000),
    "fidelity_targets": Range(gt=0, le=100_000),
}
"""The range of each numeric field of :class:`ProxyConfig` (choices come from its ``Literal``
types); :func:`worker.engine.params.check_params` is the one check. Kept beside the field list
until the fields carry them in their metadata as ``ScoreConfig``'s do; a test fails when a
numeric field has no range."""

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
    "distill_steps": 0,
    "hidden_weight": 0.0,
    "ga_unit": "batch",
    "delta_weight": 0.0,
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
