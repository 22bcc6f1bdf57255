"""Hyperparameters of scoring and selection: frozen dataclasses with help text per field.

Each config is saved next to what it produced (the gradient store's manifest, the scores file's
summary), so a result can always be traced to the settings behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from worker.engine.configio import config_from_dict, config_to_dict
from worker.engine.errors import ConfigError
from worker.engine.layers import DEFAULT_LAYERS
from worker.engine.params import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Range, check_params
from worker.engine.params import param as _help
from worker.engine.scoring.registry import SCORERS, scorer_entry


@dataclass(frozen=True)
class ScoreConfig:
    """How per-sample gradients are computed, projected and turned into scores."""

    scorer: str = _help(
        "; ".join(f"{e.name}: {e.summary}" for e in SCORERS.values()),
        "tracin",
        choices=tuple(SCORERS),  # the registry's scorers
    )
    features: Literal["exact", "projected"] | None = _help(
        "exact: unprojected per-sample gradient inner products and norms (seed-free, about one "
        "forward+backward pass; tracin only); projected: seeded Kronecker-projected features "
        "(kept by the gradient store, needed by influence). Default: the scorer's own (tracin: "
        "exact, influence: projected)",
        None,
    )
    proj_dim: int = _help(
        "projected features only: feature budget d; per-layer Kronecker projections are sized so "
        "their total is as close to d as a near-square grid allows, never above (the exact size "
        "is in the store manifest); at least one feature per gradient block, so at least the "
        "number of layer suffixes",
        8192,
        AT_LEAST_ONE,
    )
    projection: Literal["gaussian", "eigen"] = _help(
        "projected features only: gaussian: seeded random Kronecker factors (unbiased inner "
        "products); eigen: each layer side's top covariance eigenvectors measured on "
        "projection_samples pool records picked by seed (LoGra; the default: with the energy "
        "allocation its scores agree with exact ones at Spearman 0.98-0.99 at 8,192 dims on "
        "SmolLM2, gaussian's at 0.70-0.81, docs/benchmarks.md bench:score)",
        "eigen",
    )
    projection_samples: int = _help(
        "eigen projection or energy allocation only: pool records whose per-token gradient "
        "factors give the covariances or energies (a seeded slice of the whole pool, the same "
        "for every shard)",
        64,
        AT_LEAST_ONE,
    )
    projection_allocation: Literal["uniform", "energy"] = _help(
        "projected features only: how proj_dim is split over the gradient blocks. uniform: the "
        "same near-square grid for every block; energy: by the blocks' gradient energy on "
        "projection_samples probe records picked by seed (eigen: how much of it each block's "
        "top eigenvectors keep; gaussian: shares ~ energy^(2/3), which minimise the variance), "
        "so layers with large gradients get more features than layers with small ones",
        "energy",
    )
    batch_size: int = _help("samples per forward/backward pass", 4, AT_LEAST_ONE)
    max_length: int = _help("tokens per sample; truncation keeps the response", 512, Range(ge=2))
    seed: int = _help(
        "projected features only: seed of the random projection matrices", 0, NON_NEGATIVE
    )
    damping: float = _help(
        "influence only: ridge lambda added to G^T G / n (features unit-norm)", 1e-3, POSITIVE
    )
    normalize: bool = _help(
        "L2-normalise each gradient before scoring (cosine, as LESS); false scores by dot product",
        True,
    )
    shard_size: int = _help(
        "training samples per gradient-store shard (the unit of resume)", 64, AT_LEAST_ONE
    )
    layers: tuple[str, ...] = _help(
        "name suffixes of the linear layers whose gradients are features", DEFAULT_LAYERS
    )

    def __post_init__(self) -> None:
        entry = scorer_entry(self.scorer)
        if self.features is None:
            object.__setattr__(self, "features", entry.default_features)
        elif self.features not in entry.features:
            raise ConfigError(
                f"features: the {self.scorer} scorer scores from "
                f"{' or '.join(entry.features)} features, not {self.features!r}",
                field="features",
            )
        check_params(self)
        if not self.layers:
            raise ConfigError("layers must name at least one linear-layer suffix", field="layers")
        if self.proj_dim < len(self.layers):
            # Each matched layer is at least one gradient block of at least one feature; the
            # model's exact block count is checked when the projection is built.
            raise ConfigError(
                f"proj_dim must be at least {len(self.layers)} (one feature per gradient block, "
                f"and {len(self.layers)} layer suffixes), got {self.proj_dim}",
                field="proj_dim",
            )

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreConfig:
        return config_from_dict(cls, data, "score config")


@dataclass(frozen=True)
class SelectionConfig:
    """Which samples to keep: exactly one of ``top_k``, ``fraction``, ``token_budget``."""

    top_k: int | None = _help("keep the k best-scored samples", None, AT_LEAST_ONE)
    fraction: float | None = _help(
        "keep this fraction (0, 1] of the pool, rounded up", None, FRACTION
    )
    token_budget: int | None = _help(
        "keep best samples while their token total fits this", None, AT_LEAST_ONE
    )
    quota_field: str | None = _help(
        "record field naming a sample's source; with quota, no source exceeds its share", None
    )
    quota: float | None = _help(
        "max share (0, 1] of the selection from any one source", None, FRACTION
    )

    def __post_init__(self) -> None:
        chosen = [n for n in ("top_k", "fraction", "token_budget") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise ConfigError(
                "give exactly one of top_k, fraction, token_budget"
                + (f" (got {', '.join(chosen)})" if chosen else "")
            )
        check_params(self)
        if (self.quota_field is None) != (self.quota is None):
            raise ConfigError(
                "quota_field and quota go together",
                field="quota" if self.quota is None else "quota_field",
            )

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)
