"""The execution wrapper: decide -> run on an executor -> time -> log -> learn.

>>> from adaptive_sched import Scheduler, Shape
>>> with Scheduler.from_config("rk3588-sim") as sched:
...     shape = Shape(n=1, d=4096, kv_len=512, precision="int8")
...     dq = sched.decide("qkv", shape)
...     sched.observe(dq, latency_s=0.00123)
...     da = sched.decide("attn", shape, after=dq)
...     sched.observe(da, latency_s=0.00071)
...     out = sched.run("qkv", shape)          # latency-only on the simulator: no output
>>> dq.backend.value in ("gpu", "npu"), 0 < dq.propensity <= 1
(True, True)
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .build import build_executors, build_policy, load_prior, open_log, warm_start_rows
from .config import Config, load_config
from .deadline import DeadlineRunner
from .errors import (
    ExecutorError,
    ExecutorUnavailable,
    ObservationRefused,
    SchedulerClosed,
    StoreError,
    UnsupportedShape,
)
from .executors import Executor, RunResult
from .observed import ObservedIds
from .policies import Observation, Policy
from .policies.base import certain
from .stages import output_shape, split_heads
from .types import Backend, Choice, Decision, Shape, Stage, check_latency, parse_backend, parse_stage

log = logging.getLogger(__name__)

_STAGES: dict[Any, Stage] = {**{s.value: s for s in Stage}, **{s: s for s in Stage}}
_wallclock = time.time

#: longest stretch the learner thread runs before yielding the GIL to inference threads ...
LEARN_SLICE_S = 50e-6
#: ... and how long it then sleeps. A real sleep, not ``sleep(0)``: a thread that releases the
#: GIL and takes it straight back usually wins it again, and an inference thread waiting for it
#: would wait for the interpreter's switch interval (5 ms).
LEARN_PAUSE_S = 50e-6
#: observations waiting for the learner thread; beyond that the oldest are skipped (and counted):
#: a learner that cannot keep up learns from a sample, and memory stays bounded
LEARN_BACKLOG = 16_384
#: past this backlog the caller of ``observe`` learns a few queued observations itself: a
#: caller that never releases the GIL would otherwise starve the learner thread
HELP_MARK = 4
HELP_BATCH = 4
#: the longest a helping caller waits for the learner thread to finish its slice
HELP_WAIT_S = 1e-3

#: decisions a quarantined backend sits out after its first failure; doubles with each strike
QUARANTINE_BASE = 64
QUARANTINE_MAX_STRIKES = 10
#: the least time between two warnings of one kind about one backend; those held back are
#: counted and the next warning says how many (a failing backend fails thousands of times a second)
WARN_EVERY_S = 10.0


@dataclass(frozen=True)
class StageRun:
    """One stage run through the scheduler: the decision and what the executor returned."""

    decision: Decision
    result: RunResult
    #: decisions that failed before this one succeeded (their backends are quarantined)
    failed: tuple[Decision, ...] = ()

    @property
    def output(self) -> np.ndarray | None:
        return self.result.output

    @property
    def latency_s(self) -> float:
        return self.result.latency_s

    @property
    def backend(self) -> Backend:
        return self.decision.backend


@dataclass(frozen=True)
class LayerRun:
    """qkv then attn for one attention layer (see :meth:`Scheduler.run_attention`)."""

    qkv: StageRun
    attn: StageRun
    #: attention output [batch, heads, n, head_dim] (None in latency-only mode)
    output: np.ndarray | None = None
    #: the KV caches with this step's keys and values appended
    k_cache: np.ndarray | None = None
    v_cache: np.ndarray | None = None

    @property
    def latency_s(self) -> float:
        return self.qkv.latency_s + self.attn.latency_s


@dataclass
class _Counters:
    decisions: int = 0
    observations: int = 0
    failures: int = 0
    rejected: int = 0
    reruns: int = 0
    learn_errors: int = 0
    observer_errors: int = 0
    #: decisions whose backend was quarantined, sent to another without being run
    skipped: int = 0
    #: logged outcomes not learned at a warm start (implausible latencies)
    warm_start_refused: int = 0
    by_backend: dict[Backend, int] = field(default_factory=dict)
    #: observations refused, by reason: duplicate, foreign, stale, implausible
    refused: dict[str, int] = field(default_factory=dict)


#: why an observation was refused, as its message says it
_REFUSALS = {
    "duplicate": "was observed before",
    "foreign": "is not a decision of this scheduler",
    "stale": "is too old to tell whether it was observed",
    "implausible": "has a latency above policy.max_latency_s",
}


class _Throttle:
    """Rate-limits warnings per key: the first, then at most one per ``every_s`` (the rest counted)."""

    __slots__ = ("_every", "_held", "_next")

    def __init__(self, every_s: float | None = None) -> None:
        self._every = WARN_EVERY_S if every_s is None else every_s
        self._next: dict[Any, float] = {}
        self._held: dict[Any, int] = {}

    def allow(self, key: Any) -> int | None:
        """None if a warning for ``key`` is held back now, else how many were held back before it."""
        now = time.monotonic()
        if now < self._next.get(key, -math.inf):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._next[key] = now + self._every
        return self._held.pop(key, 0)


class Scheduler:
    """Chooses a backend for every attention stage, runs it, and learns from what it observed.

    Thread-safe: many threads may call :meth:`decide`, :meth:`observe` and :meth:`run`
    at once. Use :meth:`from_config` to build one; :meth:`close` (or a ``with`` block)
    flushes the log.

    Parameters
    ----------
    config : Config
        A loaded configuration (see :func:`adaptive_sched.config.load_config`).
    db : str or Path, optional
        SQLite log path; overrides ``store.path`` of the config.
    policy : Policy, optional
        Overrides the policy of the config (benchmarks compare policies this way).
    prior : optional
        Overrides the prior of the config (an object with ``latency`` and ``choose``).
    executors : mapping, optional
        Backend -> executor, overriding the config's executors (tests, embedding).
    warm_start_from : str or Path, optional
        Without ``db``: learn from this log's outcomes (as a scheduler opening it would)
        but log nothing to it. For a one-shot decision that writes its own row.
    """

    def __init__(
        self,
        config: Config,
        *,
        db: str | Path | None = None,
        policy: Policy | None = None,
        prior: Any = None,
        executors: Mapping[Backend | str, Executor] | None = None,
        warm_start_from: str | Path | None = None,
    ) -> None:
        self.config = config
        self._closed = False
        self._lock = threading.RLock()
        self._counters = _Counters()
        built = build_executors(config, executors)
        self._executors = built.executors
        #: the simulated device the config's ``sim`` executors share (None on real hardware)
        self.device: Any = built.sim_device
        #: candidate backends whose executor runs here, in config order: the only ones decided between
        self.usable, self.unavailable = usable_candidates(config.candidates, self._executors)
        self._prior = prior if prior is not None else load_prior(config)
        self._policy = policy if policy is not None else build_policy(config, built)
        self._policy.bind(self.usable, self._prior, supports=self._supports)
        self._inline = config.policy.learner == "inline"
        # One-time costs (river's import, about a second) now, not in the first observation.
        self._policy.prepare()
        self._quarantine: dict[Backend, int] = {}  # backend -> observation count it sits out until
        self._strikes: dict[Backend, int] = {}  # failures since the backend's last success
        self._learn_queue: deque[Observation] = deque(maxlen=None if self._inline else LEARN_BACKLOG)
        self._unlearned = 0  # observations skipped because the learner was behind (approximate)
        self._timeout_s = config.policy.timeout_s
        self._next_id = itertools.count(1).__next__  # restarted above the run's id base by _open_log
        self._init_checks()
        self._log: Any = None
        #: called with (decision, latency_s or None, ok) for every outcome; see add_observer
        self._observers: tuple[Callable[[Decision, float | None, bool], None], ...] = ()
        db_path = str(db) if db is not None else (config.resolve_path(config.store.path) if config.store.path else None)
        if db_path:
            self._open_log(db_path)
        elif warm_start_from is not None and Path(warm_start_from).exists():
            self._warm_start(str(warm_start_from))
        # The decision hot path reads these directly (see decide()).
        self._table = self._policy.table
        self._draw = self._policy.draw
        fast_path = getattr(self._log, "fast_path", None)
        self._log_queue: deque[Any] | None = None
        self._log_kick_at = 0
        if fast_path is not None:
            self._log_queue, self._log_kick_at = fast_path()
        self._learner: threading.Thread | None = None
        self._stop = threading.Event()
        if not self._inline:
            self._learner = threading.Thread(target=self._learner_loop, name="adaptive-sched-learner", daemon=True)
            self._learner.start()

    @classmethod
    def from_config(
        cls, source: str | Path | Mapping[str, Any], db: str | Path | None = None, **kwargs: Any
    ) -> Scheduler:
        """Build a scheduler from a YAML path, a shipped config name, or a dict."""
        config = source if isinstance(source, Config) else load_config(source)
        return cls(config, db=db, **kwargs)

    def _supports(self, stage: Stage, shape: Shape, backend: Backend) -> bool:
        executor = self._executors.get(backend)
        return executor is not None and executor.supports(stage, shape)

    def unsupported(self, stage: Stage | str, shape: Shape) -> dict[Backend, str]:
        """Why each usable candidate cannot run ``stage`` at ``shape``; empty if one of them can.

        A decision for a shape no usable executor supports is a guess: callers that must
        not act on one (the command line, the socket service) ask this first.
        """
        stage_ = parse_stage(stage)
        reasons: dict[Backend, str] = {}
        for backend in self.usable:
            why = self._executors[backend].why_unsupported(stage_, shape)
            if why is None:
                return {}
            reasons[backend] = why
        return reasons

    def published(
        self, stage: Stage | str, shape: Shape, after: Backend | str | None = None
    ) -> tuple[Choice, tuple[tuple[float, Choice], ...]]:
        """What a decision here draws from now: the exploit choice and ``(threshold, choice)`` alternatives.

        The same entry :meth:`decide` reads (a uniform draw below a threshold takes that
        alternative), so it can be saved and drawn from by a process that has no policy
        (``adaptive-sched decide``'s snapshot). Policies without a published table give
        their probability vector in the same form.
        """
        stage_ = parse_stage(stage)
        prev = None if after is None else parse_backend(after)
        with self._lock:
            choice = self._policy.choose(stage_, shape, prev)
            table = self._policy.table
            entry = table.lookup(stage_, shape, prev) if table is not None else None
            if entry is not None:
                return entry.exploit, entry.alternatives
            probs = self._policy.probabilities(stage_, shape, prev)
        exploit = max(probs, key=probs.__getitem__)
        version = choice.version
        alternatives, threshold = [], 0.0
        for backend, p in probs.items():
            if backend is not exploit and p > 0:
                threshold += p
                alternatives.append((threshold, Choice(backend, p, True, choice.predicted, probs, version)))
        return Choice(exploit, probs[exploit], False, choice.predicted, probs, version), tuple(alternatives)

    # -- construction -------------------------------------------------------------
    def _open_log(self, path: str) -> None:
        self._log = open_log(self.config, path)
        try:
            self._warm_start(path)
            from . import __version__

            run_id = self._log.start_run(
                host=socket.gethostname(),
                config_hash=self.config.content_hash(),
                device_profile=self.config.device,
                package_version=__version__,
                config=self.config.log_json(),
            )
        except BaseException:
            self._log.close()
            raise
        # Ids unique across the processes and restarts that share one log file.
        self._next_id = itertools.count((int(run_id) << 32) | 1).__next__
        self._observed = ObservedIds((int(run_id) << 32) | 1)

    def _init_checks(self) -> None:
        """State for checking what executors return and what callers observe."""
        # Without a log, a random tag in the ids' upper bits tells this scheduler's decisions
        # from another's (with a log, the run's id does; see _open_log).
        base = (random.SystemRandom().randrange(1 << 30, 1 << 31) << 32) | 1
        self._next_id = itertools.count(base).__next__
        self._observed = ObservedIds(base)
        self._max_latency_s = self.config.policy.max_latency_s
        self._runner = DeadlineRunner()
        self._throttle = _Throttle()

    def _warm_start(self, path: str) -> None:
        """Resume from the log: replay its most recent outcomes for this device through the policy."""
        limit = self.config.store.warm_start_rows
        if limit <= 0:
            return
        n = 0
        candidates = set(self.usable)
        learn = self._policy.learn
        for decision, latency_s in warm_start_rows(self.config, path, limit):
            if not latency_s <= self._max_latency_s:  # a log is input too: 1e300 s is not a latency
                self._counters.warm_start_refused += 1
                continue
            if decision.backend in candidates and (decision.after is None or decision.after in candidates):
                # No choice attached: a restart re-learns what runs cost, not what probing spent.
                learn(Observation(decision.stage, decision.shape, decision.after, decision.backend, latency_s))
                n += 1
        if n:
            log.info("warm start: learned from %d logged outcomes in %s", n, path)
        if self._counters.warm_start_refused:
            log.warning("warm start: %d logged latencies above policy.max_latency_s=%g s in %s were not learned",
                        self._counters.warm_start_refused, self._max_latency_s, path)  # fmt: skip

    # -- the public API -------------------------------------------------------------
    def decide(
        self,
        stage: Stage | str,
        shape: Shape,
        context: Mapping[str, float] | None = None,
        after: Decision | Backend | str | None = None,
    ) -> Decision:
        """Choose the backend for ``stage`` at ``shape``.

        ``after`` is the decision (or backend) of the previous stage of the same layer,
        so ``attn`` accounts for where ``qkv`` ran. ``context`` carries optional device
        state (temperatures, clocks, load) that is logged with the decision.
        """
        # The hot path: one lookup in the policy's published table, one draw, one named tuple.
        if self._closed:
            raise SchedulerClosed("decide() after close()")
        if after is None:
            prev = None
        elif after.__class__ is Decision:
            if after.stage is _STAGES.get(stage):
                raise ValueError(f"after: a decision of the previous stage is expected, got one of {after.stage.value}")
            prev = after.choice.backend
        else:
            prev = parse_backend(after)  # type: ignore[arg-type]
        stage_ = _STAGES.get(stage)
        table = self._table
        if stage_ is None or table is None or shape.__class__ is not Shape:
            return self._decide_slow(stage, shape, context, prev)
        entry = table.lookup(stage_, shape, prev)
        if entry is None:
            return self._decide_slow(stage, shape, context, prev)
        choice = entry.pick(self._draw()) if entry.alternatives else entry.exploit
        decision = Decision(self._next_id(), stage_, shape, choice, prev, _wallclock(), self.usable)
        queue = self._log_queue
        if queue is not None:
            if len(queue) < self._log_kick_at:
                queue.append((decision, context))
            else:
                self._log.decision(decision, context)  # full or about to be: the log's own policy
        elif self._log is not None:
            self._log.decision(decision, context)
        return decision

    def _decide_slow(
        self, stage: Stage | str, shape: Shape, context: Mapping[str, float] | None, prev: Backend | None
    ) -> Decision:
        stage_ = _STAGES.get(stage)
        if stage_ is None:
            stage_ = parse_stage(stage)
        if shape.__class__ is not Shape:
            raise TypeError(f"shape must be a Shape, got {type(shape).__name__}")
        with self._lock:
            choice = self._policy.choose(stage_, shape, prev)
        decision = Decision(self._next_id(), stage_, shape, choice, prev, _wallclock(), self.usable)
        if self._log is not None:
            self._log.decision(decision, context)
        return decision

    def observe(self, decision: Decision, latency_s: float | None, ok: bool = True, error: str | None = None) -> None:
        """Feed back what a decision cost: its latency in seconds, or that it failed.

        A latency that is not finite and > 0 raises ``ValueError`` and is never learned
        from. A failure (``ok=False``) is counted in ``stats()["failures"]`` and quarantines
        the backend for a while.

        Raises :class:`~adaptive_sched.errors.ObservationRefused` (counted in
        ``stats()["refused"]``, never learned) for a decision observed before, a decision of
        another scheduler, or a latency above ``policy.max_latency_s``; and
        :class:`~adaptive_sched.errors.SchedulerClosed` after :meth:`close`.
        """
        if self._closed:
            raise SchedulerClosed("observe() after close()")
        if ok:
            latency = check_latency(latency_s)
        else:
            try:
                latency = float(latency_s)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                latency = math.nan
            if not (math.isfinite(latency) and latency > 0):
                latency = math.nan
        why = self._observed.mark(decision.id)
        if why is None and ok and latency > self._max_latency_s:
            why = "implausible"
        if why is not None:
            self._refuse(decision, why, latency)
        if self._log is not None:
            self._log.outcome(decision.id, latency, ok, error)
        if self._observers:
            self._notify(decision, latency if ok else None, ok)
        if not ok:
            with self._lock:
                self._counters.failures += 1
            self._on_failure(decision.backend, error)
            return
        observation = Observation(decision.stage, decision.shape, decision.after, decision.backend, latency,
                                  decision.choice)  # fmt: skip
        queue = self._learn_queue
        if self._inline:
            queue.append(observation)
            self._drain()
            return
        if len(queue) == LEARN_BACKLOG:
            self._unlearned += 1  # the append below pushes the oldest out
        queue.append(observation)
        if len(queue) > HELP_MARK:
            self._help()

    def _refuse(self, decision: Decision, why: str, latency: float) -> None:
        with self._lock:
            refused = self._counters.refused
            refused[why] = refused.get(why, 0) + 1
            held = self._throttle.allow(("refused", why))
        message = f"decision {decision.id} {_REFUSALS[why]}"
        if why == "implausible":
            message += f" ({latency:g} s > {self._max_latency_s:g} s)"
        if held is not None:
            log.warning("observation refused: %s%s", message, f" ({held} more since the last warning)" if held else "")
        raise ObservationRefused(message)

    def run_stage(
        self,
        stage: Stage | str,
        shape: Shape,
        inputs: Mapping[str, np.ndarray] | None = None,
        *,
        after: Decision | Backend | str | None = None,
        context: Mapping[str, float] | None = None,
    ) -> StageRun:
        """Decide, run on the chosen executor, time, observe; re-run elsewhere if the executor fails."""
        decision = self.decide(stage, shape, context, after)
        return self._execute(decision, inputs, context)

    def run(
        self,
        stage: Stage | str,
        shape: Shape,
        inputs: Mapping[str, np.ndarray] | None = None,
        *,
        after: Decision | Backend | str | None = None,
        context: Mapping[str, float] | None = None,
    ) -> np.ndarray | None:
        """Run ``stage`` through the scheduler and return its output (None in latency-only simulation)."""
        return self.run_stage(stage, shape, inputs, after=after, context=context).output

    def run_attention(
        self,
        shape: Shape,
        inputs: Mapping[str, np.ndarray] | None = None,
        *,
        after: Decision | Backend | str | None = None,
        context: Mapping[str, float] | None = None,
    ) -> LayerRun:
        """Run one attention layer: ``qkv`` then ``attn``, the second aware of where the first ran.

        ``inputs`` holds ``x [b, n, d]``, ``w [d, 3d]``, optional ``b [3d]`` and the caches
        ``k_cache``, ``v_cache`` ``[b, heads, kv_len, head_dim]`` (omit them when
        ``kv_len`` is 0). Without inputs the simulator runs in latency-only mode.
        """
        if inputs is None:
            qkv = self.run_stage(Stage.QKV, shape, None, after=after, context=context)
            attn = self.run_stage(Stage.ATTN, shape, None, after=qkv.decision, context=context)
            return LayerRun(qkv=qkv, attn=attn)
        missing = [k for k in ("x", "w") if k not in inputs]
        if missing:
            raise UnsupportedShape(f"run_attention: missing input {missing[0]!r}")
        qkv = self.run_stage(
            Stage.QKV, shape, {k: inputs[k] for k in ("x", "w", "b") if k in inputs}, after=after, context=context
        )
        if qkv.output is None:
            raise ExecutorError(f"{qkv.backend.value}: qkv returned no output although inputs were given")
        q, k_new, v_new = split_heads(qkv.output, shape)
        k_cache, v_cache = (
            _extend_cache(inputs, "k_cache", k_new, shape),
            _extend_cache(inputs, "v_cache", v_new, shape),
        )
        attn = self.run_stage(Stage.ATTN, shape, {"q": q, "k": k_cache, "v": v_cache}, after=qkv.decision,
                              context=context)  # fmt: skip
        return LayerRun(qkv=qkv, attn=attn, output=attn.output, k_cache=k_cache, v_cache=v_cache)

    # -- execution and failures -------------------------------------------------------
    def _execute(
        self, decision: Decision, inputs: Mapping[str, np.ndarray] | None, context: Mapping[str, float] | None
    ) -> StageRun:
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
                problem = self._untrusted(decision, result, inputs)
                if problem is not None:
                    raise ExecutorError(f"{decision.backend.value} ({executor.kind}) {problem}")
            except UnsupportedShape as exc:
                if inputs is not None and executor is not None and executor.supports(decision.stage, decision.shape):
                    raise  # the caller's inputs are wrong: re-running elsewhere would not help
                self._record(decision, None, ok=False, error=str(exc), quarantine=False)
                self._mark_unsupported(decision)
                failed.append(decision)
                last_exc = exc
            except Exception as exc:
                self._record(decision, None, ok=False, error=f"{type(exc).__name__}: {exc}", quarantine=True)
                failed.append(decision)
                last_exc = exc
            else:
                if result.cold:
                    # One-time costs (a kernel built, weights uploaded): logged, not learned from.
                    if self._log is not None:
                        self._log.outcome(decision.id, result.latency_s, True, "cold")
                    if self._observers:
                        self._notify(decision, None, True)
                else:
                    self._record(decision, result.latency_s, ok=True, error=None, quarantine=False)
                return StageRun(decision, result, tuple(failed))
            fallback = self._next_backend(decision, tried)
            if fallback is None:
                raise ExecutorError(
                    f"{decision.stage.value} at {decision.shape} failed on every backend "
                    f"({', '.join(b.value for b in sorted(tried))}): {last_exc}"
                ) from last_exc
            decision = self._forced_decision(decision, fallback, context)

    def _call(self, executor: Executor, decision: Decision, inputs: Mapping[str, np.ndarray] | None) -> Any:
        """Run the stage; past ``policy.timeout_s`` the caller abandons it (DeadlineExceeded)."""
        if executor.RUNS_INLINE:
            return executor.run(decision.stage, decision.shape, inputs, after=decision.after)
        args = (decision.stage, decision.shape, inputs, decision.after)
        return self._runner.call(_run_executor, (executor, *args), self._timeout_s, key=decision.backend)

    def _untrusted(self, decision: Decision, result: Any, inputs: Mapping[str, np.ndarray] | None) -> str | None:
        """Why an executor's result cannot be handed to the caller or learned from (None if it can)."""
        if not isinstance(result, RunResult):
            return f"returned {type(result).__name__}, not a RunResult"
        latency = result.latency_s
        if isinstance(latency, bool) or not isinstance(latency, (int, float)):
            return f"reported a latency of {latency!r}, not a number"
        if not (math.isfinite(latency) and latency > 0):
            return f"reported a latency of {latency!r} s (expected finite and > 0)"
        if latency > self._timeout_s and not result.cold:
            return f"ran past policy.timeout_s ({latency:g} s > {self._timeout_s:g} s)"
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

    def _avoid_quarantined(self, decision: Decision, context: Mapping[str, float] | None) -> Decision:
        """A decision for a quarantined backend (every candidate is, or the policy cannot avoid it,
        as a fixed one) goes to a usable backend without being run, if there is one."""
        fallback = self._next_backend(decision, {decision.backend})
        if fallback is None or fallback in self._quarantine:
            return decision  # nothing better: it is run (and probes the backend)
        self._observed.mark(decision.id)
        if self._log is not None:
            self._log.outcome(decision.id, math.nan, False, "not run: backend quarantined")
        with self._lock:
            self._counters.skipped += 1
        return self._forced_decision(decision, fallback, context, rerun=False)

    def _record(
        self, decision: Decision, latency: float | None, *, ok: bool, error: str | None, quarantine: bool
    ) -> None:
        if ok:
            with contextlib.suppress(ObservationRefused):  # counted; the caller still gets its result
                self.observe(decision, latency)
            return
        self._observed.mark(decision.id)
        if self._log is not None:
            self._log.outcome(decision.id, latency if latency is not None else math.nan, False, error)
        if self._observers:
            self._notify(decision, None, False)
        with self._lock:
            self._counters.failures += 1
        if quarantine:
            self._on_failure(decision.backend, error)

    def _next_backend(self, decision: Decision, tried: set[Backend]) -> Backend | None:
        predicted = decision.predicted
        candidates = [b for b in self.config.candidates if b not in tried and b not in self._quarantine]
        candidates.sort(key=lambda b: predicted.get(b, math.inf))
        fallbacks = [b for b in self.config.fallbacks if b not in tried]
        quarantined = [b for b in self.config.candidates if b not in tried and b in self._quarantine]
        for backend in (*candidates, *fallbacks, *quarantined):
            ex = self._executors.get(backend)
            if ex is not None and ex.is_available() and ex.supports(decision.stage, decision.shape):
                return backend
        return None

    def _forced_decision(
        self, failed: Decision, backend: Backend, context: Mapping[str, float] | None, rerun: bool = True
    ) -> Decision:
        if rerun:
            with self._lock:
                self._counters.reruns += 1
        # Forced by a failure, not a policy choice: probability 1.
        choice = certain(backend, failed.predicted, failed.policy_version)
        decision = Decision(self._next_id(), failed.stage, failed.shape, choice, failed.after, time.time(), self.usable)
        if self._log is not None:
            self._log.decision(decision, context)
        return decision

    def _mark_unsupported(self, decision: Decision) -> None:
        with self._lock:
            self._policy.mark_unsupported(decision.stage, decision.shape, decision.backend)

    def _on_failure(self, backend: Backend, error: str | None) -> None:
        with self._lock:
            strikes = self._strikes[backend] = min(self._strikes.get(backend, 0) + 1, QUARANTINE_MAX_STRIKES)
            until = self._counters.observations + QUARANTINE_BASE * 2 ** (strikes - 1)
            self._quarantine[backend] = until
            held = self._throttle.allow(("quarantine", backend))
            if held is not None:
                log.warning("backend %s quarantined for %d observations (strike %d): %s%s",
                            backend.value, until - self._counters.observations, strikes, error,
                            f" ({held} more failures since the last warning)" if held else "")  # fmt: skip
            self._policy.exclude(self._quarantine)

    def _release_quarantine(self) -> None:
        # Called with the lock held, only while some backend is quarantined.
        # The strike count stays until a success, so a backend that fails again waits longer.
        now = self._counters.observations
        expired = [b for b, until in self._quarantine.items() if until <= now]
        if expired:
            for backend in expired:
                del self._quarantine[backend]
            self._policy.exclude(self._quarantine)

    # -- learning ---------------------------------------------------------------------
    def _drain(self) -> None:
        queue = self._learn_queue
        with self._lock:
            while queue:
                self._learn_one(queue.popleft())

    def _help(self) -> None:
        """Learn a few queued observations on the caller's thread (the backlog is past its mark).

        If the learner thread holds the lock (it may have been switched out in the middle of
        its slice, while this thread keeps the GIL), wait for it a little: waiting releases
        the GIL, so the learner finishes its slice (tens of microseconds) and lets go.
        """
        if not self._lock.acquire(timeout=HELP_WAIT_S):
            return
        queue = self._learn_queue
        try:
            for _ in range(HELP_BATCH):
                if not queue:
                    break
                try:
                    self._learn_one(queue.popleft())
                except IndexError:  # the learner thread took the last one
                    break
                except Exception:  # learning must never raise into inference
                    log.exception("learning from an observation failed; it is skipped")
        finally:
            self._lock.release()

    def _learn_one(self, observation: Observation) -> None:
        c = self._counters
        c.observations += 1
        backend = observation.backend
        c.by_backend[backend] = c.by_backend.get(backend, 0) + 1
        if self._quarantine:
            self._release_quarantine()
        if self._strikes:
            self._strikes.pop(observation.backend, None)
        try:
            self._policy.learn(observation)
        except Exception:  # learning must never raise into inference: count it, say it (rarely), go on
            c.learn_errors += 1
            if c.learn_errors & (c.learn_errors - 1) == 0:  # the 1st, 2nd, 4th, 8th, ...
                log.exception("the policy failed to learn from an observation (%d so far)", c.learn_errors)

    def _learner_loop(self) -> None:
        queue = self._learn_queue
        policy = self._policy
        clock = time.perf_counter
        # Each round holds the GIL for about one slice (observations to learn from, or a
        # refresh of the policy's entries), then sleeps so that inference threads take it:
        # a learner that held it longer would show in their tail latency.
        while not self._stop.is_set() or queue:
            deadline = clock() + LEARN_SLICE_S
            try:
                if queue:
                    with self._lock:
                        while queue and clock() < deadline:
                            self._learn_one(queue.popleft())
                elif policy.pending():
                    policy.catch_up(deadline)
                else:
                    self._stop.wait(0.002)
                    continue
            except IndexError:  # a helping caller took the last observation
                pass
            except Exception:  # learning must never take the service down
                log.exception("the learner thread failed on an observation or a refresh; it goes on")
            time.sleep(LEARN_PAUSE_S)

    def flush(self, timeout_s: float | None = None) -> None:
        """Learn from every queued observation (here, on the caller's thread) and commit the log."""
        try:
            self._drain()
        except Exception:  # learning must never raise into the caller
            log.exception("learning the queued observations failed")
        if self._log is not None:
            self._log.flush(timeout_s)

    def add_observer(self, fn: Callable[[Decision, float | None, bool], None]) -> None:
        """Call ``fn(decision, latency_s, ok)`` for every outcome (metrics, say).

        ``latency_s`` is None for a failure and for a cold run (one-time costs). ``fn``
        runs on the thread that reports the outcome, never on the ``decide`` path: keep it
        O(1). An exception from it is logged (once) and never reaches the caller.
        """
        with self._lock:
            self._observers = (*self._observers, fn)

    def _notify(self, decision: Decision, latency_s: float | None, ok: bool) -> None:
        for fn in self._observers:
            try:
                fn(decision, latency_s, ok)
            except Exception:  # an observer must never raise into inference
                if not self._counters.observer_errors:
                    log.exception("an outcome observer failed (further failures are counted, not logged)")
                self._counters.observer_errors += 1

    # -- introspection ------------------------------------------------------------------
    def online_choice(self, stage: Stage | str, shape: Shape, after: Backend | None = None) -> Backend:
        """The backend the policy holds fastest for ``stage`` at ``shape`` now (its exploit choice)."""
        with self._lock:
            return self._policy.best(parse_stage(stage), shape, after)

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def prior(self) -> Any:
        return self._prior

    @property
    def executors(self) -> Mapping[Backend, Executor]:
        return dict(self._executors)

    def stats(self) -> dict[str, Any]:
        """Counters, quarantined backends, the policy's learned state and the log's health."""
        with self._lock:
            c = self._counters
            out: dict[str, Any] = {
                "observations": c.observations,
                # skipped because the learner thread was behind (they are still logged)
                "unlearned": self._unlearned,
                "failures": c.failures,
                "reruns": c.reruns,
                # stage runs abandoned at policy.timeout_s that returned later (results dropped) ...
                "late": self._runner.late,
                # ... and those still running
                "abandoned_running": self._runner.abandoned(),
                "skipped_quarantined": c.skipped,
                "refused": dict(c.refused),
                "warm_start_refused": c.warm_start_refused,
                "learn_errors": c.learn_errors,
                "observed_by_backend": {b.value: n for b, n in c.by_backend.items()},
                "quarantined": sorted(b.value for b in self._quarantine),
                "policy": {"kind": self._policy.name, **self._policy.state()},
            }
        if self._log is not None:
            out["log"] = dict(self._log.stats) if isinstance(self._log.stats, Mapping) else _asdict(self._log.stats)
        return out

    # -- shutdown ---------------------------------------------------------------------
    def close(self) -> None:
        """Learn what is queued, flush and close the log, release executors. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._log_queue = None  # decisions from here on go through the log's API, which counts them as dropped
        self._stop.set()
        if self._learner is not None:
            self._learner.join(timeout=10)
            if self._learner.is_alive():
                log.error("the learner thread did not stop within 10 s; learning what is queued here")
        left = len(self._learn_queue)
        if left:
            try:
                self._drain()
            except Exception:  # closing must not raise into shutdown paths
                log.exception("learning the %d queued observations at close failed", left)
        if self._log is not None:
            try:
                self._log.close()
            except (StoreError, OSError) as exc:  # closing must not raise into shutdown paths
                log.error("closing the decision log failed: %s", exc)
        self._runner.close()
        for ex in self._executors.values():
            try:
                ex.close()
            except Exception as exc:
                log.warning("closing executor %s failed: %s", ex.kind, exc)

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        backends = ", ".join(f"{b.value}={ex.kind}" for b, ex in self._executors.items())
        return f"Scheduler(device={self.config.device!r}, policy={self._policy.name!r}, backends=[{backends}])"


def _run_executor(
    executor: Executor,
    stage: Stage,
    shape: Shape,
    inputs: Mapping[str, np.ndarray] | None,
    after: Backend | None,
) -> RunResult:
    return executor.run(stage, shape, inputs, after=after)


def _extend_cache(inputs: Mapping[str, np.ndarray], name: str, new: np.ndarray, shape: Shape) -> np.ndarray:
    cache = inputs.get(name)
    if cache is None:
        if shape.kv_len:
            raise UnsupportedShape(f"run_attention: missing input {name!r} for kv_len={shape.kv_len}")
        return np.ascontiguousarray(new)
    expected = (shape.batch, shape.heads, shape.kv_len, shape.head_dim)
    if tuple(cache.shape) != expected:
        raise UnsupportedShape(f"run_attention: input {name!r} has shape {tuple(cache.shape)}, expected {expected}")
    return np.concatenate([cache, new], axis=2)


def usable_candidates(
    candidates: tuple[Backend, ...], executors: Mapping[Backend, Executor]
) -> tuple[tuple[Backend, ...], dict[Backend, str]]:
    """The candidates whose executor is available here, and why each other one is not.

    Raises :class:`ExecutorUnavailable` naming every candidate and its reason when none is.
    """
    unavailable: dict[Backend, str] = {}
    for backend in candidates:
        executor = executors.get(backend)
        if executor is None:
            unavailable[backend] = "no executor is configured for it"
        elif not executor.is_available():
            unavailable[backend] = f"{executor.kind}: {executor.unavailable_reason}"
    usable = tuple(b for b in candidates if b not in unavailable)
    if not usable:
        why = "; ".join(f"{b.value} ({reason})" for b, reason in unavailable.items())
        raise ExecutorUnavailable(f"no candidate backend is usable here: {why}")
    return usable, unavailable


def _asdict(obj: Any) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)  # type: ignore[arg-type]
    return dict(vars(obj))


__all__ = ["LayerRun", "Scheduler", "StageRun", "usable_candidates"]
