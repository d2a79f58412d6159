"""The executor conformance suite, shipped with the package so it can run on a real device.

Every executor must pass every check here. ``adaptive-sched check`` runs them against
the executors of a config; the test suite runs them over the registry. A check raises
:class:`CheckFailed` on failure and :class:`CheckSkipped` (with the reason) when the
executor cannot be exercised on this machine, such as missing hardware.

>>> from adaptive_sched.executors import create_executor
>>> results = run_checks(lambda: create_executor("cpu_numpy"))
>>> [r.check for r in results if r.status == "failed"]
[]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .errors import UnsupportedShape
from .executors.base import Executor
from .stages import exact, make_inputs, output_shape, relative_error
from .types import Precision, Shape, Stage


class CheckFailed(AssertionError):
    """An executor does not conform."""


class CheckSkipped(Exception):
    """A check cannot run here (the reason says why); it is not a failure."""


#: largest error allowed, relative to max|exact| (:func:`adaptive_sched.stages.relative_error`
#: against the float64 math of :func:`adaptive_sched.stages.exact`), per precision; see :func:`tolerance`
TOLERANCE = {Precision.FP16: 1e-2, Precision.INT8: 5e-2}
#: INT8 attention over up to this many keys is allowed :data:`INT8_ATTN_TOLERANCE` ...
INT8_ATTN_KEYS = 512
INT8_ATTN_TOLERANCE = 0.10
#: ... and this much more for every doubling of the keys beyond
INT8_ATTN_PER_DOUBLING = 0.025


def tolerance(stage: Stage | str, shape: Shape) -> float:
    """The largest error relative to max|exact| an executor may have on ``stage`` at ``shape``.

    * FP16, both stages: 1e-2. Rounding the inputs to float16 costs about 6e-4 (the FP16
      reference); the rest allows fp16 accumulation where a backend has it.
    * INT8 ``qkv``: 5e-2 (the INT8 reference is off by 1 to 3e-2 at the conformance shapes).
    * INT8 ``attn``: 0.10 up to 512 keys, plus 0.025 per doubling beyond (0.15 at 2048 keys).
      Per-tensor int8 scales cost more the longer the softmax row: with each tensor's own
      range (:func:`adaptive_sched.stages.attention_core`) the error reaches 0.04 at 128 keys
      and 0.10 at 2048 keys (d=2048, 32 heads, 8 to 30 seeds), and models whose ranges were
      fixed by calibration reach 0.077 at 512 keys and 0.138 at 2048 keys over 30 seeds in
      rknn-toolkit2 2.5.0's simulator (d=1536, 12 heads). A wrong mask or padding is off by
      0.3 or more.

    >>> tolerance("attn", Shape(n=1, d=2048, kv_len=2047, precision="int8"))
    0.15
    """
    from .types import parse_stage

    stage = parse_stage(stage)
    if shape.precision is Precision.FP16 or stage is Stage.QKV:
        return TOLERANCE[shape.precision]
    doublings = max(0.0, math.log2(shape.keys / INT8_ATTN_KEYS))
    return round(INT8_ATTN_TOLERANCE + INT8_ATTN_PER_DOUBLING * doublings, 6)


#: small shapes covering prefill (causal, odd sizes) and decode over a cache, multi-head and batched
CASES: tuple[tuple[Stage, Shape], ...] = tuple(
    (stage, Shape(**dims, precision=p))
    for p in Precision
    for stage, dims in (
        (Stage.QKV, {"n": 7, "d": 64}),
        (Stage.QKV, {"n": 1, "d": 128, "batch": 2}),
        (Stage.QKV, {"n": 33, "d": 96, "heads": 3}),
        (Stage.ATTN, {"n": 5, "d": 128, "heads": 2}),
        (Stage.ATTN, {"n": 1, "d": 128, "kv_len": 9, "heads": 2}),
        (Stage.ATTN, {"n": 3, "d": 64, "kv_len": 4, "batch": 2, "heads": 1}),
    )
)


#: bucket models (the largest shape each holds) a static-graph backend serves :data:`PADDED_CASES` from:
#: decode attention over up to 16 keys, prefill attention and projection of up to 8 rows
BUCKETS: tuple[tuple[Stage, Shape], ...] = tuple(
    (stage, Shape(**dims, precision=p))
    for p in Precision
    for stage, dims in (
        (Stage.ATTN, {"n": 1, "d": 128, "kv_len": 15, "heads": 2}),
        (Stage.ATTN, {"n": 8, "d": 128, "heads": 2}),
        (Stage.QKV, {"n": 8, "d": 64}),
    )
)

#: shapes the suite also runs where supported, that no exact conformance model has: a
#: backend with only the :data:`BUCKETS` models runs them padded and masked
PADDED_CASES: tuple[tuple[Stage, Shape], ...] = tuple(
    (stage, Shape(**dims, precision=p))
    for p in Precision
    for stage, dims in (
        (Stage.ATTN, {"n": 1, "d": 128, "kv_len": 0, "heads": 2}),
        (Stage.ATTN, {"n": 1, "d": 128, "kv_len": 12, "heads": 2}),
        (Stage.ATTN, {"n": 6, "d": 128, "heads": 2}),
        (Stage.QKV, {"n": 3, "d": 64}),
    )
)


def _available(executor: Executor) -> None:
    if not executor.is_available():
        raise CheckSkipped(f"{executor.kind} not available here: {executor.unavailable_reason}")


def _supported_cases(executor: Executor) -> list[tuple[Stage, Shape]]:
    cases = [(s, sh) for s, sh in CASES + PADDED_CASES if executor.supports(s, sh)]
    if not cases:
        raise CheckSkipped(f"{executor.kind} supports none of the conformance shapes")
    return cases


def check_is_available_never_raises(executor: Executor) -> None:
    """``is_available()`` returns a bool, and a reason when False."""
    ok = executor.is_available()
    if not isinstance(ok, bool):
        raise CheckFailed(f"is_available() returned {ok!r}, not a bool")
    if not ok and not executor.unavailable_reason:
        raise CheckFailed("is_available() is False but unavailable_reason is empty")


def check_numerics_match_reference(executor: Executor) -> None:
    """Outputs match the float64 math (:func:`~adaptive_sched.stages.exact`) within :func:`tolerance`."""
    _available(executor)
    for stage, shape in _supported_cases(executor):
        inputs = make_inputs(stage, shape, seed=7)
        result = executor.run(stage, shape, inputs)
        if result.output is None:
            raise CheckFailed(f"{stage.value} {shape}: no output although inputs were given")
        got = np.asarray(result.output)
        if got.shape != output_shape(stage, shape):
            raise CheckFailed(f"{stage.value} {shape}: output shape {got.shape}, expected {output_shape(stage, shape)}")
        err = relative_error(got, exact(stage, shape, inputs))
        limit = tolerance(stage, shape)
        if not err <= limit:
            raise CheckFailed(f"{stage.value} {shape}: max error {err:.3g} of max|exact| exceeds {limit}")


def check_latency_finite_positive(executor: Executor) -> None:
    """Every run reports a finite latency > 0 seconds."""
    _available(executor)
    for stage, shape in _supported_cases(executor):
        for _ in range(2):
            result = executor.run(stage, shape, make_inputs(stage, shape))
            if not (math.isfinite(result.latency_s) and result.latency_s > 0):
                raise CheckFailed(f"{stage.value} {shape}: latency {result.latency_s!r} is not finite and > 0")


def check_bad_inputs_rejected(executor: Executor) -> None:
    """Mis-shaped or missing inputs raise UnsupportedShape naming the input."""
    _available(executor)
    stage, shape = _supported_cases(executor)[0]
    inputs = make_inputs(stage, shape)
    name = next(iter(inputs))
    bad = dict(inputs)
    bad[name] = np.zeros((1, 2, 3), dtype=np.float32)
    for broken in (bad, {k: v for k, v in inputs.items() if k != name}):
        try:
            executor.run(stage, shape, broken)
        except UnsupportedShape as exc:
            if repr(name) not in str(exc):
                raise CheckFailed(f"error for bad input {name!r} does not name it: {exc}") from None
        else:
            raise CheckFailed(f"bad input {name!r} was accepted")


def check_unsupported_rejected(executor: Executor) -> None:
    """A shape the executor says it does not support raises UnsupportedShape with the reason."""
    _available(executor)
    probes = [(s, sh) for s, sh in CASES + PADDED_CASES] + [
        (Stage.QKV, Shape(n=1, d=65536 + 64, heads=1)),
        (Stage.ATTN, Shape(n=4096, d=64, kv_len=1 << 20, heads=1)),
    ]
    unsupported = [(s, sh) for s, sh in probes if not executor.supports(s, sh)]
    if not unsupported:
        raise CheckSkipped(f"{executor.kind} supports every probed shape")
    stage, shape = unsupported[0]
    try:
        executor.run(stage, shape)
    except UnsupportedShape as exc:
        if not str(exc):
            raise CheckFailed("UnsupportedShape without a message") from None
    else:
        raise CheckFailed(f"{stage.value} {shape} is reported unsupported but ran")


def check_prepare_idempotent(executor: Executor) -> None:
    """``prepare`` twice is the same as once, and ``run`` still works after it."""
    _available(executor)
    stage, shape = _supported_cases(executor)[0]
    executor.prepare(stage, shape)
    executor.prepare(stage, shape)
    executor.run(stage, shape, make_inputs(stage, shape))


def check_close_idempotent(executor: Executor) -> None:
    """``close`` twice does not raise; ``run`` after ``close`` raises RuntimeError."""
    executor.close()
    executor.close()
    if executor.is_available():
        stage, shape = CASES[0]
        try:
            executor.run(stage, shape, make_inputs(stage, shape))
        except RuntimeError:
            return
        raise CheckFailed("run() after close() did not raise")


EXECUTOR_CHECKS: tuple[Callable[[Executor], None], ...] = (
    check_is_available_never_raises,
    check_numerics_match_reference,
    check_latency_finite_positive,
    check_bad_inputs_rejected,
    check_unsupported_rejected,
    check_prepare_idempotent,
    check_close_idempotent,
)


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: str  # "passed" | "failed" | "skipped"
    message: str = ""


def iter_checks(factory: Callable[[], Executor]) -> Iterator[CheckResult]:
    """Run every check on a fresh executor from ``factory``; yield one result per check."""
    for check in EXECUTOR_CHECKS:
        name = check.__name__.removeprefix("check_")
        executor = factory()
        try:
            check(executor)
        except CheckSkipped as exc:
            yield CheckResult(name, "skipped", str(exc))
        except CheckFailed as exc:
            yield CheckResult(name, "failed", str(exc))
        except Exception as exc:
            yield CheckResult(name, "failed", f"{type(exc).__name__}: {exc}")
        else:
            yield CheckResult(name, "passed")
        finally:
            executor.close()


def run_checks(factory: Callable[[], Executor]) -> list[CheckResult]:
    """All check results for the executors made by ``factory``."""
    return list(iter_checks(factory))
