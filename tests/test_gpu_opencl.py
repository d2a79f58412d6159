"""The OpenCL executor on a real OpenCL device (PoCL on a development host, the Mali on a board).

Every test that needs a device skips, with the reason, only when no OpenCL device works here.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from adaptive_sched.checks import run_checks
from adaptive_sched.errors import ConfigError
from adaptive_sched.executors.opencl.executor import OpenCLExecutor
from adaptive_sched.stages import attention_int8_fixed_grid, make_inputs, reference
from adaptive_sched.types import Shape, Stage

pytestmark = pytest.mark.opencl


@pytest.fixture(scope="module")
def ex():
    executor = OpenCLExecutor()
    if not executor.is_available():
        pytest.skip(f"no usable OpenCL device: {executor.unavailable_reason}")
    yield executor
    executor.close()


def kernel_reference(shape, inputs):
    """What the attention kernels compute: INT8 keeps the probabilities on the fixed 1/127 grid."""
    if shape.precision.value == "int8":
        return attention_int8_fixed_grid(inputs["q"], inputs["k"], inputs["v"])
    return reference("attn", shape, inputs)


def rel_err(got, expected):
    return float(np.max(np.abs(np.asarray(got, np.float64) - expected))) / (float(np.max(np.abs(expected))) or 1.0)


# -- conformance ------------------------------------------------------------------------
def test_conformance_suite_passes(ex):
    results = run_checks(lambda: OpenCLExecutor())
    failed = [(r.check, r.message) for r in results if r.status == "failed"]
    skipped = [r.check for r in results if r.status == "skipped"]
    assert failed == []
    assert skipped == []  # a device exists here, so nothing may be skipped


# -- numerics -----------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize(
    "dims",
    [
        {"n": 13, "d": 40},  # rows not a multiple of the row block, columns (120) of the vector width
        {"n": 1, "d": 72, "batch": 3},  # decode GEMV over three sequences
        {"n": 1, "d": 33},  # odd width: every column block is an edge
        {"n": 9, "d": 200, "batch": 2},  # reduction length not a multiple of the unroll
        {"n": 3, "d": 1100},  # INT8 reduction longer than one exact float chunk (1024)
    ],
    ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()),
)
def test_qkv_edge_sizes_match_reference(ex, dims, precision):
    shape = Shape(**dims, precision=precision)
    inputs = make_inputs("qkv", shape, seed=3)
    got = ex.run("qkv", shape, inputs).output
    expected = reference("qkv", shape, inputs)
    assert got.shape == expected.shape
    # INT8 quantises exactly like the reference and accumulates exactly: only the float epilogue may differ
    assert rel_err(got, expected) < (1e-5 if precision == "int8" else 2e-3)


def test_qkv_without_bias_and_with_a_cached_bias(ex):
    # the shared all-zero bias grows with the widest layer; a read-only bias is kept on the device
    for d, frozen in ((64, False), (128, False), (64, True), (64, True)):
        shape = Shape(n=5, d=d)
        inputs = make_inputs("qkv", shape, seed=d)
        if frozen:
            inputs["b"].setflags(write=False)
        else:
            del inputs["b"]
        assert rel_err(ex.run("qkv", shape, inputs).output, reference("qkv", shape, inputs)) < 2e-3


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize(
    "dims",
    [
        {"n": 7, "d": 128, "heads": 2},  # prefill, queries not a multiple of the query block
        {"n": 6, "d": 96, "kv_len": 5, "batch": 3, "heads": 3},  # prefill after a cache, head_dim 32
        {"n": 3, "d": 66, "kv_len": 2, "heads": 2},  # odd head_dim 33: scalar vectors
    ],
    ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()),
)
def test_attention_matches_reference(ex, dims, precision):
    shape = Shape(**dims, precision=precision)
    inputs = make_inputs("attn", shape, seed=5)
    got = ex.run("attn", shape, inputs).output
    assert rel_err(got, kernel_reference(shape, inputs)) < (1e-5 if precision == "int8" else 2e-3)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_decode_over_a_long_cache(ex, precision):
    shape = Shape(n=1, d=256, kv_len=3000, batch=2, heads=4, precision=precision)
    inputs = make_inputs("attn", shape, seed=11)
    got = ex.run("attn", shape, inputs).output
    assert rel_err(got, kernel_reference(shape, inputs)) < (1e-5 if precision == "int8" else 2e-3)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize(
    "dims",
    [
        {"n": 1, "d": 128, "kv_len": 1000, "batch": 2, "heads": 2},  # decode: the case splits exist for
        {"n": 9, "d": 64, "kv_len": 30, "heads": 1},  # prefill: late splits hold no visible key for early queries
    ],
    ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()),
)
def test_keys_split_across_work_items_give_the_same_result(dims, precision):
    # on a GPU decode splits the keys to fill the device; force it here, where the CPU would not
    with OpenCLExecutor(tuning={"attn_parallel": 512, "attn_split_min_keys": 4}) as split:
        if not split.is_available():
            pytest.skip(split.unavailable_reason)
        shape = Shape(**dims, precision=precision)
        inputs = make_inputs("attn", shape, seed=13)
        result = split.run("attn", shape, inputs)
        assert result.details["block"]["splits"] > 1
        assert "attention_combine" in result.details["kernels_s"]
        assert rel_err(result.output, kernel_reference(shape, inputs)) < (1e-5 if precision == "int8" else 2e-3)


def test_causal_mask_hides_future_keys(ex):
    # Equal scores everywhere: query i must average exactly the values of positions 0..kv_len+i.
    n, kv_len, hd = 5, 3, 64
    shape = Shape(n=n, d=hd, kv_len=kv_len, heads=1)
    keys = kv_len + n
    q = np.zeros((1, 1, n, hd), np.float32)
    k = np.ones((1, 1, keys, hd), np.float32)
    v = np.zeros((1, 1, keys, hd), np.float32)
    v[0, 0, :, 0] = np.arange(keys)  # value = position
    v[0, 0, :, 1] = 1e4 * (np.arange(keys) >= kv_len + n - 1)  # only the last key is huge
    out = ex.run("attn", shape, {"q": q, "k": k, "v": v}).output[0, 0]
    visible = kv_len + np.arange(n) + 1
    np.testing.assert_allclose(out[:, 0], (visible - 1) / 2, rtol=1e-5)
    np.testing.assert_allclose(out[:-1, 1], 0.0, atol=0)  # no query before the last sees the last key
    np.testing.assert_allclose(out[-1, 1], 1e4 / keys, rtol=1e-5)


def test_softmax_is_stable_for_large_scores(ex):
    shape = Shape(n=4, d=64, kv_len=4, heads=1)
    inputs = make_inputs("attn", shape, seed=2)
    inputs = {name: a * (40.0 if name != "v" else 1.0) for name, a in inputs.items()}  # scores in the thousands
    got = ex.run("attn", shape, inputs).output
    assert np.all(np.isfinite(got))
    assert rel_err(got, reference("attn", shape, inputs)) < 2e-3


def test_float16_inputs_are_read_as_half(ex):
    shape = Shape(n=4, d=64)
    inputs = {k: v.astype(np.float16) for k, v in make_inputs("qkv", shape).items()}
    result = ex.run("qkv", shape, inputs)
    assert result.details["activations"] == "half"
    # the reference rounds to float16 too, so only the summation order differs
    assert rel_err(result.output, reference("qkv", shape, inputs)) < 1e-5


def test_half_weight_storage_matches_fp16_reference():
    with OpenCLExecutor(fp16="half") as ex:
        if not ex.is_available():
            pytest.skip(ex.unavailable_reason)
        shape = Shape(n=6, d=96)
        inputs = make_inputs("qkv", shape)
        inputs["w"].setflags(write=False)
        inputs["x"] = inputs["x"].astype(np.float16).astype(np.float32)  # rounded as the reference rounds it
        result = ex.run("qkv", shape, inputs)
        assert result.details["weights"] == "half"
        assert rel_err(result.output, reference("qkv", shape, inputs)) < 1e-5


# -- caches -----------------------------------------------------------------------------------
def test_programs_and_buffers_are_built_once_per_bucket():
    with OpenCLExecutor() as ex:
        if not ex.is_available():
            pytest.skip(ex.unavailable_reason)
        shape = Shape(n=20, d=64)
        ex.run("qkv", shape)
        first = ex.cache_info()
        ex.run("qkv", shape)
        ex.run("qkv", Shape(n=18, d=64))  # same bucket: same row block, smaller buffers
        again = ex.cache_info()
        assert again["program_builds"] == first["program_builds"]
        assert again["buffer_allocs"] == first["buffer_allocs"]
        ex.run("attn", Shape(n=1, d=128, kv_len=9, heads=2))
        assert ex.cache_info()["program_builds"] > first["program_builds"]


def test_a_growing_kv_cache_reallocates_its_buffers_a_few_times():
    with OpenCLExecutor() as ex:
        if not ex.is_available():
            pytest.skip(ex.unavailable_reason)
        grows = []
        for kv_len in range(16, 100):  # one decode step per token: 1 KiB more K and V each step
            shape = Shape(n=1, d=256, kv_len=kv_len, heads=4)
            before = ex.cache_info()["buffer_allocs"]
            ex.run("attn", shape, make_inputs("attn", shape, seed=kv_len))
            grows.append(ex.cache_info()["buffer_allocs"] - before)
        # the cache grew 6x: growing by half at least takes 5 steps per buffer (K and V), not one per 4 KiB page
        assert sum(grows[1:]) <= 2 * 5


def test_dropping_weights_from_a_full_cache_is_counted_and_warned_once(caplog):
    with OpenCLExecutor(max_cached_weights=1) as ex:
        if not ex.is_available():
            pytest.skip(ex.unavailable_reason)
        shape = Shape(n=2, d=64)
        layers = [make_inputs("qkv", shape, seed=s) for s in range(3)]
        for inputs in layers:
            inputs["w"].setflags(write=False)
        with caplog.at_level("WARNING", logger="adaptive_sched.executors.opencl.executor"):
            for inputs in layers * 2:
                assert ex.run("qkv", shape, inputs).cold  # each one comes back after it was dropped
        assert ex.cache_info()["weight_evictions"] == 5
        warnings = [r for r in caplog.records if "max_cached_weights=1" in r.getMessage()]
        assert len(warnings) == 1


def test_read_only_weights_are_uploaded_once():
    with OpenCLExecutor() as ex:
        if not ex.is_available():
            pytest.skip(ex.unavailable_reason)
        shape = Shape(n=3, d=64, precision="int8")
        inputs = make_inputs("qkv", shape)
        inputs["w"].setflags(write=False)
        first = ex.run("qkv", shape, inputs).output
        before = ex.cache_info()
        inputs["x"] = inputs["x"] * 2
        second = ex.run("qkv", shape, inputs).output
        after = ex.cache_info()
        assert after["weight_uploads"] == before["weight_uploads"] == 1
        assert after["weight_cache_hits"] == before["weight_cache_hits"] + 1
        assert rel_err(second, reference("qkv", shape, inputs)) < 1e-5
        assert not np.allclose(first, second)


def test_writable_weights_are_uploaded_every_run_and_changes_are_seen():
    with OpenCLExecutor() as ex:
        if not ex.is_available():
            pytest.skip(ex.unavailable_reason)
        shape = Shape(n=3, d=64)
        inputs = make_inputs("qkv", shape)
        ex.run("qkv", shape, inputs)
        inputs["w"][:] *= -1  # in place: same object, new content
        got = ex.run("qkv", shape, inputs).output
        assert ex.cache_info()["weight_uploads"] == 2
        assert rel_err(got, reference("qkv", shape, inputs)) < 2e-3


def test_a_writable_view_of_read_only_data_is_not_trusted():
    with OpenCLExecutor() as ex:
        if not ex.is_available():
            pytest.skip(ex.unavailable_reason)
        shape = Shape(n=2, d=64)
        inputs = make_inputs("qkv", shape)
        base = inputs["w"]
        view = base.view()
        view.setflags(write=False)  # read-only view, but its base can still change
        inputs["w"] = view
        ex.run("qkv", shape, inputs)
        base[:] = 0
        ex.run("qkv", shape, inputs)
        assert ex.cache_info()["weight_uploads"] == 2


def test_identity_cache_and_eviction():
    with OpenCLExecutor(weight_cache="identity", max_cached_weights=1) as ex:
        if not ex.is_available():
            pytest.skip(ex.unavailable_reason)
        shape = Shape(n=2, d=64)
        a, b = make_inputs("qkv", shape, seed=1), make_inputs("qkv", shape, seed=2)
        for inputs in (a, a, b, a):
            got = ex.run("qkv", shape, inputs).output
            assert rel_err(got, reference("qkv", shape, inputs)) < 2e-3
        info = ex.cache_info()
        assert (info["weight_uploads"], info["weight_cache_hits"], info["cached_weights"]) == (3, 1, 1)


def test_weight_cache_off():
    with OpenCLExecutor(weight_cache="off") as ex:
        if not ex.is_available():
            pytest.skip(ex.unavailable_reason)
        shape = Shape(n=2, d=64)
        inputs = make_inputs("qkv", shape)
        inputs["w"].setflags(write=False)
        ex.run("qkv", shape, inputs)
        ex.run("qkv", shape, inputs)
        assert ex.cache_info()["weight_uploads"] == 2
        assert ex.cache_info()["cached_weights"] == 0


# -- timing and results ---------------------------------------------------------------------------
def test_latency_and_device_time_are_reported(ex):
    result = ex.run("qkv", Shape(n=8, d=128, precision="int8"))
    assert 0 < result.device_s < float("inf")
    assert 0 < result.latency_s < float("inf")
    assert {"absmax_x", "quantize_x", "gemm"} <= set(result.details["kernels_s"])
    assert result.details["transfer_s"] >= 0
    assert result.details["device"]


def test_runs_that_pay_one_time_costs_are_marked_cold():
    with OpenCLExecutor() as ex:
        if not ex.is_available():
            pytest.skip(ex.unavailable_reason)
        shape = Shape(n=6, d=64)
        frozen = make_inputs("qkv", shape, seed=1)
        frozen["w"].setflags(write=False)
        writable = make_inputs("qkv", shape, seed=2)
        first = ex.run("qkv", shape, frozen)
        assert first.cold  # buffers allocated, first launch, weights converted into the cache
        assert not ex.run("qkv", shape, frozen).cold
        ex.run("qkv", shape, writable)  # allocates the upload buffer for weights that may change
        assert not ex.run("qkv", shape, writable).cold  # re-uploading writable weights is the steady state
        other = make_inputs("qkv", shape, seed=3)
        other["w"].setflags(write=False)
        assert ex.run("qkv", shape, other).cold  # new weights enter the cache


def test_concurrent_runs_from_threads_are_correct(ex):
    shape = Shape(n=5, d=64, heads=1)
    errors = []

    def work(seed):
        inputs = make_inputs("attn", shape, seed=seed)
        for _ in range(3):
            errors.append(rel_err(ex.run("attn", shape, inputs).output, reference("attn", shape, inputs)))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 9 and max(errors) < 2e-3


def test_tuning_overrides_keep_results_exact():
    with OpenCLExecutor(tuning={"gemm_rows": 3, "gemm_vec": 4, "gemv_max_rows": 1, "attn_rows": 2}) as ex:
        if not ex.is_available():
            pytest.skip(ex.unavailable_reason)
        for stage, shape in ((Stage.QKV, Shape(n=7, d=40)), (Stage.ATTN, Shape(n=5, d=64, kv_len=3))):
            inputs = make_inputs(stage, shape)
            assert rel_err(ex.run(stage, shape, inputs).output, reference(stage, shape, inputs)) < 2e-3


# -- support, selection and availability -----------------------------------------------------
def test_unsupported_shapes_say_why(ex):
    assert "head_dim" in ex.why_unsupported("attn", Shape(n=1, d=512, heads=1))
    assert "int32" in ex.why_unsupported("attn", Shape(n=1, d=64, kv_len=200_000, precision="int8"))
    assert ex.why_unsupported("qkv", Shape(n=1, d=65536 + 64, heads=1)) is not None
    assert ex.supports("attn", Shape(n=1, d=64, kv_len=200_000))


def test_device_selected_by_case_insensitive_substring(ex):
    platform_name, _, device_name = ex.device_name.partition(" / ")
    chosen = OpenCLExecutor(platform=platform_name[3:9].upper(), device=device_name[:5].swapcase())
    assert chosen.is_available(), chosen.unavailable_reason
    assert chosen.device_name == ex.device_name
    chosen.close()


def test_no_matching_device_gives_the_reason_and_lists_devices(ex):
    missing = OpenCLExecutor(platform="no-such-platform")
    assert missing.is_available() is False
    assert "no OpenCL device matches platform='no-such-platform'" in missing.unavailable_reason
    assert ex.device_name.split(" / ")[1] in missing.unavailable_reason
    with pytest.raises(RuntimeError, match="not available"):
        missing.run("qkv", Shape(n=1, d=64))


def test_a_device_that_cannot_build_kernels_is_unavailable(ex):
    # the PyPI-bundled PoCL fails exactly here ("unknown target CPU 'generic'"); a bad option fails the same way
    broken = OpenCLExecutor(build_options="-cl-no-such-option")
    assert broken.is_available() is False
    assert "can build a kernel" in broken.unavailable_reason


def test_missing_pyopencl_is_a_reason_not_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyopencl", None)  # import now raises ImportError
    ex = OpenCLExecutor()
    assert ex.is_available() is False
    assert "pyopencl is not installed" in ex.unavailable_reason


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fp16": "fp8"}, "fp16: unknown value 'fp8'"),
        ({"weight_cache": "sometimes"}, "weight_cache: unknown value"),
        ({"max_cached_weights": -1}, "max_cached_weights must be"),
        ({"tuning": {"rows": 8}}, "tuning: unknown key(s) rows"),
        ({"tuning": {"gemm_vec": 3}}, "tuning.gemm_vec must be one of"),
    ],
)
def test_bad_options_are_rejected_by_name(options, message):
    with pytest.raises(ConfigError) as info:
        OpenCLExecutor(**options)
    assert message in str(info.value)
