"""Every engine config survives the JSON round trip its manifests rely on."""

from __future__ import annotations

import json

import pytest

from worker.engine.errors import ConfigError
from worker.engine.proxy import ProxyConfig
from worker.engine.scoring import ScoreConfig
from worker.engine.train import FinetuneConfig


@pytest.mark.parametrize(
    "config",
    [
        ProxyConfig(sparsity=0.3, target_modules=("q_proj", "v_proj")),
        ScoreConfig(proj_dim=512, layers=("o_proj",)),
        FinetuneConfig(save_steps=(2, 4)),
    ],
)
def test_json_round_trip(config: ProxyConfig | ScoreConfig | FinetuneConfig) -> None:
    saved = json.loads(json.dumps(config.to_dict()))
    assert type(config).from_dict(saved) == config
    with pytest.raises(ConfigError, match=r"unknown field\(s\) extra"):
        type(config).from_dict({**saved, "extra": 1})
