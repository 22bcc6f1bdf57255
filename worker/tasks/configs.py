"""From a job's stored request (JSON) to the engine's frozen config dataclasses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.engine.proxy import ProxyConfig
    from worker.engine.scoring import ScoreConfig, SelectionConfig


def proxy_config(spec: dict[str, Any]) -> ProxyConfig:
    """The request's ``proxy`` settings over the engine's defaults (ConfigError if invalid)."""
    from worker.engine.proxy import ProxyConfig

    given = {k: v for k, v in spec.items() if k != "proxy_id" and v is not None}
    return ProxyConfig.from_dict(given)


def score_config(spec: dict[str, Any]) -> ScoreConfig:
    from worker.engine.scoring import ScoreConfig

    # adam is how the job scores its warm-up checkpoints (worker/tasks/steps.py), not a
    # setting of the score function.
    given = {k: v for k, v in spec.items() if v is not None and k != "adam"}
    given["scorer"] = given.pop("method", "tracin")
    return ScoreConfig.from_dict(given)


def selection_config(spec: dict[str, Any]) -> SelectionConfig:
    from worker.engine.scoring import SelectionConfig

    return SelectionConfig(**spec)
