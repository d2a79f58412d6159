"""``benchmarks/trace_regret.py`` on the simulator: it traces the very run ``bench_telemetry.py``
measures (layer by layer the same best pairs), keeps only the layers whose choice lost, in order,
and its report names the run and its costliest layer."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
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
