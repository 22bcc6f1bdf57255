"""Scoring runs on a tiny model: planted duplicates, store reuse, resume, bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.engine.scoring.conftest import pool_rows, target_rows, write
from worker.engine.errors import (
    ArtifactError,
    DataFormatError,
    EmptyDatasetError,
    NoResponseTokensError,
)
from worker.engine.scoring import ScoreConfig, ScoreStats, score_stream
from worker.engine.scoring.targets import TARGETS


def _scores(
    model_and_tok, train: Path, targets: list[Path], cfg: ScoreConfig, **kw
) -> dict[int, float]:  # type: ignore[no-untyped-def]
    model, tok = model_and_tok
    out: dict[int, float] = {}
    for b in score_stream(model, tok, "tiny", train, targets, cfg, **kw):
        assert len(b.indices) == len(b.ids) == len(b.scores)
        out.update(zip(b.indices, b.scores, strict=True))
    return out


@pytest.mark.parametrize(
    ("scorer", "features"), [("tracin", "exact"), ("tracin", "projected"), ("influence", None)]
)
def test_planted_target_duplicates_rank_at_the_top(
    model_and_tok, tmp_path, scorer, features
) -> None:  # type: ignore[no-untyped-def]
    targets = target_rows(3)
    train = write(tmp_path / "pool.jsonl", [*pool_rows(12), *targets])
    target = write(tmp_path / "target.jsonl", targets)
    cfg = ScoreConfig(
        scorer=scorer,
        features=features,
        proj_dim=1024,
        batch_size=4,
        max_length=64,
        damping=1e-2,
    )
    scores = _scores(model_and_tok, train, [target], cfg)
    assert sorted(scores) == list(range(15))
    top3 = sorted(scores, key=lambda i: -scores[i])[:3]
    assert set(top3) == {12, 13, 14}


def test_second_target_reuses_stored_training_gradients(model_and_tok, tmp_path) -> None:  # type: ignore[no-untyped-def]
    train = write(tmp_path / "pool.jsonl", pool_rows(10))
    t1 = write(tmp_path / "t1.jsonl", target_rows(2))
    t2 = write(tmp_path / "t2.jsonl", target_rows(4)[2:])
    cfg = ScoreConfig(features="projected", proj_dim=512, batch_size=3, max_length=64, shard_size=4)
    first, second = ScoreStats(), ScoreStats()
    _scores(model_and_tok, train, [t1], cfg, store_dir=tmp_path / "store", stats=first)
    fresh = _scores(model_and_tok, train, [t2], cfg)
    TARGETS.clear()  # count t2's gradients below, not the worker's cached direction
    reused = _scores(model_and_tok, train, [t2], cfg, store_dir=tmp_path / "store", stats=second)
    assert (first.train_computed, first.target_computed) == (10, 2)
    assert (second.train_computed, second.train_loaded, second.target_computed) == (0, 10, 2)
    assert reused == pytest.approx(fresh, rel=1e-5, abs=1e-6)
    # a different seed is a different key: nothing reused
    third = ScoreStats()
    other = ScoreConfig(
        features="projected", proj_dim=512, batch_size=3, max_length=64, shard_size=4, seed=9
    )
    _scores(model_and_tok, train, [t2], other, store_dir=tmp_path / "store", stats=third)
    assert third.train_computed == 10


def test_interrupted_run_resumes_to_the_same_scores(model_and_tok, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, tok = model_and_tok
    train = write(tmp_path / "pool.jsonl", pool_rows(11))
    target = write(tmp_path / "t.jsonl", target_rows(2))
    cfg = ScoreConfig(features="projected", proj_dim=512, batch_size=2, max_length=64, shard_size=4)
    whole = _scores(model_and_tok, train, [target], cfg)
    stream = score_stream(model, tok, "tiny", train, [target], cfg, store_dir=tmp_path / "s")
    for _ in range(3):  # 6 samples seen: one 4-sample shard written, 2 samples lost
        next(stream)
    stream.close()  # type: ignore[attr-defined]
    stats = ScoreStats()
    resumed = _scores(model_and_tok, train, [target], cfg, store_dir=tmp_path / "s", stats=stats)
    assert (stats.train_loaded, stats.train_computed) == (4, 7)
    assert resumed == pytest.approx(whole, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("features", ["exact", "projected"])
def test_shard_of_the_pool_and_dot_product_option(model_and_tok, tmp_path, features) -> None:  # type: ignore[no-untyped-def]
    train = write(tmp_path / "pool.jsonl", pool_rows(8))
    target = write(tmp_path / "t.jsonl", target_rows(2))
    cfg = ScoreConfig(features=features, proj_dim=256, max_length=64)
    cos = _scores(model_and_tok, train, [target], cfg)
    part = _scores(model_and_tok, train, [target], cfg, indices=[5, 1])
    assert part == pytest.approx({1: cos[1], 5: cos[5]}, rel=1e-4)
    assert all(-1.0 <= s <= 1.0 for s in cos.values())
    dot = _scores(model_and_tok, train, [target], replace(cfg, normalize=False))
    assert dot != cos


@pytest.mark.parametrize("features", ["exact", "projected"])
def test_several_target_tasks_take_the_max(model_and_tok, tmp_path, features) -> None:  # type: ignore[no-untyped-def]
    train = write(tmp_path / "pool.jsonl", pool_rows(6))
    t1 = write(tmp_path / "t1.jsonl", target_rows(2))
    t2 = write(tmp_path / "t2.jsonl", pool_rows(2, seed=5))
    cfg = ScoreConfig(features=features, proj_dim=256, max_length=64)
    a, b = _scores(model_and_tok, train, [t1], cfg), _scores(model_and_tok, train, [t2], cfg)
    both = _scores(model_and_tok, train, [t1, t2], cfg)
    assert both == pytest.approx({i: max(a[i], b[i]) for i in a})


def test_bad_inputs_name_the_file_and_record(model_and_tok, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = ScoreConfig(features="projected", proj_dim=256, max_length=64)
    good = write(tmp_path / "good.jsonl", pool_rows(3))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(EmptyDatasetError, match=r"empty\.jsonl"):
        _scores(model_and_tok, empty, [good], cfg)
    with pytest.raises(EmptyDatasetError, match=r"empty\.jsonl"):
        _scores(model_and_tok, good, [empty], cfg)
    weird = tmp_path / "pool.xlsx"
    weird.write_text("x", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"pool.xlsx.*unknown file type"):
        _scores(model_and_tok, weird, [good], cfg)
    unknown = write(tmp_path / "keys.jsonl", [{"foo": "bar"}])
    with pytest.raises(DataFormatError, match=r"keys.jsonl:1.*unknown record format"):
        _scores(model_and_tok, good, [unknown], cfg)
    no_resp = write(
        tmp_path / "noresp.jsonl", [*pool_rows(2), {"id": "bad", "prompt": "hi", "completion": ""}]
    )
    with pytest.raises(NoResponseTokensError, match=r"noresp.jsonl.*record 2.*'bad'"):
        _scores(model_and_tok, no_resp, [good], cfg)
    one_token = write(tmp_path / "short.jsonl", [{"id": "t", "text": "x"}])
    tok = model_and_tok[1]
    tok.eos_token = None  # so the plain record is one token, which predicts nothing
    with pytest.raises(NoResponseTokensError, match=r"short.jsonl.*record 0.*'t'"):
        _scores(model_and_tok, good, [one_token], cfg)


def test_corrupt_store_manifest_is_an_artifact_error(model_and_tok, tmp_path) -> None:  # type: ignore[no-untyped-def]
    train = write(tmp_path / "pool.jsonl", pool_rows(3))
    target = write(tmp_path / "t.jsonl", target_rows(1))
    cfg = ScoreConfig(features="projected", proj_dim=256, max_length=64)
    _scores(model_and_tok, train, [target], cfg, store_dir=tmp_path / "s")
    (manifest,) = (tmp_path / "s").glob("*/manifest.json")
    doc = json.loads(manifest.read_text())
    manifest.write_text("{not json", encoding="utf-8")
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        _scores(model_and_tok, train, [target], cfg, store_dir=tmp_path / "s")
    manifest.write_text(json.dumps(doc), encoding="utf-8")
    (manifest.parent / doc["shards"][0]["file"]).write_bytes(b"truncated")
    with pytest.raises(ArtifactError, match="unreadable gradient shard"):
        _scores(model_and_tok, train, [target], cfg, store_dir=tmp_path / "s")


def test_eigen_projection_is_the_same_for_every_shard_and_keys_the_store(
    model_and_tok, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    train = write(tmp_path / "pool.jsonl", pool_rows(9))
    target = write(tmp_path / "t.jsonl", target_rows(2))
    cfg = ScoreConfig(
        features="projected",
        projection="eigen",
        projection_allocation="uniform",
        projection_samples=4,
        proj_dim=256,
        max_length=64,
    )
    whole = _scores(model_and_tok, train, [target], cfg)
    shard = _scores(model_and_tok, train, [target], cfg, indices=[7, 2, 8])
    assert shard == pytest.approx({i: whole[i] for i in (2, 7, 8)}, rel=1e-5, abs=1e-6)
    gaussian = _scores(model_and_tok, train, [target], replace(cfg, projection="gaussian"))
    assert ScoreConfig().projection == "eigen" and ScoreConfig().projection_allocation == "energy"
    assert gaussian != pytest.approx(whole, rel=1e-3)
    # the store keys the projection: eigen features are not served to a gaussian run
    stats = ScoreStats()
    _scores(model_and_tok, train, [target], cfg, store_dir=tmp_path / "s")
    _scores(
        model_and_tok,
        train,
        [target],
        replace(cfg, projection="gaussian"),
        store_dir=tmp_path / "s",
        stats=stats,
    )
    assert stats.train_loaded == 0 and stats.train_computed == 9
    # energy allocation: another projection, the same for every shard, keyed apart in the store
    energy = replace(cfg, projection_allocation="energy")
    by_energy = _scores(model_and_tok, train, [target], energy)
    assert by_energy != pytest.approx(whole, rel=1e-3)
    part = _scores(model_and_tok, train, [target], energy, indices=[7, 2, 8])
    assert part == pytest.approx({i: by_energy[i] for i in (2, 7, 8)}, rel=1e-5, abs=1e-6)
    stats = ScoreStats()
    _scores(model_and_tok, train, [target], energy, store_dir=tmp_path / "s", stats=stats)
    assert stats.train_loaded == 0 and stats.train_computed == 9
    # a Gaussian projection sized by energy: its own features, keyed apart from uniform ones
    g_energy = replace(cfg, projection="gaussian", projection_allocation="energy")
    by_g_energy = _scores(model_and_tok, train, [target], g_energy)
    assert by_g_energy != pytest.approx(gaussian, rel=1e-3)
    part = _scores(model_and_tok, train, [target], g_energy, indices=[7, 2, 8])
    assert part == pytest.approx({i: by_g_energy[i] for i in (2, 7, 8)}, rel=1e-5, abs=1e-6)
    stats = ScoreStats()
    _scores(model_and_tok, train, [target], g_energy, store_dir=tmp_path / "s", stats=stats)
    assert stats.train_loaded == 0 and stats.train_computed == 9


@pytest.mark.parametrize("features", ["exact", "projected"])
def test_target_vectors_are_kept_for_the_next_call_on_the_same_model(tmp_path, features) -> None:  # type: ignore[no-untyped-def]
    from tests.tiny import tiny_model

    train = write(tmp_path / "pool.jsonl", pool_rows(6))
    target = write(tmp_path / "t.jsonl", target_rows(3))
    cfg = ScoreConfig(features=features, proj_dim=256, max_length=64)
    model = tiny_model("llama", seed=2)
    first, second, other = ScoreStats(), ScoreStats(), ScoreStats()
    a = _scores(model, train, [target], cfg, indices=[0, 1, 2], stats=first)
    b = _scores(model, train, [target], cfg, indices=[3, 4, 5], stats=second)  # the next shard
    assert (first.target_computed, first.target_loaded) == (3, 0)
    assert (second.target_computed, second.target_loaded) == (0, 3)
    TARGETS.clear()
    whole = _scores(model, train, [target], cfg)
    assert a | b == pytest.approx(whole, rel=1e-5, abs=1e-7)
    # another model object, even of the same name and weights, computes its own
    _scores(tiny_model("llama", seed=2), train, [target], cfg, stats=other)
    assert other.target_computed == 3
    # a different setting is a different entry
    changed = ScoreStats()
    _scores(model, train, [target], replace(cfg, max_length=48), stats=changed)
    assert changed.target_computed == 3


def test_the_stream_scores_along_the_registry_entrys_direction(
    model_and_tok, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # A scorer is its registry entry: swapping the entry's direction changes the scores, with
    # nothing in the stream naming the scorer.
    from worker.engine.scoring import registry

    train = write(tmp_path / "pool.jsonl", pool_rows(6))
    target = write(tmp_path / "target.jsonl", target_rows(2))
    cfg = ScoreConfig(features="projected", proj_dim=256, batch_size=3, max_length=64)
    plain = _scores(model_and_tok, train, [target], cfg)
    flipped = replace(registry.SCORERS["tracin"], direction=lambda v, _c, _d: -2.0 * v)
    monkeypatch.setitem(registry.SCORERS, "tracin", flipped)
    TARGETS.clear()
    got = _scores(model_and_tok, train, [target], cfg)
    assert got == pytest.approx({i: -2.0 * s for i, s in plain.items()}, rel=1e-5, abs=1e-7)
