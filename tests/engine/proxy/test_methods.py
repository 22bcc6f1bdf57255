"""The compression-method registry: what each method needs, and that it is the one list."""

from __future__ import annotations

import pytest
import torch

from worker.engine.errors import ConfigError
from worker.engine.params import choices_of
from worker.engine.proxy.compress import factorise
from worker.engine.proxy.config import METHODS as CONFIG_METHODS
from worker.engine.proxy.config import ProxyConfig
from worker.engine.proxy.methods import METHODS, method_entry


def test_the_registry_is_the_configs_list_of_methods() -> None:
    assert tuple(METHODS) == CONFIG_METHODS == choices_of(ProxyConfig, "method")
    assert [n for n, e in METHODS.items() if e.needs_probes] == ["ipsvd"]
    with pytest.raises(ConfigError) as info:
        method_entry("prune")
    assert info.value.field == "method"


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_factorises_to_the_rank_through_the_registry(method: str) -> None:
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(6, 5, generator=gen)
    probe = (torch.randn(5, 40, generator=gen), torch.randn(6, 40, generator=gen))
    config = ProxyConfig(method=method)  # type: ignore[arg-type]
    A, B, error = factorise(W, 2, config, probe, torch.Generator().manual_seed(1))
    assert A.shape == (6, 2) and B.shape == (2, 5)
    assert (error is not None) == METHODS[method].needs_probes


def test_ipsvd_without_probes_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ipsvd needs probes"):
        factorise(torch.ones(4, 4), 1, ProxyConfig(), None, torch.Generator())
