"""The scorers the engine has, and what each needs from the rest of the system.

A caller (the CLI, the Celery tasks, the score stream, the API's schema test) asks an entry
instead of matching a scorer's name: which gradient features it can score from, whether its
scores need the whole pool at once (the pool's curvature ``G^T G / n``, so a job is one shard),
and how it turns a target task's mean gradient into the direction pool gradients are scored
along. Adding a scorer means adding an entry here and its math (``worker/engine/math/``), and
its name to the API's ``ScorerSpec.method`` (a test checks the two lists agree).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.engine.errors import ConfigError

if TYPE_CHECKING:
    import torch

Direction = Callable[["torch.Tensor", "torch.Tensor | None", float], "torch.Tensor"]
"""``(v: (d,), curvature: (d, d) or None, damping) -> (d,)``: the direction a pool sample's
projected gradient is scored along, from a target task's mean gradient ``v``; ``curvature`` is
the pool's ``G^T G / n`` for a ``whole_pool`` scorer, else ``None``."""

FEATURES = ("exact", "projected")
"""``exact``: unprojected per-sample gradient inner products and norms (seed-free);
``projected``: seeded Kronecker-projected gradient features (storable, needed by curvature)."""


@dataclass(frozen=True)
class ScorerEntry:
    """One scorer: its name, what it computes, and what it needs."""

    name: str
    summary: str
    features: tuple[str, ...]
    """The feature modes it can score from; the first is its default."""
    whole_pool: bool
    """Its scores need the whole pool at once: its direction uses the pool's curvature (a job
    scores it as one shard)."""
    direction: Direction

    @property
    def default_features(self) -> str:
        return self.features[0]


def _mean_direction(v: torch.Tensor, _: torch.Tensor | None, __: float) -> torch.Tensor:
    return v  # TracIn: the mean similarity to the task's gradients is <g, mean(t)>


def _influence_direction(
    v: torch.Tensor, curvature: torch.Tensor | None, damping: float
) -> torch.Tensor:
    from worker.engine.math.scores import influence_direction

    assert curvature is not None  # whole_pool: the stream measured it
    return influence_direction(curvature, v, damping)


SCORERS: dict[str, ScorerEntry] = {
    "tracin": ScorerEntry(
        "tracin",
        "mean similarity to the target set's gradients (max over several target tasks)",
        features=("exact", "projected"),
        whole_pool=False,
        direction=_mean_direction,
    ),
    "influence": ScorerEntry(
        "influence",
        "g_target^T (G^T G / n + damping I)^-1 g_train with the pool's curvature, in projected "
        "space",
        features=("projected",),
        whole_pool=True,
        direction=_influence_direction,
    ),
}


def scorer_entry(name: str) -> ScorerEntry:
    """The entry of scorer ``name``; a ``ConfigError`` naming the choices otherwise."""
    try:
        return SCORERS[name]
    except KeyError:
        raise ConfigError(
            f"scorer must be one of {', '.join(repr(s) for s in SCORERS)}, got {name!r}",
            field="scorer",
        ) from None
