"""``benchmarks/compare_runs.py``: two benchmark runs paired cell by cell, the figures
the closing notes give for a change (mean difference, standard error, by world), and a clear
refusal of runs that cannot be paired."""

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_learning
import compare_runs


def _run(path, ratios, conditions=None, policy="adaptive"):
    """A bench_learning.py --json output whose ``policy`` took ``ratios[(scenario, world, seed)]`` of the oracle."""
    cells = [{"scenario": s, "world": w, "seed": seed, "totals": {policy: r * 2.0, "oracle": 2.0}}
             for (s, w, seed), r in ratios.items()]  # fmt: skip
    data = {"rows": [], "summary": {}, "cells": cells}
    if conditions is not None:
        data["run"] = conditions
    path.write_text(json.dumps(data))
    return str(path)


BEFORE = {("steady", "soc", 0): 1.01, ("steady", "soc", 1): 1.02, ("spikes", "gpu-heavy", 0): 1.05,
          ("spikes", "gpu-heavy", 1): 1.04}  # fmt: skip
AFTER = {("steady", "soc", 0): 1.01, ("steady", "soc", 1): 1.03, ("spikes", "gpu-heavy", 0): 1.02,
         ("spikes", "gpu-heavy", 1): 1.03, ("steady", "npu-heavy", 0): 1.0}  # fmt: skip
MIXED = {"workload": "mixed", "layers": 6000}


def test_the_paired_figures(tmp_path):
    before = compare_runs.load(_run(tmp_path / "a.json", BEFORE, MIXED))
    after = compare_runs.load(_run(tmp_path / "b.json", AFTER, MIXED))
    cmp = compare_runs.compare(before, after)
    diffs = [0.0, 0.01, -0.03, -0.01]
    assert cmp.cells == list(BEFORE) and (cmp.only_before, cmp.only_after) == (0, 1)
    assert cmp.differences == pytest.approx(diffs)
    assert cmp.mean == pytest.approx(statistics.mean(diffs))
    assert cmp.se == pytest.approx(statistics.stdev(diffs) / 2)
    assert cmp.moved == 3
    by_world = {g.name: g for g in cmp.by("world")}
    assert by_world["gpu-heavy"].mean == pytest.approx(-0.02) and by_world["soc"].mean == pytest.approx(0.005)
    assert (by_world["gpu-heavy"].worst_before, by_world["gpu-heavy"].worst_after) == pytest.approx((1.05, 1.03))
    assert [c for c, _, _ in cmp.largest(2)] == [("spikes", "gpu-heavy", 0), ("steady", "soc", 1)]
    text = compare_runs.render(cmp, before, after)
    assert "over 4 cells in common (0 only before, 1 only after, left out)" in text
    assert "mean -0.0075, se 0.0085" in text and "3 of 4 cells moved" in text
    assert "worst 1.0500 (spikes/gpu-heavy seed 0), 2 cells over 1.03" in text
    assert "spikes/gpu-heavy seed 0" in text.split("moved most:")[1]


def test_a_run_against_itself_moves_nothing(tmp_path):
    run = compare_runs.load(_run(tmp_path / "a.json", BEFORE))
    cmp = compare_runs.compare(run, run)
    assert cmp.moved == 0 and cmp.mean == 0.0 and cmp.largest(5) == []
    text = compare_runs.render(cmp, run, run)
    assert "no cell moved" in text and "paired by scenario, world and seed alone" in text


def test_one_cell_has_no_standard_error(tmp_path):
    a = compare_runs.load(_run(tmp_path / "a.json", {("steady", "soc", 0): 1.01}))
    b = compare_runs.load(_run(tmp_path / "b.json", {("steady", "soc", 0): 1.02}))
    cmp = compare_runs.compare(a, b)
    assert math.isnan(cmp.se) and "one cell: no standard error" in compare_runs.render(cmp, a, b)


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        (
            (BEFORE, MIXED),
            (AFTER, {**MIXED, "workload": "decode"}),
            "not the same runs: workload 'mixed' against 'decode'",
        ),
        ((BEFORE, MIXED), (AFTER, {**MIXED, "layers": 300}), "layers 6000 against 300"),
        ((BEFORE, None), ({("steady", "soc", 9): 1.0}, None), "have no cell (scenario, world, seed) in common"),
    ],
)
def test_runs_that_cannot_be_paired_are_refused(tmp_path, capsys, before, after, message):
    a, b = _run(tmp_path / "a.json", *before), _run(tmp_path / "b.json", *after)
    assert compare_runs.main([a, b]) == 1
    err = capsys.readouterr().err
    assert err.startswith("compare_runs: error: ") and message in err


def test_a_policy_the_runs_lack_is_named_with_those_they_have(tmp_path, capsys):
    a, b = _run(tmp_path / "a.json", BEFORE), _run(tmp_path / "b.json", AFTER)
    assert compare_runs.main([a, b, "--policy", "vw-eps"]) == 1
    assert "a.json: no policy 'vw-eps' in 4 of the cells in common (its policies: adaptive, oracle)" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file or directory"),
        ("not json", "not JSON"),
        ('{"rows": []}', "not the output of bench_learning.py --json or bench_telemetry.py --json"),
        ('{"cells": [{"scenario": "steady"}]}', "cell 0: expected scenario, world, seed and totals"),
    ],
)
def test_a_file_that_is_not_a_run_is_named(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert compare_runs.main([_run(tmp_path / "a.json", BEFORE), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.json" in err and message in err


def test_the_benchmark_records_its_conditions_and_pairs_with_itself(tmp_path, capsys):
    argv = ["--scenarios", "steady", "--worlds", "soc", "--seeds", "0", "--layers", "200", "--policies", "adaptive",
            "--jobs", "1", "--json"]  # fmt: skip
    assert bench_learning.main(argv) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["run"] == {"benchmark": "learning", "workload": "mixed", "layers": 200, "seeds": [0],
                                      "policies": ["adaptive", "oracle"], "random_worlds": 0,
                                      "vw_actions": ["gpu", "npu"]}  # fmt: skip
    path = tmp_path / "run.json"
    path.write_text(out)
    assert compare_runs.main([str(path), str(path)]) == 0
    assert "adaptive / oracle over 1 cell in common" in capsys.readouterr().out


def _telemetry_run(path, regrets, conditions=None):
    """A bench_telemetry.py --json output: ``regrets[scenario][variant]`` per seed 0, 1, ..."""
    rows = []
    for scenario, variants in regrets.items():
        seeds = list(range(len(next(iter(variants.values())))))
        rows.append({"scenario": scenario, "seeds": seeds, **{f"{v}:each": r for v, r in variants.items()}})
    data = {"rows": rows, "sysfs_read_us": 100.0, "sysfs_clocks_read_us": 20.0}
    if conditions is not None:
        data["run"] = conditions
    path.write_text(json.dumps(data))
    return str(path)


def test_telemetry_runs_pair_each_variant_on_one_plus_its_regret(tmp_path):
    tel = {"layers": 6000, "inverted_loads": False}
    steady = {"adaptive": [0.010, 0.014], "telemetry": [0.006, 0.007]}
    throttle = {"adaptive": [0.02], "telemetry": [0.01]}
    a = _telemetry_run(tmp_path / "a.json", {"sim-steady": steady, "npu-throttle": throttle}, tel)
    steady = {"adaptive": [0.010, 0.014], "telemetry": [0.005, 0.008]}
    throttle = {"adaptive": [0.02], "telemetry": [0.009]}
    b = _telemetry_run(tmp_path / "b.json", {"sim-steady": steady, "npu-throttle": throttle}, tel)
    before, after = compare_runs.load(a), compare_runs.load(b)
    assert before.ratios[("sim-steady", "simulator", 1)] == pytest.approx({"oracle": 1.0, "adaptive": 1.014,
                                                                          "telemetry": 1.007})  # fmt: skip
    cmp = compare_runs.compare(before, after, "telemetry")
    assert cmp.cells == [("sim-steady", "simulator", 0), ("sim-steady", "simulator", 1), ("npu-throttle", "world", 0)]
    assert cmp.differences == pytest.approx([-0.001, 0.001, -0.001])
    assert compare_runs.compare(before, after, "adaptive").moved == 0
    assert [g.name for g in cmp.by("world")] == ["simulator", "world"]


def test_a_telemetry_run_is_not_paired_with_a_learning_run(tmp_path, capsys):
    tel = _telemetry_run(tmp_path / "t.json", {"npu-throttle": {"adaptive": [0.02]}})
    learning = _run(tmp_path / "l.json", {("npu-throttle", "world", 0): 1.01})
    assert compare_runs.main([learning, tel]) == 1
    assert "not the same runs: benchmark 'learning' against 'telemetry'" in capsys.readouterr().err
    inverted = {"layers": 6000, "inverted_loads": True}
    plain = {**inverted, "inverted_loads": False}
    a = _telemetry_run(tmp_path / "a.json", {"npu-throttle": {"adaptive": [0.02]}}, plain)
    b = _telemetry_run(tmp_path / "b.json", {"npu-throttle": {"adaptive": [0.02]}}, inverted)
    assert compare_runs.main([a, b]) == 1
    assert "inverted_loads False against True" in capsys.readouterr().err
