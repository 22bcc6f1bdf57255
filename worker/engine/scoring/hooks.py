"""One batched forward/backward pass that hands each scored layer's per-token vectors to callbacks.

Which layers: every linear layer whose module name ends with one of ``ScoreConfig.layers``. A
dense ``nn.Linear`` contributes its ``weight``; a :class:`LowRankLinear` (a proxy's compressed
layer) contributes its two factors ``A`` and ``B`` (or, in the ``weights`` :data:`GradientSpace`,
their product as one matrix). Biases, norms and embeddings are left out.

How: a forward hook on each such module sees its input ``h_t`` and a tensor hook on its output
sees ``delta_t = dL/dy_t``. The per-sample gradient of a scored parameter is then
``sum_t l_t r_t^T`` with ``(l, r)`` given by :func:`sides`. Weight gradients are never computed:
all parameters are frozen for the pass and only the embedding output requires grad, so autograd
back-propagates activation gradients alone (cheaper than a training step, which also forms every
``out x in`` weight gradient).

Loss: per sample, the mean cross-entropy over its response tokens (LESS's normalisation); the
batch loss is the sum over samples, so each sample's gradient is exactly its own loss gradient.
Inputs at padding positions are zeroed for consumers that need it (:func:`wants_masked`), so
padding contributes nothing; batches are right-padded (``collate``).

Every captured vector is float32 on the model's device, whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn

from worker.engine.data import IGNORE_INDEX
from worker.engine.device import model_device
from worker.engine.errors import ConfigError, NoResponseTokensError
from worker.engine.layers import named_layers
from worker.engine.lowrank import LowRankLinear
from worker.engine.math.nll import response_loss

Block = tuple[str, str, tuple[int, int]]
"""``(module name, parameter name, (rows, cols))`` of one scored parameter."""

GradientSpace = Literal["factors", "weights"]
"""Where a :class:`LowRankLinear` layer's gradient is taken: ``factors``, the gradients of ``A``
and ``B`` (``r (out + in)`` numbers, the paper's proxy features); ``weights``, the gradient of
the product ``A B`` as one ``out x in`` matrix, ``sum_t delta_t h_t^T`` (the target's own
coordinates). Dense layers are scored by their ``weight`` in both."""


def target_modules(model: nn.Module, suffixes: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``nn.Linear`` / ``LowRankLinear`` whose name ends with a suffix."""
    found = named_layers(model, suffixes, (nn.Linear, LowRankLinear))
    if not found:
        raise ConfigError(
            f"the model has no linear layer named like {', '.join(suffixes)}", field="layers"
        )
    return found


def scored_blocks(
    model: nn.Module, suffixes: Sequence[str], space: GradientSpace = "factors"
) -> list[Block]:
    """The scored parameters in module order: ``A`` then ``B`` of a low-rank layer (in the
    ``weights`` space its product, named ``weight``), else ``weight``, each with its shape."""
    out: list[Block] = []
    for name, m in target_modules(model, suffixes):
        if isinstance(m, LowRankLinear) and space == "factors":
            out.append((name, "A", (m.out_features, m.rank)))
            out.append((name, "B", (m.rank, m.in_features)))
        elif isinstance(m, (nn.Linear, LowRankLinear)):
            out.append((name, "weight", (m.out_features, m.in_features)))
    return out


def scored_parameters(model: nn.Module, suffixes: Sequence[str]) -> list[torch.Tensor]:
    """The parameters whose gradients are scored, in :func:`scored_blocks` order."""
    modules = dict(model.named_modules())
    return [getattr(modules[name], param) for name, param, _ in scored_blocks(model, suffixes)]


def sides(
    module: nn.Module, param: str, delta: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(l, r)`` such that the per-sample gradient of ``module.<param>`` is ``sum_t l_t r_t^T``.

    ``delta: (batch, T, out)`` output gradients and ``h: (batch, T, in)`` inputs of the module.
    ``weight``: ``(delta, h)``; factor ``A`` of ``y = A (B h)``: ``(delta, B h)``; factor ``B``:
    ``(A^T delta, h)``.
    """
    if param == "A":
        B: torch.Tensor = module.B  # type: ignore[assignment]
        return delta, h @ B.detach().float().T
    if param == "B":
        A: torch.Tensor = module.A  # type: ignore[assignment]
        return delta @ A.detach().float(), h
    return delta, h


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """All parameters frozen for the block, their ``requires_grad`` flags restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each sample's loss tokens
    (:func:`worker.engine.math.nll.response_loss`).

    Args:
        logits: ``(batch, T, vocab)``; labels: ``(batch, T)`` with ``IGNORE_INDEX`` where no loss.

    Returns:
        ``(batch,)``. Raises ``NoResponseTokensError`` (naming the row) if a row has no loss token
        after the one-position shift.
    """
    try:
        return response_loss(logits, labels, IGNORE_INDEX)
    except ValueError as exc:
        raise NoResponseTokensError(str(exc)) from None


class Consumer(Protocol):
    """What one pass feeds: the modules it wants and the two callbacks.

    ``on_forward(name, h)`` gets a module's masked float32 inputs ``(batch, T, in)`` and returns
    a state kept until ``on_backward(name, delta, state)`` gets the float32 output gradients
    ``(batch, T, out)`` of the same module. Several consumers can share one pass (a benchmark
    computes exact scores and several projections from the same forward/backward).
    """

    def modules(self) -> Iterable[str]: ...

    def on_forward(self, name: str, h: torch.Tensor) -> Any: ...

    def on_backward(self, name: str, delta: torch.Tensor, state: Any) -> None: ...


def wants_masked(consumer: Consumer) -> bool:
    """Whether ``consumer`` needs inputs zeroed at padding (its ``masked`` attribute; default
    True). One that only uses outer products ``delta_t h_t^T`` does not: a causal LM's loss
    never depends on a right-padded position (later positions are padding too, and padding
    carries no label), so ``delta_t`` is exactly zero there and the product vanishes whatever
    ``h_t`` is. Covariances of ``h`` alone do need it."""
    return bool(getattr(consumer, "masked", True))


@dataclass(frozen=True)
class Callbacks:
    """A :class:`Consumer` made of two functions over a fixed set of modules; ``masked``: see
    :func:`wants_masked`."""

    names: Sequence[str]
    forward: Callable[[str, torch.Tensor], Any]
    backward: Callable[[str, torch.Tensor, Any], None]
    masked: bool = True

    def modules(self) -> Iterable[str]:
        return self.names

    def on_forward(self, name: str, h: torch.Tensor) -> Any:
        return self.forward(name, h)

    def on_backward(self, name: str, delta: torch.Tensor, state: Any) -> None:
        self.backward(name, delta, state)


def hooked_pass(
    model: nn.Module, batch: dict[str, torch.Tensor], consumers: Sequence[Consumer]
) -> None:
    """One forward/backward pass of the summed per-sample losses of ``batch`` (from ``collate``,
    moved to the model's device here), feeding every consumer the modules it names."""
    device = model_device(model)
    batch = {k: v.to(device) for k, v in batch.items()}
    mask = batch["attention_mask"]
    keep = mask.unsqueeze(-1).float()
    named = dict(model.named_modules())
    wanted: dict[str, list[Consumer]] = {}
    for c in consumers:
        for name in c.modules():
            wanted.setdefault(name, []).append(c)
    handles = []

    def forward_hook(name: str):  # type: ignore[no-untyped-def]
        flags = [(c, wants_masked(c)) for c in wanted[name]]
        any_masked = any(m for _, m in flags)

        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            raw = inputs[0].detach().float()
            masked = raw * keep if any_masked else raw
            states = [(c, c.on_forward(name, masked if m else raw)) for c, m in flags]

            def on_grad(delta: torch.Tensor) -> None:
                d = delta.detach().float()
                for c, state in states:
                    c.on_backward(name, d, state)

            output.register_hook(on_grad)

        return hook

    def embed_hook(
        _m: nn.Module, _i: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor:
        return output.requires_grad_(True)

    with frozen(model):
        try:
            emb = model.get_input_embeddings()  # type: ignore[operator]
            handles.append(emb.register_forward_hook(embed_hook))
            for name in wanted:
                handles.append(named[name].register_forward_hook(forward_hook(name)))
            logits = model(
                input_ids=batch["input_ids"], attention_mask=mask, use_cache=False
            ).logits
            per_sample_loss(logits, batch["labels"]).sum().backward()
        finally:
            for hd in handles:
                hd.remove()
