"""The compression methods a proxy can be built with, and what each needs.

Callers ask an entry instead of matching a method's name: whether it needs probes of the target
(input and output-gradient columns per layer, so a probe set is drawn and collected), and how it
factorises one weight. Adding a method means adding an entry here and its math (in
``worker/engine/math/``); its name goes into ``ProxyConfig.method``'s ``Literal`` and the API's
``ProxySpec.method`` (a test checks that all three agree).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from worker.engine.errors import ConfigError
from worker.engine.math.ipsvd import ipsvd, random_factors, spectrum, svd_factors, whitened_problem
from worker.engine.proxy.config import ProxyConfig

Factors = tuple[torch.Tensor, torch.Tensor, float | None]
"""``A: (out, r)``, ``B: (r, in)`` and the relative influence-weighted error they leave (or
``None`` when the method has no such measure)."""

Probe = tuple[torch.Tensor, torch.Tensor]
"""A layer's probe columns: inputs ``H: (in, N)`` and output gradients ``Delta: (out, N)``."""

Factorise = Callable[[torch.Tensor, int, ProxyConfig, Probe | None, torch.Generator], Factors]
"""``(W: (out, in), rank, config, probe, generator) -> Factors``."""

Spectrum = Callable[[torch.Tensor, ProxyConfig, Probe | None], torch.Tensor]
"""``(W: (out, in), config, probe) -> (min(out, in),)``: the singular values (descending) of
the matrix the method truncates, from which global rank allocation reads each layer's error."""


@dataclass(frozen=True)
class MethodEntry:
    """One compression method: its name, what it does, what it needs, how it factorises."""

    name: str
    summary: str
    needs_probes: bool
    """It weighs the factorisation by probe covariances: a probe set is drawn and collected."""
    factorise: Factorise
    spectrum: Spectrum | None = None
    """None: the method has no spectrum, so ranks can only be allocated per layer."""


def _dtype(config: ProxyConfig) -> torch.dtype:
    return torch.float64 if config.factor_dtype == "float64" else torch.float32


def _ipsvd(
    W: torch.Tensor, rank: int, config: ProxyConfig, probe: Probe | None, _: torch.Generator
) -> Factors:
    if probe is None:
        raise ConfigError("method: ipsvd needs probes (H, Delta); none were collected")
    absolute = config.ridge_mode == "absolute"
    result = ipsvd(W, probe[0], probe[1], rank, config.ridge, _dtype(config), absolute=absolute)
    return result.A, result.B, result.weighted_error


def _ipsvd_spectrum(W: torch.Tensor, config: ProxyConfig, probe: Probe | None) -> torch.Tensor:
    if probe is None:
        raise ConfigError("method: ipsvd needs probes (H, Delta); none were collected")
    absolute = config.ridge_mode == "absolute"
    core, _, _ = whitened_problem(
        W, probe[0], probe[1], config.ridge, _dtype(config), absolute=absolute
    )
    return spectrum(core)


def _svd_spectrum(W: torch.Tensor, config: ProxyConfig, _: Probe | None) -> torch.Tensor:
    return spectrum(W.to(_dtype(config)))


def _svd(
    W: torch.Tensor, rank: int, config: ProxyConfig, _: Probe | None, __: torch.Generator
) -> Factors:
    return (*svd_factors(W, rank, _dtype(config)), None)


def _random(
    W: torch.Tensor, rank: int, config: ProxyConfig, _: Probe | None, generator: torch.Generator
) -> Factors:
    return (*random_factors(W, rank, generator, _dtype(config)), None)


METHODS: dict[str, MethodEntry] = {
    "ipsvd": MethodEntry(
        "ipsvd",
        "influence-preserving SVD: the rank-r factors closest to W under the probes' input and "
        "output-gradient covariances",
        needs_probes=True,
        factorise=_ipsvd,
        spectrum=_ipsvd_spectrum,
    ),
    "svd": MethodEntry(
        "svd",
        "truncated SVD of each weight",
        needs_probes=False,
        factorise=_svd,
        spectrum=_svd_spectrum,
    ),
    "random": MethodEntry(
        "random",
        "each weight restricted to a random input subspace (seeded)",
        needs_probes=False,
        factorise=_random,
    ),
}


def method_entry(name: str) -> MethodEntry:
    """The entry of method ``name``; a ``ConfigError`` naming the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"method must be one of {', '.join(METHODS)}, got {name!r}", field="method"
        ) from None
