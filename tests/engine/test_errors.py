"""The engine boundary: a math function's ValueError reaches callers as a typed error."""

from __future__ import annotations

import pytest

from tests.tiny import tiny_model
from worker.engine.errors import ConfigError, MathError, math_boundary
from worker.engine.math.scores import CurvatureAccumulator
from worker.engine.scoring.gradients import build_blocks


def test_a_math_value_error_becomes_a_math_error_with_a_code() -> None:
    with pytest.raises(MathError) as info, math_boundary():
        CurvatureAccumulator(4).matrix()  # nothing accumulated
    assert info.value.code == "math"
    assert "no training features" in info.value.message
    assert isinstance(info.value.__cause__, ValueError)


def test_a_value_error_outside_math_is_a_bug_and_passes_on() -> None:
    with pytest.raises(ValueError, match="not math"), math_boundary():
        raise ValueError("not math")


def test_proj_dim_below_the_models_blocks_is_a_config_error() -> None:
    model, _ = tiny_model("llama")  # two decoder layers: four blocks for two suffixes
    with pytest.raises(ConfigError) as info:
        build_blocks(model, ("q_proj", "v_proj"), 3, seed=0)
    assert info.value.field == "proj_dim"
    assert "at least" in info.value.message
