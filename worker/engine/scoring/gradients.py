"""Projected per-sample loss gradients from one batched forward/backward pass, via hooks.

Which parameters: every linear layer whose module name ends with one of ``ScoreConfig.layers``.
A dense ``nn.Linear`` contributes its ``weight``; a :class:`LowRankLinear` (a proxy's compressed
layer) contributes its two factors ``A`` and ``B``. Biases, norms and embeddings are left out.

How: a forward hook on each such module projects its input ``h_t`` with the block's right matrix
and a tensor hook on its output projects ``delta_t = dL/dy_t`` with the left matrix; the
per-sample feature of the block is ``sum_t (left delta_t)(right h_t)^T`` (see
:mod:`worker.engine.math.projection`). Weight gradients are never computed: all parameters are
frozen for the pass and only the embedding output requires grad, so autograd back-propagates
activation gradients alone (cheaper than a plain training step, which also forms every
``out x in`` weight gradient).

Loss: per sample, the mean cross-entropy over its response tokens (LESS's normalisation); the
batch loss is the sum over samples, so each sample's gradient is exactly its own loss gradient.
Padding positions are masked out of both the loss and the projected features.

With Adam preconditioning (:mod:`worker.engine.scoring.precondition`) the update is elementwise
in the gradient, so the hook forms each sample's gradient of a block (``rows x cols``, one sample
and one layer at a time), applies the update and projects it with the same ``p_left``/``p_right``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from worker.engine.data import IGNORE_INDEX
from worker.engine.errors import ConfigError, NoResponseTokensError
from worker.engine.lowrank import LowRankLinear
from worker.engine.math.projection import gaussian_projection, kron_sizes
from worker.engine.scoring.precondition import AdamState


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


def target_modules(model: nn.Module, suffixes: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``nn.Linear`` / ``LowRankLinear`` whose name ends with a suffix."""
    found: list[tuple[str, nn.Module]] = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | LowRankLinear) and name.split(".")[-1] in suffixes
    ]
    if not found:
        raise ConfigError(f"the model has no linear layer named like {', '.join(suffixes)}")
    return found


def scored_parameters(model: nn.Module, suffixes: Sequence[str]) -> list[torch.Tensor]:
    """The parameters whose gradients are features: ``A``/``B`` of low-rank layers, else ``weight``."""
    out: list[torch.Tensor] = []
    for _, m in target_modules(model, suffixes):
        if isinstance(m, LowRankLinear):
            out += [m.A, m.B]
        elif isinstance(m, nn.Linear):
            out.append(m.weight)
    return out


def build_blocks(
    model: nn.Module, suffixes: Sequence[str], proj_dim: int, seed: int
) -> list[GradBlock]:
    """The projected gradient blocks of ``model``, in module order; matrices fixed by ``seed``."""
    specs: list[tuple[str, str, tuple[int, int]]] = []
    for name, m in target_modules(model, suffixes):
        if isinstance(m, LowRankLinear):
            specs.append((name, "A", (m.out_features, m.rank)))
            specs.append((name, "B", (m.rank, m.in_features)))
        elif isinstance(m, nn.Linear):
            specs.append((name, "weight", (m.out_features, m.in_features)))
    sizes = kron_sizes([s for _, _, s in specs], proj_dim)
    modules = dict(model.named_modules())
    blocks = []
    for j, ((name, param, (rows, cols)), (ko, ki)) in enumerate(zip(specs, sizes, strict=True)):
        p_left = gaussian_projection(ko, rows, seed=seed * 1_000_003 + 2 * j)
        p_right = gaussian_projection(ki, cols, seed=seed * 1_000_003 + 2 * j + 1)
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


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each sample's loss tokens.

    Args:
        logits: ``(batch, T, vocab)``; labels: ``(batch, T)`` with ``IGNORE_INDEX`` where no loss.

    Returns:
        ``(batch,)``. Raises ``NoResponseTokensError`` (naming the row) if a row has no loss token
        after the one-position shift.
    """
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        row = int((counts == 0).nonzero()[0, 0])
        raise NoResponseTokensError(f"batch row {row}: no response token to compute a loss on")
    ce = nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), target.clamp_min(0), reduction="none"
    )
    return (ce * mask).sum(dim=1) / counts


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
        self.moments = (
            [adam.moments(b.module, self._modules[b.module], b.param) for b in self.blocks]
            if adam is not None
            else []
        )

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Features ``(batch, dim)`` float32 (not normalised) for a batch from ``collate``."""
        mask = batch["attention_mask"]
        n = int(mask.shape[0])
        modules = self._modules
        by_module: dict[str, list[tuple[int, GradBlock]]] = {}
        offsets, start = [], 0
        for j, b in enumerate(self.blocks):
            by_module.setdefault(b.module, []).append((j, b))
            offsets.append(start)
            start += b.dim
        out = torch.zeros(n, self.dim)
        handles = []

        def forward_hook(name: str):  # type: ignore[no-untyped-def]
            def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                h = inputs[0].detach().float() * mask.unsqueeze(-1)
                blocks = by_module[name]
                # Raw features need only the projected inputs; Adam needs the full ones.
                xs = [h @ b.right.T for _, b in blocks] if self.adam is None else []

                def on_grad(delta: torch.Tensor) -> None:
                    full = delta.detach().float()
                    for k, (j, b) in enumerate(blocks):
                        if self.adam is not None:
                            feat = self._preconditioned(j, b, full, h)
                        else:
                            d = full @ b.left.T
                            feat = torch.einsum("bto,bti->boi", d, xs[k]).reshape(n, -1)
                        out[:, offsets[j] : offsets[j] + b.dim] = feat

                output.register_hook(on_grad)

            return hook

        def embed_hook(
            _m: nn.Module, _i: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> torch.Tensor:
            return output.requires_grad_(True)

        with _frozen(self.model):
            try:
                emb = self.model.get_input_embeddings()  # type: ignore[operator]
                handles.append(emb.register_forward_hook(embed_hook))
                for name in by_module:
                    handles.append(modules[name].register_forward_hook(forward_hook(name)))
                logits = self.model(
                    input_ids=batch["input_ids"], attention_mask=mask, use_cache=False
                ).logits
                per_sample_loss(logits, batch["labels"]).sum().backward()
            finally:
                for hd in handles:
                    hd.remove()
        self.computed += n
        return out

    def _preconditioned(
        self, j: int, block: GradBlock, delta: torch.Tensor, h: torch.Tensor
    ) -> torch.Tensor:
        """``(batch, dim)`` projected Adam updates of block ``j``; ``delta``/``h`` as the module
        sees them (``h`` already masked). The full gradient exists for one sample at a time."""
        assert self.adam is not None
        module = self._modules[block.module]
        left, right = delta, h  # the gradient is sum_t left_t right_t^T
        if block.param == "A":
            right = h @ module.B.detach().float().T
        elif block.param == "B":
            left = delta @ module.A.detach().float()
        m, v = self.moments[j]
        rows = []
        for i in range(delta.shape[0]):
            g = left[i].T @ right[i]
            u = self.adam.update(g, m, v)
            rows.append((block.p_left @ u @ block.p_right.T).reshape(-1))
        return torch.stack(rows)


def naive_features(
    model: nn.Module,
    blocks: Sequence[GradBlock],
    batch: dict[str, torch.Tensor],
    adam: AdamState | None = None,
) -> torch.Tensor:
    """Reference twin of :class:`GradientFeaturizer`: one unpadded sample at a time, full autograd
    gradient of every block's parameter (Adam-preconditioned when ``adam``), dense projection
    ``(p_left (x) p_right) vec(G)``. Slow; for tests only."""
    from worker.engine.math.projection import dense_kron_project

    modules = dict(model.named_modules())
    params = [getattr(modules[b.module], b.param) for b in blocks]
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        logits = model(input_ids=batch["input_ids"][i : i + 1, :n], use_cache=False).logits
        loss = per_sample_loss(logits, batch["labels"][i : i + 1, :n]).sum()
        grads = list(torch.autograd.grad(loss, params))
        if adam is not None:
            for k, b in enumerate(blocks):
                m, v = adam.moments(b.module, modules[b.module], b.param)
                grads[k] = adam.update(grads[k], m, v)
        rows.append(
            torch.cat(
                [
                    dense_kron_project(g, b.p_left, b.p_right)
                    for g, b in zip(grads, blocks, strict=True)
                ]
            )
        )
    return torch.stack(rows)
