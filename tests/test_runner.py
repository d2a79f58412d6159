import sqlite3

import pytest

from adaptive_sched.cli import main
from adaptive_sched.config import load_config
from adaptive_sched.runner import STATIC, run_workload
from adaptive_sched.scheduler import Scheduler


def real_config(tmp_path, store_path=None):
    """Two numpy executors standing in for two processors: real executors, no simulator."""
    return load_config(
        {
            "device": "host",
            "backends": {"cpu": {"executor": "cpu_numpy"}, "gpu": {"executor": "cpu_numpy"}},
            "priors": "none",
            "policy": {"kind": "adaptive", "learner": "inline"},
            "store": {"path": str(store_path) if store_path else None},
            "workload": {"model": "tiny", "layers": 2, "prompt": 8, "tokens": 3, "precision": "fp16"},
        }
    )


def run_count(path):
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM runs").fetchone()[0]


def test_real_executors_take_turns_token_by_token(tmp_path, monkeypatch):
    order = []
    original = Scheduler.run_attention

    def spy(self, shape, inputs=None, **kw):
        order.append((id(self), shape.kv_len))
        return original(self, shape, inputs, **kw)

    monkeypatch.setattr(Scheduler, "run_attention", spy)
    report = run_workload(real_config(tmp_path), compare=("static", "cpu", "gpu"))
    # no offline prior in this config: no static-prior pass
    assert set(report.totals_s) == {"adaptive", "cpu-only", "gpu-only"}
    layers, passes = 2, 3
    # per step: each pass runs every layer, then the next pass: A A B B C C, A A B B C C, ...
    per_step = [order[i : i + layers * passes] for i in range(0, len(order), layers * passes)]
    assert len(per_step) == 4  # the prefill and 3 tokens
    owners = [[who for who, _ in step[::layers]] for step in per_step]
    assert all(len(set(o)) == passes for o in owners)
    assert all(o == owners[0] for o in owners)  # the same turn order at every step
    assert all(len({kv for _, kv in step}) == 1 for step in per_step)  # every pass at the same token


def test_baselines_log_nowhere_and_the_run_goes_where_db_says(tmp_path):
    store = tmp_path / "store.db"
    chosen = tmp_path / "chosen.db"
    report = run_workload(real_config(tmp_path, store_path=store), db=chosen, compare=("cpu", "gpu"))
    assert len(report.totals_s) == 3
    assert not store.exists()  # --db overrides the config's store.path, for every pass
    assert run_count(chosen) == 1  # the policy's pass only


def test_without_db_the_config_s_store_path_holds_only_the_policy_s_pass(tmp_path):
    store = tmp_path / "store.db"
    run_workload(real_config(tmp_path, store_path=store), compare=("cpu", "gpu"))
    assert run_count(store) == 1


def test_the_simulated_default_compares_with_the_static_prior_and_each_backend(capsys):
    config = load_config("rk3588-sim")
    report = run_workload(config, compare=("static", "gpu", "npu"), tokens=4)
    assert set(report.totals_s) == {"adaptive", STATIC, "gpu-only", "npu-only"}
    assert all(len(steps) == 5 for steps in report.steps_s.values())
    assert all(sum(steps) == pytest.approx(report.totals_s[name]) for name, steps in report.steps_s.items())


def test_run_prints_each_pass_with_a_sparkline_and_stays_quiet_off_a_terminal(capsys):
    code = main(["run", "--tokens", "6", "--layers", "2"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for name in ("adaptive", "static-prior", "gpu-only", "npu-only"):
        assert len(lines[name].split()[-1]) == 6  # one character per token
