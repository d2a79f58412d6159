"""The RKNN executor on a fake rknn-toolkit-lite2 (tests/fake_rknnlite), and the model manifest."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import sys
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from adaptive_sched.checks import BUCKETS, CASES, EXECUTOR_CHECKS, CheckSkipped, tolerance
from adaptive_sched.errors import ConfigError, ExecutorError, UnsupportedShape
from adaptive_sched.executors import create_executor, rknn_feed
from adaptive_sched.executors.npu_rknn import RknnExecutor, parse_core_mask
from adaptive_sched.executors.rknn_models import (
    ModelEntry,
    TensorSpec,
    model_filename,
    read_manifest,
    weights_digest,
    write_manifest,
)
from adaptive_sched.stages import exact, make_inputs, reference
from adaptive_sched.types import Shape, Stage

FAKE_DIR = Path(__file__).parent / "fake_rknnlite"

QKV = Shape(n=7, d=64)
ATTN = Shape(n=5, d=128, heads=2)


@pytest.fixture
def fake(monkeypatch):
    """The fake ``rknnlite.api`` module, importable as ``rknnlite`` for this test only."""
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    before = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] in ("rknnlite", "fake_rknn_convert")}
    for name in before:
        del sys.modules[name]
    api = importlib.import_module("rknnlite.api")
    yield api
    for name in [n for n in sys.modules if n.split(".")[0] in ("rknnlite", "fake_rknn_convert")]:
        del sys.modules[name]
    sys.modules.update(before)


@pytest.fixture
def convert(fake):
    return importlib.import_module("fake_rknn_convert")


@pytest.fixture
def runtime(fake):
    """A fresh RKNNLite subclass that records its instances."""

    class Recording(fake.RKNNLite):
        instances: ClassVar[list] = []

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            type(self).instances.append(self)

    return Recording


@pytest.fixture
def model_dir(tmp_path, convert):
    """Calibrated models for every conformance case."""
    convert.build_model_dir(tmp_path / "models", CASES, buckets=BUCKETS)
    return tmp_path / "models"


def executor(model_dir, runtime, **options):
    return RknnExecutor(model_dir=model_dir, runtime=runtime, **options)


def rel_error(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - want))) / (float(np.max(np.abs(want))) or 1.0)


def within(got, stage, shape, inputs):
    """The output is within the conformance tolerance of the float64 math."""
    return rel_error(got, exact(stage, shape, inputs)) <= tolerance(stage, shape)


# -- conformance ----------------------------------------------------------------------------------
@pytest.mark.parametrize("check", EXECUTOR_CHECKS, ids=[c.__name__.removeprefix("check_") for c in EXECUTOR_CHECKS])
def test_conformance_with_the_fake_runtime(check, model_dir, runtime):
    ex = executor(model_dir, runtime)
    try:
        check(ex)
    except CheckSkipped as exc:
        if check.__name__ != "check_unsupported_rejected":
            pytest.fail(f"skipped although a fake NPU and models exist: {exc}")
    finally:
        ex.close()


def test_rknnlite_is_imported_lazily_from_sys_path(model_dir, fake):
    ex = create_executor("npu_rknn", model_dir=str(model_dir))
    assert ex.is_available(), ex.unavailable_reason
    inputs = make_inputs("qkv", QKV)
    out = ex.run("qkv", QKV, inputs).output
    assert within(out, "qkv", QKV, inputs)
    ex.close()


# -- availability ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("machine", "expected"),
    [("x86_64", "rknn-toolkit-lite2 is only published for aarch64 boards"), ("aarch64", "install rknn-toolkit-lite2")],
)
def test_unavailable_without_rknnlite(monkeypatch, tmp_path, machine, expected):
    # no fake here: monkeypatch would put a fake it saw in sys.modules back at teardown
    model_dir = tmp_path / "models"
    entry = ModelEntry.for_shape("qkv", QKV)
    write_manifest(model_dir, [entry])
    (model_dir / entry.file).write_bytes(b"")
    for name in ("rknnlite", "rknnlite.api"):
        monkeypatch.setitem(sys.modules, name, None)  # import rknnlite raises ImportError
    monkeypatch.setattr("platform.machine", lambda: machine)
    ex = RknnExecutor(model_dir=model_dir)
    assert ex.is_available() is False
    assert expected in ex.unavailable_reason
    assert not ex.supports("qkv", QKV)
    assert "not available" in ex.why_unsupported("qkv", QKV)


def test_unavailable_reasons_for_model_dirs(tmp_path, runtime, convert):
    assert "no model_dir" in RknnExecutor(runtime=runtime).unavailable_reason
    assert "does not exist" in executor(tmp_path / "nope", runtime).unavailable_reason

    empty = tmp_path / "empty"
    empty.mkdir()
    reason = executor(empty, runtime).unavailable_reason
    assert "no manifest.json (0 .rknn file(s))" in reason and "write_manifest" in reason

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps({"models": [{"stage": "qkv", "shape": {"n": 1, "d": 64}}]}))
    reason = executor(broken, runtime).unavailable_reason
    assert "manifest.json: models[0]: file: required" in reason

    unbuilt = tmp_path / "unbuilt"
    write_manifest(unbuilt, [ModelEntry.for_shape("qkv", QKV)])
    assert "lists no model whose .rknn file exists" in executor(unbuilt, runtime).unavailable_reason


def test_unavailable_when_init_runtime_fails(model_dir, runtime):
    class NoNpu(runtime):
        FAKE_NPU_PRESENT = False

    ex = executor(model_dir, NoNpu)
    assert ex.is_available() is False
    assert "init_runtime(core_mask=NPU_CORE_AUTO) failed with RKNN return code -1" in ex.unavailable_reason
    assert ex.manifest is None and ex.entry_for("qkv", QKV) is None
    assert [i._fake_calls for i in NoNpu.instances] == [["load_rknn", "init_runtime", "release"]]


def test_unavailable_for_models_built_for_another_platform(tmp_path, runtime, convert):
    entry = ModelEntry.for_shape("qkv", QKV)
    convert.convert(entry, tmp_path, target_platform="rk3566")
    write_manifest(tmp_path, [entry])
    reason = executor(tmp_path, runtime).unavailable_reason
    assert "RKNN return code -1" in reason and "target_platform='rk3588'" in reason


def test_probe_never_raises(model_dir, runtime):
    class Exploding(runtime):
        def __init__(self, *args, **kwargs):
            raise OSError("librknnrt.so: cannot open shared object file")

    ex = executor(model_dir, Exploding)
    assert ex.is_available() is False
    assert "librknnrt.so" in ex.unavailable_reason


# -- model lookup and support ---------------------------------------------------------------------
def test_model_lookup_ignores_fields_that_do_not_change_the_graph(model_dir, runtime):
    ex = executor(model_dir, runtime)
    entry = ex.entry_for("qkv", QKV)
    assert entry is not None and entry.file == "qkv_n7_d64_b1_fp16.rknn"
    assert ex.entry_for("qkv", Shape(n=7, d=64, kv_len=100)) is entry  # one projection model for every step
    assert ex.entry_for("qkv", Shape(n=7, d=64, precision="int8")) is not entry
    assert ex.entry_for("attn", Shape(n=5, d=128, heads=4)) is None  # heads change the attention graph


def test_unsupported_shape_reason_says_how_to_build_one(model_dir, runtime):
    ex = executor(model_dir, runtime)
    shape = Shape(n=9, d=64, precision="int8")  # one row more than the n=8 bucket
    reason = ex.why_unsupported("qkv", shape)
    assert reason.startswith("no prepared RKNN model for qkv at")
    assert "scripts/build_rknn_models.py --stage qkv --n 9 --d 64 --batch 1 --precision int8" in reason
    reason = ex.why_unsupported("attn", Shape(n=1, d=128, kv_len=3, heads=4))
    assert "--stage attn --n 1 --d 128 --batch 1 --precision fp16 --kv-len 3 --heads 4" in reason
    with pytest.raises(UnsupportedShape, match="no prepared RKNN model"):
        ex.run("qkv", shape)


def test_missing_model_file_is_an_unsupported_shape_with_the_path(model_dir, runtime, caplog):
    wide = Shape(n=33, d=96, heads=3)  # no bucket model holds it
    (model_dir / model_filename("qkv", wide)).unlink()
    with caplog.at_level(logging.WARNING, logger="adaptive_sched.executors.npu_rknn"):
        ex = executor(model_dir, runtime)
        assert ex.is_available()
    reason = ex.why_unsupported("qkv", wide)
    assert "lists qkv_n33_d96_b1_fp16.rknn but" in reason and "does not exist" in reason
    assert "is missing" in caplog.text
    assert ex.supports("attn", ATTN)
    # a missing exact model whose shape a bucket holds runs on the bucket
    (model_dir / model_filename("qkv", QKV)).unlink()
    ex = executor(model_dir, runtime)
    assert ex.entry_for("qkv", QKV).file == "qkv_bucket_n8_d64_b1_fp16.rknn"


def test_matmul_limits(model_dir, runtime):
    ex = executor(model_dir, runtime)
    big = Shape(n=1, d=10240 + 64)
    assert "K=10304, more than the RKNN matmul limit of 10240" in ex.why_unsupported("qkv", big)
    long = Shape(n=1, d=64, kv_len=10240, heads=1)
    assert "p @ v reduces over K=10241" in ex.why_unsupported("attn", long)
    # unaligned shapes run (the converter pads them) unless alignment is required
    assert ex.supports("attn", ATTN)
    strict = executor(model_dir, runtime, require_aligned=True)
    assert "q @ k^T has K=64, N=5; RK3588 needs K a multiple of 16 and N of 16" in strict.why_unsupported("attn", ATTN)
    assert strict.supports("qkv", QKV)


# -- runtimes: cached per model, core mask, release ------------------------------------------------
def test_runtime_is_loaded_once_per_model(model_dir, runtime):
    ex = executor(model_dir, runtime)
    assert ex.is_available()
    probed = len(runtime.instances)
    assert probed == 1  # the probe's runtime stays cached
    for _ in range(3):
        ex.run("qkv", QKV)
        ex.prepare("qkv", QKV)
        ex.run("qkv", Shape(n=7, d=64, kv_len=5))  # same model
        ex.run("attn", ATTN)
    assert {ex.entry_for("qkv", QKV).file, ex.entry_for("attn", ATTN).file} <= set(ex.loaded_models())
    assert ex.cache_info()["inferences"] == 9
    loads = [i._fake_calls.count("init_runtime") for i in runtime.instances]
    assert all(n == 1 for n in loads)
    assert len(runtime.instances) == len(set(ex.loaded_models()))


def test_least_recently_used_runtime_is_released(model_dir, runtime):
    ex = executor(model_dir, runtime, max_loaded_models=1)
    assert ex.run("qkv", QKV).cold
    assert ex.run("attn", ATTN).cold
    assert ex.loaded_models() == [ex.entry_for("attn", ATTN).file]
    assert all(i.rknn_runtime is None for i in runtime.instances[:-1])  # released
    assert ex.run("qkv", QKV).cold  # loaded again: a fresh runtime
    assert not ex.run("qkv", QKV).cold
    assert ex.cache_info()["loads"] == len(runtime.instances)


def test_only_the_first_run_of_a_runtime_is_cold(model_dir, runtime):
    ex = executor(model_dir, runtime)
    ex.prepare("attn", ATTN)
    assert [ex.run("attn", ATTN).cold for _ in range(3)] == [True, False, False]
    assert ex.run("attn", ATTN).details["model"] == "attn_n5_kv0_d128_h2_b1_fp16.rknn"


@pytest.mark.parametrize(("mask", "value"), [("auto", 0), ("0", 1), ("2", 4), ("0_1", 3), ("0_1_2", 7), ([2, 1, 0], 7),
                                             ("all", 0xFFFF)])  # fmt: skip
def test_core_mask_reaches_init_runtime(model_dir, runtime, mask, value):
    ex = executor(model_dir, runtime, core_mask=mask)
    ex.run("qkv", QKV)
    assert {i.core_mask for i in runtime.instances} == {value}


@pytest.mark.parametrize(("mask", "message"), [(10, "quoted string"), (1, "reads 0_1 as 1"), ("3", "unknown value '3'"),
                                                (True, "quoted string")])  # fmt: skip
def test_bad_core_masks_are_config_errors(mask, message):
    with pytest.raises(ConfigError, match=message):
        parse_core_mask(mask)
    with pytest.raises(ConfigError, match="core_mask"):
        RknnExecutor(core_mask=mask)


def test_close_releases_every_runtime_once(model_dir, runtime):
    ex = executor(model_dir, runtime)
    ex.run("qkv", QKV)
    ex.run("attn", ATTN)
    ex.close()
    ex.close()
    assert runtime.instances and all(i._fake_calls.count("release") == 1 for i in runtime.instances)
    assert all(i._fake_calls[-1] == "release" for i in runtime.instances)
    assert ex.loaded_models() == []
    with pytest.raises(RuntimeError, match="closed"):
        ex.run("qkv", QKV)


def test_close_survives_a_failing_release(model_dir, runtime, caplog):
    class BadRelease(runtime):
        def release(self):
            raise RuntimeError("driver gone")

    ex = executor(model_dir, BadRelease)
    ex.run("qkv", QKV)
    with caplog.at_level(logging.WARNING, logger="adaptive_sched.executors.npu_rknn"):
        ex.close()
    assert "driver gone" in caplog.text


# -- RKNN failures are ExecutorErrors with the return code -----------------------------------------
def test_corrupt_model_is_an_init_runtime_error(model_dir, runtime):
    ex = executor(model_dir, runtime)
    assert ex.is_available()
    (model_dir / ex.entry_for("attn", ATTN).file).write_bytes(b"RKNN\x00not a model")
    with pytest.raises(ExecutorError, match=r"init_runtime\(core_mask=NPU_CORE_AUTO\) failed with RKNN return code -1"):
        ex.run("attn", ATTN)
    assert runtime.instances[-1]._fake_calls[-1] == "release"  # the failed runtime is not leaked


def test_vanished_model_is_a_load_error(model_dir, runtime):
    ex = executor(model_dir, runtime)
    assert ex.is_available()
    (model_dir / ex.entry_for("attn", ATTN).file).unlink()
    with pytest.raises(ExecutorError, match=r"load_rknn\(.*attn_n5_kv0_d128_h2_b1_fp16.rknn\) failed with RKNN return "
                                            r"code -1"):  # fmt: skip
        ex.prepare("attn", ATTN)


def test_model_that_does_not_match_its_manifest_entry(model_dir, runtime, convert):
    # the file of one shape holds a model for another: the runtime rejects the inputs and returns None
    other = ModelEntry.for_shape("attn", Shape(n=5, d=128, heads=2, kv_len=1), file=model_filename("attn", ATTN))
    convert.convert(other, model_dir)
    ex = executor(model_dir, runtime)
    with pytest.raises(ExecutorError, match="returned None"):
        ex.run("attn", ATTN)


def test_inference_exceptions_and_bad_outputs_are_wrapped(model_dir, runtime):
    class Raising(runtime):
        def inference(self, inputs, **kwargs):
            raise MemoryError("rknn_inputs_set: out of CMA memory")

    ex = executor(model_dir, Raising)
    with pytest.raises(ExecutorError, match="raised MemoryError: rknn_inputs_set") as info:
        ex.run("qkv", QKV)
    assert isinstance(info.value.__cause__, MemoryError)

    class Truncating(runtime):
        def inference(self, inputs, **kwargs):
            return [super().inference(inputs, **kwargs)[0][:1]]

    with pytest.raises(ExecutorError, match=r"returned an output of shape \(1, 192\)"):
        executor(model_dir, Truncating).run("qkv", QKV)


# -- inputs, bias and baked weights ----------------------------------------------------------------
def test_optional_bias_with_and_without_a_bias_input(tmp_path, runtime, convert):
    with_b = ModelEntry.for_shape("qkv", QKV)
    without_b = ModelEntry.for_shape("qkv", Shape(n=3, d=64), bias=False)
    for entry in (with_b, without_b):
        convert.convert(entry, tmp_path)
    write_manifest(tmp_path, [with_b, without_b])
    ex = executor(tmp_path, runtime)
    for shape in (QKV, Shape(n=3, d=64)):
        inputs = make_inputs("qkv", shape)
        no_bias = {k: v for k, v in inputs.items() if k != "b"}
        for given in (inputs, no_bias):
            out = ex.run("qkv", shape, given).output
            assert within(out, "qkv", shape, given)


@pytest.fixture
def baked(tmp_path, runtime, convert):
    """An INT8 qkv model with baked weights and bias, and one with baked weights and no bias."""
    shape = Shape(n=4, d=64, precision="int8")
    nob = Shape(n=2, d=64, precision="int8")
    w = make_inputs("qkv", shape, seed=11)["w"]
    b = make_inputs("qkv", shape, seed=11)["b"]
    entries = [ModelEntry.for_shape("qkv", shape, weights="baked", w=w, b=b),
               ModelEntry.for_shape("qkv", nob, weights="baked", w=w, b=None)]  # fmt: skip
    for entry in entries:
        convert.convert(entry, tmp_path, w=w, b=entry.b_digest and b)
    write_manifest(tmp_path, entries)
    w.setflags(write=False)
    return tmp_path, shape, nob, w, b


def test_baked_weights_run_and_match_the_reference(baked, runtime):
    model_dir, shape, nob, w, b = baked
    ex = executor(model_dir, runtime)
    assert ex.entry_for("qkv", shape).input_names == ("x",)
    x = make_inputs("qkv", shape, seed=3)["x"]
    result = ex.run("qkv", shape, {"x": x, "w": w, "b": b})
    assert within(result.output, "qkv", shape, {"x": x, "w": w, "b": b})
    assert result.details["weight_check_s"] >= 0 and result.details["model"].startswith("qkv_n4_d64_b1_int8_w")
    # a model without a baked bias gets the caller's bias on the host
    x2 = make_inputs("qkv", nob, seed=3)["x"]
    out = ex.run("qkv", nob, {"x": x2, "w": w, "b": b}).output
    assert within(out, "qkv", nob, {"x": x2, "w": w, "b": b})


def test_other_weights_are_refused(baked, runtime):
    model_dir, shape, _, w, b = baked
    ex = executor(model_dir, runtime)
    x = make_inputs("qkv", shape)["x"]
    with pytest.raises(ExecutorError, match="input 'w' is not the weight baked into"):
        ex.run("qkv", shape, {"x": x, "w": w * 2, "b": b})
    with pytest.raises(ExecutorError, match="input 'b' is not the weight baked into"):
        ex.run("qkv", shape, {"x": x, "w": w, "b": b + 1})
    with pytest.raises(ExecutorError, match="adds a baked bias but the caller passed none"):
        ex.run("qkv", shape, {"x": x, "w": w})
    # an INT8 model was quantised from the float32 values: a float16 copy is other weights
    with pytest.raises(ExecutorError, match="input 'w' is not the weight"):
        ex.run("qkv", shape, {"x": x, "w": w.astype(np.float16), "b": b})


def test_fp16_baked_model_accepts_a_float16_copy_of_its_weights(tmp_path, runtime, convert):
    inputs = make_inputs("qkv", QKV, seed=4)
    entry = ModelEntry.for_shape("qkv", QKV, weights="baked", w=inputs["w"], b=inputs["b"])
    convert.convert(entry, tmp_path, w=inputs["w"], b=inputs["b"])
    write_manifest(tmp_path, [entry])
    half = {k: v.astype(np.float16) for k, v in inputs.items()}
    out = executor(tmp_path, runtime).run("qkv", QKV, half).output
    assert within(out, "qkv", QKV, inputs)


@pytest.mark.parametrize(("mode", "read_only", "hashes"), [("readonly", True, 1), ("readonly", False, 3),
                                                           ("identity", False, 1), ("always", True, 3)])  # fmt: skip
def test_weight_digests_are_cached_as_configured(baked, runtime, mode, read_only, hashes):
    model_dir, _, nob, w, _ = baked
    w = w if read_only else w.copy()
    ex = executor(model_dir, runtime, weight_check=mode)
    x = make_inputs("qkv", nob)["x"]
    for _ in range(3):
        ex.run("qkv", nob, {"x": x, "w": w})
    assert ex.cache_info()["weight_hashes"] == hashes


def test_bad_weight_check_option():
    with pytest.raises(ConfigError, match="weight_check: unknown value 'sometimes'"):
        RknnExecutor(weight_check="sometimes")


def test_static_int8_scales_clip_inputs_outside_the_calibrated_range(tmp_path, runtime, convert):
    shape = Shape(n=1, d=128, kv_len=9, heads=2, precision="int8")
    calibrated, dynamic = tmp_path / "calibrated", tmp_path / "dynamic"
    convert.build_model_dir(calibrated, [(Stage.ATTN, shape)])
    convert.build_model_dir(dynamic, [(Stage.ATTN, shape)], calibrate=False)
    inputs = {k: v * 4 for k, v in make_inputs("attn", shape, seed=5).items()}  # 4x the calibration data's range
    want = exact("attn", shape, inputs)
    assert rel_error(executor(calibrated, runtime).run("attn", shape, inputs).output, want) > 0.2
    assert within(executor(dynamic, runtime).run("attn", shape, inputs).output, "attn", shape, inputs)


def test_concurrent_runs_are_serialised_and_correct(model_dir, runtime):
    ex = executor(model_dir, runtime)
    inputs = make_inputs("qkv", QKV, seed=2)
    want = exact("qkv", QKV, inputs)
    errors = []

    def work():
        for _ in range(20):
            if rel_error(ex.run("qkv", QKV, inputs).output, want) > tolerance("qkv", QKV):
                errors.append("mismatch")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and ex.cache_info()["inferences"] == 80


# -- the fake runtime keeps the real one's conventions ---------------------------------------------
def test_fake_runtime_return_codes(fake, model_dir, tmp_path):
    rt = fake.RKNNLite()
    assert rt.inference(inputs=[]) is None  # before init_runtime
    assert rt.init_runtime() == -1  # before load_rknn
    assert rt.load_rknn(str(tmp_path / "missing.rknn")) == -1
    junk = tmp_path / "junk.rknn"
    junk.write_bytes(b"junk")
    assert rt.load_rknn(str(junk)) == 0  # like the real one, load only reads the bytes
    assert rt.init_runtime() == -1  # the runtime finds the corruption
    path = str(model_dir / model_filename("qkv", QKV))
    assert rt.load_rknn(path) == 0
    assert rt.init_runtime(core_mask=5) == -1
    assert rt.init_runtime(target="rk3588") == -1  # a remote target needs adb; this is the on-board runtime
    assert rt.init_runtime(core_mask=fake.RKNNLite.NPU_CORE_0_1_2) == 0
    assert rt.get_sdk_version()
    inputs = make_inputs("qkv", QKV)
    feed = [inputs["x"].reshape(7, 64), inputs["w"], inputs["b"]]
    out = rt.inference(inputs=feed)
    assert isinstance(out, list) and out[0].dtype == np.float32 and out[0].shape == (7, 192)
    assert rt.inference(inputs=feed[:2]) is None  # wrong number of inputs
    assert rt.inference(inputs=[feed[0][:3], *feed[1:]]) is None  # wrong element count
    assert rt.inference(inputs=feed, data_format=["nchw"]) is None  # lite2 takes one string
    rt.release()
    rt.release()
    assert rt.inference(inputs=feed) is None  # after release


def test_fake_runtime_takes_4d_inputs_as_nhwc_unless_told(fake, tmp_path, convert):
    shape = Shape(n=3, d=64, heads=2)
    h, hd, keys = 2, 32, 3
    four_d = ModelEntry(
        stage=Stage.ATTN, shape=shape, file="attn4d.rknn",
        inputs=(TensorSpec("q", (1, h, 3, hd)), TensorSpec("k", (1, h, keys, hd)), TensorSpec("v", (1, h, keys, hd))),
        output=(1, h, 3, hd),
    )  # fmt: skip
    convert.convert(four_d, tmp_path, calibrate=False)
    inputs = make_inputs("attn", shape)
    want = reference("attn", shape, inputs)
    rt = fake.RKNNLite()
    assert rt.load_rknn(str(tmp_path / "attn4d.rknn")) == 0 and rt.init_runtime() == 0
    feed = [inputs["q"], inputs["k"], inputs["v"]]
    assert rel_error(rt.inference(inputs=feed, data_format="nchw")[0], want) <= tolerance("attn", shape)
    assert rel_error(rt.inference(inputs=feed)[0], want) > 0.1  # taken as NHWC: scrambled

    write_manifest(tmp_path, [ModelEntry(**{**four_d.__dict__, "data_format": "nchw"})])
    ex = RknnExecutor(model_dir=tmp_path, runtime=fake.RKNNLite)
    assert rel_error(ex.run("attn", shape, inputs).output, want) <= tolerance("attn", shape)


# -- the manifest ---------------------------------------------------------------------------------
def test_manifest_round_trip(tmp_path):
    w = np.ones((64, 192), np.float32)
    entries = [
        ModelEntry.for_shape("qkv", QKV),
        ModelEntry.for_shape("qkv", Shape(n=1, d=64, precision="int8"), weights="baked", w=w),
        ModelEntry.for_shape("attn", ATTN),
    ]
    path = write_manifest(tmp_path, entries)
    assert path == tmp_path / "manifest.json"
    doc = json.loads(path.read_text())
    assert doc["format"] == 1 and doc["target_platform"] == "rk3588"
    assert doc["models"][1]["weights"] == {"mode": "baked", "w": weights_digest(w), "b": None}
    assert read_manifest(tmp_path).entries == tuple(entries)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m[0]["inputs"][1].update(shape=[64, 190]), r"models\[0\]: inputs\[1\] \('w'\): shape \[64, 190\] "
                                                              r"has 12160 elements; the stage's 'w' \[64, 192\]"),
        (lambda m: m[0]["inputs"].pop(0), r"models\[0\]: inputs: missing 'x'"),
        (lambda m: m[0]["inputs"][0].update(dtype="int4"),
         r"models\[0\]: inputs\[0\] \('x'\): dtype 'int4' is not one of"),
        (lambda m: m[0].update(colour="red"), r"models\[0\]: unknown field\(s\): colour"),
        (lambda m: m[0]["shape"].update(n=0), r"models\[0\]: shape: n must be >= 1"),
        (lambda m: m[0].update(weights={"mode": "baked"}),
         r"models\[0\]: weights\.w: a baked model needs the 'sha256:\.\.\.' digest"),
        (lambda m: m[1].update(output=[5, 64]), r"models\[1\]: output: shape \[5, 64\] has 320 elements"),
        (lambda m: m.append(dict(m[0])), r"models\[2\] is a second model for qkv \(n=7, d=64, batch=1, fp16\) "
                                         r"\(models\[0\] is the first\)"),
    ],
)  # fmt: skip
def test_invalid_manifests_name_the_entry_and_field(tmp_path, mutate, message):
    models = [ModelEntry.for_shape("qkv", QKV).to_dict(), ModelEntry.for_shape("attn", ATTN).to_dict()]
    mutate(models)
    with pytest.raises(ConfigError, match=message):
        write_manifest(tmp_path, models)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "models": models}))
    with pytest.raises(ConfigError, match=r"manifest.json: " + message):
        read_manifest(tmp_path)


def test_unreadable_manifests(tmp_path):
    with pytest.raises(ConfigError, match=r"manifest\.json: no such file"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"manifest\.json: not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 2, "models": []}))
    with pytest.raises(ConfigError, match="format 2 is not supported"):
        read_manifest(tmp_path)


# -- the build script -----------------------------------------------------------------------------
def load_build_script():
    spec = importlib.util.spec_from_file_location("build_rknn_models", Path(__file__).parents[1] / "scripts" /
                                                  "build_rknn_models.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_selects_distinct_models():
    script = load_build_script()
    args = script.parse_args(["out", "--stage", "qkv", "attn", "--n", "1", "--d", "128", "--kv-len", "0", "8",
                              "--precision", "int8"])  # fmt: skip
    cases = script.select_cases(args)
    # qkv ignores kv_len: one qkv model, two attention models
    assert [(s.value, sh.kv_len, b) for s, sh, b in cases] == [("qkv", 0, False), ("attn", 0, False),
                                                               ("attn", 8, False)]  # fmt: skip
    conformance = script.select_cases(script.parse_args(["out", "--conformance", "--precision", "fp16"]))
    assert sum(not b for _, _, b in conformance) == 6 and sum(b for _, _, b in conformance) == 3
    with pytest.raises(SystemExit):
        script.parse_args(["out", "--conformance", "--opset", "21"])


def test_build_script_models_for_a_config():
    script = load_build_script()
    cases = script.select_cases(script.parse_args(["out", "--config", "rk3588"]))
    # qwen2.5-1.5b (d=1536, 12 heads), INT8: the decode projection, 7 kv buckets, 5 n buckets for qkv and attn
    assert {(s.value, sh.n, sh.keys, b) for s, sh, b in cases} >= {("qkv", 1, 1, False), ("attn", 1, 64, True),
                                                                    ("attn", 1, 4096, True), ("qkv", 256, 256, True),
                                                                    ("attn", 16, 16, True)}  # fmt: skip
    assert len(cases) == 1 + 7 + 5 + 5
    assert {(sh.d, sh.heads, sh.precision.value) for _, sh, _ in cases} == {(1536, 12, "int8")}
    both = script.select_cases(script.parse_args(["out", "--config", "rk3588", "--precision", "fp16", "int8"]))
    assert len(both) == 2 * len(cases)
    with pytest.raises(ConfigError, match="no backend runs the npu_rknn executor"):
        script.select_cases(script.parse_args(["out", "--config", "rk3588-sim"]))
    buckets = script.select_cases(script.parse_args(["out", "--stage", "attn", "--d", "256", "--kv-buckets", "64",
                                                     "128", "--precision", "int8"]))  # fmt: skip
    assert [(sh.n, sh.keys, b) for _, sh, b in buckets] == [(1, 64, True), (1, 128, True)]


def test_build_script_reads_real_activations(tmp_path):
    script = load_build_script()
    shape = Shape(n=1, d=128, kv_len=20, heads=2)
    np.savez(tmp_path / "a0.npz", **{k: v for k, v in make_inputs("attn", shape, seed=1).items()})
    np.savez(tmp_path / "x0.npz", x=np.ones((1, 3, 64), np.float32))
    calls = script.load_activations(str(tmp_path))
    assert [(s.value, sh.n, sh.keys) for s, sh, _ in calls] == [("attn", 1, 21), ("qkv", 3, 3)]
    bucket = ModelEntry.for_shape("attn", Shape(n=1, d=128, kv_len=31, heads=2, precision="int8"), bucket=True)
    used, source = script.calibration_calls(bucket, 8, 17, calls)
    assert source == "activations" and [sh.keys for sh, _ in used] == [21]
    other = ModelEntry.for_shape("attn", Shape(n=1, d=128, kv_len=15, heads=2, precision="int8"), bucket=True)
    used, source = script.calibration_calls(other, 8, 1, calls)  # 21 keys do not fit: synthetic samples
    assert source == "synthetic" and len(used) == 8 and {sh.keys for sh, _ in used} >= {1, 16}
    np.savez(tmp_path / "bad.npz", q=np.ones((1, 2, 1, 64), np.float32))
    with pytest.raises(ConfigError, match=r"bad\.npz: has \['q'\], expected x, or q, k and v"):
        script.load_activations(str(tmp_path))


@pytest.mark.parametrize("opset", [13, 17, 19])
def test_build_script_graphs_compute_the_stages(tmp_path, opset):
    """The ONNX graphs, run by onnxruntime in float32, compute the float64 math to float32 rounding."""
    pytest.importorskip("onnx", reason="the build script's graphs need the onnx package (not a project dependency)")
    ort = pytest.importorskip("onnxruntime", reason="checking the graphs needs onnxruntime (not a project dependency)")
    script = load_build_script()
    w_shape = Shape(n=7, d=64)
    baked = make_inputs("qkv", w_shape, seed=9)
    np.savez(tmp_path / "w.npz", w=baked["w"], b=baked["b"])
    assert script.main([str(tmp_path / "m"), "--conformance", "--onnx-only", "--opset", str(opset)]) == 0
    assert script.main([str(tmp_path / "baked"), "--stage", "qkv", "--n", "7", "--d", "64", "--weights",
                        str(tmp_path / "w.npz"), "--onnx-only", "--opset", str(opset)]) == 0  # fmt: skip
    runs = [(tmp_path / "m", s, sh, None) for s, sh in CASES] + [(tmp_path / "baked", Stage.QKV, w_shape, baked)]
    runs += [(tmp_path / "m", s, sh, "bucket") for s, sh in BUCKETS]
    for root, stage, shape, weights in runs:
        call = shape
        if weights is None:
            entry = ModelEntry.for_shape(stage, shape)
        elif weights == "bucket":
            entry = ModelEntry.for_shape(stage, shape, bucket=True)
            # a smaller call, padded and masked: decode over 5 of 16 keys, 3 of 8 prefill rows
            call = Shape(n=1 if shape.n == 1 else 3, d=shape.d, kv_len=4 if shape.n == 1 else 0, heads=shape.heads,
                         precision=shape.precision)  # fmt: skip
        else:
            entry = ModelEntry.for_shape(stage, shape, weights="baked", w=weights["w"], b=weights["b"])
        inputs = make_inputs(stage, call, seed=3)
        if weights is not None and weights != "bucket":
            inputs.update(w=weights["w"], b=weights["b"])
        session = ort.InferenceSession(str(root / "onnx" / entry.file.replace(".rknn", ".onnx")))
        feed = dict(zip(entry.input_names, rknn_feed.model_feed(entry, call, inputs), strict=True))
        (out,) = session.run(None, feed)
        assert out.shape == entry.output
        got = rknn_feed.take_output(entry, call, out)
        err = rel_error(got, exact(stage, call, inputs))
        assert err <= 1e-5, (entry.file, err)  # float32 math: the graph is exact, quantisation comes later
    # INT8 models come with their calibration data in the model's layout
    dataset = (tmp_path / "m" / "calibration" / "qkv_n7_d64_b1_int8" / "dataset.txt").read_text().splitlines()
    assert len(dataset) == 64 and [Path(p).name for p in dataset[0].split()] == ["000_x.npy", "000_w.npy", "000_b.npy"]
    assert np.load(dataset[0].split()[0]).shape == (7, 64)


def test_build_script_without_the_toolkit_writes_onnx_and_fails(tmp_path, monkeypatch, caplog):
    pytest.importorskip("onnx", reason="the build script's graphs need the onnx package (not a project dependency)")
    monkeypatch.setitem(sys.modules, "rknn", None)
    script = load_build_script()
    with caplog.at_level(logging.ERROR, logger="build_rknn_models"):
        assert script.main([str(tmp_path), "--stage", "qkv", "--n", "1", "--d", "64", "--precision", "fp16"]) == 1
    assert "rknn.api is not importable" in caplog.text
    assert (tmp_path / "onnx" / "qkv_n1_d64_b1_fp16.onnx").is_file() and not (tmp_path / "manifest.json").exists()


# -- buckets: padded and masked runs on static graphs ------------------------------------------------
DECODE_BUCKET = Shape(n=1, d=128, kv_len=15, heads=2)  # holds up to 16 keys


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_decode_runs_on_the_bucket_at_every_kv_len_it_holds(model_dir, runtime, precision):
    ex = executor(model_dir, runtime)
    for kv_len in range(16):
        shape = Shape(n=1, d=128, kv_len=kv_len, heads=2, precision=precision)
        inputs = make_inputs("attn", shape, seed=40 + kv_len)
        result = ex.run("attn", shape, inputs)
        assert result.output.shape == (1, 2, 1, 64)
        assert within(result.output, "attn", shape, inputs), kv_len
        if kv_len == 9:  # the conformance suite's exact model wins over the bucket
            assert "bucket" not in result.details
        else:
            assert result.details["bucket"] == {"n": 1, "keys": 16}
            assert result.details["pad_kv"] == pytest.approx((16 - (kv_len + 1)) / 16)
    assert ex.why_unsupported("attn", Shape(n=1, d=128, kv_len=16, heads=2)).startswith("no prepared RKNN model")


def test_padding_is_masked_out_whatever_it_holds(model_dir, runtime, monkeypatch):
    # the output at the true length must not depend on the padded keys: poison the padding
    shape = Shape(n=1, d=128, kv_len=4, heads=2)
    inputs = make_inputs("attn", shape, seed=3)
    clean = executor(model_dir, runtime).run("attn", shape, inputs).output
    real_pad = rknn_feed._pad
    monkeypatch.setattr(rknn_feed, "_pad", lambda a, axis, size: real_pad(a, axis, size) + _poison(a, axis, size))
    poisoned = executor(model_dir, runtime).run("attn", shape, inputs).output
    np.testing.assert_array_equal(poisoned, clean)


def _poison(a, axis, size):
    out = np.zeros([size if i == axis else n for i, n in enumerate(a.shape)], np.float32)
    index = [slice(None)] * a.ndim
    index[axis] = slice(a.shape[axis], size)
    out[tuple(index)] = 1e3
    return out


def test_the_runtime_refuses_an_unpadded_cache(model_dir, fake):
    # a static graph takes exactly its shapes: K and V at the true length are refused, as on the board
    rt = fake.RKNNLite()
    entry = ModelEntry.for_shape("attn", DECODE_BUCKET, bucket=True)
    assert rt.load_rknn(str(model_dir / entry.file)) == 0 and rt.init_runtime() == 0
    shape = Shape(n=1, d=128, kv_len=4, heads=2)
    inputs = make_inputs("attn", shape)
    short = [inputs["q"].reshape(2, 1, 64), inputs["k"].reshape(2, 5, 64), inputs["v"].reshape(2, 5, 64),
             np.ones((1, 1, 5), np.float32)]  # fmt: skip
    assert rt.inference(inputs=short) is None
    assert rt.inference(inputs=short[:3]) is None  # and a bucket model needs its mask


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_prefill_rows_are_padded_and_dropped(model_dir, runtime, precision):
    ex = executor(model_dir, runtime)
    for n in (2, 6, 8):
        for stage, shape in (("attn", Shape(n=n, d=128, heads=2, precision=precision)),
                             ("qkv", Shape(n=n, d=64, precision=precision))):  # fmt: skip
            inputs = make_inputs(stage, shape, seed=n)
            result = ex.run(stage, shape, inputs)
            assert within(result.output, stage, shape, inputs), (stage, n)
            assert result.details["bucket"]["n"] == 8 and result.details["pad_n"] == pytest.approx((8 - n) / 8)


def test_calibration_of_a_bucket_holds_over_fresh_seeds(model_dir, runtime):
    # static int8 ranges calibrated over the lengths the bucket serves hold for 30 unseen inputs at each end
    ex = executor(model_dir, runtime)
    errors = []
    for kv_len in (0, 7, 15):
        shape = Shape(n=1, d=128, kv_len=kv_len, heads=2, precision="int8")
        for seed in range(500, 530):
            inputs = make_inputs("attn", shape, seed=seed)
            errors.append(rel_error(ex.run("attn", shape, inputs).output, exact("attn", shape, inputs)))
    assert max(errors) <= tolerance("attn", shape), max(errors)


def test_configured_buckets_select_the_models_and_name_what_is_missing(tmp_path, runtime, convert):
    buckets = [(Stage.ATTN, Shape(n=1, d=128, kv_len=k - 1, heads=2)) for k in (16, 32, 64)]
    convert.build_model_dir(tmp_path, [], buckets=buckets)
    ex = executor(tmp_path, runtime, kv_buckets=[16, 32, 128])  # the 64 model is not configured; 128 is missing
    assert ex.is_available()
    assert ex.entry_for("attn", Shape(n=1, d=128, kv_len=20, heads=2)).shape.keys == 32
    reason = ex.why_unsupported("attn", Shape(n=1, d=128, kv_len=40, heads=2))
    assert "kv bucket 128 is configured but" in reason and "--kv-buckets 128" in reason
    reason = ex.why_unsupported("attn", Shape(n=1, d=128, kv_len=200, heads=2))
    assert "201 keys exceed the largest kv bucket (128)" in reason
    assert ex.bucket_summary == "kv 16,32,128 (2/3 built)"
    assert ex.buckets()["models"]["attn"] == [[1, 16], [1, 32]]
    everything = executor(tmp_path, runtime)  # no configuration: every bucket model in the manifest
    assert everything.entry_for("attn", Shape(n=1, d=128, kv_len=40, heads=2)).shape.keys == 64
    assert everything.bucket_summary == "kv 16,32,64"
    pow2 = executor(tmp_path, runtime, kv_buckets={"pow2": [16, 64]})
    assert pow2.kv_buckets == (16, 32, 64) and pow2.bucket_summary == "kv 16,32,64 (3/3 built)"
    nowhere = executor(tmp_path / "missing", runtime, kv_buckets=[16, 32], n_buckets=[8])
    assert nowhere.bucket_summary == "kv 16,32 (configured); n 8 (configured)"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("128", "kv_buckets: expected a non-empty list"),
        ([128, 0], "kv_buckets: sizes must be positive integers, got 0"),
        ([True], "sizes must be positive integers, got True"),
        ({"pow2": [256, 128]}, "pow2 \\[lo, hi\\] has lo 256 > hi 128"),
        ({"pow2": [3, 3]}, "no power of two between 3 and 3"),
        ({"powers": [1, 2]}, "expected a list of sizes or"),
    ],
)
def test_bad_bucket_options_are_config_errors(value, message):
    with pytest.raises(ConfigError, match=message):
        RknnExecutor(kv_buckets=value)


def test_bucket_entries_round_trip_and_need_their_mask(tmp_path):
    entry = ModelEntry.for_shape("attn", DECODE_BUCKET, bucket=True)
    assert entry.input_names == ("q", "k", "v", "mask") and entry.file == "attn_bucket_n1_keys16_d128_h2_b1_fp16.rknn"
    stats = {"seeds": 30, "median": 0.01, "p95": 0.02, "max": 0.03, "tolerance": 0.1}
    checked = ModelEntry(**{**entry.__dict__, "check": stats, "calibration": {"samples": 64}})
    write_manifest(tmp_path, [checked, ModelEntry.for_shape("attn", DECODE_BUCKET)])  # exact and bucket coexist
    back = read_manifest(tmp_path).entries[0]
    assert back == entry and back.bucket and back.check == stats and back.calibration == {"samples": 64}
    assert back.describe() == "attn bucket (n<=1, keys<=16, d=128, batch=1, heads=2, fp16)"
    doc = json.loads((tmp_path / "manifest.json").read_text())
    doc["models"][0]["inputs"].pop()  # no mask
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"models\[0\]: inputs: missing 'mask'"):
        read_manifest(tmp_path)
    doc["models"][0]["bucket"] = "yes"
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"models\[0\]: bucket: expected true or false"):
        read_manifest(tmp_path)


def test_run_details_and_features_agree_on_the_padding(model_dir, runtime):
    from adaptive_sched.features import bucket_features, features

    shape = Shape(n=1, d=128, kv_len=4, heads=2, precision="int8")
    details = executor(model_dir, runtime).run("attn", shape).details
    f = features("attn", shape, kv_buckets=[16])
    assert f["kv_bucket"] == 16.0 and f["pad_kv"] == details["pad_kv"] == 11 / 16
    beyond = bucket_features("attn", Shape(n=1, d=128, kv_len=40, heads=2), kv_buckets=[16])
    assert beyond == {"kv_bucket": 0.0, "pad_kv": 0.0}
    assert bucket_features("qkv", Shape(n=6, d=64), n_buckets=[8]) == {"n_bucket": 8.0, "pad_n_bucket": 0.25}
    assert "pad_kv" not in features("attn", shape)  # not a Table 1 feature unless buckets are given


# -- the real converter: rknn-toolkit2 in its own venv (pytest -m rknn_toolkit) ----------------------
def toolkit_python() -> Path:
    """rknn-toolkit2's interpreter: $RKNN_TOOLKIT_PYTHON, else scripts/rknn-toolkit-env.sh's .rknn-venv."""
    import os
    import subprocess

    path = Path(os.environ.get("RKNN_TOOLKIT_PYTHON") or Path(__file__).parents[1] / ".rknn-venv" / "bin" / "python")
    if not path.exists():
        pytest.skip(f"rknn-toolkit2's venv is not here ({path}); create it with bash scripts/rknn-toolkit-env.sh")
    probe = subprocess.run([str(path), "-c", "from rknn.api import RKNN"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{path} cannot import rknn.api: {probe.stderr.strip().splitlines()[-1:]}")
    return path


def run_build(python: Path, *args: str) -> None:
    import subprocess

    script = Path(__file__).parents[1] / "scripts" / "build_rknn_models.py"
    proc = subprocess.run([str(python), str(script), *args], capture_output=True, text=True, timeout=1200)
    verdicts = [line for line in proc.stderr.splitlines() if "error over" in line or "failed" in line]
    assert proc.returncode == 0, "\n".join(verdicts or proc.stderr.splitlines()[-20:])


def assert_checked(model_dir: Path, expected: int) -> None:
    entries = read_manifest(model_dir).entries
    assert len(entries) == expected
    for entry in entries:
        check = entry.check
        assert check is not None and check["passed"] and check["seeds"] >= 30, entry.file
        assert check["max"] <= tolerance(entry.stage, entry.shape), entry.file  # the largest call has the widest limit
        assert (model_dir / entry.file).stat().st_size > 0
        if entry.shape.precision.value == "int8":
            assert entry.calibration["source"] == "synthetic" and entry.calibration["headroom"] == 0.25


@pytest.mark.rknn_toolkit
def test_toolkit_builds_and_verifies_the_conformance_models(tmp_path):
    run_build(toolkit_python(), str(tmp_path), "--conformance", "--check")
    assert_checked(tmp_path, len(CASES) + len(BUCKETS))


@pytest.mark.rknn_toolkit
def test_toolkit_builds_and_verifies_the_bucketed_models_of_a_config(tmp_path):
    import yaml

    config = {
        "device": "rk3588",
        "backends": {
            "npu": {"executor": "npu_rknn", "options": {"model_dir": str(tmp_path / "models"),
                                                         "kv_buckets": [16, 32], "n_buckets": [8]}},
            "cpu": {"executor": "cpu_numpy", "role": "fallback"},
        },
        "workload": {"model": "tiny", "precision": "int8", "prompt": 8, "tokens": 16},
    }  # fmt: skip
    (tmp_path / "board.yaml").write_text(yaml.safe_dump(config))
    run_build(toolkit_python(), str(tmp_path / "models"), "--config", str(tmp_path / "board.yaml"), "--check")
    # tiny (d=256, 4 heads): decode qkv, attention buckets of 16 and 32 keys, prefill qkv and attention of 8 rows
    assert_checked(tmp_path / "models", 5)
    decode = [e for e in read_manifest(tmp_path / "models").entries if e.bucket and e.shape.n == 1]
    assert sorted(e.check["sizes"][0] for e in decode) == [1, 17]  # each bucket checked over the calls it serves


# -- the board smoke script, on a fake board --------------------------------------------------------
SMOKE = Path(__file__).parents[1] / "scripts" / "rk3588-smoke.sh"


def fake_board(root: Path, npu: bool = True) -> Path:
    """A directory tree with what the smoke script reads on an RK3588: device tree, rknpu, librknnrt."""
    dt = root / "proc" / "device-tree"
    dt.mkdir(parents=True)
    (dt / "compatible").write_bytes(b"radxa,rock-5b\0rockchip,rk3588\0")
    (dt / "model").write_bytes(b"Radxa ROCK 5B\0")
    if npu:
        driver = root / "sys" / "bus" / "platform" / "drivers" / "RKNPU"
        driver.mkdir(parents=True)
        device = root / "sys" / "class" / "drm" / "renderD129" / "device"
        device.mkdir(parents=True)
        (device / "driver").symlink_to(driver)
        (root / "sys" / "kernel" / "debug" / "rknpu").mkdir(parents=True)
        (root / "sys" / "kernel" / "debug" / "rknpu" / "version").write_text("RKNPU driver: v0.9.8\n")
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "librknnrt.so").write_bytes(b"\0librknnrt version: 2.3.2 (fake)\0")
    return root


def smoke_models(model_dir: Path, convert) -> None:
    """The models the script's header says to build: conformance, smoke buckets, decode projections."""
    buckets = list(BUCKETS)
    exact_cases = list(CASES)
    for p in ("fp16", "int8"):
        for d in (64, 128):
            buckets += [
                (Stage.ATTN, Shape(n=1, d=d, kv_len=63, precision=p)),
                (Stage.ATTN, Shape(n=16, d=d, precision=p)),
                (Stage.QKV, Shape(n=16, d=d, precision=p)),
            ]
            exact_cases.append((Stage.QKV, Shape(n=1, d=d, precision=p)))
    convert.build_model_dir(model_dir, exact_cases, buckets=buckets)


def run_smoke(root: Path, model_dir: Path, machine: str = "aarch64"):
    import os
    import subprocess

    path = os.pathsep.join([str(FAKE_DIR), str(Path(__file__).parents[1])])
    env = dict(os.environ, PYTHON=sys.executable, RK3588_SMOKE_SYSROOT=str(root), RK3588_SMOKE_MACHINE=machine,
               REPETITIONS="2", PYTHONPATH=path)  # fmt: skip
    env.pop("RKNN_TOOLKIT_PYTHON", None)
    return subprocess.run(["bash", str(SMOKE), str(model_dir)], capture_output=True, text=True, env=env, timeout=600)


def test_smoke_script_on_a_fake_board_passes_and_prints_a_summary(tmp_path, convert):
    smoke_models(tmp_path / "models", convert)
    proc = run_smoke(fake_board(tmp_path / "board"), tmp_path / "models")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "### adaptive-sched NPU smoke test" in out and "board: Radxa ROCK 5B" in out
    assert "NPU device: /dev/dri/renderD129" in out and "rknpu driver: RKNPU driver: v0.9.8" in out
    assert "librknnrt version: 2.3.2 (fake)" in out
    assert "npu: 7 passed, 0 failed, 0 skipped" in out
    # the profile table has an npu column with a latency for a decode attention the 64-key bucket serves
    rows = [line.split() for line in out.splitlines() if line.startswith("attn  int8    1   128    32")]
    header = next(line.split() for line in out.splitlines() if line.startswith("stage prec"))
    assert rows and float(rows[0][header.index("npu")]) > 0
    assert out.rstrip().endswith("result: PASS")


def test_smoke_script_refuses_other_hosts_and_reports_a_missing_npu(tmp_path, convert):
    proc = run_smoke(fake_board(tmp_path / "board"), tmp_path / "models", machine="x86_64")
    assert proc.returncode == 2 and "this host is not an RK3588 board (machine x86_64" in proc.stderr
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    proc = run_smoke(nowhere, tmp_path / "models")
    assert proc.returncode == 2 and "device tree: none" in proc.stderr
    proc = run_smoke(fake_board(tmp_path / "no-models"), tmp_path / "models")  # no manifest there
    assert proc.returncode == 2 and "has no manifest.json; build them on an x86 host" in proc.stdout
    smoke_models(tmp_path / "models", convert)
    proc = run_smoke(fake_board(tmp_path / "no-npu", npu=False), tmp_path / "models")
    assert proc.returncode == 1 and "FAIL: no NPU device node" in proc.stdout and "result: FAIL" in proc.stdout


@pytest.mark.rknn_toolkit
def test_toolkit_model_failing_its_check_replaces_no_entry(tmp_path):
    import subprocess

    python = toolkit_python()
    shape = ["--stage", "attn", "--n", "5", "--d", "128", "--heads", "2", "--precision", "int8", "--check"]
    run_build(python, str(tmp_path), *shape)
    (entry,) = read_manifest(tmp_path).entries
    assert entry.check["passed"] and (tmp_path / entry.file).exists()
    # without headroom, 40 seeds include one the static ranges clip (0.13 > 0.1 in rknn-toolkit2 2.5.0)
    script = Path(__file__).parents[1] / "scripts" / "build_rknn_models.py"
    proc = subprocess.run([str(python), str(script), str(tmp_path), *shape, "--headroom", "0", "--check-seeds", "40"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 1 and "left out of the manifest" in proc.stderr
    assert read_manifest(tmp_path).entries == () and not (tmp_path / entry.file).exists()
