"""Projected per-sample loss gradients from one batched forward/backward pass, via hooks.

The scored parameters and the pass itself are those of :mod:`worker.engine.scoring.hooks`. A
forward hook projects each module's input ``h_t`` with the block's right matrix and the output
hook projects ``delta_t = dL/dy_t`` with the left matrix; the per-sample feature of the block is
``sum_t (left delta_t)(right h_t)^T`` (see :mod:`worker.engine.math.projection`). For a factor of
a low-rank layer the other factor is folded into the projection once, so nothing per token costs
more than the projection.

With Adam preconditioning (:mod:`worker.engine.scoring.precondition`) the update is elementwise
in the gradient, so the hook forms the batch's per-sample gradients of a block
(``batch x rows x cols``, one layer at a time), applies the update and projects it with the same
``p_left``/``p_right``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from worker.engine.errors import ConfigError
from worker.engine.math.exact import per_sample_grads
from worker.engine.math.projection import (
    eigen_decomposition,
    eigen_projection,
    energy_grid_sizes,
    energy_sizes,
    gaussian_projection,
    kron_features,
    kron_sizes,
)
from worker.engine.scoring.hooks import (
    Callbacks,
    hooked_pass,
    model_device,
    per_sample_loss,
    scored_blocks,
    scored_parameters,
    sides,
    target_modules,
)
from worker.engine.scoring.precondition import AdamState

__all__ = [
    "Covariances",
    "Energies",
    "GradBlock",
    "GradientFeaturizer",
    "SideBasis",
    "build_blocks",
    "eigen_bases",
    "per_sample_loss",
    "probe_eigen_bases",
    "scored_parameters",
    "side_covariances",
    "side_energies",
    "target_modules",
]


@dataclass(frozen=True)
class GradBlock:
    """One parameter's gradient block and its projection.

    ``p_left: (k_out, rows)`` and ``p_right: (k_in, cols)`` project the parameter's gradient
    ``(rows, cols)`` as ``p_left G p_right^T``. ``left: (k_out, out)`` and ``right: (k_in, in)``
    are the same projection expressed on the module's output gradients and inputs (for a factor
    of a low-rank layer, the other factor is folded in).
    """

    module: str
    param: str
    p_left: torch.Tensor
    p_right: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.p_left.shape[0] * self.p_right.shape[0])


Covariances = dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]
"""Per scored parameter ``(module, param)``: ``(sum_t l_t l_t^T (rows, rows), sum_t r_t r_t^T
(cols, cols))`` of its gradient's two sides (see :func:`worker.engine.scoring.hooks.sides`)."""


@dataclass(frozen=True)
class SideBasis:
    """One side's covariance eigenvectors ``rows: (d, d)`` (largest first) and eigenvalues
    ``values: (d,)`` (descending, float64), from
    :func:`worker.engine.math.projection.eigen_decomposition`."""

    rows: torch.Tensor
    values: torch.Tensor


Bases = dict[tuple[str, str], tuple[SideBasis, SideBasis]]
"""Per scored parameter, the eigenbasis of each side's covariance (left, right): computed once,
any projection size slices it."""

Allocation = Literal["uniform", "energy"]
"""How a projection's feature budget is split over the gradient blocks: ``uniform``, the same
near-square grid for every block (:func:`worker.engine.math.projection.kron_sizes`);
``energy``, by the blocks' gradient energy on probe records: for an eigen projection, how
much of the expected squared gradient each block's top eigenvectors keep
(:func:`worker.engine.math.projection.energy_sizes`); for a Gaussian one, shares
``~ E_b^(2/3)``, which minimise the projected inner products' variance
(:func:`worker.engine.math.projection.energy_grid_sizes`)."""


def _params_by_module(specs: Sequence[tuple[str, str, tuple[int, int]]]) -> dict[str, list[str]]:
    """The scored parameter names of each module, in :func:`scored_blocks` order."""
    params: dict[str, list[str]] = {}
    for name, param, _ in specs:
        params.setdefault(name, []).append(param)
    return params


def side_covariances(
    model: nn.Module,
    suffixes: Sequence[str],
    batches: Sequence[dict[str, torch.Tensor]],
    only: set[tuple[str, str]] | None = None,
) -> Covariances:
    """Uncentred covariances of both sides of every scored parameter's per-token gradient
    factors (or of the ``only`` ones), summed over the tokens of ``batches`` (the probes of an
    eigen projection)."""
    specs = [b for b in scored_blocks(model, suffixes) if only is None or b[:2] in only]
    modules = dict(model.named_modules())
    device = model_device(model)
    acc: Covariances = {
        (name, param): (
            torch.zeros(rows, rows, device=device),
            torch.zeros(cols, cols, device=device),
        )
        for name, param, (rows, cols) in specs
    }
    params = _params_by_module(specs)

    def on_backward(name: str, delta: torch.Tensor, h: torch.Tensor) -> None:
        for param in params[name]:
            left, right = sides(modules[name], param, delta, h)
            cl, cr = acc[(name, param)]
            lf, rf = left.reshape(-1, left.shape[-1]), right.reshape(-1, right.shape[-1])
            cl.add_(lf.T @ lf)
            cr.add_(rf.T @ rf)

    consumer = Callbacks(list(params), lambda _name, h: h, on_backward)
    for batch in batches:
        hooked_pass(model, batch, [consumer])
    return acc


Energies = dict[tuple[str, str], float]
"""Per scored parameter, ``sum_t |l_t|^2 * sum_t |r_t|^2`` over probe tokens: the scale of its
per-sample gradients' squared norm under the Kronecker-factored model (one number a block)."""


def side_energies(
    model: nn.Module, suffixes: Sequence[str], batches: Sequence[dict[str, torch.Tensor]]
) -> Energies:
    """The :data:`Energies` of every scored parameter over the tokens of ``batches``: what a
    Gaussian projection with ``allocation="energy"`` sizes its blocks by (two sums per block,
    none of the ``out x out`` / ``in x in`` covariances an eigen projection needs)."""
    specs = scored_blocks(model, suffixes)
    modules = dict(model.named_modules())
    device = model_device(model)
    acc = {(name, param): torch.zeros(2, device=device) for name, param, _ in specs}
    params = _params_by_module(specs)

    def on_backward(name: str, delta: torch.Tensor, h: torch.Tensor) -> None:
        for param in params[name]:
            left, right = sides(modules[name], param, delta, h)
            acc[(name, param)].add_(
                torch.stack([left.float().square().sum(), right.float().square().sum()])
            )

    consumer = Callbacks(list(params), lambda _name, h: h, on_backward)
    for batch in batches:
        hooked_pass(model, batch, [consumer])
    return {key: float(v[0].double() * v[1].double()) for key, v in acc.items()}


def eigen_bases(covariances: Covariances, max_rows: int | None = None) -> Bases:
    """The eigenbasis of both sides of every parameter's covariances, each side's top
    ``max_rows`` eigenvectors (and eigenvalues) kept when given, on the CPU."""

    def side(cov: torch.Tensor) -> SideBasis:
        values, rows = eigen_decomposition(cov)
        keep = rows.shape[0] if max_rows is None else min(rows.shape[0], max_rows)
        return SideBasis(rows[:keep].cpu().clone(), values[:keep].cpu().clone())

    return {key: (side(cl), side(cr)) for key, (cl, cr) in covariances.items()}


# Floats of covariances held at once while eigen bases are measured (1 GiB in float32), and the
# eigenvectors kept per side: in a one-off check (32 Dolly probes, 64 tokens; not a recorded
# benchmark) an energy allocation gave no side of SmolLM2 more than 576 at proj_dim 65,536, and
# 1,024 rows of every side of a Qwen2.5-7B-shaped model come to about 10 GB against some 130 GB
# for all the full covariances (computed from the shapes, not measured).
COVARIANCE_BUDGET = 1 << 28
MAX_BASIS_ROWS = 1024


def probe_eigen_bases(
    model: nn.Module,
    suffixes: Sequence[str],
    batches: Sequence[dict[str, torch.Tensor]],
    budget: int = COVARIANCE_BUDGET,
    max_rows: int = MAX_BASIS_ROWS,
) -> Bases:
    """The :func:`eigen_bases` of every scored parameter from the probe ``batches``, at most
    about ``budget`` floats of covariances at a time: the blocks are taken in groups (in model
    order) whose ``rows^2 + cols^2`` fit the budget (a block larger than it alone), each group
    with probe passes of its own, its covariances freed once decomposed. The covariances are
    sums over the same tokens, so the bases do not depend on the grouping."""
    groups: list[set[tuple[str, str]]] = [set()]
    held = 0
    for name, param, (rows, cols) in scored_blocks(model, suffixes):
        size = rows * rows + cols * cols
        if groups[-1] and held + size > budget:
            groups.append(set())
            held = 0
        groups[-1].add((name, param))
        held += size
    bases: Bases = {}
    for group in groups:
        bases |= eigen_bases(side_covariances(model, suffixes, batches, only=group), max_rows)
    return bases


def build_blocks(
    model: nn.Module,
    suffixes: Sequence[str],
    proj_dim: int,
    seed: int,
    bases: Bases | None = None,
    allocation: Allocation = "uniform",
    energies: Energies | None = None,
) -> list[GradBlock]:
    """The projected gradient blocks of ``model``, in module order, on the model's device.

    Without ``bases``: Gaussian matrices fixed by ``seed`` (generated on the CPU, so the
    same on every machine). With ``bases`` (:func:`eigen_bases` of :func:`side_covariances`):
    each side's top eigenvectors (:func:`worker.engine.math.projection.eigen_projection`,
    LoGra's choice), as many per block as ``allocation`` gives it (see :data:`Allocation`).
    A Gaussian projection with ``allocation="energy"`` sizes its blocks by ``energies``
    (:func:`side_energies`; :func:`worker.engine.math.projection.energy_grid_sizes`).
    """
    specs = scored_blocks(model, suffixes)
    if proj_dim < len(specs):
        raise ConfigError(
            f"proj_dim must be at least {len(specs)} for this model (one feature per gradient "
            f"block: {len(specs)} blocks in the layers {', '.join(suffixes)}), got {proj_dim}",
            field="proj_dim",
        )
    if allocation == "energy" and bases is not None:
        spectra = [(bases[(n, p)][0].values, bases[(n, p)][1].values) for n, p, _ in specs]
        sizes = energy_sizes(spectra, proj_dim)
    elif allocation == "energy":
        if energies is None:
            raise ConfigError(
                "projection_allocation 'energy' needs the probes' gradient energies (or an "
                "eigen projection's spectra) to size each block",
                field="projection_allocation",
            )
        shapes = [shape for _, _, shape in specs]
        sizes = energy_grid_sizes(shapes, [energies[(n, p)] for n, p, _ in specs], proj_dim)
    else:
        sizes = kron_sizes([s for _, _, s in specs], proj_dim)
    modules = dict(model.named_modules())
    device = model_device(model)
    blocks = []
    for j, ((name, param, (rows, cols)), (ko, ki)) in enumerate(zip(specs, sizes, strict=True)):
        if bases is None:
            p_left = gaussian_projection(ko, rows, seed=seed * 1_000_003 + 2 * j).to(device)
            p_right = gaussian_projection(ki, cols, seed=seed * 1_000_003 + 2 * j + 1).to(device)
        else:
            bl, br = bases[(name, param)]
            p_left = eigen_projection(bl.rows, ko).to(device)
            p_right = eigen_projection(br.rows, ki).to(device)
        m = modules[name]
        with torch.no_grad():
            if param == "A":  # grad_A = sum delta (B h)^T
                left, right = p_left, p_right @ m.B.float()
            elif param == "B":  # grad_B = sum (A^T delta) h^T
                left, right = p_left @ m.A.float().T, p_right
            else:
                left, right = p_left, p_right
        blocks.append(
            GradBlock(name, param, p_left, p_right, left.contiguous(), right.contiguous())
        )
    return blocks


class GradientFeaturizer:
    """Projected per-sample gradients of ``model`` for collated batches.

    ``dim`` is the feature size (``sum`` of the blocks' ``k_out * k_in``); ``computed`` counts the
    samples featurized so far (the gradient store's reuse test reads it). With ``adam``, each
    gradient is replaced by Adam's update direction under that optimizer state before projection.
    """

    def __init__(
        self,
        model: nn.Module,
        suffixes: Sequence[str],
        proj_dim: int,
        seed: int,
        adam: AdamState | None = None,
        blocks: list[GradBlock] | None = None,
    ) -> None:
        """``blocks``: those of another featurizer of the same model, suffixes, size and seed
        (built here when not given)."""
        self.model = model
        self.blocks = (
            blocks if blocks is not None else build_blocks(model, suffixes, proj_dim, seed)
        )
        self.dim = sum(b.dim for b in self.blocks)
        self.computed = 0
        self.adam = adam
        self._modules = dict(model.named_modules())
        device = model_device(model)
        self.moments = (
            [
                tuple(
                    t.to(device) for t in adam.moments(b.module, self._modules[b.module], b.param)
                )
                for b in self.blocks
            ]
            if adam is not None
            else []
        )
        self._by_module: dict[str, list[tuple[int, GradBlock]]] = {}
        self._offsets: list[int] = []
        start = 0
        for j, b in enumerate(self.blocks):
            self._by_module.setdefault(b.module, []).append((j, b))
            self._offsets.append(start)
            start += b.dim

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Features ``(batch, dim)`` float32 (not normalised) for a batch from ``collate``."""
        self.begin(int(batch["attention_mask"].shape[0]))
        hooked_pass(self.model, batch, [self])
        return self.result()

    # The Consumer protocol of :func:`hooked_pass`: begin, the pass, result.

    def begin(self, n: int) -> None:
        """Make room for the features of the next pass's ``n`` samples."""
        self._out = torch.zeros(n, self.dim, device=model_device(self.model))

    def modules(self) -> list[str]:
        return list(self._by_module)

    def on_forward(self, name: str, h: torch.Tensor) -> object:
        if self.adam is not None:
            return h  # the update is elementwise in the full gradient
        # Raw features need only the projected inputs.
        return [h @ b.right.T for _, b in self._by_module[name]]

    def on_backward(self, name: str, delta: torch.Tensor, state: object) -> None:
        for k, (j, b) in enumerate(self._by_module[name]):
            if self.adam is not None:
                assert isinstance(state, torch.Tensor)
                feat = self._preconditioned(j, b, delta, state)
            else:
                assert isinstance(state, list)
                feat = kron_features(delta @ b.left.T, state[k])
            self._out[:, self._offsets[j] : self._offsets[j] + b.dim] = feat

    def result(self) -> torch.Tensor:
        """The features of the last pass, ``(n, dim)``."""
        self.computed += int(self._out.shape[0])
        return self._out

    def _preconditioned(
        self, j: int, block: GradBlock, delta: torch.Tensor, h: torch.Tensor
    ) -> torch.Tensor:
        """``(batch, dim)`` projected Adam updates of block ``j``; ``delta``/``h`` as the module
        sees them (``h`` already masked). The batch's gradients of this one block are formed
        together (``batch x rows x cols``)."""
        assert self.adam is not None
        left, right = sides(self._modules[block.module], block.param, delta, h)
        m, v = self.moments[j]
        u = self.adam.update(per_sample_grads(left, right), m, v)
        return (block.p_left @ u @ block.p_right.T).reshape(u.shape[0], -1)
