"""The simulated device and its executor: conformance, exact numerics, profile validation, mechanics.

The calibration against the paper lives in test_calibration.py.
"""

from __future__ import annotations

import copy
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from adaptive_sched.checks import CASES, run_checks
from adaptive_sched.errors import ConfigError, UnsupportedShape
from adaptive_sched.executors import create_executor
from adaptive_sched.executors.sim import SimExecutor
from adaptive_sched.features import stage_mem_bytes
from adaptive_sched.paths import CONFIG_DIR
from adaptive_sched.sim import (
    DeviceProfile,
    SimulatedDevice,
    Step,
    load_profile,
    stage_cost,
    transition_cost,
    why_unsupported,
)
from adaptive_sched.stages import make_inputs, reference
from adaptive_sched.types import Backend, Shape, Stage

PROFILE_PATH = CONFIG_DIR / "devices" / "rk3588.yaml"
DECODE = Shape(n=1, d=1536, kv_len=128, precision="int8")


@pytest.fixture(scope="module")
def profile_data() -> dict[str, Any]:
    return yaml.safe_load(PROFILE_PATH.read_text())


def quiet_device(**options: Any) -> SimulatedDevice:
    """No noise and no drift unless asked for: latencies equal the model."""
    options = {"noise": False, "thermal": False, "contention": False, **options}
    return SimulatedDevice("rk3588", **options)


# -- executor --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["gpu", "npu", "cpu"])
def test_conformance_suite(backend: str) -> None:
    results = run_checks(lambda: SimExecutor(backend=backend))
    failed = [f"{r.check}: {r.message}" for r in results if r.status != "passed"]
    assert not failed, failed


@pytest.mark.parametrize("backend", ["gpu", "npu", "cpu"])
@pytest.mark.parametrize(("stage", "shape"), CASES, ids=[f"{s.value}-{sh}" for s, sh in CASES])
def test_outputs_equal_reference_exactly(backend: str, stage: Stage, shape: Shape) -> None:
    inputs = make_inputs(stage, shape, seed=3)
    result = SimExecutor(backend).run(stage, shape, inputs)
    assert result.output is not None
    assert np.array_equal(result.output, reference(stage, shape, inputs))
    assert result.output.dtype == np.float32


def test_latency_only_run_has_no_output_and_advances_the_clock() -> None:
    dev = quiet_device()
    result = SimExecutor("npu", device=dev).run("qkv", DECODE)
    assert result.output is None
    assert result.latency_s == dev.now == pytest.approx(stage_cost(dev.profile, "qkv", DECODE, "npu").latency())


def test_registry_creates_the_sim_executor() -> None:
    ex = create_executor("sim", backend="npu", seed=3)
    assert isinstance(ex, SimExecutor) and ex.backend is Backend.NPU and ex.is_available()


def test_executors_share_one_device_and_pay_the_transition() -> None:
    dev = quiet_device()
    gpu, npu = SimExecutor("gpu", device=dev), SimExecutor("npu", device=dev)
    q = gpu.run("qkv", DECODE)
    a = npu.run("attn", DECODE, after=gpu.backend)
    assert dev.now == pytest.approx(q.latency_s + a.latency_s)
    handoff = transition_cost(dev.profile, "attn", DECODE, "gpu", "npu")
    assert a.latency_s == pytest.approx(dev.expected_latency("attn", DECODE, "npu") + handoff)
    same = npu.run("attn", DECODE, after=npu.backend)
    assert same.latency_s == pytest.approx(dev.expected_latency("attn", DECODE, "npu"))


def test_executor_builds_its_own_device_lazily_with_drift_options() -> None:
    ex = SimExecutor("gpu", seed=5, noise=False, thermal=False, steps=[{"time_s": 0, "backend": "gpu", "slowdown": 2}])
    assert ex._device is None  # creating an executor does no work
    base = stage_cost(load_profile("rk3588"), "qkv", DECODE, "gpu").latency()
    assert ex.run("qkv", DECODE).latency_s == pytest.approx(2 * base)
    with pytest.raises(ConfigError, match="unknown option"):
        SimExecutor("gpu", nosie=False)


def test_unsupported_shapes_give_a_reason() -> None:
    npu, gpu = SimExecutor("npu"), SimExecutor("gpu")
    wide = Shape(n=1, d=10240 + 64, precision="int8")
    assert "K=10304 exceeds the npu limit K <= 10240" in (npu.why_unsupported("qkv", wide) or "")
    assert gpu.supports("qkv", wide)
    long_cache = Shape(n=1, d=1024, kv_len=20_000)  # past the NPU's largest prepared KV bucket (8192)
    assert "no prepared KV bucket on npu holds them" in (npu.why_unsupported("attn", long_cache) or "")
    huge = Shape(n=1, d=20_000, heads=1)  # 2.4 GB of fp16 weights
    assert "GiB buffer" in (gpu.why_unsupported("qkv", huge) or "")
    with pytest.raises(UnsupportedShape, match="exceeds the npu limit"):
        npu.run("qkv", wide)


def test_profile_can_mark_stages_unsupported(tmp_path: Path, profile_data: dict[str, Any]) -> None:
    data = copy.deepcopy(profile_data)
    data["backends"]["npu"]["unsupported"] = ["attn:int8"]
    path = tmp_path / "npu-no-int8-attn.yaml"
    path.write_text(yaml.safe_dump(data))
    ex = SimExecutor("npu", profile=str(path))
    assert ex.supports("attn", Shape(n=1, d=128, kv_len=8))
    reason = ex.why_unsupported("attn", Shape(n=1, d=128, kv_len=8, precision="int8"))
    assert reason is not None and "marks attn int8 unsupported on npu" in reason


def test_missing_backend_is_unavailable_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "gpu-only.yaml"
    path.write_text(yaml.safe_dump(minimal_profile()))
    ex = SimExecutor("npu", profile=str(path))
    assert not ex.is_available()
    assert "has no npu backend" in ex.unavailable_reason


# -- profiles --------------------------------------------------------------------------------------


def minimal_profile() -> dict[str, Any]:
    """Another SoC is another file: a one-backend profile with no optional effects."""
    return {
        "name": "tiny-soc",
        "backends": {
            "gpu": {
                "clock_hz": 5e8,
                "bandwidth_Bps": 1e10,
                "launch_s": 1e-5,
                "calls": {"qkv": 1, "attn": 2},
                "rates": {p: {"peak_flops": 1e11, "efficiency": 0.5} for p in ("fp16", "int8")},
                "max_buffer_bytes": 1e9,
            }
        },
        "transition": {"bandwidth_Bps": 1e10, "sync_s": {}},
        "noise": {"sigma": 0.0},
        "thermal": {"enabled": False, "ambient_c": 30, "backends": {}},
        "contention": {"enabled": False, "backends": {}},
    }


def test_a_new_soc_is_a_new_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(minimal_profile()))
    dev = SimulatedDevice(str(path))
    assert dev.backends == (Backend.GPU,)
    # roofline by hand: qkv at n=1, d=64 fp16 is DRAM-bound
    shape = Shape(n=1, d=64)
    bytes_moved = 2 * (64 + 3 * 64 * 64 + 3 * 64)
    assert dev.run("qkv", shape, "gpu") == pytest.approx(1e-5 + bytes_moved / 1e10)


def test_shipped_profile_by_name_path_and_symlink() -> None:
    by_name = load_profile("rk3588")
    assert by_name.name == "rk3588" and set(by_name.backends) == set(Backend)
    repo_link = Path(__file__).resolve().parents[1] / "configs" / "devices" / "rk3588.yaml"
    assert load_profile(repo_link).backends == by_name.backends
    assert load_profile(str(PROFILE_PATH)) is by_name  # cached while the file is unchanged


def test_yaml_1_1_exponents_without_a_dot_are_numbers(profile_data: dict[str, Any]) -> None:
    data = copy.deepcopy(profile_data)
    data["backends"]["gpu"]["bandwidth_Bps"] = "2e10"  # what PyYAML returns for 2e10
    assert DeviceProfile.from_dict(data).backends[Backend.GPU].bandwidth_Bps == 2e10


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split("/")
    for key in parents:
        data = data[key]
    if value is _DELETE:
        del data[last]
    else:
        data[last] = value


_DELETE = object()

#: (path to change, new value, text the error must contain): one bad profile per row
BAD_PROFILES = [
    ("bogus", 1, "bogus: unknown key"),
    ("backends/gpu/bogus", 1, "backends.gpu.bogus: unknown key"),
    ("backends/gpu/launch_s", "fast", "backends.gpu.launch_s: expected a number, got 'fast'"),
    ("backends/gpu/calls/qkv", True, "backends.gpu.calls.qkv: expected an integer, got True"),
    ("backends/npu/bandwidth_Bps", _DELETE, "backends.npu.bandwidth_Bps: required key is missing"),
    ("backends/npu/bandwidth_Bps", 0, "backends.npu.bandwidth_Bps: expected a number > 0, got 0"),
    ("backends/gpu/rates/fp16/efficiency", 1.5, "backends.gpu.rates.fp16.efficiency: expected a fraction in (0, 1]"),
    ("backends/gpu/rates/fp8", {"peak_flops": 1, "efficiency": 1}, "backends.gpu.rates.fp8: unknown precision"),
    ("backends/gpu/rates/int8", _DELETE, "backends.gpu.rates.int8: required key is missing"),
    ("backends/tpu", {}, "backends.tpu: unknown backend"),
    ("backends/npu/unsupported", ["attn:fp8"], "backends.npu.unsupported: bad rule 'attn:fp8'"),
    ("backends/npu/align/n_elements/int8", 0, "backends.npu.align.n_elements.int8: expected an integer >= 1"),
    ("backends/npu/kv_buckets", [], "backends.npu.kv_buckets: expected 'pow2' or a non-empty list of KV lengths"),
    ("backends/npu/kv_buckets", [64, 0], "backends.npu.kv_buckets: expected 'pow2' or a non-empty list"),
    ("backends/npu/kv_buckets", "pow3", "backends.npu.kv_buckets: expected 'pow2' or a non-empty list"),
    ("transition/sync_s/gpu->npu", _DELETE, "transition.sync_s.gpu->npu: required key is missing"),
    ("transition/sync_s/gpu-npu", 1e-4, "transition.sync_s.gpu-npu: expected a 'producer->consumer' pair"),
    ("thermal/backends/npu/trips", [[95, 8e8], [85, 6e8]], "thermal.backends.npu.trips[1]: trips must rise"),
    ("thermal/backends/npu/trips", [[85]], "thermal.backends.npu.trips[0]: expected [temperature_c, clock_hz]"),
    ("thermal/backends/npu/tau_s", 0, "thermal.backends.npu.tau_s: expected a number > 0"),
    ("thermal/enabled", "yes", "thermal.enabled: expected true or false, got 'yes'"),
    ("contention/backends/gpu/slowdown", 0.5, "contention.backends.gpu.slowdown: expected a number >= 1"),
    ("noise", _DELETE, "noise: required key is missing"),
    ("backends/gpu/kv_stride", {"page_bytes": 4096}, "backends.gpu.kv_stride: unknown key"),
    ("backends/gpu/page_stride/penalty_s/int8", _DELETE, "backends.gpu.page_stride.penalty_s.int8: required key"),
    ("backends/gpu/page_stride/tlb_entries", 0, "backends.gpu.page_stride.tlb_entries: expected an integer >= 1"),
    ("backends/gpu/bound/roofline_factor", 0.5, "backends.gpu.bound.roofline_factor: expected a number >= 1"),
    ("memory/dram_Bps", 0, "memory.dram_Bps: expected a number > 0, got 0"),
    ("anchors/mlc-llama-2-7b/model", "llama-9", "anchors.mlc-llama-2-7b.model: unknown model 'llama-9'"),
    ("anchors/mlc-llama-2-7b/backend", "tpu", "anchors.mlc-llama-2-7b.backend: 'tpu' is not a backend"),
    ("anchors/mlc-llama-2-7b/precision", "fp8", "anchors.mlc-llama-2-7b.precision: unknown precision 'fp8'"),
    ("anchors/mlc-llama-2-7b/kv_len", [512, 64], "anchors.mlc-llama-2-7b.kv_len: expected 0 <= first <= last"),
    ("anchors/mlc-llama-2-7b/kv_len", 128, "anchors.mlc-llama-2-7b.kv_len: expected [first, last]"),
    ("anchors/rkllm-qwen2-0.5b/tok_s", _DELETE, "anchors.rkllm-qwen2-0.5b.tok_s: required key is missing"),
    ("anchors/rkllm-qwen2-0.5b/speed", 1, "anchors.rkllm-qwen2-0.5b.speed: unknown key"),
]


@pytest.mark.parametrize(("where", "value", "message"), BAD_PROFILES, ids=[row[0] for row in BAD_PROFILES])
def test_bad_profile_is_a_config_error_naming_key_and_file(
    tmp_path: Path, profile_data: dict[str, Any], where: str, value: Any, message: str
) -> None:
    data = copy.deepcopy(profile_data)
    _set(data, where, value)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_unreadable_profiles(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("backends: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(broken)
    with pytest.raises(ConfigError, match="no such file"):
        load_profile("no-such-soc")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_profile(listed)


# -- device options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"noise": "loud"}, "noise: expected true, false or a sigma"),
        ({"thermal": "hot"}, "thermal: expected true, false or a mapping"),
        ({"thermal": {"backends": {"npu": {"tau_s": 0}}}}, "thermal.backends.npu.tau_s: expected a number > 0"),
        ({"thermal": {"backends": {"npu": {"tau": 5}}}}, "thermal.backends.npu.tau: unknown key"),
        ({"contention": {"backends": {"tpu": {}}}}, "contention.backends.tpu: unknown backend"),
        ({"contention": {"rate": 1}}, "contention.rate: unknown key"),
        ({"steps": [{"time_s": -1, "backend": "gpu", "slowdown": 2}]}, "steps: step time_s must be"),
        ({"steps": [{"time_s": 1, "backend": "gpu"}]}, "steps: a step needs a slowdown or a contention change"),
        ({"steps": [{"time_s": 1, "backend": "gpu", "speed": 2}]}, "steps: unknown step key(s): speed"),
    ],
)
def test_bad_device_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        SimulatedDevice("rk3588", **options)
    assert message in str(info.value)


def test_drift_overrides_leave_the_profile_alone() -> None:
    dev = SimulatedDevice("rk3588", thermal={"ambient_c": 25, "backends": {"npu": {"tau_s": 5}}}, noise=0.2)
    assert dev.thermal.enabled and dev.thermal.ambient_c == 25 and dev.noise_sigma == 0.2
    assert dev.thermal.backends[Backend.NPU].tau_s == 5 and dev.thermal.backends[Backend.GPU].tau_s == 30
    assert load_profile("rk3588").thermal.backends[Backend.NPU].tau_s == 30
    dev = SimulatedDevice("rk3588", thermal=False, contention={"backends": {"gpu": {"slowdown": 3}}})
    assert not dev.thermal.enabled and dev.contention.enabled
    assert dev.contention.backends[Backend.GPU].slowdown == 3
    assert not SimulatedDevice("rk3588", contention={"enabled": False}).contention.enabled


def test_idle_rejects_negative_time() -> None:
    with pytest.raises(ValueError, match="seconds must be"):
        quiet_device().idle(-1)


# -- mechanics -------------------------------------------------------------------------------------


def test_virtual_clock_and_expected_latency() -> None:
    dev = quiet_device()
    expected = dev.expected_latency("qkv", DECODE, "gpu")
    assert dev.now == 0.0  # asking does not run anything
    assert dev.run("qkv", DECODE, "gpu") == expected
    dev.idle(0.25)
    assert dev.now == pytest.approx(expected + 0.25)


def test_npu_pads_to_its_alignment_and_pays_for_the_padding() -> None:
    profile = load_profile("rk3588")
    # keys 129 and 144 pad to the same 144 (fp16 N aligned to 16, K to 32 bytes): the same NPU work
    a, b = Shape(n=1, d=1024, kv_len=128), Shape(n=1, d=1024, kv_len=143)
    assert stage_cost(profile, "attn", a, "npu").compute_s == stage_cost(profile, "attn", b, "npu").compute_s
    assert stage_cost(profile, "attn", a, "gpu").compute_s < stage_cost(profile, "attn", b, "gpu").compute_s


def bucketed_profile(profile_data: dict[str, Any], buckets: Any) -> DeviceProfile:
    data = copy.deepcopy(profile_data)
    data["backends"]["npu"]["kv_buckets"] = buckets
    return DeviceProfile.from_dict(data, "bucketed")


def test_static_graph_npu_attention_costs_its_kv_bucket(profile_data: dict[str, Any]) -> None:
    profile = bucketed_profile(profile_data, [256, 64, 128])  # any order
    # 129 and 256 keys both run on the 256-key graph: the same NPU cost, as the padded cache is what it reads
    short, full = Shape(n=1, d=2048, kv_len=128, precision="int8"), Shape(n=1, d=2048, kv_len=255, precision="int8")
    assert stage_cost(profile, "attn", short, "npu") == stage_cost(profile, "attn", full, "npu")
    assert stage_cost(profile, "attn", Shape(n=1, d=2048, kv_len=127, precision="int8"), "npu").memory_s < (
        stage_cost(profile, "attn", short, "npu").memory_s
    )
    # prefill buckets too: 40 queries from an empty cache run on the 64-key graph
    assert stage_cost(profile, "attn", Shape(n=40, d=1024), "npu") == stage_cost(
        profile, "attn", Shape(n=40, d=1024, kv_len=24), "npu"
    )
    # other backends and the qkv stage run the shape as it is
    assert stage_cost(profile, "attn", short, "gpu") != stage_cost(profile, "attn", full, "gpu")
    assert stage_cost(profile, "qkv", short, "npu") == stage_cost(load_profile("rk3588"), "qkv", short, "npu")


def test_past_the_largest_kv_bucket_attention_is_unsupported(profile_data: dict[str, Any]) -> None:
    profile = bucketed_profile(profile_data, [64, 128, 256])
    assert why_unsupported(profile, "attn", Shape(n=1, d=1024, kv_len=255), "npu") is None
    reason = why_unsupported(profile, "attn", Shape(n=1, d=1024, kv_len=256), "npu")
    assert reason == "attention over 257 keys: no prepared KV bucket on npu holds them (largest 256)"
    assert why_unsupported(profile, "qkv", Shape(n=1, d=1024, kv_len=256), "npu") is None
    assert why_unsupported(profile, "attn", Shape(n=1, d=1024, kv_len=256), "gpu") is None
    # every power of two is prepared with pow2; the matmul limit K <= 10240 still applies to the bucket
    pow2 = bucketed_profile(profile_data, "pow2")
    assert stage_cost(pow2, "attn", Shape(n=1, d=1024, kv_len=128), "npu") == stage_cost(
        pow2, "attn", Shape(n=1, d=1024, kv_len=255), "npu"
    )
    assert why_unsupported(pow2, "attn", Shape(n=1, d=1024, kv_len=8191), "npu") is None
    assert "K=16384" in (why_unsupported(pow2, "attn", Shape(n=1, d=1024, kv_len=8192), "npu") or "")


def test_gpu_uses_small_tensors_poorly() -> None:
    profile = load_profile("rk3588")

    def achieved_bandwidth(d: int) -> float:
        # a decode GEMV has one work-item per output: 3d of them
        shape = Shape(n=1, d=d)
        return stage_mem_bytes(Stage.QKV, shape) / stage_cost(profile, "qkv", shape, "gpu").memory_s

    assert achieved_bandwidth(512) < 0.5 * achieved_bandwidth(4096)
    assert achieved_bandwidth(4096) < profile.backends[Backend.GPU].bandwidth_Bps


def test_unaligned_rows_take_the_gpu_slow_path_only() -> None:
    dev = quiet_device()
    n40, n64 = Shape(n=40, d=1024), Shape(n=64, d=1024)
    assert dev.expected_latency("qkv", n40, "gpu") > 2 * dev.expected_latency("qkv", n64, "gpu")
    assert dev.expected_latency("qkv", n40, "npu") < dev.expected_latency("qkv", n64, "npu")


def test_from_two_row_tiles_on_an_unaligned_gemm_pays_only_its_last_tiles_padding() -> None:
    dev = quiet_device()

    def gpu_qkv(n: int) -> float:
        return dev.expected_latency("qkv", Shape(n=n, d=1024), "gpu")

    assert gpu_qkv(48) > 2 * gpu_qkv(64)  # one tile and a half: the untiled path, like n=40
    assert gpu_qkv(72) == pytest.approx(gpu_qkv(96), rel=0.02)  # 72 rows run as three 32-row tiles
    assert gpu_qkv(72) < 1.5 * gpu_qkv(64)
    assert gpu_qkv(100) < dev.expected_latency("qkv", Shape(n=100, d=1024), "npu")


def test_transition_prices_sync_plus_bytes() -> None:
    profile = load_profile("rk3588")
    small, big = Shape(n=1, d=1024), Shape(n=512, d=1024)
    t_small = transition_cost(profile, "attn", small, "gpu", "npu")
    t_big = transition_cost(profile, "attn", big, "gpu", "npu")
    sync = profile.transition.sync_s[(Backend.GPU, Backend.NPU)]
    moved = 511 * 3 * 1024 * 2  # 511 more tokens of Q, K and V in fp16
    assert t_big - t_small == pytest.approx(moved / profile.transition.bandwidth_Bps)
    assert t_small > sync
    assert transition_cost(profile, "qkv", small, "npu", "npu") == 0.0


def test_state_is_shaped_like_sysfs() -> None:
    dev = SimulatedDevice("rk3588")
    state = dev.state()
    assert set(state) == {f"{b}_{k}" for b in ("cpu", "gpu", "npu") for k in ("temp_c", "freq_hz", "load")}
    assert state["npu_freq_hz"] == 1.0e9 and state["cpu_freq_hz"] == 2.3e9
    assert state["gpu_temp_c"] == 40.0 and state["gpu_load"] == 0.0
    assert all(isinstance(v, float) for v in state.values())


def test_npu_memory_path_slows_with_its_clock() -> None:
    # A decode GEMV on the NPU is bound by its clocked DMA port, so throttling shows in decode.
    dev = SimulatedDevice("rk3588", noise=False, thermal={"backends": {"npu": {"tau_s": 0.05}}})
    cost = dev.stage_cost("qkv", DECODE, "npu")
    assert cost.memory_s > cost.compute_s and cost.memory_clocked
    while dev.state()["npu_freq_hz"] == 1.0e9:
        dev.run("qkv", DECODE, "npu")
    ratio = dev.state()["npu_freq_hz"] / 1.0e9
    assert dev.expected_latency("qkv", DECODE, "npu") == pytest.approx(cost.latency(ratio))
    assert cost.latency(ratio) > cost.latency() * 1.15


def test_markov_contention_spends_the_expected_share_of_time_on() -> None:
    dev = SimulatedDevice("rk3588", contention={"backends": {"gpu": {"on_rate_hz": 2.0, "off_rate_hz": 2.0}}})
    on = 0
    for _ in range(4000):
        dev.idle(0.05)
        on += dev.state()["gpu_load"] > 0
    assert 0.4 < on / 4000 < 0.6  # on_rate / (on_rate + off_rate) = 0.5, over ~400 switches


def test_concurrent_runs_are_serialised() -> None:
    dev = SimulatedDevice("rk3588", seed=4)
    totals: list[float] = []

    def work(backend: str) -> None:
        totals.append(sum(dev.run("qkv", DECODE, backend) for _ in range(2000)))

    threads = [threading.Thread(target=work, args=(b,)) for b in ("gpu", "npu", "cpu", "gpu")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert math.isclose(dev.now, sum(totals), rel_tol=1e-9)


def test_step_validation_and_ordering() -> None:
    dev = quiet_device(
        steps=[Step(time_s=2.0, backend="gpu", slowdown=1.0), {"time_s": 1.0, "backend": "gpu", "slowdown": 4.0}]
    )
    assert [s.time_s for s in dev.steps] == [1.0, 2.0]
    data = yaml.safe_load(PROFILE_PATH.read_text())
    del data["contention"]["backends"]["gpu"]
    no_gpu_contention = DeviceProfile.from_dict(data, "no-gpu-contention")
    with pytest.raises(ConfigError, match="no contention settings for gpu"):
        SimulatedDevice(no_gpu_contention, steps=[{"time_s": 0, "backend": "gpu", "contention": True}])
