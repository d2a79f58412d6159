"""The default rk3588 profile reproduces the core paper's RK3588 findings.

Shapes: decode is ``n=1`` at ``kv_len=128`` (the reference decode speeds follow a
128-token prompt, so the first generated token attends to 128 cached tokens), batch 1,
head dim 64. A layer is ``qkv`` then ``attn``; "X->Y" runs qkv on X and attn on Y and
pays the transition; "X-only" runs both on X. Noise and drift are off unless a test is
about them. The figures come from :func:`calibration_table`, which also writes the table
at the end of configs/devices/rk3588.yaml.

The profile is also anchored end to end: whole-model decode speeds published for this SoC
(RKLLM on the NPU, MLC-LLM on the GPU; the profile's ``anchors``) are reproduced within each
anchor's stated tolerance, by :func:`anchor_table`.
"""

from __future__ import annotations

import math
import re
import statistics

import pytest

from adaptive_sched.paths import CONFIG_DIR
from adaptive_sched.sim import (
    CALIBRATION_KV_LEN,
    AnchorRow,
    CalibrationRow,
    SimulatedDevice,
    anchor_table,
    calibration_table,
    format_anchor_table,
    format_calibration_table,
    layer_latency,
    load_profile,
)
from adaptive_sched.types import Backend, Shape
from adaptive_sched.workload import MODELS

PROFILE_PATH = CONFIG_DIR / "devices" / "rk3588.yaml"


@pytest.fixture(scope="module")
def rows() -> dict[tuple[str, str], CalibrationRow]:
    return {r.key: r for r in calibration_table()}


def value(rows: dict[tuple[str, str], CalibrationRow], cell: str, metric: str) -> float:
    v = rows[(cell, metric)].value
    assert isinstance(v, float)
    return v


def decode(d: int, precision: str) -> Shape:
    return Shape(n=1, d=d, kv_len=CALIBRATION_KV_LEN, precision=precision)


# -- the paper's cells -----------------------------------------------------------------------------


def test_int8_d4096_gpu_to_npu_wins_as_in_the_paper(rows: dict) -> None:
    vs_gpu = value(rows, "int8 decode d=4096", "gpu-only / gpu->npu")
    vs_npu = value(rows, "int8 decode d=4096", "npu-only / gpu->npu")
    # within 10% of the paper, and not below it: the adaptive scheduler, which pays for
    # exploration and noise, must still reach 1.85x / 1.38x on this device
    assert 1.85 <= vs_gpu <= 1.85 * 1.10
    assert 1.38 <= vs_npu <= 1.38 * 1.10
    assert rows[("int8 decode d=4096", "best pair")].value == "gpu->npu"  # among all nine pairs, CPU included


def test_int8_d2048_naive_hybrid_loses_to_both_single_backends(rows: dict) -> None:
    vs_gpu = value(rows, "int8 decode d=2048", "gpu-only / gpu->npu")
    vs_npu = value(rows, "int8 decode d=2048", "npu-only / gpu->npu")
    assert vs_gpu < 1 and vs_npu < 1
    assert vs_gpu == pytest.approx(0.96, abs=0.03) and vs_npu == pytest.approx(0.92, abs=0.03)


@pytest.mark.parametrize("d", [512, 1024])
def test_fp16_small_d_npu_to_gpu_beats_npu_only(rows: dict, d: int) -> None:
    speedup = value(rows, f"fp16 decode d={d}", "npu-only / npu->gpu")
    assert 1.0 < speedup <= 1.10  # paper: about 1.04x


def test_fp16_d2048_gpu_to_npu_loses_to_the_best_single_backend(rows: dict) -> None:
    ratio = value(rows, "fp16 decode d=2048", "best single / gpu->npu")
    assert 0.9 < ratio < 1.0  # paper: 0.98x
    # and it is the pair the per-stage choice makes: GPU is better for qkv, NPU for attn
    dev = SimulatedDevice("rk3588", noise=False, thermal=False)
    s = decode(2048, "fp16")
    assert dev.expected_latency("qkv", s, "gpu") < dev.expected_latency("qkv", s, "npu")
    assert dev.expected_latency("attn", s, "npu") < dev.expected_latency("attn", s, "gpu")


@pytest.mark.parametrize("d", [1024, 2048])
@pytest.mark.parametrize("n", [64, 100, 128, 256, 512])
def test_prefill_gpu_beats_npu_from_n64(rows: dict, d: int, n: int) -> None:
    for part in ("qkv", "attn", "layer"):
        assert value(rows, f"fp16 prefill d={d} n={n}", f"npu / gpu: {part}") > 1, part


@pytest.mark.parametrize("d", [1024, 2048])
def test_prefill_n40_npu_beats_the_gpu_whose_latency_jumps(rows: dict, d: int) -> None:
    assert value(rows, f"fp16 prefill d={d} n=40", "npu / gpu: qkv") < 1
    assert value(rows, f"fp16 prefill d={d} n=40", "npu / gpu: layer") < 1
    dev = SimulatedDevice("rk3588", noise=False, thermal=False)
    gpu_40 = layer_latency(dev, Shape(n=40, d=d), "gpu", "gpu")
    gpu_64 = layer_latency(dev, Shape(n=64, d=d), "gpu", "gpu")
    assert gpu_40 > 2 * gpu_64  # "the GPU's latency rises sharply" at n=40


def test_absolute_magnitudes_are_plausible_for_rk3588(rows: dict) -> None:
    # A 1.5B-class (d=1536) decode layer: between 0.1 and a few ms. Rockchip's runtime spends
    # 60 ms per Qwen2.5-1.5B token (16.7 tok/s) on all 28 layers including the MLP, with fused
    # three-core kernels; the paper's per-stage path is slower per byte but must stay in range.
    layer_ms = value(rows, "int8 decode d=1536", "best layer (ms)")
    assert 0.1 < layer_ms < 3.0
    assert value(rows, "int8 decode d=1536", "x28 layers (ms/token)") < 1000 / 16.7
    assert 1.0 < value(rows, "int8 decode d=4096", "gpu->npu layer (ms)") < 10.0


def profile_block(name: str) -> str:
    block = re.search(rf"# BEGIN {name}\n(.*?)# END {name}", PROFILE_PATH.read_text(), re.S)
    assert block is not None, name
    return block.group(1).rstrip("\n")


def test_calibration_table_in_the_profile_is_current() -> None:
    regenerate = "python scripts/sim_tables.py --write"
    assert profile_block("CALIBRATION TABLE") == format_calibration_table(prefix="# "), f"regenerate: {regenerate}"


# -- end to end: public whole-model decode speeds ---------------------------------------------------


@pytest.fixture(scope="module")
def anchors() -> dict[str, AnchorRow]:
    return {r.anchor.name: r for r in anchor_table()}


def test_the_public_figures_are_anchored_with_their_sources(anchors: dict[str, AnchorRow]) -> None:
    # RKLLM's w8a8 decode speeds on the NPU and MLC-LLM's on the Mali GPU (DESIGN.md, issue text)
    expected = {
        "rkllm-qwen2-0.5b": ("npu", 41.58),
        "rkllm-tinyllama-1.1b": ("npu", 24.43),
        "rkllm-qwen2.5-1.5b": ("npu", 16.69),
        "mlc-llama-2-7b": ("gpu", 2.5),
        "mlc-redpajama-3b": ("gpu", 5.0),
    }
    assert {name: (r.anchor.backend.value, r.anchor.tok_s) for name, r in anchors.items()} == expected
    for r in anchors.values():
        assert r.anchor.source and r.anchor.model in MODELS


@pytest.mark.parametrize(
    "name", ["rkllm-qwen2-0.5b", "rkllm-tinyllama-1.1b", "rkllm-qwen2.5-1.5b", "mlc-llama-2-7b", "mlc-redpajama-3b"]
)
def test_end_to_end_decode_speed_within_the_stated_tolerance(anchors: dict[str, AnchorRow], name: str) -> None:
    row = anchors[name]
    assert row.within_tolerance, (name, row.ratios, row.anchor.tolerance)
    assert row.anchor.tolerance <= 0.25  # a tolerance wide enough to hide a 2x error would anchor nothing


def test_attention_fits_in_what_the_public_token_leaves_after_its_weights(anchors: dict[str, AnchorRow]) -> None:
    # Whatever the runtime, a token streams every weight once: at the DRAM's peak that takes
    # weights / dram_Bps. The rest of the published token time bounds the attention core,
    # independently of how the simulator prices GEMVs.
    profile = load_profile("rk3588")
    for row in anchors.values():
        a, model = row.anchor, MODELS[row.anchor.model]
        weights = (model.layers * model.layer_weights + model.head_weights) * a.weight_bytes
        left = 1.0 / a.tok_s - weights / profile.dram_Bps
        assert 0 < row.last.attention_s < left, a.name


def test_end_to_end_table_in_the_profile_is_current() -> None:
    assert profile_block("END-TO-END TABLE") == format_anchor_table(prefix="# "), "python scripts/sim_tables.py --write"


# -- drift on the default profile ------------------------------------------------------------------


def test_sustained_npu_load_throttles_and_idle_recovers() -> None:
    dev = SimulatedDevice("rk3588", seed=0, noise=False, contention=False)
    s = decode(1536, "int8")
    base = dev.expected_latency("qkv", s, "npu")
    gpu_base = dev.expected_latency("qkv", s, "gpu")
    while dev.now < 90.0:  # NPU-only decode, nothing else running
        dev.run("qkv", s, "npu")
        dev.run("attn", s, "npu", after="npu")
    state = dev.state()
    assert state["npu_temp_c"] > 85.0 and state["npu_freq_hz"] < 1.0e9
    assert dev.expected_latency("qkv", s, "npu") > 1.15 * base
    # the idle GPU neither heated nor slowed
    assert state["gpu_temp_c"] == 40.0 and state["gpu_freq_hz"] == 1.0e9
    assert dev.expected_latency("qkv", s, "gpu") == gpu_base
    dev.idle(60.0)
    state = dev.state()
    assert state["npu_freq_hz"] == 1.0e9 and state["npu_temp_c"] < 50.0
    assert dev.expected_latency("qkv", s, "npu") == base


def test_contention_slows_the_affected_backend_only() -> None:
    force_on = {"time_s": 1.0, "backend": "npu", "contention": True}
    dev = SimulatedDevice("rk3588", noise=False, thermal=False, contention=True, steps=[force_on])
    s = decode(2048, "int8")
    dev.idle(0.5)
    before = {b: dev.expected_latency("attn", s, b) for b in ("gpu", "npu", "cpu")}
    assert dev.state()["npu_load"] == 0.0
    dev.idle(1.0)
    after = {b: dev.expected_latency("attn", s, b) for b in ("gpu", "npu", "cpu")}
    slowdown = dev.contention.backends[Backend.NPU].slowdown
    assert after["npu"] == pytest.approx(slowdown * before["npu"])
    assert after["gpu"] == before["gpu"] and after["cpu"] == before["cpu"]
    assert dev.state()["npu_load"] == pytest.approx(1 - 1 / slowdown)


def test_scripted_step_applies_at_its_time() -> None:
    step = {"time_s": 0.5, "backend": "gpu", "slowdown": 3.0}
    dev = SimulatedDevice("rk3588", noise=False, thermal=False, steps=[step])
    s = decode(1536, "int8")
    base_gpu, base_npu = dev.expected_latency("qkv", s, "gpu"), dev.expected_latency("qkv", s, "npu")
    while dev.now < 0.5:
        assert dev.run("qkv", s, "gpu") == base_gpu
    assert dev.run("qkv", s, "gpu") == pytest.approx(3.0 * base_gpu)
    assert dev.run("qkv", s, "npu") == base_npu


def run_sequence(seed: int) -> list[float]:
    dev = SimulatedDevice("rk3588", seed=seed, contention=True)
    out = []
    for i in range(3000):
        s = decode((1536, 2048)[i % 2], "int8")
        q = ("gpu", "npu")[i % 3 == 0]
        out.append(dev.run("qkv", s, q))
        out.append(dev.run("attn", s, "npu", after=q))
        dev.idle(0.01)
    return out


def test_same_seed_same_latencies() -> None:
    assert run_sequence(7) == run_sequence(7)
    assert run_sequence(7) != run_sequence(8)


def test_noise_has_the_configured_spread() -> None:
    dev = SimulatedDevice("rk3588", seed=11, thermal=False, contention=False)
    s = decode(1536, "int8")
    expected = dev.expected_latency("attn", s, "gpu")
    logs = [math.log(dev.run("attn", s, "gpu") / expected) for _ in range(20_000)]
    sigma = dev.profile.noise_sigma
    assert 0.9 * sigma < statistics.stdev(logs) < 1.1 * sigma
    assert abs(statistics.median(logs)) < 0.1 * sigma  # the noise-free latency is the median
