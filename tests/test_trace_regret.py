"""``benchmarks/trace_regret.py`` on the simulator: it traces the very run ``bench_telemetry.py``
measures (layer by layer the same best pairs), keeps only the layers whose choice lost, in order,
and its report names the run and its costliest layer."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_learning
import bench_telemetry
import trace_regret


@pytest.mark.parametrize("telemetry", [False, True])
def test_the_simulators_trace_is_the_benchmarks_run(telemetry):
    best, lost = trace_regret.trace("sim-periodic", "soc", 2, 0, telemetry)
    run = bench_telemetry.run_sim("sim-periodic", "telemetry" if telemetry else "adaptive", 2)
    assert best == pytest.approx(run.best, rel=1e-9)
    # the benchmark's decisions' regret counts each run's noise too; the trace, the choice alone
    assert 0 < sum(x.lost for x in lost) / best < run.decision_regret + 0.01
    assert all(x.lost > 0 and x.chosen != x.best for x in lost)
    assert [x.progress for x in lost] == sorted(x.progress for x in lost)


def test_the_report_names_the_run_and_its_costliest_layer(capsys):
    assert trace_regret.main(["--scenario", "sim-periodic", "--seed", "2", "--telemetry", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sim-periodic on the simulator, seed 2, telemetry: regret ")
    assert "the 1 costliest layers:" in out and "qkv: p (" in out and "attn: p (" in out


def test_the_whole_run_by_the_npus_clock_is_the_benchmarks_run():
    clocks = trace_regret.sim_clocks("sim-periodic", "telemetry", 2)
    run = bench_telemetry.run_sim("sim-periodic", "telemetry", 2)
    assert clocks.total_s == pytest.approx(run.total, rel=1e-9)
    assert sum(clocks.time_at.values()) == pytest.approx(clocks.total_s, rel=1e-9)
    assert sum(clocks.layers_at.values()) == clocks.layers
    # the NPU throttles in this run: some of its time is spent below the nominal clock
    assert len(clocks.time_at) > 1 and min(clocks.time_at) < max(clocks.time_at)


def test_the_clock_interval_is_the_telemetrys_and_changes_the_run(capsys):
    slower = trace_regret.sim_clocks("sim-steady", "telemetry", 0, clock_interval_s=0.25)
    assert slower.total_s != pytest.approx(trace_regret.sim_clocks("sim-steady", "telemetry", 0).total_s, rel=1e-9)
    for argv in (["--scenario", "steady", "--telemetry", "--clock-interval", "0.1"],
                 ["--scenario", "sim-steady", "--clock-interval", "0.1"],
                 ["--scenario", "sim-steady", "--telemetry", "--clock-interval", "0"]):  # fmt: skip
        with pytest.raises(SystemExit):
            trace_regret.main(argv)
    assert "--clock-interval" in capsys.readouterr().err


def test_the_report_ends_with_the_whole_run_against_the_oracle(capsys):
    assert trace_regret.main(["--scenario", "sim-steady", "--seed", "0", "--telemetry", "--top", "0"]) == 0
    out = capsys.readouterr().out
    tail = out[out.index("the whole run, by the NPU's clock (regret ") :]
    assert "\n  adaptive, telemetry: " in tail and "\n  oracle: " in tail and " MHz " in tail


@pytest.mark.parametrize("prefill", [True, False])
def test_a_worlds_trace_is_the_learning_benchmarks_cell(prefill):
    # the sum of what the trace's layers lost is the cell's adaptive/oracle - 1, for the mixed
    # workload and for the decode layers alone (``--workload decode``)
    best, lost = trace_regret.trace("npu-throttle", "int8-gpu", 1, 1500, False, prefill)
    totals = bench_learning.run_cell(("npu-throttle", "int8-gpu", 1, 1500, ("adaptive", "oracle"), prefill))["totals"]
    assert best == pytest.approx(totals["oracle"], rel=1e-9)
    assert sum(x.lost for x in lost) / best == pytest.approx(totals["adaptive"] / totals["oracle"] - 1.0, rel=1e-6)
    assert lost and all(x.lost > 0 for x in lost)
    assert all(x.shape.n == 1 for x in lost) is not prefill  # the mixed run loses in prefills too


def test_the_simulators_scenarios_refuse_the_decode_workload(capsys):
    with pytest.raises(SystemExit):
        trace_regret.main(["--scenario", "sim-steady", "--workload", "decode"])
    assert "--workload" in capsys.readouterr().err


def test_a_world_run_traces_on_a_device_profile_drawn_at_random_and_a_wrong_name_is_refused(capsys):
    assert trace_regret.main(["--scenario", "steady", "--world", "random-2", "--layers", "40", "--top", "1"]) == 0
    assert capsys.readouterr().out.startswith("steady on random-2, seed 0: regret ")
    for scenario, world in (("steady", "random-x"), ("prior-right", "random-2")):
        with pytest.raises(SystemExit):
            trace_regret.main(["--scenario", scenario, "--world", world])
        assert "--world:" in capsys.readouterr().err
