"""``benchmarks/regret_map.py``: each cell's regret split by kind of layer sums to the learning
benchmark's figure for that cell, and the report's means are those of its cells."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_learning
import regret_map


@pytest.mark.parametrize(("scenario", "world"), [("unseen-models", "gpu-heavy"), ("npu-throttle", "soc")])
def test_a_cells_kinds_sum_to_its_benchmark_figure(scenario, world):
    cell = regret_map.run_cell((scenario, world, 1, 400, True))
    assert set(cell["per_mille"]) == set(regret_map.KINDS)
    assert all(v >= 0.0 for v in cell["per_mille"].values())
    bench = bench_learning.run_cell((scenario, world, 1, 400, ("adaptive", "oracle"), True))
    ratio = bench["totals"]["adaptive"] / bench["totals"]["oracle"]
    assert sum(cell["per_mille"].values()) == pytest.approx((ratio - 1.0) * 1e3, rel=1e-6, abs=1e-9)


def test_the_report_gives_each_worlds_mean_and_the_worst_cells(capsys):
    argv = ["--scenarios", "unseen-models", "--worlds", "gpu-heavy,soc", "--seeds", "0,1", "--layers", "300",
            "--jobs", "1", "--top", "2"]  # fmt: skip
    assert regret_map.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("regret by kind, per mille of the best total, mean over cells (4 cells)")
    header = out.splitlines()[1].split()
    assert header == ["all", "soc", "gpu-heavy"] or header == ["all", "gpu-heavy", "soc"]
    assert "first contact prefill" in out and "the 2 cells with most regret:" in out


def test_unknown_names_are_refused(capsys):
    for argv in (["--scenarios", "nope"], ["--worlds", "mars"], ["--seeds", "3-1"]):
        with pytest.raises(SystemExit):
            regret_map.main(argv)
    err = capsys.readouterr().err
    assert "--scenarios: unknown nope" in err and "--worlds: unknown mars" in err


def test_the_json_means_are_those_of_the_cells(capsys):
    argv = ["--scenarios", "steady,spikes", "--worlds", "npu-heavy,int8-gpu", "--seeds", "0", "--layers", "300",
            "--jobs", "1", "--json"]  # fmt: skip
    assert regret_map.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    cells = data["cells"]
    assert len(cells) == 4 and set(data["means"]) == {"all", "npu-heavy", "int8-gpu"}
    for name, means in data["means"].items():
        mine = [c for c in cells if name in ("all", c["world"])]
        for kind in regret_map.KINDS:
            assert means[kind] == pytest.approx(sum(c["per_mille"][kind] for c in mine) / len(mine))


@pytest.mark.parametrize(("scenario", "world"), [("steady", "npu-heavy"), ("npu-periodic", "soc")])
def test_the_explored_layers_split_by_why_their_probe_was_offered(scenario, world):
    cell = regret_map.run_cell((scenario, world, 0, 1500, True))
    probes = cell["probes"]
    assert set(probes) == set(regret_map.PROBES) and all(v >= 0.0 for v in probes.values())
    for phase in ("prefill", "decode"):
        split = sum(v for k, v in probes.items() if k.endswith(phase))
        assert split == pytest.approx(cell["per_mille"][f"explored {phase}"], rel=1e-9, abs=1e-12)
    # a fresh device's groups are checked once each: first checks are among the reasons
    assert probes["first check prefill"] + probes["first check decode"] > 0.0
