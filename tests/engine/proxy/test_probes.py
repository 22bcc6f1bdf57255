"""Probe collection against a per-sequence loop with explicit ``retain_grad``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tests.tiny import ARCHES
from worker.engine.data import Record, collate, encode_all, pad_token_id
from worker.engine.models import LoadedModel
from worker.engine.proxy.lm import loss_positions, sequence_losses
from worker.engine.proxy.probes import collect_probes, sample_positions, select_layers

SUFFIXES = ("q_proj", "v_proj", "down_proj")


def test_sample_positions_takes_a_fixed_number_of_response_positions() -> None:
    labels = torch.full((3, 12), -100)
    labels[0, 4:12] = 7  # 7 loss-bearing logit positions: 3..9 predict 4..10 (11 predicts none)
    labels[1, 10:12] = 7  # only position 9 (and 10) predict response tokens
    labels[2, 1:5] = 7
    rows, cols = sample_positions(labels, 3, torch.Generator().manual_seed(0))
    mask = loss_positions(labels)
    assert bool(mask[rows, cols].all())
    assert torch.bincount(rows, minlength=3).tolist() == [3, 2, 3]
    again = sample_positions(labels, 3, torch.Generator().manual_seed(0))
    assert torch.equal(rows, again[0]) and torch.equal(cols, again[1])


def test_select_layers_matches_whole_name_components(
    make_target: Callable[..., LoadedModel],
) -> None:
    model = make_target("llama").model
    names = list(select_layers(model, ("q_proj", "down_proj")))
    assert len(names) == 4  # 2 decoder layers x 2 suffixes
    assert all(n.endswith(("q_proj", "down_proj")) for n in names)
    assert select_layers(model, ("proj",)) == {}
    assert "lm_head" not in select_layers(model, ("lm_head_not",))


@pytest.mark.parametrize("arch", ARCHES)
def test_batched_probes_equal_per_sequence_loop(
    arch: str, make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target(arch)
    model, tok = target.model, target.tokenizer
    examples = encode_all(records[:5], tok, max_length=64)
    layers = select_layers(model, SUFFIXES)
    # Enough positions per sequence to take every response position: the choice is deterministic.
    probes = collect_probes(
        model,
        layers,
        examples,
        pad_id=pad_token_id(tok),
        positions_per_sequence=10_000,
        batch_size=3,
        seed=0,
    )
    assert all(p.grad is None for p in model.parameters())  # no weight gradient was formed
    name = next(n for n in layers if n.endswith("v_proj"))
    expected_h, expected_d = [], []
    seen: dict[str, torch.Tensor] = {}

    def hook(mod: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        out.retain_grad()
        seen["h"], seen["y"] = args[0], out

    for ex in examples:
        batch = collate([ex], pad_token_id(tok))
        handle = layers[name].register_forward_hook(hook)
        try:
            embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
            logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
            sequence_losses(logits, batch["labels"]).sum().backward()
        finally:
            handle.remove()
        pos = loss_positions(batch["labels"])[0]
        expected_h.append(seen["h"][0, pos].detach())
        assert seen["y"].grad is not None
        expected_d.append(seen["y"].grad[0, pos])
    H, Delta = probes.inputs[name], probes.grads[name]
    n_pos = sum(ex.n_loss_tokens for ex in examples)
    assert H.shape == (layers[name].in_features, n_pos)
    assert Delta.shape == (layers[name].out_features, n_pos)
    torch.testing.assert_close(H, torch.cat(expected_h).T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(Delta, torch.cat(expected_d).T, rtol=1e-3, atol=1e-7)


def test_positions_per_sequence_caps_columns(
    make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    target = make_target("llama")
    examples = encode_all(records[:6], target.tokenizer, max_length=64)
    layers = select_layers(target.model, SUFFIXES)
    probes = collect_probes(
        target.model,
        layers,
        examples,
        pad_id=pad_token_id(target.tokenizer),
        positions_per_sequence=4,
        batch_size=4,
        seed=1,
    )
    assert probes.columns == 6 * 4
    assert all(g.shape[1] == 24 for g in probes.grads.values())


@pytest.mark.parametrize("arch", ARCHES)
def test_a_batch_out_of_memory_is_halved_and_gives_the_smaller_batches_probes(
    arch: str, make_target: Callable[..., LoadedModel], records: list[Record]
) -> None:
    """Passes over more than 2 sequences fail in the last decoder layer (after the first layer's
    hooks captured): the batch of 4 splits into the two batches of 2 a batch size of 2 makes."""
    target = make_target(arch)
    layers = select_layers(target.model, SUFFIXES)
    examples = encode_all(records[:8], target.tokenizer, 48)
    kw = dict(pad_id=pad_token_id(target.tokenizer), positions_per_sequence=6, seed=3)
    small = collect_probes(target.model, layers, examples, batch_size=2, **kw)  # type: ignore[arg-type]
    last = target.model.model.layers[-1]

    def too_big(_m: torch.nn.Module, args: tuple[torch.Tensor, ...], kwargs: dict) -> None:  # type: ignore[type-arg]
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = last.register_forward_pre_hook(too_big, with_kwargs=True)
    try:
        halved = collect_probes(target.model, layers, examples, batch_size=4, **kw)  # type: ignore[arg-type]
        assert halved.halvings == 2  # each batch of 4 split once
        for name in layers:
            assert torch.equal(halved.inputs[name], small.inputs[name]), name
            assert torch.equal(halved.grads[name], small.grads[name]), name
        handle.remove()

        def always(_m: torch.nn.Module, _a: tuple[torch.Tensor, ...], _k: dict) -> None:  # type: ignore[type-arg]
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

        handle = last.register_forward_pre_hook(always, with_kwargs=True)
        with pytest.raises(torch.OutOfMemoryError):  # at one sequence, the error stands
            collect_probes(target.model, layers, examples[:2], batch_size=2, **kw)  # type: ignore[arg-type]
    finally:
        handle.remove()
