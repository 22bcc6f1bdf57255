"""The API's request schema and the engine's configs must agree (the API cannot import the
engine, so these lists are kept in two places and checked here)."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Literal, get_args, get_origin, get_type_hints

import pytest
from pydantic import BaseModel, ValidationError

from service.config import DEFAULT_PRESETS
from service.jobs.schemas import ProxySpec, ScorerSpec, SelectionSpec
from worker.engine.errors import ConfigError
from worker.engine.models import PRESETS
from worker.engine.params import Range, choices_of, range_of
from worker.engine.proxy import ProxyConfig
from worker.engine.proxy.config import RANGES as PROXY_RANGES
from worker.engine.scoring import ScoreConfig, SelectionConfig
from worker.tasks.configs import RENAMES, proxy_config, score_config, selection_config


def test_presets_match_the_engine() -> None:
    assert set(DEFAULT_PRESETS) == set(PRESETS)


def test_proxy_spec_fields_exist_in_proxy_config() -> None:
    names = {f.name for f in fields(ProxyConfig)}
    assert set(ProxySpec.model_fields) - {"proxy_id"} <= names
    spec = ProxySpec(method="svd", sparsity=0.3, align_steps=0).model_dump()
    cfg = proxy_config(spec)
    assert (cfg.method, cfg.sparsity, cfg.align_steps) == ("svd", 0.3, 0)
    assert cfg.lr == ProxyConfig().lr  # unset fields keep the engine's defaults
    memory = proxy_config(ProxySpec(checkpointing=True, factor_dtype="float32").model_dump())
    assert (memory.checkpointing, memory.factor_dtype) == (True, "float32")
    distilled = proxy_config(
        ProxySpec(
            distill_steps=5,
            distill_lr=3e-4,
            hidden_weight=2.0,
            ga_unit="sample",
            delta_weight=0.5,
        ).model_dump()
    )
    assert (distilled.distill_steps, distilled.distill_lr, distilled.aligns) == (5, 3e-4, True)
    assert (distilled.hidden_weight, distilled.ga_unit, distilled.delta_weight) == (
        2.0,
        "sample",
        0.5,
    )


def test_proxy_recipe_resolves_in_the_worker_with_overrides() -> None:
    official = proxy_config(ProxySpec(recipe="official").model_dump())
    assert official == ProxyConfig.for_recipe("official")
    assert (official.kl_weight, official.ridge_mode, official.rank_rule) == (
        0.0,
        "absolute",
        "official",
    )
    tuned = proxy_config(ProxySpec(recipe="official", kl_weight=0.5, balance=True).model_dump())
    assert (tuned.kl_weight, tuned.balance, tuned.lr_schedule) == (0.5, True, "constant")
    glob = proxy_config(ProxySpec(rank_allocation="global").model_dump())
    assert (glob.recipe, glob.rank_allocation) == ("iprox", "global")
    with pytest.raises(ValueError, match="recipe"):
        ProxySpec(recipe="paper")  # type: ignore[arg-type]


def test_scorer_and_selection_specs_map_onto_engine_configs() -> None:
    names = {f.name for f in fields(ScoreConfig)}
    # adam is how the job scores its warm-up checkpoints (iter_scores(adam=...)), not a
    # ScoreConfig field.
    assert set(ScorerSpec.model_fields) - {"method", "adam"} <= names
    cfg = score_config(ScorerSpec(method="influence", proj_dim=32).model_dump())
    assert (cfg.scorer, cfg.proj_dim) == ("influence", 32)
    assert set(SelectionSpec.model_fields) == {f.name for f in fields(SelectionConfig)}
    sel = selection_config(SelectionSpec(fraction=0.25).model_dump())
    assert sel.fraction == 0.25 and sel.top_k is None


def test_engine_still_rejects_what_the_api_cannot_see() -> None:
    with pytest.raises(ConfigError):
        proxy_config({"sparsity": 0.5, "probe_samples": 0})


def test_scorer_features_agree_with_the_engine_registry() -> None:
    from typing import get_args

    from service.jobs.schemas import PROJECTED_ONLY
    from worker.engine.scoring.registry import FEATURES, SCORERS

    assert set(get_args(ScorerSpec.model_fields["method"].annotation)) == set(SCORERS)
    features = get_args(ScorerSpec.model_fields["features"].annotation)
    assert {a for f in features for a in get_args(f)} == set(FEATURES)
    assert {n for n, e in SCORERS.items() if e.features == ("projected",)} == PROJECTED_ONLY
    for name, entry in SCORERS.items():
        assert score_config({"method": name}).features == entry.default_features
    assert score_config({"features": "projected"}).features == "projected"


# One definition per setting: each bound of an API field is the engine field's range.

_API_ONLY = {("selection", "top_k"): {"le": 2**31 - 1}}
"""Bounds the API adds for storage, not for the algorithm (a pool's size is a 32-bit column)."""


def _api_bounds(model: type[BaseModel], name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in model.model_fields[name].metadata:
        for key in ("gt", "ge", "lt", "le"):
            if getattr(m, key, None) is not None:
                out[key] = getattr(m, key)
    return out


def _engine_bounds(bounds: Range | None) -> dict[str, float]:
    if bounds is None:
        return {}
    return {
        k: getattr(bounds, k) for k in ("gt", "ge", "lt", "le") if getattr(bounds, k) is not None
    }


def _normalised(bounds: dict[str, float], integer: bool) -> dict[str, float]:
    """``gt=0`` and ``ge=1`` are the same rule for an integer field."""
    if integer and "gt" in bounds:
        bounds = dict(bounds)
        bounds["ge"] = max(bounds.pop("gt") + 1, bounds.get("ge", -math.inf))
    return bounds


SECTIONS: list[tuple[str, type[BaseModel], type, dict[str, Range] | None]] = [
    ("proxy", ProxySpec, ProxyConfig, PROXY_RANGES),
    ("scorer", ScorerSpec, ScoreConfig, None),
    ("selection", SelectionSpec, SelectionConfig, None),
]


@pytest.mark.parametrize(("section", "spec", "config", "ranges"), SECTIONS)
def test_api_fields_take_the_engine_ranges_and_choices(
    section: str, spec: type[BaseModel], config: type, ranges: dict[str, Range] | None
) -> None:
    renames = RENAMES.get(section, {})
    for name in spec.model_fields:
        if (section, name) in (("proxy", "proxy_id"), ("scorer", "adam")):
            continue  # adam is how the job scores warm-up checkpoints, not a ScoreConfig field
        engine = renames.get(name, name)
        integer = int in get_args(get_type_hints(config)[engine]) or (
            get_type_hints(config)[engine] is int
        )
        want = _normalised(_engine_bounds(range_of(config, engine, ranges)), integer)
        want |= _API_ONLY.get((section, name), {})
        if (section, name) == ("scorer", "proj_dim"):
            # The engine's cross-field rule proj_dim >= len(layers), at the API's layers.
            want["ge"] = max(want.get("ge", 0), len(ScoreConfig().layers))
        got = _normalised(_api_bounds(spec, name), integer)
        assert got == want, f"{section}.{name}: API {got}, engine {want}"
        choices = choices_of(config, engine)
        if choices is not None:
            annotation = spec.model_fields[name].annotation
            arms = [a for a in (annotation, *get_args(annotation)) if get_origin(a) is Literal]
            api = {str(c) for arm in arms for c in get_args(arm)}
            assert api == set(choices), f"{section}.{name}: API {sorted(api)}, engine {choices}"


def test_every_numeric_proxy_field_has_a_range() -> None:
    hints = get_type_hints(ProxyConfig)
    for f in fields(ProxyConfig):
        arms = set(get_args(hints[f.name])) or {hints[f.name]}
        if arms & {int, float} and bool not in arms:
            assert range_of(ProxyConfig, f.name, PROXY_RANGES) is not None, f.name


def test_a_bad_value_fails_naming_the_request_field() -> None:
    with pytest.raises(ConfigError) as info:
        score_config({"method": "tracin", "proj_dim": 2})
    assert info.value.field == "scorer.proj_dim"
    assert info.value.message.startswith("scorer.proj_dim must be at least 7")
    with pytest.raises(ConfigError) as info:
        score_config({"method": "nearest"})
    assert info.value.field == "scorer.method"
    with pytest.raises(ConfigError) as info:
        proxy_config({"sparsity": 1.0})
    assert info.value.field == "proxy.sparsity"
    assert "in [0, 1)" in info.value.message
    with pytest.raises(ConfigError) as info:
        selection_config({"top_k": 5, "quota": 0.5})
    assert info.value.field == "selection.quota_field"


def test_sparsity_zero_is_one_rule_in_api_and_engine() -> None:
    # Both keep every layer dense at 0 (a baseline), and both refuse 1.
    assert proxy_config(ProxySpec(sparsity=0.0).model_dump()).sparsity == 0.0
    with pytest.raises(ValidationError):
        ProxySpec(sparsity=1.0)
