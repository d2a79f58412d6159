"""Executors are checked, not trusted: property-based and fault tests through the scheduler.

Faulty backends are plugged in the documented way for a backend of one's own
(``Scheduler.from_config(..., executors={...})``). Whatever they do (raise, hang, return
a wrongly shaped, mistyped or non-finite output, report a latency that is None, NaN,
negative, zero or past the deadline), the caller gets the correct output or a clear
``ExecutorError``, and every failed run is counted, in ``stats()`` and in the log.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptive_sched import Scheduler, Shape
from adaptive_sched.errors import ExecutorError, ObservationRefused
from adaptive_sched.executors import Executor, RunResult
from adaptive_sched.stages import make_inputs, output_shape, reference
from adaptive_sched.types import Backend, Stage

GPU, NPU, CPU = Backend.GPU, Backend.NPU, Backend.CPU

#: a deadline short enough to keep the suite fast, long enough for a healthy run on a busy host
TIMEOUT_S = 0.05
#: how long a hanging executor blocks (past the deadline; the late result is dropped)
HANG_S = 0.12

FAULTS = (
    "raise", "hang", "wrong_shape", "wrong_dtype", "nan", "inf", "no_output", "not_a_result",
    "latency_none", "latency_nan", "latency_negative", "latency_zero", "latency_past_timeout",
)  # fmt: skip


class FaultyExecutor(Executor):
    """A backend of one's own: the reference math, or the fault it is told to commit next."""

    kind = "faulty"

    def __init__(self, backend: Backend | str, faults: list[str] | None = None) -> None:
        super().__init__(backend)
        self.faults = list(faults or [])  # consumed one per call; "ok" (or none left) runs correctly
        self.committed = 0  # faults delivered
        self.calls = 0
        self.hang_s = HANG_S
        self.release = threading.Event()  # ends a hang early
        self._lock = threading.Lock()

    def _run(self, stage: Stage, shape: Shape, inputs: Mapping[str, np.ndarray] | None, after: Backend | None):
        with self._lock:
            self.calls += 1
            fault = self.faults.pop(0) if self.faults else "ok"
            if fault != "ok":
                self.committed += 1
        assert inputs is not None
        out = reference(stage, shape, inputs)
        latency: object = 1e-4
        if fault == "raise":
            raise RuntimeError("device lost")
        if fault == "hang":
            self.release.wait(self.hang_s)
        elif fault == "wrong_shape":
            out = out.reshape(-1)
        elif fault == "wrong_dtype":
            out = out.astype(np.float64)
        elif fault == "nan":
            out = out.copy()
            out.flat[out.size // 2] = np.nan
        elif fault == "inf":
            out = out.copy()
            out.flat[0] = -np.inf
        elif fault == "no_output":
            out = None
        elif fault == "not_a_result":
            return (out, 1e-4)
        elif fault == "latency_none":
            latency = None
        elif fault == "latency_nan":
            latency = math.nan
        elif fault == "latency_negative":
            latency = -1e-3
        elif fault == "latency_zero":
            latency = 0.0
        elif fault == "latency_past_timeout":
            latency = 10 * TIMEOUT_S
        return RunResult(output=out, latency_s=latency)  # type: ignore[arg-type]


class InlineExecutor(FaultyExecutor):
    """A healthy fallback run on the caller's thread: on a loaded machine a worker thread can
    wait past the tiny deadline for the CPU, and the suite needs one backend that never fails."""

    RUNS_INLINE = True


def config(policy: str = "adaptive", **extra: object) -> dict:
    policy_section: dict = {"kind": policy, "timeout_s": TIMEOUT_S}
    if policy == "fixed":
        policy_section["backend"] = "gpu"
    elif policy in ("adaptive", "epsilon"):
        policy_section["seed"] = 3
    return {
        "device": "test",
        "priors": "none",
        # the executors named here are replaced by the ones given to from_config
        "backends": {"gpu": "cpu_numpy", "npu": "cpu_numpy", "cpu": {"executor": "cpu_numpy", "role": "fallback"}},
        "policy": policy_section,
        **extra,
    }


shapes = st.builds(
    lambda n, d, heads, kv, batch, precision: Shape(n=n, d=d, kv_len=kv, heads=heads, batch=batch,
                                                    precision=precision),
    n=st.integers(1, 4),
    d=st.sampled_from([32, 64]),
    heads=st.sampled_from([1, 2]),
    kv=st.integers(0, 6),
    batch=st.integers(1, 2),
    precision=st.sampled_from(["fp16", "int8"]),
)  # fmt: skip
fault_lists = st.lists(st.sampled_from(("ok", *FAULTS)), max_size=4)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=shapes,
    stage=st.sampled_from([Stage.QKV, Stage.ATTN]),
    gpu_faults=fault_lists,
    npu_faults=fault_lists,
    policy=st.sampled_from(["adaptive", "fixed", "epsilon"]),
    runs=st.integers(1, 6),
)
def test_the_caller_always_gets_the_reference_output_and_every_failure_is_counted(
    tmp_path_factory, shape, stage, gpu_faults, npu_faults, policy, runs
):
    ex = {GPU: FaultyExecutor(GPU, gpu_faults), NPU: FaultyExecutor(NPU, npu_faults), CPU: InlineExecutor(CPU)}
    db = tmp_path_factory.mktemp("faults") / "log.db"
    inputs = make_inputs(stage, shape)
    want = reference(stage, shape, inputs)
    failed = 0
    with Scheduler.from_config(config(policy), db=db, executors=ex) as sched:
        for _ in range(runs):
            run = sched.run_stage(stage, shape, inputs)
            assert run.output is not None and run.output.shape == output_shape(stage, shape)
            np.testing.assert_array_equal(run.output, want)
            failed += len(run.failed)
        stats = sched.stats()
    assert stats["failures"] == failed
    assert ex[CPU].committed == 0
    # every fault an executor committed failed a run (a call refused while an abandoned one
    # still ran failed one more without reaching it)
    assert ex[GPU].committed + ex[NPU].committed <= failed
    with sqlite3.connect(db) as con:
        (logged_failures,) = con.execute(
            "SELECT count(*) FROM outcomes WHERE ok = 0 AND error NOT LIKE 'not run%'"
        ).fetchone()
    assert logged_failures == failed


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("policy", ["adaptive", "fixed", "static", "epsilon"])
def test_each_fault_is_rerun_elsewhere_quarantined_and_counted(fault, policy):
    ex = {GPU: FaultyExecutor(GPU, [fault]), NPU: FaultyExecutor(NPU, [fault]), CPU: InlineExecutor(CPU)}
    shape = Shape(n=2, d=64, kv_len=3, heads=2)
    inputs = make_inputs(Stage.ATTN, shape)
    cfg = config(policy)
    prior = _Prior() if policy == "static" else None
    with Scheduler.from_config(cfg, executors=ex, prior=prior) as sched:
        run = sched.run_stage("attn", shape, inputs)
        np.testing.assert_array_equal(run.output, reference("attn", shape, inputs))
        assert len(run.failed) >= 1 and run.failed[0].backend in (GPU, NPU)
        stats = sched.stats()
        assert stats["failures"] == len(run.failed)
        assert run.failed[0].backend.value in stats["quarantined"]


def test_a_hung_executor_is_abandoned_at_the_deadline_and_its_late_result_dropped():
    gpu = FaultyExecutor(GPU, ["hang"])
    gpu.hang_s = 60.0  # hangs until released below: the caller must not wait for it
    ex = {GPU: gpu, NPU: FaultyExecutor(NPU), CPU: InlineExecutor(CPU)}
    shape = Shape(n=1, d=64, kv_len=4, heads=2)
    inputs = make_inputs("qkv", shape)
    with Scheduler.from_config(config("fixed"), executors=ex) as sched:
        run = sched.run_stage("qkv", shape, inputs)
        # returned while the GPU's call is still blocked: it was abandoned, not waited for
        assert not gpu.release.is_set() and sched.stats()["abandoned_running"] == 1
        assert run.failed[0].backend is GPU and run.backend in (NPU, CPU)
        np.testing.assert_array_equal(run.output, reference("qkv", shape, inputs))
        assert sched.stats()["late"] == 0
        gpu.release.set()
        deadline = time.monotonic() + 30
        while sched.stats()["late"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sched.stats()["late"] == 1 and sched.stats()["abandoned_running"] == 0


def test_the_fixed_policy_does_not_call_a_quarantined_backend_every_time():
    # GPU is the only candidate: while it is quarantined, stages go to the fallback unrun on it.
    cfg = config("fixed", backends={"gpu": "cpu_numpy", "cpu": {"executor": "cpu_numpy", "role": "fallback"}})
    ex = {GPU: FaultyExecutor(GPU, ["raise"] * 1000), CPU: InlineExecutor(CPU)}
    shape = Shape(n=1, d=64, kv_len=4, heads=2)
    with Scheduler.from_config(cfg, executors=ex) as sched:
        runs = [sched.run_stage("qkv", shape, make_inputs("qkv", shape)) for _ in range(50)]
        assert all(r.backend is CPU for r in runs)
        assert ex[GPU].calls == 1
        stats = sched.stats()
        assert stats["failures"] == 1 and stats["skipped_quarantined"] == 49


def test_every_backend_failing_is_a_clear_error_naming_them():
    ex = {GPU: FaultyExecutor(GPU, ["nan"]), NPU: FaultyExecutor(NPU, ["nan"]), CPU: InlineExecutor(CPU, ["nan"])}
    shape = Shape(n=1, d=64, kv_len=4, heads=2)
    with Scheduler.from_config(config(), executors=ex) as sched:
        with pytest.raises(ExecutorError, match=r"failed on every backend \(cpu, gpu, npu\).*NaN"):
            sched.run_stage("attn", shape, make_inputs("attn", shape))
        assert sched.stats()["failures"] == 3


def test_run_attention_never_reshapes_a_wrong_output():
    ex = {GPU: FaultyExecutor(GPU, ["wrong_shape"] * 3), NPU: FaultyExecutor(NPU, ["wrong_shape"] * 3),
          CPU: InlineExecutor(CPU)}  # fmt: skip
    shape = Shape(n=1, d=64, kv_len=4, heads=2)
    x = make_inputs("qkv", shape)
    kv = make_inputs("attn", Shape(n=1, d=64, kv_len=3, heads=2))
    with Scheduler.from_config(config(), executors=ex) as sched:
        layer = sched.run_attention(shape, {**x, "k_cache": kv["k"], "v_cache": kv["v"]})
    assert layer.output is not None and layer.output.shape == output_shape("attn", shape)


class _Prior:
    """A prior that prefers the GPU for everything (for the static policy)."""

    backends = (GPU, NPU)

    def latency(self, stage, shape):
        return {GPU: 1e-3, NPU: 2e-3}

    def choose(self, stage, shape):
        return GPU

    def extrapolating(self, stage, shape):
        return False


@settings(max_examples=40, deadline=None)
@given(
    latencies=st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none(), st.integers(-5, 10**12)),
        min_size=1,
        max_size=12,
    ),
    shape=shapes,
)
def test_observed_latencies_are_learned_only_if_plausible(latencies, shape):
    max_latency = 60.0
    learned = refused = invalid = 0
    with Scheduler.from_config(config(), executors={b: InlineExecutor(b) for b in (GPU, NPU, CPU)}) as sched:
        for value in latencies:
            d = sched.decide("qkv", shape)
            plausible = value is not None and math.isfinite(value) and 0 < value <= max_latency
            try:
                sched.observe(d, value)
            except ObservationRefused:
                refused += 1
                assert value is not None and math.isfinite(value) and value > max_latency
            except ValueError:
                invalid += 1
                assert not plausible
            else:
                learned += 1
                assert plausible
        stats = sched.stats()
    assert stats["observations"] == learned
    assert stats["refused"].get("implausible", 0) == refused
    assert learned + refused + invalid == len(latencies)
