"""The engine's progress helpers: one unit per stage, the measured rate and ETA, metrics ticks."""

from __future__ import annotations

from typing import Any

from worker.engine.progress import OneUnit, Rate, report


def test_sub_phases_of_a_stage_add_up_in_one_unit_that_never_runs_backwards() -> None:
    units = OneUnit()
    ticks = [("loading", 0, 4), ("loading", 4, 4)]
    ticks += [("compressing", d, 16) for d in (8, 16)]  # probe batches
    ticks += [("compressing", d, 210) for d in (1, 13, 210)]  # then layers
    ticks += [("compressing", 5, 5)]  # a third phase that happens to restart lower
    ticks += [("aligning", 1, 10)]
    out = [units(*t) for t in ticks]
    expected = [(0, 4), (4, 4), (8, 16), (16, 16), (17, 226), (29, 226), (226, 226)]
    expected += [(231, 231), (1, 10)]
    assert out == expected
    compressing = [d for (s, _, _), (d, _) in zip(ticks, out, strict=True) if s == "compressing"]
    assert compressing == sorted(compressing)


def test_rate_and_eta_come_from_the_stage_measured_so_far() -> None:
    rate = Rate()
    assert rate.observe("scoring", 10, 110, now=100.0) == (None, None)  # nothing measured yet
    r, eta = rate.observe("scoring", 30, 110, now=110.0)  # 20 samples in 10 s
    assert r == 2.0 and eta == 40.0
    r, eta = rate.observe("scoring", 110, 110, now=140.0)
    assert r is not None and abs(r - 100 / 40) < 1e-12 and eta == 0.0
    assert rate.observe("ranking", 0, 6, now=141.0) == (None, None)  # a new stage starts over


def test_report_passes_metrics_only_when_a_stage_has_some() -> None:
    seen: list[tuple[Any, ...]] = []

    def progress(stage: str, done: int, total: int, *metrics: Any) -> None:
        seen.append((stage, done, total, *metrics))

    report(progress, "aligning", 1, 10)
    report(progress, "aligning", 2, 10, {"step": 2, "L_GA": 0.5, "KL": 0.01})
    report(None, "aligning", 3, 10, {"step": 3})  # no sink: nothing happens
    assert seen == [
        ("aligning", 1, 10),
        ("aligning", 2, 10, {"step": 2, "L_GA": 0.5, "KL": 0.01}),
    ]


def test_a_sub_phase_measures_its_own_rate() -> None:
    units, rate = OneUnit(), Rate()
    for done, now in ((4, 0.0), (8, 40.0)):  # probe batches: slow
        rate.observe("compressing", *units("compressing", done, 8), now, phase=units.phase)
    assert units.phase == 0
    d, t = units("compressing", 10, 210)  # layers: a new phase, its rate measured afresh
    assert units.phase == 1 and rate.observe("compressing", d, t, 50.0, phase=1) == (None, None)
    d, t = units("compressing", 20, 210)
    r, eta = rate.observe("compressing", d, t, 55.0, phase=1)
    assert r == 2.0 and eta == 95.0
