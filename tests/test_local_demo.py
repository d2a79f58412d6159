"""The local demo: ``adaptive-sched run --config local`` schedules numpy against OpenCL on this host.

The tests check behaviour only (what runs where, what is uploaded, what is learned from),
never how fast anything is. Those that run OpenCL skip, with the reason, only when no
OpenCL device works here.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from adaptive_sched.cli import main
from adaptive_sched.config import load_config
from adaptive_sched.executors.opencl import OpenCLExecutor
from adaptive_sched.policies import FixedPolicy
from adaptive_sched.runner import run_workload
from adaptive_sched.scheduler import Scheduler
from adaptive_sched.stages import make_inputs
from adaptive_sched.store.connection import open_database
from adaptive_sched.store.profiles import read_profiles
from adaptive_sched.types import Backend, Shape


@pytest.fixture(scope="module")
def local():
    return load_config("local")


@pytest.fixture(scope="module")
def opencl(local):
    """Skip unless the OpenCL device of the local config works here."""
    ex = OpenCLExecutor(**local.backends[Backend.GPU].options)
    try:
        if not ex.is_available():
            pytest.skip(f"no usable OpenCL device: {ex.unavailable_reason}")
    finally:
        ex.close()


def short(config, tokens=3, layers=2):
    """The config with a workload small enough for a test."""
    return dataclasses.replace(config, workload=dataclasses.replace(config.workload, tokens=tokens, layers=layers))


# -- the config -------------------------------------------------------------------------
def test_local_config_schedules_numpy_against_opencl(local):
    assert set(local.candidates) == {Backend.CPU, Backend.GPU}
    assert local.backends[Backend.CPU].executor == "cpu_numpy"
    gpu = local.backends[Backend.GPU]
    assert gpu.executor == "gpu_opencl"
    assert local.priors == "none" and local.policy.kind == "adaptive"


def test_local_config_keeps_every_layer_s_weights_on_the_device(local):
    options = local.backends[Backend.GPU].options
    assert options["weight_cache"] == "readonly"  # safe: the runner's weights are read-only
    assert options["max_cached_weights"] >= local.workload.layers
    OpenCLExecutor(**options)  # the options are ones the executor takes


def test_board_config_keeps_every_layer_s_weights_on_the_device():
    board = load_config("rk3588")
    options = board.backends[Backend.GPU].options
    assert options["max_cached_weights"] >= (board.workload.layers or 28)  # qwen2.5-1.5b has 28 layers
    OpenCLExecutor(**options)


# -- weights, warm-up, cold runs ----------------------------------------------------------------
def capture_gpu_caches(monkeypatch):
    """Record the OpenCL executors' cache counters when the runner's schedulers close them."""
    seen = []
    close = OpenCLExecutor._close

    def spy(self):
        seen.append(self.cache_info())
        close(self)

    monkeypatch.setattr(OpenCLExecutor, "_close", spy)
    return seen


@pytest.mark.opencl
def test_the_runner_s_weights_are_uploaded_once_per_layer(opencl, local, monkeypatch):
    seen = capture_gpu_caches(monkeypatch)
    config = short(local, tokens=4, layers=3)
    report = run_workload(config, policy=FixedPolicy("gpu"), compare=())
    assert len(seen) == 1
    info = seen[0]
    assert info["weight_uploads"] == 3  # read-only weights: once per layer, by the warm-up
    assert info["weight_evictions"] == 0
    # the timed run (prefill and 4 tokens, 3 layers) found every layer's weights on the device
    assert info["weight_cache_hits"] >= 5 * 3
    assert sum(b.runs for b in report.buckets if b.stage == "qkv") == 5 * 3


@pytest.mark.opencl
def test_the_warm_up_pays_one_time_costs_before_the_timed_run(opencl, local):
    report = run_workload(short(local, tokens=2), policy=FixedPolicy("gpu"), compare=())
    qkv = [b for b in report.buckets if b.stage == "qkv"]
    assert qkv and all(b.cold == 0 for b in qkv)  # programs built, weights cached: nothing cold
    prefill = [b for b in report.buckets if b.bucket.startswith("prefill")]
    assert all(b.cold == 0 and b.warm_runs["gpu"] == b.runs for b in prefill)


@pytest.mark.opencl
def test_cold_runs_are_not_learned_from(opencl, local):
    shape = Shape(n=4, d=64, heads=2, precision="fp16")
    inputs = make_inputs("qkv", shape)
    inputs["w"].setflags(write=False)
    inputs["b"].setflags(write=False)
    with Scheduler(local, policy=FixedPolicy("gpu")) as sched:
        first = sched.run_stage("qkv", shape, inputs)
        assert first.result.cold  # program built, weights uploaded into the cache
        assert sched.stats()["observations"] == 0
        second = sched.run_stage("qkv", shape, inputs)
        assert not second.result.cold
        assert sched.stats()["observations"] == 1


# -- the command ---------------------------------------------------------------------------
def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.opencl
def test_run_local_compares_both_backends(opencl, capsys):
    code, out, _ = run(capsys, "run", "--config", "local", "--tokens", "3", "--layers", "2")
    assert code == 0
    assert "cpu ms" in out and "gpu ms" in out  # what each backend measured, per bucket
    assert "cpu-only" in out and "gpu-only" in out
    assert "prefill n=128" in out and "decode kv 128-255" in out


@pytest.mark.opencl
def test_run_local_json_names_what_each_backend_measured(opencl, capsys):
    code, out, _ = run(capsys, "run", "--config", "local", "--tokens", "3", "--layers", "2", "--output", "json")
    data = json.loads(out)
    assert code == 0
    assert set(data["totals_ms"]) == {"adaptive", "cpu-only", "gpu-only"}
    assert {b["stage"] for b in data["buckets"]} == {"qkv", "attn"}
    for bucket in data["buckets"]:
        assert sum(bucket["backends"].values()) == bucket["runs"]
        assert set(bucket["backends"]) <= {"cpu", "gpu"}
        assert set(bucket["warm_mean_ms"]) <= set(bucket["backends"])


@pytest.mark.opencl
def test_executors_shows_which_opencl_device_the_config_matched(opencl, capsys):
    code, out, _ = run(capsys, "executors", "--config", "local", "--output", "json")
    devices = {e["backend"]: e["device"] for e in json.loads(out)}
    assert code == 0
    assert devices["cpu"] == ""
    assert devices["gpu"].startswith("Portable Computing Language / ")


# -- a prior for this host ------------------------------------------------------------------


@pytest.mark.opencl
def test_a_prior_profiled_on_this_host_starts_the_local_config_from_what_was_measured(opencl, tmp_path, capsys):
    db, exported = tmp_path / "host.db", tmp_path / "host-prior.json"
    code, out, _ = run(capsys, "profile", "--config", "local", "--grid", "local", "--db", str(db),
                       "--warmup", "1", "--repetitions", "3")  # fmt: skip
    assert code == 0 and "failed    0" in out
    code, out, _ = run(capsys, "train", "--db", str(db), "--device", "local", "--export", str(exported))
    assert code == 0 and exported.exists()

    database = open_database(db)
    try:
        measured = {(r.stage, r.backend): r.median_s for r in read_profiles(database, device="local", ok_only=True)
                    if r.shape.n == 1 and r.shape.d == 896 and r.shape.kv_len in (0, 256)}  # fmt: skip
    finally:
        database.close()
    assert len(measured) == 4  # qkv and attn on cpu and gpu

    config = dataclasses.replace(load_config("local"), priors=str(exported))
    with Scheduler(config) as sched:
        assert (sched.prior.name, sched.prior.device) == ("local", "local")
        decode = Shape(n=1, d=896, kv_len=256, heads=14)
        for stage in ("qkv", "attn"):
            estimates = sched.prior.latency(stage, decode)
            for backend in (Backend.CPU, Backend.GPU):
                # at a point it was trained on, the prior says what was measured there
                assert estimates[backend] == pytest.approx(measured[stage, backend.value], rel=1e-9)
        assert sched.decide("qkv", decode).backend in (Backend.CPU, Backend.GPU)
