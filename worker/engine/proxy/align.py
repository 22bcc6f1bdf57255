"""Alignment: train only the proxy's factors with ``L_GA + lambda_KL * L_KL``.

``L_GA`` is the mean over compressed layers of ``0.5 [(1 - cos_A) + (1 - cos_B)]``, each
cosine between a proxy factor's gradient and the target's weight gradient pushed into that
factor's space (the authors' per-factor form: unlike one cosine over both factors, it does not
depend on how the factor gauge splits scale between ``A`` and ``B``); ``L_KL`` the
temperature-scaled KL from the target's to the proxy's token distributions over response
tokens. The gradients compared are the batch's mean (``ga_unit: batch``, the authors') or each
record's own, the objective then the mean over the batch (``ga_unit: sample``: what scoring
compares, a record's gradient against the target's). ``delta_weight`` adds ``L_delta``
(:func:`~worker.engine.math.alignment.output_gradient_error`): every compressed layer's
per-token output gradients ``dL/dy`` against the target's, per record. A per-sample gradient is
``sum_t delta_t h_t^T``, and of the two sides the proxy's ``delta`` is the one that loses the
target's ranking (bench:fidelity's mixed-capture rows). ``L_GA`` is a function of gradients, so
its own gradient needs second-order autograd (``create_graph=True`` on the proxy's backward pass); the
target's side is a constant (computed without a graph to the factors).

An optional distillation phase (``distill_steps``) comes first: ``L_KL`` alone, first order,
so a step costs about a training step of the proxy, to bring a heavily compressed proxy's
function back near the target's before its gradients are aligned.

Steps use small batches (single records are noisy), AdamW (optional weight decay), a constant
rate or linear warm-up then cosine decay, and optional gradient-norm clipping. ``align_epochs``
turns the step count into passes over the alignment set.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from worker.engine.checkpointing import checkpointed_layers
from worker.engine.data import Example, collate
from worker.engine.device import model_device
from worker.engine.lowrank import LowRankLinear
from worker.engine.math.alignment import (
    factor_cosines,
    factor_space_targets,
    gradient_alignment_loss,
    output_gradient_error,
)
from worker.engine.progress import ProgressFn, StopFn, check_stop, report
from worker.engine.proxy.compress import factor_modules
from worker.engine.proxy.config import ProxyConfig
from worker.engine.proxy.gram import gram_loss, proxy_gram, target_gram
from worker.engine.proxy.lm import (
    forward_logits,
    forward_states,
    hidden_state_error,
    loss_positions,
    sequence_losses,
    temperature_kl,
)


@dataclass(frozen=True)
class AlignLosses:
    total: torch.Tensor
    ga: torch.Tensor
    kl: torch.Tensor
    cosines: list[tuple[float, float]]
    gram: torch.Tensor | None = None
    delta: torch.Tensor | None = None


@contextmanager
def _requires_grad(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Temporarily let ``params`` take gradients, restoring each flag afterwards."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with eager attention: fused CPU attention kernels have no double backward,
    which ``L_GA`` needs. The previous implementation comes back afterwards, so the saved proxy
    computes exactly as the target's architecture does."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    setter = getattr(model, "set_attn_implementation", None)
    if previous is None or previous == "eager" or setter is None:
        yield
        return
    setter("eager")
    try:
        yield
    finally:
        setter(previous)


@contextmanager
def captured_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """While open, each named module's latest forward output lands in the yielded dict (the
    tensor itself, in the graph: a gradient can be taken with respect to it)."""
    got: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: got.__setitem__(n, out)
        )
        for n in names
    ]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def target_signals(
    target: nn.Module,
    names: Sequence[str],
    batch: dict[str, torch.Tensor],
    *,
    outputs: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The target's logits ``(batch, seq, vocab)``, ``dL/dW`` of each named layer (out, in),
    and with ``outputs`` its output gradients ``dL/dy`` ``(batch, seq, out)`` (else ``[]``),
    where ``L`` is the batch mean of per-sequence response losses. All detached."""
    weights: list[nn.Parameter] = []
    for n in names:
        w = target.get_submodule(n).weight
        assert isinstance(w, nn.Parameter)
        weights.append(w)
    with torch.enable_grad(), _requires_grad(weights), captured_outputs(target, names) as ys:
        logits = forward_logits(target, batch)
        loss = sequence_losses(logits, batch["labels"]).mean()
        wrt = [*weights, *(ys[n] for n in names)] if outputs else weights
        found = [g.detach() for g in torch.autograd.grad(loss, wrt)]
    return logits.detach(), found[: len(weights)], found[len(weights) :]


def alignment_losses(
    target: nn.Module,
    proxy: nn.Module,
    batch: dict[str, torch.Tensor],
    config: ProxyConfig,
    *,
    create_graph: bool,
) -> AlignLosses:
    """``L_GA``, ``L_KL`` (and ``L_delta``, ``L_gram`` when weighted) and their weighted sum
    on one batch.

    With ``create_graph`` the result is differentiable in the factors (for a training step);
    without it, the values are for reporting.
    """
    layers: dict[str, LowRankLinear] = factor_modules(proxy)
    if not layers:
        raise ValueError("the proxy has no low-rank layer to align")
    gram: torch.Tensor | None = None
    delta: torch.Tensor | None = None
    if config.gram_weight > 0:
        t_logits, t_cos, t_grads = target_gram(target, list(layers), batch)
        with torch.enable_grad():
            p_logits, p_cos, p_grads = proxy_gram(proxy, layers, batch)
            gram = gram_loss(p_cos, t_cos)
    else:
        names = list(layers)
        matched = config.delta_weight > 0
        t_logits, t_grads, t_deltas = target_signals(target, names, batch, outputs=matched)
        with torch.enable_grad(), captured_outputs(proxy, names if matched else []) as ys:
            p_logits = forward_logits(proxy, batch)
            p_loss = sequence_losses(p_logits, batch["labels"]).mean()
            params = [t for m in layers.values() for t in (m.A, m.B)]
            wrt = [*params, *(ys[n] for n in names)] if matched else params
            got = list(torch.autograd.grad(p_loss, wrt, create_graph=create_graph))
            p_grads = got[: len(params)]
            if matched:
                delta = output_gradient_error(got[len(params) :], t_deltas)
    with torch.enable_grad():
        cosines = []
        for i, (mod, gW) in enumerate(zip(layers.values(), t_grads, strict=True)):
            tA, tB = factor_space_targets(gW, mod.A, mod.B)
            cosines.append(factor_cosines(p_grads[2 * i], p_grads[2 * i + 1], tA, tB))
        ga = gradient_alignment_loss(cosines)
        kl = temperature_kl(t_logits, p_logits, loss_positions(batch["labels"]), config.temperature)
        total = config.ga_weight * ga + config.kl_weight * kl
        if gram is not None:
            total = total + config.gram_weight * gram
        if delta is not None:
            total = total + config.delta_weight * delta
    return AlignLosses(
        total,
        ga,
        kl,
        [(float(ca.detach()), float(cb.detach())) for ca, cb in cosines],
        gram,
        delta,
    )


def alignment_steps(config: ProxyConfig, records: int) -> int:
    """Optimiser steps: ``align_steps``, or ``ceil(align_epochs * batches per pass)`` (a pass
    is ``records // align_batch_size`` full batches, at least one)."""
    if config.align_epochs is None:
        return config.align_steps
    per_pass = max(1, records // config.align_batch_size)
    return max(1, math.ceil(config.align_epochs * per_pass))


def _rows(batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """``batch`` split into consecutive pieces of at most ``size`` rows."""
    n = int(batch["input_ids"].shape[0])
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]


def _add(
    total: list[torch.Tensor] | None, part: Sequence[torch.Tensor], w: float
) -> list[torch.Tensor]:
    scaled = [w * x.to(torch.promote_types(x.dtype, torch.float32)) for x in part]
    return scaled if total is None else [a + b for a, b in zip(total, scaled, strict=True)]


def finite_difference_gradients(
    target: nn.Module,
    proxy: nn.Module,
    batch: dict[str, torch.Tensor],
    config: ProxyConfig,
    *,
    chunk: int | None = None,
) -> AlignLosses:
    """The gradient of ``L_GA + kl_weight * L_KL`` in the factors without a double backward:
    sets each factor's ``.grad`` and returns the losses (detached).

    ``L_GA`` depends on the factors ``theta`` through the proxy's gradient ``g = dL_p/dtheta``
    (the targets are constants), so its gradient is a Hessian-vector product,
    ``dL_GA/dtheta = H u`` with ``u = dL_GA/dg``, here taken as a forward difference of
    gradients, ``H u ~ (g(theta + eps u) - g(theta)) / eps`` with ``eps`` a fixed fraction
    (``align_fd_step``) of ``|theta| / |u|``: one more first-order forward+backward of the
    proxy instead of a backward through the graph of its backward. ``tests/engine/proxy``
    compares it with the exact double backward.

    Every pass is first order, so the batch can be taken ``chunk`` rows at a time (for a device
    short of memory) with the same result: the batch-mean gradients and the KL over positions
    are accumulated across pieces before the cosines are taken.
    """
    layers: dict[str, LowRankLinear] = factor_modules(proxy)
    if not layers:
        raise ValueError("the proxy has no low-rank layer to align")
    params = [t for m in layers.values() for t in (m.A, m.B)]
    n = int(batch["input_ids"].shape[0])
    pieces = _rows(batch, chunk or n)
    positions = int(loss_positions(batch["labels"]).sum())
    t_grads: list[torch.Tensor] | None = None
    g: list[torch.Tensor] | None = None
    kl_grads: list[torch.Tensor] | None = None
    kl_parts: list[torch.Tensor] = []
    for piece in pieces:
        rows = int(piece["input_ids"].shape[0])
        mask = loss_positions(piece["labels"])
        t_logits, t_part, _ = target_signals(target, list(layers), piece)
        t_grads = _add(t_grads, t_part, rows / n)
        with torch.enable_grad():
            p_logits = forward_logits(proxy, piece)
            p_loss = sequence_losses(p_logits, piece["labels"]).mean()
            keep = config.kl_weight > 0
            g = _add(g, torch.autograd.grad(p_loss, params, retain_graph=keep), rows / n)
            share = int(mask.sum()) / positions
            piece_kl = temperature_kl(t_logits, p_logits, mask, config.temperature)
            kl_parts.append(share * piece_kl.detach())
            if keep:
                part = torch.autograd.grad(config.kl_weight * piece_kl, params)
                kl_grads = _add(kl_grads, part, share)
        del t_logits, p_logits
    assert t_grads is not None and g is not None
    kl = torch.stack(kl_parts).sum()
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_(True) for x in g]
        pairs = []
        for i, (mod, gW) in enumerate(zip(layers.values(), t_grads, strict=True)):
            tA, tB = factor_space_targets(gW, mod.A, mod.B)
            pairs.append(factor_cosines(leaves[2 * i], leaves[2 * i + 1], tA, tB))
        ga = gradient_alignment_loss(pairs)
        u = torch.autograd.grad(config.ga_weight * ga, leaves)
    theta_norm = torch.linalg.vector_norm(torch.stack([p.detach().float().norm() for p in params]))
    u_norm = torch.linalg.vector_norm(torch.stack([x.float().norm() for x in u]))
    hvp: list[torch.Tensor]
    if float(u_norm) == 0.0:
        hvp = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    else:
        eps = config.align_fd_step * float(theta_norm) / float(u_norm)
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, d in zip(params, u, strict=True):
                p.add_(d.to(p.dtype), alpha=eps)
        g2: list[torch.Tensor] | None = None
        try:
            for piece in pieces:
                rows = int(piece["input_ids"].shape[0])
                with torch.enable_grad():
                    shifted = sequence_losses(forward_logits(proxy, piece), piece["labels"]).mean()
                    g2 = _add(g2, torch.autograd.grad(shifted, params), rows / n)
        finally:
            with torch.no_grad():
                for p, w in zip(params, saved, strict=True):
                    p.copy_(w)
        assert g2 is not None
        hvp = [(b - a) / eps for a, b in zip(g, g2, strict=True)]
    for i, (p, h) in enumerate(zip(params, hvp, strict=True)):
        p.grad = (h + kl_grads[i] if kl_grads is not None else h).to(p.dtype)
    total = config.ga_weight * ga.detach() + config.kl_weight * kl
    return AlignLosses(
        total, ga.detach(), kl, [(float(a.detach()), float(b.detach())) for a, b in pairs]
    )


def distill_gradients(
    target: nn.Module,
    proxy: nn.Module,
    batch: dict[str, torch.Tensor],
    config: ProxyConfig,
    params: Sequence[nn.Parameter],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One step of the distillation phase: set each factor's ``.grad`` to the gradient of
    ``L_KL + hidden_weight * L_hidden`` and return ``(that sum, L_KL, L_hidden)`` (detached;
    ``L_hidden`` is None at weight 0). ``L_hidden`` (:func:`hidden_state_error`) matches every decoder
    layer's output on attended positions, so the inputs each compressed layer sees, one factor
    of its per-sample gradients, move toward the target's as well as the output distribution.
    First order: the target runs without a graph, the proxy's backward is a plain one (no
    gradient of a gradient), so a step costs about a training step of the proxy plus a
    forward of the target."""
    mask = loss_positions(batch["labels"])
    hidden = config.hidden_weight > 0
    with torch.no_grad():
        t_logits, t_hidden = forward_states(target, batch, hidden=hidden)
    with torch.enable_grad(), _requires_grad(params):
        p_logits, p_hidden = forward_states(proxy, batch, hidden=hidden)
        kl = temperature_kl(t_logits, p_logits, mask, config.temperature)
        states = (
            hidden_state_error(t_hidden, p_hidden, batch["attention_mask"].bool())
            if hidden
            else None
        )
        loss = kl if states is None else kl + config.hidden_weight * states
        grads = torch.autograd.grad(loss, list(params))
    for p, g in zip(params, grads, strict=True):
        p.grad = g.to(p.dtype)
    return loss.detach(), kl.detach(), None if states is None else states.detach()


def lr_factor(step: int, total: int, warmup_fraction: float, schedule: str = "cosine") -> float:
    """Multiplier of the peak rate at ``step`` (0-based): 1 for ``constant``; for ``cosine``
    linear warm-up, then cosine to zero."""
    if schedule == "constant":
        return 1.0
    warmup = int(warmup_fraction * total)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / span))


def _batches(examples: Sequence[Example], size: int, seed: int) -> Iterator[Sequence[Example]]:
    """Endless shuffled passes over ``examples`` in batches of ``size`` (last short one dropped
    unless the set is smaller than a batch)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=generator, device="cpu").tolist()
        full = max(1, len(order) // size)
        for b in range(full):
            yield [examples[i] for i in order[b * size : (b + 1) * size]]


def align(
    target: nn.Module,
    proxy: nn.Module,
    examples: Sequence[Example],
    config: ProxyConfig,
    *,
    pad_id: int,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> list[dict[str, float]]:
    """Run ``distill_steps`` steps of distillation (:func:`distill_gradients`), then
    :func:`alignment_steps` steps of ``L_GA + kl_weight L_KL`` on ``proxy``'s factors (in
    place); the per-step history of both phases (distillation's entries carry ``distill``)."""
    if not config.aligns:
        return []
    if not examples:
        raise ValueError("alignment needs at least one example")
    steps = alignment_steps(config, len(examples))
    distill = config.distill_steps
    total = distill + steps
    params = [t for m in factor_modules(proxy).values() for t in (m.A, m.B)]
    stream = _batches(examples, config.align_batch_size, config.seed + 1)
    history: list[dict[str, float]] = []
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, steps, config.warmup_fraction, config.lr_schedule),
    )
    # The exact gradient of L_GA is a double backward, which fused CPU attention lacks; the
    # distillation phase is first order and keeps the model's attention.
    attention = eager_attention(proxy) if config.align_hvp == "exact" else nullcontext()
    with (
        checkpointed_layers(proxy, config.checkpointing),
        checkpointed_layers(target, config.checkpointing),
    ):
        report(progress, "aligning", 0, total)  # the stage starts before its first step ends
        if distill:
            run = (progress, should_stop, total)
            _distill(target, proxy, stream, config, pad_id, params, history, run)
        with attention:
            for step in range(distill, total):
                check_stop(should_stop, "aligning")
                _step(target, proxy, next(stream), config, pad_id, params, optimizer, history)
                schedule.step()
                h = history[-1]
                metrics = {"step": step + 1, "L_GA": h["ga"], "KL": h["kl"], "loss": h["loss"]}
                if "gram" in h:
                    metrics["L_gram"] = h["gram"]
                if "delta" in h:
                    metrics["L_delta"] = h["delta"]
                report(progress, "aligning", step + 1, total, metrics)
    for p in params:
        p.grad = None
    return history


def _distill(
    target: nn.Module,
    proxy: nn.Module,
    stream: Iterator[Sequence[Example]],
    config: ProxyConfig,
    pad_id: int,
    params: list[nn.Parameter],
    history: list[dict[str, float]],
    run: tuple[ProgressFn | None, StopFn | None, int],
) -> None:
    """The distillation phase: ``distill_steps`` AdamW steps on ``L_KL`` alone at
    ``distill_lr`` (linear warm-up, cosine decay; weight decay and clipping as alignment's),
    drawing batches from the same stream as the alignment steps after it. Its optimiser state
    is dropped at the end: ``L_GA``'s steps start their own, as they would without this phase.
    ``run``: the progress callback, the stop check and the stage's total steps (both phases)."""
    progress, should_stop, overall = run
    total = config.distill_steps
    optimizer = torch.optim.AdamW(params, lr=config.distill_lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, config.warmup_fraction, "cosine")
    )
    for step in range(total):
        check_stop(should_stop, "aligning")
        batch = collate(next(stream), pad_id, model_device(proxy))
        optimizer.zero_grad(set_to_none=True)
        loss_t, kl_t, states_t = distill_gradients(target, proxy, batch, config, params)
        loss, kl = float(loss_t), float(kl_t)
        grad_norm = _clip(params, config)
        entry = {
            "step": len(history) + 1,
            "distill": 1.0,
            "lr": optimizer.param_groups[0]["lr"],
            "loss": loss,
            "kl": kl,
            "grad_norm": grad_norm,
        }
        metrics = {"step": step + 1, "KL": kl, "loss": loss}
        if states_t is not None:
            entry["hidden"] = metrics["L_hidden"] = float(states_t)
        history.append(entry)
        optimizer.step()
        schedule.step()
        report(progress, "aligning", step + 1, overall, metrics)


def step_gradients(
    target: nn.Module,
    proxy: nn.Module,
    batch: dict[str, torch.Tensor],
    config: ProxyConfig,
    params: Sequence[nn.Parameter],
) -> tuple[AlignLosses, int]:
    """Set the factors' ``.grad`` for one step; the losses and the rows per pass used.

    A batch that runs out of device memory is not shrunk (``L_GA`` is a cosine of batch-mean
    gradients: a smaller batch is a different objective): its passes are split instead, half
    the rows at a time and down to one, by the finite-difference route, whose passes are all
    first order and accumulate exactly. An exact (double backward) step that runs out of
    memory takes that route for the step. The ``gram`` and ``delta`` terms need the whole
    batch's double backward, so there the error is raised. With ``ga_unit: sample`` each record takes its own passes
    (:func:`_per_record_gradients`), so the rows per pass are one.
    """
    n = int(batch["input_ids"].shape[0])
    if config.ga_unit == "sample" and n > 1:
        return _per_record_gradients(target, proxy, batch, config, params), 1
    rows = n
    if config.align_hvp == "exact":
        try:
            losses = alignment_losses(target, proxy, batch, config, create_graph=True)
            losses.total.backward()  # type: ignore[no-untyped-call]
            return losses, n
        except torch.OutOfMemoryError:
            if config.gram_weight > 0 or config.delta_weight > 0 or n == 1:
                raise
        rows = max(1, n // 2)
    while True:
        for p in params:  # a failed pass may have left partial gradients
            p.grad = None
        _free(batch["input_ids"].device)
        try:
            return finite_difference_gradients(target, proxy, batch, config, chunk=rows), rows
        except torch.OutOfMemoryError:
            if rows == 1:
                raise
        rows = max(1, rows // 2)


def _trimmed(batch: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Row ``i`` of a right-padded batch alone, its padding cut off (the same computation)."""
    width = int(batch["attention_mask"][i].sum())
    return {k: v[i : i + 1, :width] for k, v in batch.items()}


def _per_record_gradients(
    target: nn.Module,
    proxy: nn.Module,
    batch: dict[str, torch.Tensor],
    config: ProxyConfig,
    params: Sequence[nn.Parameter],
) -> AlignLosses:
    """``ga_unit: sample``: the factors' ``.grad`` of the mean over the batch's records of each
    record's own objective (``L_GA`` between its proxy and target gradients, plus its KL), one
    pass per record; the losses (and each layer's cosines) are those means."""
    n = int(batch["input_ids"].shape[0])
    total: list[torch.Tensor] | None = None
    parts: list[AlignLosses] = []
    for i in range(n):
        for p in params:
            p.grad = None
        losses, _ = step_gradients(target, proxy, _trimmed(batch, i), config, params)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        total = _add(total, grads, 1.0 / n)
        parts.append(losses)
    assert total is not None
    for p, g in zip(params, total, strict=True):
        p.grad = g.to(p.dtype)

    def mean(values: Sequence[torch.Tensor]) -> torch.Tensor:
        wide = [v.detach().to(torch.promote_types(v.dtype, torch.float32)) for v in values]
        return torch.stack(wide).mean()

    cosines = [
        (sum(c[0] for c in layer) / n, sum(c[1] for c in layer) / n)
        for layer in zip(*(part.cosines for part in parts), strict=True)
    ]
    deltas = [q.delta for q in parts if q.delta is not None]
    return AlignLosses(
        mean([q.total for q in parts]),
        mean([q.ga for q in parts]),
        mean([q.kl for q in parts]),
        cosines,
        delta=mean(deltas) if deltas else None,
    )


def _clip(params: Sequence[nn.Parameter], config: ProxyConfig) -> float:
    """Clip the factors' gradient to ``max_grad_norm`` (0: no clipping); the norm before
    clipping, NaN when not clipped."""
    if config.max_grad_norm <= 0:
        return float("nan")
    return float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _step(
    target: nn.Module,
    proxy: nn.Module,
    chunk: Sequence[Example],
    config: ProxyConfig,
    pad_id: int,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, float]],
) -> None:
    """One optimiser step on one batch; appends its losses to ``history``."""
    batch = collate(chunk, pad_id, model_device(proxy))
    optimizer.zero_grad(set_to_none=True)
    losses, rows = step_gradients(target, proxy, batch, config, params)
    grad_norm = _clip(params, config)
    history.append(
        {
            "step": len(history) + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "loss": float(losses.total.detach()),
            "ga": float(losses.ga.detach()),
            "kl": float(losses.kl.detach()),
            **({"gram": float(losses.gram.detach())} if losses.gram is not None else {}),
            **({"delta": float(losses.delta.detach())} if losses.delta is not None else {}),
            # Rows per pass when the device ran out of memory on the whole batch.
            **({"rows_per_pass": rows} if rows < len(chunk) else {}),
            "grad_norm": grad_norm,
        }
    )
    optimizer.step()
