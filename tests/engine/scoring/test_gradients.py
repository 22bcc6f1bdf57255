"""The hook-based projected gradients against the naive per-sample autograd loop."""

from __future__ import annotations

import pytest
import torch

from tests.engine.scoring.naive import naive_features
from tests.tiny import ARCHES, tiny_model
from worker.engine.data import collate, encode, pad_token_id, record_from_obj
from worker.engine.errors import ConfigError, NoResponseTokensError
from worker.engine.lowrank import LowRankLinear
from worker.engine.math.projection import kron_relative_variance
from worker.engine.scoring.gradients import (
    Allocation,
    GradientFeaturizer,
    build_blocks,
    eigen_bases,
    per_sample_loss,
    probe_eigen_bases,
    scored_parameters,
    side_covariances,
    side_energies,
    target_modules,
)

LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _batch(tok, n: int = 3) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    # Different lengths, so the batch is padded and the padding must contribute nothing.
    recs = [
        record_from_obj(
            {"prompt": "say it " * (i + 1), "completion": "fine ok " * (2 * i + 1)}, i, "t"
        )
        for i in range(n)
    ]
    return collate([encode(r, tok, 96) for r in recs], pad_token_id(tok))


def _low_rank(model: torch.nn.Module, rank: int) -> None:
    """Replace every MLP down_proj with its rank-``rank`` SVD, as a proxy would."""
    for layer in model.model.layers:  # type: ignore[union-attr]
        w = layer.mlp.down_proj.weight.detach()
        U, S, Vh = torch.linalg.svd(w, full_matrices=False)
        layer.mlp.down_proj = LowRankLinear(U[:, :rank] * S[:rank], Vh[:rank])


@pytest.mark.parametrize("arch", ARCHES)
def test_projected_gradients_match_naive_per_sample_loop(arch) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_model(arch)
    batch = _batch(tok)
    assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()
    feat = GradientFeaturizer(model, LAYERS, proj_dim=2048, seed=0)
    fast = feat(batch)
    slow = naive_features(model, feat.blocks, batch)
    assert fast.shape == (3, feat.dim) and feat.dim <= 2048
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-4), float((fast - slow).abs().max())
    assert feat.computed == 3
    # the pass leaves the model's trainable flags as they were
    assert all(p.requires_grad for p in model.parameters())


def test_low_rank_factors_match_naive_gradients_of_a_and_b() -> None:
    model, tok = tiny_model("llama")
    _low_rank(model, rank=8)
    feat = GradientFeaturizer(model, LAYERS, proj_dim=1536, seed=1)
    params = {(b.module.split(".")[-1], b.param) for b in feat.blocks}
    assert ("down_proj", "A") in params and ("down_proj", "B") in params
    assert ("down_proj", "weight") not in params
    batch = _batch(tok)
    fast = feat(batch)
    slow = naive_features(model, feat.blocks, batch)
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-4), float((fast - slow).abs().max())


def test_features_do_not_depend_on_batch_composition() -> None:
    model, tok = tiny_model("qwen2")
    feat = GradientFeaturizer(model, LAYERS, proj_dim=512, seed=0)
    batch = _batch(tok)
    together = feat(batch)
    alone = feat({k: v[2:3] for k, v in batch.items()})
    assert torch.allclose(together[2], alone[0], atol=1e-5)


def test_seed_fixes_the_projection() -> None:
    model, tok = tiny_model("llama")
    batch = _batch(tok, 2)
    a = GradientFeaturizer(model, LAYERS, 512, seed=0)(batch)
    b = GradientFeaturizer(model, LAYERS, 512, seed=0)(batch)
    c = GradientFeaturizer(model, LAYERS, 512, seed=1)(batch)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_unknown_layer_names_and_rows_without_loss_are_errors() -> None:
    model, _ = tiny_model("llama")
    with pytest.raises(ConfigError, match="no linear layer named like"):
        target_modules(model, ("c_attn",))
    labels = torch.tensor([[1, 2, 3], [5, -100, -100]])
    with pytest.raises(NoResponseTokensError, match="batch row 1"):
        per_sample_loss(torch.zeros(2, 3, 8), labels)


def test_projected_inner_products_of_real_gradients_within_jl_tolerance() -> None:
    """At the default d = 8192, projected inner products of a real (tiny) model's per-sample
    gradients are within 3 sigma of the exact ones (sigma from the scheme's worst-case per-block
    variance), and their mean over 8 seeds is within 3 sigma / sqrt(8) (the estimator is unbiased)."""
    model, tok = tiny_model("llama", seed=3)
    batch = _batch(tok, 5)
    params = scored_parameters(model, LAYERS)
    grads = []
    for i in range(5):
        n = int(batch["attention_mask"][i].sum())
        logits = model(input_ids=batch["input_ids"][i : i + 1, :n]).logits
        loss = per_sample_loss(logits, batch["labels"][i : i + 1, :n]).sum()
        grads.append(torch.autograd.grad(loss, params))
    full = torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in grads])
    scale = torch.outer(full.norm(dim=1), full.norm(dim=1))
    exact = (full @ full.T) / scale
    estimates = []
    for seed in range(8):
        feat = GradientFeaturizer(model, LAYERS, proj_dim=8192, seed=seed)
        f = feat(batch)
        estimates.append((f @ f.T) / scale)
    var = torch.zeros(5, 5)
    for j, b in enumerate(feat.blocks):
        block = torch.stack([gs[j].norm() for gs in grads])
        ratio = kron_relative_variance(b.p_left.shape[0], b.p_right.shape[0])
        var += ratio * torch.outer(block, block) ** 2 / scale**2
    sigma = var.sqrt()
    assert bool(((estimates[0] - exact).abs() <= 3 * sigma).all())
    mean = torch.stack(estimates).mean(dim=0)
    assert bool(((mean - exact).abs() <= 1.1 * sigma).all())


def _eigen_featurizer(
    model: torch.nn.Module,
    batches: list,  # type: ignore[type-arg]
    proj_dim: int,
    allocation: Allocation = "uniform",
) -> GradientFeaturizer:
    bases = eigen_bases(side_covariances(model, LAYERS, batches))
    blocks = build_blocks(model, LAYERS, proj_dim, seed=0, bases=bases, allocation=allocation)
    return GradientFeaturizer(model, LAYERS, proj_dim, seed=0, blocks=blocks)


@pytest.mark.parametrize("allocation", ["uniform", "energy"])
@pytest.mark.parametrize("low_rank", [False, True])
def test_eigen_projected_gradients_match_the_naive_loop(
    low_rank: bool, allocation: Allocation
) -> None:
    model, tok = tiny_model("qwen2", seed=1)
    if low_rank:
        _low_rank(model, rank=8)
    batch = _batch(tok, 4)
    feat = _eigen_featurizer(model, [batch], proj_dim=1024, allocation=allocation)
    assert feat.dim <= 1024
    fast = feat(batch)
    slow = naive_features(model, feat.blocks, batch)
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-4), float((fast - slow).abs().max())
    for b in feat.blocks:  # orthonormal rows: an orthogonal projection, not a random one
        k = b.p_left.shape[0]
        torch.testing.assert_close(b.p_left @ b.p_left.T, torch.eye(k), atol=1e-4, rtol=0)


def test_side_covariances_are_sums_over_real_tokens() -> None:
    model, tok = tiny_model("llama", seed=0)
    batch = _batch(tok, 3)
    name = "model.layers.1.mlp.down_proj"
    cov = side_covariances(model, LAYERS, [batch])
    captured: list[torch.Tensor] = []
    module = dict(model.named_modules())[name]
    handle = module.register_forward_hook(lambda _m, i, _o: captured.append(i[0].detach()))
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    h = captured[0][batch["attention_mask"].bool()]  # real tokens only
    torch.testing.assert_close(cov[(name, "weight")][1], h.T @ h, rtol=1e-5, atol=1e-5)


def test_a_full_eigen_basis_gives_exact_inner_products() -> None:
    """With every side kept whole, the orthogonal projection loses nothing: the projected inner
    products are the gradients' exact ones."""
    model, tok = tiny_model("llama", seed=3)
    batch = _batch(tok, 3)
    params = scored_parameters(model, LAYERS)
    full_dim = sum(p.numel() for p in params)
    feat = _eigen_featurizer(model, [batch], proj_dim=10**6)  # every side kept whole
    assert feat.dim == full_dim
    f = feat(batch).double()
    rows = []
    for i in range(3):
        n = int(batch["attention_mask"][i].sum())
        logits = model(input_ids=batch["input_ids"][i : i + 1, :n]).logits
        loss = per_sample_loss(logits, batch["labels"][i : i + 1, :n]).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    g = torch.stack(rows).double()
    torch.testing.assert_close(f @ f.T, g @ g.T, rtol=1e-4, atol=1e-8)


def test_energy_allocation_sizes_blocks_by_their_spectra_and_needs_eigen_bases() -> None:
    model, tok = tiny_model("llama", seed=0)
    batch = _batch(tok, 3)
    uniform = _eigen_featurizer(model, [batch], proj_dim=512)
    energy = _eigen_featurizer(model, [batch], proj_dim=512, allocation="energy")
    sizes = {(b.p_left.shape[0], b.p_right.shape[0]) for b in energy.blocks}
    assert len(sizes) > 1  # not one grid for every block
    assert sum(b.dim for b in energy.blocks) <= 512
    # it keeps more of the probes' own squared gradients than the uniform grid
    f_u, f_e = uniform(batch), energy(batch)
    assert float((f_e**2).sum()) > float((f_u**2).sum())
    with pytest.raises(ConfigError, match="projection_allocation") as err:
        build_blocks(model, LAYERS, 512, seed=0, allocation="energy")  # neither bases nor energies
    assert err.value.field == "projection_allocation"


def test_side_energies_are_the_two_sides_sums_of_squares() -> None:
    model, tok = tiny_model("llama", seed=0)
    batch = _batch(tok, 3)
    cov = side_covariances(model, LAYERS, [batch])
    energies = side_energies(model, LAYERS, [batch])
    assert set(energies) == set(cov)
    for key, (cl, cr) in cov.items():
        want = float(torch.trace(cl).double() * torch.trace(cr).double())
        assert energies[key] == pytest.approx(want, rel=1e-4), key


def test_a_gaussian_projection_sized_by_energy_matches_the_naive_loop() -> None:
    model, tok = tiny_model("qwen2", seed=1)
    batch = _batch(tok, 4)
    energies = side_energies(model, LAYERS, [batch])
    blocks = build_blocks(model, LAYERS, 1024, seed=0, allocation="energy", energies=energies)
    uniform = build_blocks(model, LAYERS, 1024, seed=0)
    assert [b.dim for b in blocks] != [b.dim for b in uniform]
    assert sum(b.dim for b in blocks) <= 1024
    feat = GradientFeaturizer(model, LAYERS, 1024, seed=0, blocks=blocks)
    fast = feat(batch)
    slow = naive_features(model, feat.blocks, batch)
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-4), float((fast - slow).abs().max())


def test_probe_eigen_bases_do_not_depend_on_the_covariance_budget() -> None:
    model, tok = tiny_model("gemma3", seed=2)
    batches = [_batch(tok, 3), _batch(tok, 2)]
    whole = eigen_bases(side_covariances(model, LAYERS, batches))
    grouped = probe_eigen_bases(model, LAYERS, batches, budget=1, max_rows=10**6)  # one a group
    assert set(grouped) == set(whole)
    for key, (left, right) in whole.items():
        for a, b in zip((left, right), grouped[key], strict=True):
            torch.testing.assert_close(b.values, a.values.cpu(), rtol=1e-5, atol=1e-6)
            # eigenvectors up to the tie order of (near-)equal eigenvalues: compare projectors
            top = int((a.values > a.values[0] * 1e-3).sum().clamp(max=4))
            pa, pb = a.rows[:top].double().cpu(), b.rows[:top].double()
            torch.testing.assert_close(pb.T @ pb, pa.T @ pa, rtol=0, atol=1e-3)
    # a row cap keeps the top rows and values of each side, and bounds the energy grid
    capped = probe_eigen_bases(model, LAYERS, batches, max_rows=3)
    assert all(s.rows.shape[0] <= 3 and s.values.shape[0] <= 3 for p in capped.values() for s in p)
    blocks = build_blocks(model, LAYERS, 4096, seed=0, bases=capped, allocation="energy")
    assert all(b.p_left.shape[0] <= 3 and b.p_right.shape[0] <= 3 for b in blocks)
