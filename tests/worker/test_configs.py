"""The API's request schema and the engine's configs must agree (the API cannot import the
engine, so these lists are kept in two places and checked here)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from service.config import DEFAULT_PRESETS
from service.jobs.schemas import ProxySpec, ScorerSpec, SelectionSpec
from worker.engine.errors import ConfigError
from worker.engine.models import PRESETS
from worker.engine.proxy import ProxyConfig
from worker.engine.scoring import ScoreConfig, SelectionConfig
from worker.tasks.configs import proxy_config, score_config, selection_config


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
