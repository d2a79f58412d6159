"""Running a decided stage: on its executor, under a deadline, and elsewhere when that fails.

A result is handed to the caller and learned from only if it can be trusted (see
:func:`untrusted`). A backend that fails is quarantined and the stage runs again on
the next backend (:meth:`Quarantine.next_backend`) under a decision of probability 1,
logged like any other: every decision gets exactly one outcome.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .deadline import DeadlineRunner
from .errors import ExecutorError, ObservationRefused, UnsupportedShape
from .executors import Executor, RunResult
from .observed import ObservedIds
from .outcomes import Outcomes
from .policies import Policy
from .policies.base import certain
from .quarantine import Quarantine
from .stage_runs import StageRun
from .stages import output_shape
from .types import Backend, Decision, Stage


class Failover:
    """Runs decisions on their executors and re-runs failed stages on other backends.

    Parameters
    ----------
    executors : mapping
        Backend -> executor.
    usable, candidates, fallbacks : tuple of Backend
        The backends decided between, the config's candidates and its fallbacks
        (tried, in that order, after a failure).
    timeout_s : float
        ``policy.timeout_s``: a run is abandoned past it, and a result reporting more is untrusted.
    quarantine, outcomes, observed :
        The scheduler's: failures go to ``outcomes`` (which quarantines), and a decision
        that gets an outcome here is marked in ``observed``.
    policy, lock :
        The scheduler's policy, told (under ``lock``) which shapes an executor does not support.
    next_id : callable
        The scheduler's decision ids.
    observe : callable
        ``Scheduler.observe``: where a trusted, warm result goes.
    """

    def __init__(
        self,
        *,
        executors: Mapping[Backend, Executor],
        usable: tuple[Backend, ...],
        candidates: tuple[Backend, ...],
        fallbacks: tuple[Backend, ...],
        timeout_s: float,
        quarantine: Quarantine,
        outcomes: Outcomes,
        observed: ObservedIds,
        policy: Policy,
        lock: threading.RLock,
        next_id: Callable[[], int],
        observe: Callable[[Decision, float], None],
    ) -> None:
        self._executors = executors
        self._usable = usable
        self._candidates = candidates
        self._fallbacks = fallbacks
        self._timeout_s = timeout_s
        self._quarantine = quarantine
        self._outcomes = outcomes
        self._observed = observed
        self._policy = policy
        self._lock = lock
        self._next_id = next_id
        self._observe = observe
        #: runs the stages of executors that do not run inline; counts the runs abandoned late
        self.runner = DeadlineRunner()

    def execute(
        self, decision: Decision, inputs: Mapping[str, np.ndarray] | None, context: Mapping[str, float] | None
    ) -> StageRun:
        """Run ``decision``, then on other backends while it fails.

        Raises :class:`ExecutorError` when every backend failed, and :class:`UnsupportedShape`
        when the caller's inputs are wrong for an executor that supports the shape.
        """
        failed: list[Decision] = []
        last_exc: BaseException | None = None
        tried: set[Backend] = set()
        if decision.backend in self._quarantine:
            decision = self._avoid_quarantined(decision, context)
        while True:
            tried.add(decision.backend)
            executor = self._executors.get(decision.backend)
            try:
                if executor is None:
                    raise ExecutorError(f"no executor is configured for backend {decision.backend.value!r}")
                result = self._call(executor, decision, inputs)
                problem = untrusted(decision, result, inputs, self._timeout_s)
                if problem is not None:
                    raise ExecutorError(f"{decision.backend.value} ({executor.kind}) {problem}")
            except UnsupportedShape as exc:
                if inputs is not None and executor is not None and executor.supports(decision.stage, decision.shape):
                    raise  # the caller's inputs are wrong: re-running elsewhere would not help
                self._failed(decision, str(exc), quarantine=False)
                with self._lock:
                    self._policy.mark_unsupported(decision.stage, decision.shape, decision.backend)
                failed.append(decision)
                last_exc = exc
            except Exception as exc:
                self._failed(decision, f"{type(exc).__name__}: {exc}", quarantine=True)
                failed.append(decision)
                last_exc = exc
            else:
                if result.cold:
                    self._outcomes.cold(decision, result.latency_s)
                else:
                    with contextlib.suppress(ObservationRefused):  # counted; the caller still gets its result
                        self._observe(decision, result.latency_s)
                return StageRun(decision, result, tuple(failed))
            fallback = self._next_backend(decision, tried)
            if fallback is None:
                raise ExecutorError(
                    f"{decision.stage.value} at {decision.shape} failed on every backend "
                    f"({', '.join(b.value for b in sorted(tried))}): {last_exc}"
                ) from last_exc
            decision = self._forced(decision, fallback, context, rerun=True)

    def close(self) -> None:
        """Stop waiting for abandoned runs (see :class:`DeadlineRunner`)."""
        self.runner.close()

    def _call(self, executor: Executor, decision: Decision, inputs: Mapping[str, np.ndarray] | None) -> Any:
        """Run the stage; past ``policy.timeout_s`` the caller abandons it (DeadlineExceeded)."""
        if executor.RUNS_INLINE:
            return executor.run(decision.stage, decision.shape, inputs, after=decision.after)
        args = (decision.stage, decision.shape, inputs, decision.after)
        return self.runner.call(_run_executor, (executor, *args), self._timeout_s, key=decision.backend)

    def _failed(self, decision: Decision, error: str, *, quarantine: bool) -> None:
        self._observed.mark(decision.id)
        self._outcomes.failed(decision, math.nan, error, quarantine=quarantine)

    def _next_backend(self, decision: Decision, tried: set[Backend]) -> Backend | None:
        return self._quarantine.next_backend(decision, tried, self._executors, self._candidates, self._fallbacks)

    def _avoid_quarantined(self, decision: Decision, context: Mapping[str, float] | None) -> Decision:
        """A decision for a quarantined backend (every candidate is, or the policy cannot avoid it,
        as a fixed one) goes to a usable backend without being run, if there is one."""
        fallback = self._next_backend(decision, {decision.backend})
        if fallback is None or fallback in self._quarantine:
            return decision  # nothing better: it is run (and probes the backend)
        self._observed.mark(decision.id)
        self._outcomes.skipped(decision)
        return self._forced(decision, fallback, context, rerun=False)

    def _forced(
        self, failed: Decision, backend: Backend, context: Mapping[str, float] | None, *, rerun: bool
    ) -> Decision:
        # Forced by a failure or a quarantine, not a policy choice: probability 1.
        choice = certain(backend, failed.predicted, failed.policy_version)
        decision = Decision(self._next_id(), failed.stage, failed.shape, choice, failed.after, time.time(),
                            self._usable)  # fmt: skip
        self._outcomes.forced(decision, context, rerun=rerun)
        return decision


def untrusted(decision: Decision, result: Any, inputs: Mapping[str, np.ndarray] | None, timeout_s: float) -> str | None:
    """Why an executor's result cannot be handed to the caller or learned from (None if it can)."""
    if not isinstance(result, RunResult):
        return f"returned {type(result).__name__}, not a RunResult"
    latency = result.latency_s
    if isinstance(latency, bool) or not isinstance(latency, (int, float)):
        return f"reported a latency of {latency!r}, not a number"
    if not (math.isfinite(latency) and latency > 0):
        return f"reported a latency of {latency!r} s (expected finite and > 0)"
    if latency > timeout_s and not result.cold:
        return f"ran past policy.timeout_s ({latency:g} s > {timeout_s:g} s)"
    out = result.output
    if out is None:
        return "returned no output although inputs were given" if inputs is not None else None
    if not isinstance(out, np.ndarray):
        return f"returned an output of type {type(out).__name__}, not an ndarray"
    expected = output_shape(decision.stage, decision.shape)
    if out.shape != expected:
        return f"returned an output of shape {out.shape}, expected {expected}"
    if out.dtype != np.float32:
        return f"returned an output of dtype {out.dtype}, expected float32"
    # One pass, no temporary: a NaN or an infinity anywhere makes the sum non-finite, and
    # float32 values cannot overflow a float64 sum.
    if not math.isfinite(out.sum(dtype=np.float64)):
        return "returned an output with NaN or infinite values"
    return None


def _run_executor(
    executor: Executor,
    stage: Stage,
    shape: Any,
    inputs: Mapping[str, np.ndarray] | None,
    after: Backend | None,
) -> RunResult:
    return executor.run(stage, shape, inputs, after=after)
