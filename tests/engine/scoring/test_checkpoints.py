"""Several checkpoints summed with learning-rate weights (TracIn), and Adam preconditioning (LESS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine.scoring.conftest import pool_rows, target_rows, write
from tests.engine.scoring.test_gradients import LAYERS, _batch, _low_rank
from tests.tiny import save_tiny_model, tiny_model
from worker.cli import main
from worker.engine.data import load_records
from worker.engine.errors import ArtifactError, ConfigError
from worker.engine.lowrank import LowRankLinear
from worker.engine.models import load_model
from worker.engine.pipeline import ScoreConfig, iter_scores
from worker.engine.proxy import ProxyConfig
from worker.engine.scoring.gradients import GradientFeaturizer, naive_features
from worker.engine.scoring.precondition import AdamState, load_adam_state
from worker.engine.scoring.run import task_score_stream
from worker.engine.train import FinetuneConfig, finetune, list_checkpoints, load_checkpoint

CFG = ScoreConfig(proj_dim=256, max_length=64)


def _random_state(model: torch.nn.Module, dense_only: bool = False) -> AdamState:
    """Moments for every linear weight (and factor, unless ``dense_only``) of ``model``."""
    g = torch.Generator().manual_seed(3)
    m, v = {}, {}
    for name, p in model.named_parameters():
        if p.ndim == 2 and (not dense_only or name.endswith(".weight")):
            m[name] = torch.randn(p.shape, generator=g) * 1e-3
            v[name] = torch.rand(p.shape, generator=g) * 1e-5
    return AdamState(m, v, beta1=0.9, beta2=0.999, eps=1e-8, source="test", fingerprint="x")


@pytest.mark.parametrize("low_rank", [False, True])
def test_preconditioned_features_match_the_naive_loop(low_rank: bool) -> None:
    model, tok = tiny_model("llama")
    if low_rank:
        _low_rank(model, rank=8)
    state = _random_state(model)
    batch = _batch(tok)
    feat = GradientFeaturizer(model, LAYERS, proj_dim=1024, seed=0, adam=state)
    fast = feat(batch)
    slow = naive_features(model, feat.blocks, batch, adam=state)
    assert torch.allclose(fast, slow, atol=1e-4, rtol=1e-3), float((fast - slow).abs().max())
    raw = GradientFeaturizer(model, LAYERS, proj_dim=1024, seed=0)(batch)
    assert not torch.allclose(fast, raw, rtol=1e-2)  # preconditioning changed the features


def test_factor_moments_are_the_dense_moments_mapped() -> None:
    model, _ = tiny_model("llama")
    dense = _random_state(model, dense_only=True)
    _low_rank(model, rank=8)
    layer: Any = model.model.layers[0].mlp.down_proj  # type: ignore[union-attr]
    assert isinstance(layer, LowRankLinear)
    name = "model.layers.0.mlp.down_proj"
    mw, vw = dense.exp_avg[f"{name}.weight"], dense.exp_avg_sq[f"{name}.weight"]
    A, B = layer.A.detach(), layer.B.detach()
    m_a, v_a = dense.moments(name, layer, "A")
    m_b, v_b = dense.moments(name, layer, "B")
    # the first moment is linear in the gradients, and g_A = g_W B^T, g_B = A^T g_W
    torch.testing.assert_close(m_a, mw @ B.T)
    torch.testing.assert_close(m_b, A.T @ mw)
    torch.testing.assert_close(v_a, vw @ (B * B).T)
    torch.testing.assert_close(v_b, (A * A).T @ vw)
    assert bool((v_a >= 0).all() and (v_b >= 0).all())
    with pytest.raises(
        ConfigError, match=r"no moments for parameter 'model\.layers\.0\.mlp\.up_proj"
    ):
        AdamState({}, {}, 0.9, 0.999, 1e-8, "s", "f").moments(
            "model.layers.0.mlp.up_proj",
            model.model.layers[0].mlp.up_proj,  # type: ignore[union-attr]
            "weight",
        )


@pytest.fixture
def run(tmp_path: Path) -> dict[str, Path]:
    """A tiny model, a pool, two target tasks and a fine-tuning run with two checkpoints."""
    model = save_tiny_model(tmp_path / "model", "llama")
    files = {
        "model": model,
        "train": write(tmp_path / "pool.jsonl", pool_rows(6)),
        "t1": write(tmp_path / "t1.jsonl", target_rows(2)),
        "t2": write(tmp_path / "t2.jsonl", pool_rows(2, seed=5)),
        "run": tmp_path / "run",
    }
    config = FinetuneConfig(
        epochs=2,
        lr=1e-3,
        batch_size=2,
        max_length=64,
        warmup_ratio=0.0,
        save_steps=(3,),
        save_optimizer_state=True,
    )
    base = load_model(str(model), cache_dir=tmp_path / "cache")
    finetune(base, load_records(files["train"]), config, files["run"])
    return files


def test_finetune_saves_adam_moments_per_checkpoint(run: dict[str, Path]) -> None:
    ckpts = list_checkpoints(run["run"])
    assert [c.step for c in ckpts] == [3, 6]
    first, last = (load_adam_state(c.path) for c in ckpts)
    loaded = load_checkpoint(ckpts[0])
    names = {n for n, p in loaded.model.named_parameters()}
    assert set(first.exp_avg) <= names and "model.layers.0.mlp.down_proj.weight" in first.exp_avg
    assert (first.beta1, first.beta2, first.eps) == (0.9, 0.999, 1e-8)
    for name, m in first.exp_avg.items():
        assert m.shape == dict(loaded.model.named_parameters())[name].shape
        assert bool((first.exp_avg_sq[name] >= 0).all())
    assert first.fingerprint != last.fingerprint  # the moments moved between the checkpoints


def _manual(run: dict[str, Path], adam: bool, cfg: ScoreConfig = CFG) -> dict[int, float]:
    """sum_c mean_lr_c * score_c per task, then max over tasks, from single-model scoring."""
    totals: dict[int, torch.Tensor] = {}
    for c in list_checkpoints(run["run"]):
        loaded = load_checkpoint(c)
        for b in task_score_stream(
            loaded.model,
            loaded.tokenizer,
            f"m{c.step}",
            run["train"],
            [run["t1"], run["t2"]],
            cfg,
            adam=load_adam_state(c.path) if adam else None,
        ):
            for i, row in zip(b.indices, b.scores, strict=True):
                totals[i] = totals.get(i, torch.zeros(2)) + c.mean_lr * row
    return {i: float(t.max()) for i, t in totals.items()}


def _collect(batches: Any) -> dict[int, float]:
    out: dict[int, float] = {}
    for b in batches:
        out.update(zip(b.indices, b.scores, strict=True))
    return out


@pytest.mark.parametrize("features", ["exact", "projected"])
@pytest.mark.parametrize("adam", [False, True])
def test_checkpoint_scores_are_lr_weighted_sums_then_max_over_tasks(
    run: dict[str, Path], adam: bool, features: Any
) -> None:
    targets = [run["t1"], run["t2"]]
    cfg = ScoreConfig(features=features, proj_dim=256, max_length=64)
    got = _collect(
        iter_scores(
            str(run["model"]),
            run["train"],
            targets,
            proxy=None,
            config=cfg,
            checkpoints=run["run"],
            adam=adam,
        )
    )
    expected = _manual(run, adam, cfg)
    assert sorted(got) == list(range(6))
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-7)
    if adam:
        assert got != pytest.approx(_manual(run, False, cfg), rel=1e-2)


def test_a_proxy_is_built_per_checkpoint_and_preconditioned(run: dict[str, Path]) -> None:
    pcfg = ProxyConfig(method="svd", sparsity=0.5, align_steps=0, max_length=64)
    common: dict[str, Any] = {"proxy": pcfg, "config": CFG, "checkpoints": run["run"]}
    raw = _collect(iter_scores(str(run["model"]), run["train"], [run["t1"]], **common))
    pre = _collect(iter_scores(str(run["model"]), run["train"], [run["t1"]], adam=True, **common))
    assert sorted(pre) == list(range(6)) and all(torch.isfinite(torch.tensor(list(pre.values()))))
    assert pre != pytest.approx(raw, rel=1e-2)


def test_bad_checkpoint_inputs_are_clear_errors(run: dict[str, Path], tmp_path: Path) -> None:
    def scores(model: Path, **kw: Any) -> dict[int, float]:
        kw.setdefault("proxy", None)
        return _collect(iter_scores(str(model), run["train"], [run["t1"]], config=CFG, **kw))

    with pytest.raises(ConfigError, match="Adam preconditioning needs checkpoints"):
        scores(run["model"], adam=True)
    other = save_tiny_model(tmp_path / "other", "llama", seed=1)
    with pytest.raises(ArtifactError, match="the run was fine-tuned from"):
        scores(other, checkpoints=run["run"])
    with pytest.raises(ConfigError, match="a saved proxy was built from one set of weights"):
        scores(run["model"], proxy=tmp_path / "some-proxy", checkpoints=run["run"])
    plain = tmp_path / "plain"
    finetune(
        load_model(str(run["model"]), cache_dir=tmp_path / "cache"),
        load_records(run["train"]),
        FinetuneConfig(epochs=1, batch_size=3, max_length=64),
        plain,
    )
    with pytest.raises(ArtifactError, match="--save-optimizer-state"):
        scores(run["model"], checkpoints=plain, adam=True)


def test_cli_scores_with_checkpoints_and_adam(
    run: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "s.jsonl"
    args = ["score", "--model", str(run["model"]), "--train", str(run["train"])]
    args += ["--target", str(run["t1"]), "--target", str(run["t2"])]
    args += ["--proj-dim", "256", "--max-length", "64", "--out", str(out)]
    assert main([*args, "--checkpoints", str(run["run"]), "--adam"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["adam"] is True and summary["checkpoints"] == str(run["run"])
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    expected = _manual(run, adam=True)
    assert {r["index"]: r["score"] for r in rows} == pytest.approx(expected, rel=1e-4, abs=1e-7)
