"""Exact (unprojected) TracIn scores against a naive per-sample autograd loop."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tests.engine.scoring.conftest import pool_rows, target_rows, write
from tests.engine.scoring.naive import per_sample_grads as naive_per_sample_grads
from tests.engine.scoring.test_checkpoints import _random_state
from tests.engine.scoring.test_gradients import LAYERS, _batch, _low_rank
from tests.tiny import ARCHES, tiny_model
from worker.engine.data import collate, encode, pad_token_id, record_from_obj
from worker.engine.errors import ConfigError
from worker.engine.lowrank import LowRankLinear
from worker.engine.math.exact import (
    FORMED_COST,
    form_for_scores,
    inner_products,
    per_sample_grads,
    scores_of_formed,
    sq_norms,
    use_gram,
    weighted_grad_sum,
)
from worker.engine.scoring.config import ScoreConfig
from worker.engine.scoring.exact import ExactScorer, cosine_or_dot
from worker.engine.scoring.hooks import scored_blocks
from worker.engine.scoring.precondition import AdamState
from worker.engine.scoring.run import task_score_stream


def _targets(tok: Any, n: int, offset: int) -> dict[str, torch.Tensor]:
    recs = [
        record_from_obj(
            {"question": f"what is {i} and {i + offset}?", "answer": f"{i}+{offset} " * (i + 1)},
            i,
            "t",
        )
        for i in range(n)
    ]
    return collate([encode(r, tok, 96) for r in recs], pad_token_id(tok))


def naive_grads(
    model: nn.Module, batch: dict[str, torch.Tensor], adam: AdamState | None = None
) -> torch.Tensor:
    """The naive gradient over every scored parameter, concatenated: ``(n, P)``."""
    params = [(name, param) for name, param, _ in scored_blocks(model, LAYERS)]
    grads = naive_per_sample_grads(model, params, batch, adam)
    return torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in grads])


def naive_scores(
    model: nn.Module,
    train: dict[str, torch.Tensor],
    tasks: Sequence[dict[str, torch.Tensor]],
    adam: AdamState | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """``(n, K)``: explicit dot products and norms of the naive gradients."""
    g = naive_grads(model, train, adam).double()
    cols = []
    for task in tasks:
        t = naive_grads(model, task).double()
        v = (t / t.norm(dim=1, keepdim=True)).mean(0) if normalize else t.mean(0)
        s = g @ v
        cols.append(s / g.norm(dim=1) if normalize else s)
    return torch.stack(cols, dim=1)


def _exact(
    model: nn.Module,
    train: dict[str, torch.Tensor],
    tasks: Sequence[dict[str, torch.Tensor]],
    adam: AdamState | None = None,
    normalize: bool = True,
    **route: Any,
) -> torch.Tensor:
    scorer = ExactScorer(model, LAYERS, **route)
    vectors = scorer.target_vectors([[t] for t in tasks], normalize)
    train_scorer = scorer if adam is None else ExactScorer(model, LAYERS, adam=adam, **route)
    inner, sq = train_scorer(train, vectors)
    return cosine_or_dot(inner, sq, normalize)


def _close(fast: torch.Tensor, slow: torch.Tensor, rel: float = 1e-5) -> None:
    """Every score within ``rel`` of its task's score scale (the largest ``|score|`` of that
    column). Not of its own size: a dot score near zero is a float32 sum that cancels (one of
    0.075 among 3-9 in its column came out 1.2e-5 off its own size on one CPU and torch build),
    while a wrong formula is off by the scale itself."""
    scale = slow.abs().amax(dim=0, keepdim=True).clamp_min(1e-12)
    err = float(((fast.double() - slow).abs() / scale).max())
    assert err <= rel, err


@pytest.mark.parametrize("arch", ARCHES)
def test_exact_scores_match_the_naive_loop(arch: Any) -> None:
    model, tok = tiny_model(arch, seed=2)
    train = _batch(tok, 4)
    assert int(train["attention_mask"].sum()) < train["attention_mask"].numel()  # padded
    tasks = [_targets(tok, 3, 1), _targets(tok, 2, 5)]
    _close(_exact(model, train, tasks), naive_scores(model, train, tasks))
    # dot scores too
    _close(
        _exact(model, train, tasks, normalize=False),
        naive_scores(model, train, tasks, normalize=False),
    )
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_exact_scores_of_a_proxy_are_those_of_its_factors() -> None:
    model, tok = tiny_model("llama", seed=1)
    _low_rank(model, rank=8)
    train, tasks = _batch(tok, 3), [_targets(tok, 3, 2)]
    _close(_exact(model, train, tasks), naive_scores(model, train, tasks))


def _densified(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every low-rank layer an ``nn.Linear`` of weight ``A B``."""
    dense = copy.deepcopy(model)
    for name, m in list(dense.named_modules()):
        if isinstance(m, LowRankLinear):
            parent, _, child = name.rpartition(".")
            linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(m.dense_weight())
                if m.bias is not None:
                    linear.bias.copy_(m.bias)
            setattr(dense.get_submodule(parent), child, linear)
    return dense


def test_weight_space_scores_of_a_proxy_are_those_of_its_dense_product() -> None:
    model, tok = tiny_model("llama", seed=1)
    _low_rank(model, rank=8)
    train, tasks = _batch(tok, 3), [_targets(tok, 3, 2), _targets(tok, 2, 4)]
    weights = _exact(model, train, tasks, space="weights")
    dense = _densified(model)
    _close(weights, naive_scores(dense, train, tasks))
    _close(weights, _exact(dense, train, tasks))
    # a different quantity from the factors' scores (which the test above checks)
    assert not torch.allclose(weights, _exact(model, train, tasks), rtol=1e-2)
    blocks = scored_blocks(model, LAYERS, "weights")
    assert all(param == "weight" for _, param, _ in blocks)
    assert blocks == scored_blocks(dense, LAYERS)
    # a dense model's blocks do not depend on the space
    assert scored_blocks(dense, LAYERS, "weights") == scored_blocks(dense, LAYERS)


def test_weight_space_scores_refuse_adam_preconditioning() -> None:
    model, _ = tiny_model("qwen2", seed=4)
    _low_rank(model, rank=8)
    with pytest.raises(ConfigError) as err:
        ExactScorer(model, LAYERS, adam=_random_state(model), space="weights")
    assert err.value.field == "gradient_space"


@pytest.mark.parametrize("low_rank", [False, True])
def test_exact_adam_scores_match_the_naive_loop(low_rank: bool) -> None:
    model, tok = tiny_model("qwen2", seed=4)
    if low_rank:
        _low_rank(model, rank=8)
    state = _random_state(model)
    train, tasks = _batch(tok, 3), [_targets(tok, 2, 3), _targets(tok, 3, 1)]
    fast = _exact(model, train, tasks, adam=state)
    _close(fast, naive_scores(model, train, tasks, adam=state), rel=1e-4)
    assert not torch.allclose(fast, _exact(model, train, tasks), rtol=1e-2)


@pytest.mark.parametrize("tasks", [1, 2])
def test_every_route_gives_the_same_scores(tasks: int) -> None:
    """Gram norms, formed norms, and formed per-sample gradients (whole batch or one sample at a
    time) are the same numbers; the default takes whichever the cost rules pick."""
    model, tok = tiny_model("gemma3", seed=0)
    train = _batch(tok, 3)
    targets = [_targets(tok, 2, 4), _targets(tok, 3, 1)][:tasks]
    tokens = int(train["input_ids"].shape[1])
    # the tiny layers are 32 x 32 .. 64 x 32: at this length the norm rule picks both sides
    assert not use_gram(tokens, 32, 32) and use_gram(4, 64, 32)
    reference = naive_scores(model, train, targets)
    routes: list[dict[str, Any]] = [
        {"formed": False, "gram": True},
        {"formed": False, "gram": False},
        {"formed": True},
        {"formed": True, "formed_budget": 1},  # one row of every sample's gradient at a time
        {},
    ]
    for route in routes:
        _close(_exact(model, train, targets, **route), reference)


def test_gram_rule_math_on_both_sides_of_the_threshold() -> None:
    g = torch.Generator().manual_seed(0)
    for tokens, rows, cols in [(3, 40, 50), (30, 40, 50), (22, 40, 50), (23, 40, 50)]:
        left = torch.randn(2, tokens, rows, generator=g, dtype=torch.float64)
        right = torch.randn(2, tokens, cols, generator=g, dtype=torch.float64)
        right[1, -1] = 0  # a padded position
        G = torch.einsum("bto,bti->boi", left, right)
        expected = G.pow(2).sum(dim=(1, 2))
        for gram in (True, False, None):
            torch.testing.assert_close(sq_norms(left, right, gram), expected)
        torch.testing.assert_close(per_sample_grads(left, right), G)
        V = torch.randn(3, rows, cols, generator=g, dtype=torch.float64)
        torch.testing.assert_close(
            inner_products(left, right, V), torch.einsum("boi,koi->bk", G, V)
        )
        w = torch.tensor([0.5, -2.0], dtype=torch.float64)
        torch.testing.assert_close(weighted_grad_sum(left, right, w), 0.5 * G[0] - 2.0 * G[1])
    assert use_gram(22, 40, 50) and not use_gram(23, 40, 50)  # 22.2 is the break-even length
    # scoring, FORMED_COST = 2: with two tasks formed wins from T^2 (r + c) >= 3 r c (T >= 8.2
    # here); with one, from T^2 (r + c) >= T r c + 2 r c (T >= 24.1)
    assert FORMED_COST == 2.0
    assert form_for_scores(9, 40, 50, tasks=2) and not form_for_scores(8, 40, 50, tasks=2)
    assert form_for_scores(25, 40, 50, tasks=1) and not form_for_scores(24, 40, 50, tasks=1)
    assert not form_for_scores(64, 576, 576, tasks=1) and form_for_scores(64, 576, 576, tasks=2)
    left = torch.randn(3, 5, 40, generator=g, dtype=torch.float64)
    right = torch.randn(3, 5, 50, generator=g, dtype=torch.float64)
    V = torch.randn(2, 40, 50, generator=g, dtype=torch.float64)
    G = torch.einsum("bto,bti->boi", left, right)
    for budget in (1, 150, 3 * 7 * 50, 10**6):  # tiles of 1, 1, 7 and all 40 rows
        inner, sq = scores_of_formed(left, right, V, budget)
        torch.testing.assert_close(inner, torch.einsum("boi,koi->bk", G, V))
        torch.testing.assert_close(sq, G.pow(2).sum(dim=(1, 2)))


def _scores_of(model: Any, tok: Any, files: dict[str, Path], config: ScoreConfig) -> torch.Tensor:
    out: dict[int, torch.Tensor] = {}
    for b in task_score_stream(model, tok, "m", files["train"], [files["t"]], config):
        out.update(zip(b.indices, b.scores, strict=True))
    return torch.stack([out[i] for i in sorted(out)])


def test_exact_scores_do_not_depend_on_seed_or_batch_size(tmp_path: Path) -> None:
    model, tok = tiny_model("llama", seed=5)
    files = {
        "train": write(tmp_path / "pool.jsonl", pool_rows(7)),
        "t": write(tmp_path / "t.jsonl", target_rows(3)),
    }
    base = _scores_of(model, tok, files, ScoreConfig(max_length=64, batch_size=4, seed=0))
    for kw in ({"seed": 7}, {"batch_size": 1}, {"batch_size": 3, "seed": 123}):
        other = _scores_of(model, tok, files, ScoreConfig(max_length=64, **kw))  # type: ignore[arg-type]
        torch.testing.assert_close(other, base, rtol=1e-5, atol=1e-7)
    # A random projection is what a seed changes (an eigen one's seed only picks its probes).
    gauss = {"features": "projected", "projection": "gaussian", "max_length": 64}
    a = _scores_of(model, tok, files, ScoreConfig(seed=0, **gauss))  # type: ignore[arg-type]
    b = _scores_of(model, tok, files, ScoreConfig(seed=1, **gauss))  # type: ignore[arg-type]
    assert not torch.allclose(a, b, rtol=1e-3)


def test_features_follow_the_scorer_and_conflicts_are_errors(tmp_path: Path) -> None:
    assert ScoreConfig().features == "exact"
    assert ScoreConfig(scorer="influence").features == "projected"
    with pytest.raises(ConfigError, match="features: the influence scorer scores from projected"):
        ScoreConfig(scorer="influence", features="exact")
    with pytest.raises(ConfigError, match="scorer must be one of 'tracin', 'influence'"):
        ScoreConfig(scorer="trak")  # type: ignore[arg-type]
    model, tok = tiny_model("llama")
    files = {
        "train": write(tmp_path / "pool.jsonl", pool_rows(2)),
        "t": write(tmp_path / "t.jsonl", target_rows(1)),
    }
    with pytest.raises(ConfigError, match="store: the gradient store keeps projected features"):
        list(
            task_score_stream(
                model, tok, "m", files["train"], [files["t"]], ScoreConfig(), store_dir=tmp_path
            )
        )
