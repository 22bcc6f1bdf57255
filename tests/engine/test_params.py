"""One definition per hyperparameter: ranges checked in one place, CLI flags derived from it."""

from __future__ import annotations

from dataclasses import fields

import pytest

from worker.cli import build_parser
from worker.engine.errors import ConfigError
from worker.engine.params import Range, check_params, range_of
from worker.engine.proxy.config import RANGES, ProxyConfig
from worker.engine.scoring.config import ScoreConfig, SelectionConfig


@pytest.mark.parametrize(
    ("bounds", "inside", "outside", "text"),
    [
        (Range(ge=0, lt=1), [0.0, 0.999], [-0.1, 1.0], "in [0, 1)"),
        (Range(gt=0, le=1), [1e-9, 1.0], [0.0, 1.5], "in (0, 1]"),
        (Range(gt=0), [1e-9], [0.0], "positive"),
        (Range(ge=0), [0], [-1], "non-negative"),
        (Range(ge=2), [2], [1], "at least 2"),
    ],
)
def test_range_contains_and_says_itself(
    bounds: Range, inside: list[float], outside: list[float], text: str
) -> None:
    assert all(bounds.contains(v) for v in inside)
    assert not any(bounds.contains(v) for v in outside)
    assert bounds.describe() == text


def test_one_check_reports_every_problem_and_names_the_first_field() -> None:
    with pytest.raises(ConfigError) as info:
        ProxyConfig(sparsity=1.0, lr=0.0, method="prune")  # type: ignore[arg-type]
    assert info.value.field == "method"
    for part in ("method must be one of ipsvd, svd, random", "sparsity must be in [0, 1)", "lr"):
        assert part in info.value.message
    with pytest.raises(ConfigError) as info:
        ScoreConfig(damping=0.0)
    assert (info.value.field, info.value.message) == (
        "damping",
        "damping must be positive, got 0.0",
    )
    with pytest.raises(ConfigError, match="must be a number"):
        check_params(_bad_batch())


def _bad_batch() -> ScoreConfig:
    cfg = ScoreConfig()
    object.__setattr__(cfg, "batch_size", "four")
    return cfg


def test_proj_dim_below_one_feature_per_layer_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        ScoreConfig(features="projected", proj_dim=2)
    assert info.value.field == "proj_dim"
    assert ScoreConfig(features="projected", proj_dim=2, layers=("q_proj",)).proj_dim == 2


def test_cli_defaults_and_help_are_the_dataclass_fields() -> None:
    parser = build_parser()
    base = ["--model", "m", "--train", "t", "--target", "x", "--out", "o"]
    select = parser.parse_args(["select", *base, "--top-k", "3"])
    score = parser.parse_args(["score", *base])
    proxy = parser.parse_args(["proxy", "build", "--model", "m", "--data", "d", "--out", "o"])
    defaults = ScoreConfig()
    for name in ("proj_dim", "projection", "projection_samples", "batch_size", "seed", "damping"):
        assert getattr(score, name) == getattr(defaults, name) == getattr(select, name), name
    assert score.features is None and score.scorer == defaults.scorer
    for name in ("sparsity", "align_steps", "probe_samples"):
        assert getattr(select, name) == getattr(ProxyConfig(), name), name
    for f in fields(ProxyConfig):
        if not hasattr(proxy, f.name) or f.name in ("target_modules", "checkpointing"):
            continue
        if f.name in ("recipe", "method", "factor_dtype"):
            assert getattr(proxy, f.name) == f.default, f.name
        else:  # unset: the recipe's value (for the default recipe, the field's default)
            assert getattr(proxy, f.name) is None, f.name
    assert select.top_k == 3 and select.fraction is None and SelectionConfig(top_k=3).top_k == 3


def test_a_proxy_range_lives_in_one_table() -> None:
    assert range_of(ProxyConfig, "sparsity", RANGES) == Range(ge=0, lt=1)
    assert range_of(ScoreConfig, "max_length") == Range(ge=2)
