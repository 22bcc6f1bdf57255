"""The scorers the engine has, and what each needs from the rest of the system.

A caller (the CLI, the Celery tasks, the API's schema test) asks an entry instead of matching a
scorer's name: whether its scores need the whole pool at once (so a job cannot be sharded), and
which gradient features it can score from. Adding a scorer means adding an entry here and its
math; nothing in the tasks or the API schema names scorers one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.engine.errors import ConfigError

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
    """Its scores need the whole pool at once (a job scores it as one shard)."""

    @property
    def default_features(self) -> str:
        return self.features[0]


SCORERS: dict[str, ScorerEntry] = {
    "tracin": ScorerEntry(
        "tracin",
        "mean similarity to the target set's gradients (max over several target tasks)",
        features=("exact", "projected"),
        whole_pool=False,
    ),
    "influence": ScorerEntry(
        "influence",
        "g_target^T (G^T G / n + damping I)^-1 g_train with the pool's curvature, in projected "
        "space",
        features=("projected",),
        whole_pool=True,
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
