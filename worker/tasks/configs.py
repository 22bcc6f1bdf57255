"""From a job's stored request (JSON) to the engine's frozen config dataclasses.

A request section maps onto one config field for field; the only renames are in ``RENAMES``
(the API's ``scorer.method`` is the engine's ``ScoreConfig.scorer``). A ``ConfigError`` comes out
naming the field as the request spells it (``scorer.proj_dim``), so a failed job says what to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from worker.engine.errors import ConfigError

if TYPE_CHECKING:
    from worker.engine.proxy import ProxyConfig
    from worker.engine.scoring import ScoreConfig, SelectionConfig

T = TypeVar("T")

RENAMES: dict[str, dict[str, str]] = {"scorer": {"method": "scorer"}}
"""Per request section: request field -> engine config field, where the names differ."""


def _given(section: str, spec: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    renames = RENAMES.get(section, {})
    return {renames.get(k, k): v for k, v in spec.items() if k not in skip and v is not None}


def _named(section: str, exc: ConfigError) -> ConfigError:
    back = {engine: api for api, engine in RENAMES.get(section, {}).items()}
    return exc.under(section, back)


def proxy_config(spec: dict[str, Any]) -> ProxyConfig:
    """The request's ``proxy`` settings over the engine's defaults (ConfigError if invalid)."""
    from worker.engine.proxy import ProxyConfig

    given = _given("proxy", spec, skip=("proxy_id",))
    try:
        return ProxyConfig.for_recipe(given.pop("recipe", "iprox"), **given)
    except ConfigError as exc:
        raise _named("proxy", exc) from None


def score_config(spec: dict[str, Any]) -> ScoreConfig:
    """The request's ``scorer`` settings over the engine's defaults (ConfigError if invalid)."""
    from worker.engine.scoring import ScoreConfig

    # adam is how the job scores its warm-up checkpoints (worker/tasks/steps.py), not a
    # setting of the score function.
    given = {k: v for k, v in _given("scorer", spec).items() if k != "adam"}
    try:
        return ScoreConfig.from_dict(given)
    except ConfigError as exc:
        raise _named("scorer", exc) from None


def selection_config(spec: dict[str, Any]) -> SelectionConfig:
    """The request's ``selection`` (ConfigError if invalid)."""
    from worker.engine.scoring import SelectionConfig

    try:
        return SelectionConfig(**_given("selection", spec))
    except ConfigError as exc:
        raise _named("selection", exc) from None


def named_errors(section: str, items: Iterator[T]) -> Iterator[T]:
    """``items``, with a ``ConfigError`` raised while they are produced naming its field as the
    request's ``section`` spells it (the engine finds some limits only once the model is loaded,
    such as a ``proj_dim`` below the model's number of gradient blocks)."""
    try:
        yield from items
    except ConfigError as exc:
        if exc.field is None or "." in exc.field:
            raise
        raise _named(section, exc) from None
