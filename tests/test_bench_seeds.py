"""The benchmarks' ``--seeds`` option: lists and ranges, and a clear error for anything else; their
``--scenarios``: an unknown name is refused, naming the known ones."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from worlds import parse_seeds


@pytest.mark.parametrize(
    ("text", "seeds"),
    [
        ("0", [0]),
        ("0,1,2", [0, 1, 2]),
        ("0-4", [0, 1, 2, 3, 4]),
        ("0-2,9", [0, 1, 2, 9]),
        (" 3 , 5-6 ", [3, 5, 6]),
        ("1-3,2-4", [1, 2, 3, 4]),  # each seed once
        ("7-7", [7]),
    ],
)
def test_lists_and_ranges(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "1,,2", "3-1", "1-", "-1", "1.5", "0-x"])
def test_anything_else_is_refused_naming_the_option(text):
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds(text)


def test_the_telemetry_benchmark_refuses_an_unknown_scenario_naming_the_known_ones(capsys, monkeypatch):
    import bench_telemetry

    monkeypatch.setattr(sys, "argv", ["bench_telemetry.py", "--scenarios", "sim-periodic,npu-melts"])
    with pytest.raises(SystemExit):
        bench_telemetry.main()
    err = capsys.readouterr().err
    assert "--scenarios: unknown npu-melts" in err
    assert "sim-periodic" in err and "gpu-contention" in err


def test_a_device_profile_drawn_at_random_is_the_same_every_time_and_differs_between_draws():
    from worlds import Shape, Stage, make_base, random_units

    assert random_units(3) == random_units(3)
    assert random_units(3) != random_units(4)
    shape = Shape(n=1, d=2048, kv_len=512, precision="int8")
    assert all(make_base("random-3").stage_s(stage, shape, b) > 0 for stage in Stage for b in random_units(3))
    with pytest.raises(ValueError, match="unknown world"):
        make_base("random-x")


def test_the_learning_benchmark_runs_the_named_profiles_scenarios_on_drawn_ones(capsys):
    import json

    import bench_learning

    argv = ["--scenarios", "steady,prior-right", "--random-worlds", "2", "--policies", "static", "--seeds", "0",
            "--layers", "40", "--jobs", "1", "--json"]  # fmt: skip
    assert bench_learning.main(argv) == 0
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert sorted((c["scenario"], c["world"]) for c in cells) == [
        ("prior-right", "prior"),  # the prior's own world is kept
        ("steady", "random-0"),
        ("steady", "random-1"),
    ]
    with pytest.raises(SystemExit):
        bench_learning.main(["--random-worlds", "-1"])
    assert "--random-worlds" in capsys.readouterr().err


def test_vowpal_wabbits_action_order_is_an_option_refused_unless_it_orders_the_backends(capsys):
    import json

    import bench_learning

    for bad in ("gpu,cpu", "gpu", "gpu,npu,npu", "gpu,tpu"):
        with pytest.raises(SystemExit):
            bench_learning.main(["--vw-actions", bad, "--seeds", "0"])
        assert "--vw-actions" in capsys.readouterr().err
    pytest.importorskip("vowpalwabbit")
    totals = {}
    for order in ("gpu,npu", "npu,gpu"):
        argv = ["--scenarios", "steady", "--worlds", "gpu-heavy", "--policies", "vw-eps", "--seeds", "0",
                "--layers", "3", "--jobs", "1", "--json", "--vw-actions", order]  # fmt: skip
        assert bench_learning.main(argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["run"]["vw_actions"] == order.split(",")
        totals[order] = out["cells"][0]["totals"]["vw-eps"]
    # with nothing learned its first choices tie, and a tie goes to the first action: the GPU is
    # the faster everywhere on this world
    assert totals["npu,gpu"] > totals["gpu,npu"]
