"""Probe collection: each target layer's inputs ``h`` and output gradients ``delta``.

Forward hooks on the chosen ``nn.Linear`` modules keep their inputs at a few sampled
response-token positions per sequence (a fixed number, seeded, so long sequences do not
dominate), and a tensor hook on each output keeps the gradient at the same positions during the
backward pass. Gradients flow from each sequence's mean response loss; sequences in a batch do
not interact, so every probe column belongs to exactly one sequence's loss.

Only the input embeddings are made to require gradients: no weight gradient is formed (or
stored), and the target model's ``requires_grad`` flags are left as they are.

The batches run on the model's device and in its dtype; the captured columns are float32 on
that device (they feed the factorisation there). Positions are drawn on the CPU from a seeded
generator, so the same seed picks the same positions on every device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from worker.engine.checkpointing import checkpointed_layers
from worker.engine.data import Example, batches, collate
from worker.engine.device import model_device, to_device
from worker.engine.layers import named_layers
from worker.engine.progress import ProgressFn, StopFn, check_stop, report
from worker.engine.proxy.lm import all_token_labels, loss_positions, sequence_losses


@dataclass
class Probes:
    """Per layer name: ``inputs[name]: (in, N)`` and ``grads[name]: (out, N)``, float32.
    ``halvings``: batches split in two because the device ran out of memory."""

    inputs: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    sequences: int
    positions_per_sequence: int
    halvings: int = 0

    @property
    def columns(self) -> int:
        return int(next(iter(self.inputs.values())).shape[1]) if self.inputs else 0


def select_layers(model: nn.Module, suffixes: Sequence[str]) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules whose qualified name ends with one of ``suffixes``, in order.

    A suffix matches a whole name component (``proj`` does not match ``q_proj``).
    """
    found = named_layers(model, suffixes, (nn.Linear,))
    return {name: m for name, m in found if isinstance(m, nn.Linear)}


def sample_positions(
    labels: torch.Tensor, per_sequence: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_sequence`` loss-bearing positions of each row, without replacement.

    ``labels: (batch, seq)`` -> ``(rows, cols)``, two ``(n,)`` index tensors on ``labels``'
    device, rows ascending. ``generator`` is a CPU generator (device-independent draws).
    """
    device = labels.device
    mask = loss_positions(labels.cpu())
    rows, cols = [], []
    for b in range(labels.shape[0]):
        pos = mask[b].nonzero().flatten()
        if pos.numel() > per_sequence:
            pick = torch.randperm(pos.numel(), generator=generator, device="cpu")[:per_sequence]
            pos = pos[pick].sort()[0]
        rows.append(torch.full_like(pos, b))
        cols.append(pos)
    return torch.cat(rows).to(device), torch.cat(cols).to(device)


@dataclass
class _Capture:
    rows: torch.Tensor = field(
        default_factory=lambda: torch.empty(0, dtype=torch.long, device="cpu")
    )
    cols: torch.Tensor = field(
        default_factory=lambda: torch.empty(0, dtype=torch.long, device="cpu")
    )
    inputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    grads: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    seen: set[str] = field(default_factory=set)  # layers captured in the current pass

    def marks(self) -> dict[str, tuple[int, int]]:
        return {n: (len(self.inputs[n]), len(self.grads[n])) for n in self.inputs}

    def rollback(self, marks: dict[str, tuple[int, int]]) -> None:
        """Drop what a failed pass captured after ``marks``."""
        for n, (i, g) in marks.items():
            del self.inputs[n][i:], self.grads[n][g:]

    def hook(self, name: str):  # type: ignore[no-untyped-def]
        def forward_hook(
            module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> None:
            # A checkpointed layer runs its forward again in the backward pass: keep the first.
            if name in self.seen:
                return
            self.seen.add(name)
            rows, cols = self.rows, self.cols
            # Detach first: indexing a tensor that requires grad would record (and save) for
            # autograd, which checkpointing counts.
            self.inputs[name].append(args[0].detach()[rows, cols].float())
            if output.requires_grad:
                output.register_hook(
                    lambda g: self.grads[name].append(g[rows, cols].detach().float())
                )

        return forward_hook


def collect_probes(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    examples: Sequence[Example],
    *,
    pad_id: int,
    positions_per_sequence: int,
    batch_size: int,
    seed: int,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    checkpointing: bool = False,
    all_tokens: bool = False,
) -> Probes:
    """One forward/backward pass per batch of ``examples`` over ``model``; see the module doc.
    ``checkpointing``: recompute decoder layers' activations in the backward pass (less
    memory, one more forward; the captures are the same). A batch that runs out of device
    memory is split in two and retried (down to one sequence, where the error is raised);
    the probes are the ones the smaller batches give, and ``halvings`` counts the splits.
    ``all_tokens``: positions and loss over every attended token, not just the response."""
    capture = _Capture(inputs={name: [] for name in layers}, grads={name: [] for name in layers})
    handles = [mod.register_forward_hook(capture.hook(name)) for name, mod in layers.items()]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    embed = model.get_input_embeddings()  # type: ignore[operator]
    device = model_device(model)

    def one_pass(chunk: Sequence[Example]) -> None:
        batch = collate(chunk, pad_id)  # on the CPU: positions are drawn there
        if all_tokens:
            batch["labels"] = all_token_labels(batch)
        capture.rows, capture.cols = sample_positions(
            batch["labels"], positions_per_sequence, generator
        )
        capture.rows, capture.cols = capture.rows.to(device), capture.cols.to(device)
        capture.seen.clear()
        batch = to_device(batch, device)
        with torch.enable_grad(), checkpointed_layers(model, checkpointing):
            embeds = embed(batch["input_ids"]).detach().requires_grad_(True)
            logits = model(
                inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False
            ).logits
            loss = sequence_losses(logits, batch["labels"]).sum()
            torch.autograd.grad(loss, embeds)

    halvings = 0

    def run(chunk: Sequence[Example]) -> None:
        """One pass, or (out of device memory) the two halves one after the other: positions
        are drawn row by row, so the halves draw exactly what the whole would have."""
        nonlocal halvings
        state, marks = generator.get_state(), capture.marks()
        try:
            one_pass(chunk)
            return
        except torch.OutOfMemoryError:
            if len(chunk) == 1:
                raise
        # Outside the handler, so the failed pass's tensors are already freed.
        capture.rollback(marks)
        generator.set_state(state)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        halvings += 1
        run(chunk[: len(chunk) // 2])
        run(chunk[len(chunk) // 2 :])

    done = 0
    try:
        for chunk in batches(examples, batch_size):
            check_stop(should_stop, "compressing")
            run(chunk)
            done += len(chunk)
            report(progress, "compressing", done, len(examples))
    finally:
        for h in handles:
            h.remove()
    inputs = {n: torch.cat(v).T.contiguous() for n, v in capture.inputs.items()}
    # Backward visits layers in reverse and batches append in order: columns line up with inputs.
    grads = {n: torch.cat(v).T.contiguous() for n, v in capture.grads.items()}
    for name in layers:
        if grads[name].shape[1] != inputs[name].shape[1]:
            raise RuntimeError(f"layer {name}: no gradient reached it; is it on the loss path?")
    return Probes(inputs, grads, len(examples), positions_per_sequence, halvings)
