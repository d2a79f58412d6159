"""Every YAML file the package reads reports all of its problems at once, one line each naming file and key."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from adaptive_sched.config import load_config
from adaptive_sched.errors import ConfigError
from adaptive_sched.offline.profiling import load_grid
from adaptive_sched.paths import CONFIG_DIR
from adaptive_sched.sim.loading import load_profile


def write(tmp_path: Path, data: dict, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def assert_reported(exc: ConfigError, path: Path, keys: list[str]) -> None:
    """One line per key (in any order), in ``file: key: message`` form, and nothing else."""
    assert str(exc).splitlines() == exc.errors
    assert all(line.startswith(f"{path}: ") for line in exc.errors), str(exc)
    reported = [line[len(f"{path}: ") :].split(": ", 1)[0] for line in exc.errors]
    assert sorted(reported) == sorted(keys), str(exc)


def test_a_config_with_three_errors_reports_three(tmp_path):
    path = write(tmp_path, {
        "device": "test", "priors": "none", "backends": {"gpu": "cpu_numpy"},
        "policy": {"kind": "adaptive", "explore_budget": "lots"},
        "store": {"on_full": "wait"},
        "workload": {"tokenz": 3},
    })  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_reported(info.value, path, ["policy.explore_budget", "store.on_full", "workload.tokenz"])


def test_config_errors_span_sections_keys_and_checks(tmp_path):
    path = write(tmp_path, {
        "device": "test", "priors": "none",
        "backends": {"gpu": {"executor": "cpu_numpy", "role": "leader"}, "tpu": "cpu_numpy"},
        "policy": {"learner": "fast", "timeout_s": 0},
        # a section's value checks wait for its types: queue_size is checked once flush_rows is a number
        "store": {"queue_size": 0, "flush_rows": "many"},
        "workload": {"tokens": 0, "layers": 0},
        "extra": 1,
    })  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_reported(info.value, path, [
        "backends.gpu.role", "backends.tpu", "policy.learner", "policy.timeout_s",
        "store.flush_rows", "workload.tokens", "workload.layers", "extra",
    ])  # fmt: skip


def test_checks_across_sections_wait_for_sound_sections(tmp_path):
    # the fixed policy names a backend that is not configured: said once the sections are sound
    path = write(tmp_path, {"device": "t", "priors": "none", "backends": {"gpu": "cpu_numpy"},
                            "policy": {"kind": "fixed", "backend": "npu"}})  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert_reported(info.value, path, ["policy.backend"])


def test_a_profile_reports_every_problem(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "devices" / "rk3588.yaml").read_text())
    data["backends"]["gpu"]["launch_s"] = "fast"
    data["backends"]["npu"]["rates"]["int8"]["efficiency"] = 2
    del data["backends"]["cpu"]["rates"]
    data["thermal"]["backends"]["npu"]["tau_s"] = 0
    data["thermal"]["bogus"] = 1
    del data["noise"]
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert_reported(info.value, path, [
        "backends.cpu.rates", "backends.gpu.launch_s", "backends.npu.rates.int8.efficiency",
        "thermal.backends.npu.tau_s", "thermal.bogus", "noise",
    ])  # fmt: skip


def test_a_grid_reports_every_problem(tmp_path):
    path = write(tmp_path, {"name": "g", "precision": "fp8", "size": 1,
                            "grids": [{"n": 0, "d": 64}, {"n": 1, "d": "wide", "seq": 2}, {"n": 1}]})  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    assert_reported(info.value, path, ["size", "precision", "grids[0].n", "grids[1].seq", "grids[1].d"])


def test_a_sub_grid_is_expanded_only_when_sound(tmp_path):
    path = write(tmp_path, {"grids": [{"n": 0, "d": 64}, {"n": 1}]})
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    assert_reported(info.value, path, ["grids[0].n", "grids[1].d"])


def test_config_error_keeps_its_lines_through_pickle():
    exc = ConfigError("a.yaml: x: bad", "a.yaml: y: bad")
    again = pickle.loads(pickle.dumps(exc))
    assert again.errors == exc.errors and str(again) == "a.yaml: x: bad\na.yaml: y: bad"
    assert ConfigError("one").errors == ["one"]


def test_a_broken_backends_section_is_said_once(tmp_path):
    data = yaml.safe_load((CONFIG_DIR / "devices" / "rk3588.yaml").read_text())
    data["backends"] = ["gpu"]  # the thermal, contention and anchor sections name backends: not checked against this
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert_reported(info.value, path, ["backends"])


def test_drift_overrides_report_every_problem():
    from adaptive_sched.sim import SimulatedDevice

    with pytest.raises(ConfigError) as info:
        SimulatedDevice("rk3588", thermal={"ambient_c": "warm", "backends": {"npu": {"tau_s": 0, "rise_c": "x"}}})
    assert type(info.value) is ConfigError
    assert sorted(line.split(": ")[0] for line in info.value.errors) == [
        "thermal.ambient_c", "thermal.backends.npu.rise_c", "thermal.backends.npu.tau_s",
    ]  # fmt: skip
