"""Exact TracIn scores: per-sample gradient inner products and norms without projection.

A target task collapses to one vector per scored parameter, ``v = mean_j g_j / |g_j|`` (cosine
scores) or ``mean_j g_j`` (dot scores). It is built exactly in two passes over the task: one for
the per-sample norms ``|g_j|``, one that sums ``g_j / (n |g_j|)`` per parameter from the captured
per-token vectors (the same sum a backward of ``sum_j L_j / (n |g_j|)`` would accumulate).

A pool sample's score is then ``<g_i, v> / |g_i|`` (or ``<g_i, v>``), the inner product and the
squared norm each summed over every scored parameter first: one gradient vector per sample, the
quantity the projected features estimate. Per parameter, both come from the captured vectors in
:mod:`worker.engine.math.exact` at about the cost of the layer's forward, so scoring costs about
one forward+backward pass and no random projection enters: the scores do not depend on a seed.

With Adam preconditioning the update is elementwise in the gradient, so the batch's per-sample
gradients of one parameter are formed together (``batch x rows x cols``), updated, and their
inner products and norms taken exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from worker.engine.errors import ConfigError
from worker.engine.lowrank import LowRankLinear
from worker.engine.math.exact import (
    form_for_scores,
    inner_products,
    per_sample_grads,
    scores_of_formed,
    sq_norms,
    weighted_grad_sum,
)
from worker.engine.scoring.hooks import (
    Block,
    Callbacks,
    Consumer,
    GradientSpace,
    hooked_pass,
    model_device,
    scored_blocks,
    sides,
)
from worker.engine.scoring.precondition import AdamState

OnBlock = Callable[[int, torch.Tensor, torch.Tensor], None]
"""``(scored parameter index j, l (batch, T, rows), r (batch, T, cols))``."""

TargetVectors = list[torch.Tensor]
"""Per scored parameter (in :func:`scored_blocks` order), ``(K, rows, cols)``: K target tasks."""


def default_formed_budget(model: nn.Module) -> int:
    """Floats of formed per-sample gradients made at once by default
    (:func:`~worker.engine.math.exact.scores_of_formed` tiles rows to fit). On the CPU, 2^20
    (4 MB: a tile is formed, dotted and normed while in cache; a one-off side-by-side timing on
    SmolLM2 at 64 tokens, batch 8, 2 threads, not a recorded benchmark, found 2^18 and 2^20
    equally fast and larger tiles slower); on an accelerator, 2^26 (fewer, larger kernels). The
    exact scorer's cost against a bare forward+backward is in docs/benchmarks.md
    (bench:score)."""
    return 1 << 20 if model_device(model).type == "cpu" else 1 << 26


class ExactScorer:
    """Exact per-sample gradient inner products with target vectors, and squared norms.

    Per layer and batch the cheaper route is taken: when scoring,
    :func:`~worker.engine.math.exact.form_for_scores` (each sample's gradient formed, at most
    ``formed_budget`` floats of them at once) against the Gram route (``V r_t`` products and Gram
    norms); for norms alone, :func:`~worker.engine.math.exact.use_gram`. ``formed`` and ``gram``
    force one side (tests); ``None`` lets the cost rule choose. ``space``: where a proxy's
    low-rank layers are scored (:data:`~worker.engine.scoring.hooks.GradientSpace`).
    """

    def __init__(
        self,
        model: nn.Module,
        suffixes: Sequence[str],
        adam: AdamState | None = None,
        gram: bool | None = None,
        formed: bool | None = None,
        formed_budget: int | None = None,
        space: GradientSpace = "factors",
    ) -> None:
        self.model = model
        self.formed = formed
        self.formed_budget = (
            formed_budget if formed_budget is not None else default_formed_budget(model)
        )
        self.blocks: list[Block] = scored_blocks(model, suffixes, space)
        self._modules = dict(model.named_modules())
        if adam is not None and any(
            param == "weight" and isinstance(self._modules[name], LowRankLinear)
            for name, param, _ in self.blocks
        ):
            raise ConfigError(
                "gradient_space weights has no Adam moments to precondition with (the proxy "
                "trained its factors, not their product): use gradient_space factors",
                field="gradient_space",
            )
        self.adam = adam
        self.gram = gram
        self.computed = 0
        self._by_module: dict[str, list[int]] = {}
        for j, (name, _, _) in enumerate(self.blocks):
            self._by_module.setdefault(name, []).append(j)
        device = model_device(model)
        self._moments = (
            [
                tuple(t.to(device) for t in adam.moments(name, self._modules[name], param))
                for name, param, _ in self.blocks
            ]
            if adam is not None
            else []
        )

    def _pass(self, batch: dict[str, torch.Tensor], on_block: OnBlock) -> None:
        """Run one hooked pass, calling ``on_block(j, l, r)`` for every scored parameter ``j``."""
        hooked_pass(self.model, batch, [self.consumer(on_block)])

    def consumer(self, on_block: OnBlock) -> Consumer:
        """A consumer of :func:`hooked_pass` calling ``on_block(j, l, r)`` per scored parameter."""

        def on_backward(name: str, delta: torch.Tensor, h: torch.Tensor) -> None:
            module = self._modules[name]
            for j in self._by_module[name]:
                left, right = sides(module, self.blocks[j][1], delta, h)
                on_block(j, left, right)

        # Only outer products of (delta, h) are taken: padding needs no mask (wants_masked).
        return Callbacks(list(self._by_module), lambda _name, h: h, on_backward, masked=False)

    def norms(self, n: int) -> tuple[Consumer, torch.Tensor]:
        """A consumer for a pass over ``n`` samples and the ``|g_i|^2`` ``(n,)`` it fills (raw
        gradients, never preconditioned)."""
        total = torch.zeros(n, device=model_device(self.model))

        def on_block(_j: int, left: torch.Tensor, right: torch.Tensor) -> None:
            total.add_(sq_norms(left, right, self.gram))

        return self.consumer(on_block), total

    def sq_norms(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``|g_i|^2`` of the raw gradients: ``(batch,)`` float32."""
        consumer, total = self.norms(int(batch["attention_mask"].shape[0]))
        hooked_pass(self.model, batch, [consumer])
        return total

    def target_vectors(
        self,
        tasks: Sequence[Iterable[dict[str, torch.Tensor]]],
        normalize: bool,
        sq: Sequence[Sequence[torch.Tensor]] | None = None,
    ) -> TargetVectors:
        """Stack one vector per task: ``mean_j g_j / |g_j|`` (``normalize``) or ``mean_j g_j``
        over the task's samples, given each task as an iterable of collated batches. Target
        gradients are raw (LESS), whatever ``adam`` is. With ``normalize``, the squared norms
        take a pass of their own unless ``sq`` gives them (per task, per batch)."""
        per_task = []
        for k, batches in enumerate(tasks):
            batches = list(batches)
            sums = self.task_sums()
            count = sum(int(b["attention_mask"].shape[0]) for b in batches)
            for i, batch in enumerate(batches):
                given = sq[k][i] if sq is not None else None
                self.accumulate(sums, batch, count, normalize, given)
            per_task.append(sums)
        return stack_tasks(per_task)

    def task_sums(self) -> list[torch.Tensor]:
        """Zeros shaped like every scored parameter: one task's vector to :meth:`accumulate`."""
        device = model_device(self.model)
        return [torch.zeros(shape, device=device) for _, _, shape in self.blocks]

    def accumulate(
        self,
        sums: list[torch.Tensor],
        batch: dict[str, torch.Tensor],
        count: int,
        normalize: bool,
        sq: torch.Tensor | None = None,
    ) -> None:
        """Add ``sum_i g_i / (count |g_i|)`` (or ``g_i / count``) of ``batch`` into ``sums``;
        ``count`` is the task's size. With ``normalize``, the squared norms take a pass of
        their own unless ``sq`` gives them."""
        device = model_device(self.model)
        n = int(batch["attention_mask"].shape[0])
        weights = torch.full((n,), 1.0 / count, device=device)
        if normalize:
            norms = (sq.to(device) if sq is not None else self.sq_norms(batch)).sqrt()
            # a zero gradient has no direction: it adds nothing (its cosine is 0)
            weights = torch.where(norms > 0, weights / norms.clamp_min(1e-30), 0.0)

        def on_block(j: int, left: torch.Tensor, right: torch.Tensor) -> None:
            sums[j].add_(weighted_grad_sum(left, right, weights))

        self._pass(batch, on_block)

    def scoring(
        self, n: int, vectors: TargetVectors
    ) -> tuple[Consumer, tuple[torch.Tensor, torch.Tensor]]:
        """A consumer for a pass over ``n`` samples and the ``(inner (n, K), sq (n,))`` tensors
        it fills (see :meth:`__call__`)."""
        device = model_device(self.model)
        inner = torch.zeros(n, vectors[0].shape[0], device=device)
        sq = torch.zeros(n, device=device)

        def on_block(j: int, left: torch.Tensor, right: torch.Tensor) -> None:
            if self.adam is None:
                tokens, rows, cols = left.shape[1], left.shape[2], right.shape[2]
                tasks = int(vectors[j].shape[0])
                formed = (
                    form_for_scores(tokens, rows, cols, tasks)
                    if self.formed is None
                    else self.formed
                )
                if formed:
                    i, s2 = scores_of_formed(left, right, vectors[j], self.formed_budget)
                    inner.add_(i)
                    sq.add_(s2)
                else:
                    inner.add_(inner_products(left, right, vectors[j]))
                    sq.add_(sq_norms(left, right, self.gram))
                return
            m, v = self._moments[j]
            u = self.adam.update(per_sample_grads(left, right), m, v)
            inner.add_(torch.einsum("bij,kij->bk", u, vectors[j]))
            sq.add_(u.pow(2).sum(dim=(1, 2)))

        return self.consumer(on_block), (inner, sq)

    def __call__(
        self, batch: dict[str, torch.Tensor], vectors: TargetVectors
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(<g_i, v_k> (batch, K), |g_i|^2 (batch,))`` summed over every scored parameter;
        ``g_i`` is Adam's update direction under ``adam`` when one is set."""
        n = int(batch["attention_mask"].shape[0])
        consumer, out = self.scoring(n, vectors)
        hooked_pass(self.model, batch, [consumer])
        self.computed += n
        return out


def stack_tasks(per_task: Sequence[list[torch.Tensor]]) -> TargetVectors:
    """Per scored parameter, the tasks' vectors stacked: ``(K, rows, cols)``."""
    return [torch.stack([t[j] for t in per_task]) for j in range(len(per_task[0]))]


def cosine_or_dot(inner: torch.Tensor, sq: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Scores ``(batch, K)`` from :meth:`ExactScorer.__call__`'s output: ``<g, v> / |g|``
    (a zero gradient scores 0) or ``<g, v>``."""
    if not normalize:
        return inner
    return inner / sq.sqrt().clamp_min(1e-30).unsqueeze(1)
