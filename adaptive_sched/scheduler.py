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

import itertools
import logging
import math
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .build import build_executors, build_policy, build_telemetry, load_prior, open_log, warm_start_rows
from .config import Config, load_config
from .counters import Counters, Throttle
from .errors import ExecutorUnavailable, SchedulerClosed, StoreError
from .executors import Executor
from .failover import Failover
from .learning import Learner, learn_from_log
from .observed import ObservedIds
from .outcomes import Observer, Outcomes
from .policies import Observation, Policy
from .quarantine import Quarantine
from .stage_runs import LayerRun, StageRun, run_layer
from .types import Backend, Choice, Decision, Shape, Stage, check_latency, parse_backend, parse_stage

log = logging.getLogger(__name__)

_STAGES: dict[Any, Stage] = {**{s.value: s for s in Stage}, **{s: s for s in Stage}}
_wallclock = time.time
_new_tuple = tuple.__new__

#: observations waiting for the learner thread; beyond that the oldest are skipped (and counted):
#: a learner that cannot keep up learns from a sample, and memory stays bounded
LEARN_BACKLOG = 16_384
#: past this backlog the caller of ``observe`` learns the queued observations itself: a
#: caller that never releases the GIL would otherwise starve the learner thread, and each
#: observation left unlearned is one the next decisions do not know of (at a change, they
#: go on choosing the backend that just slowed down)
HELP_MARK = 1


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
    telemetry : telemetry.Sampler, optional
        The device telemetry to log and learn with, instead of what the config's
        ``telemetry`` section builds (a board's sysfs, or the simulated device's state).
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
        telemetry: Any = None,
    ) -> None:
        self.config = config
        self._closed = False
        self._lock = threading.RLock()
        self._counters = Counters()
        built = build_executors(config, executors)
        self._executors = built.executors
        #: candidate backends whose executor runs here, in config order: the only ones decided between
        self.usable, self.unavailable = usable_candidates(config.candidates, self._executors)
        self._prior = prior if prior is not None else load_prior(config)
        self._policy = policy if policy is not None else build_policy(config, built)
        self._policy.bind(self.usable, self._prior, supports=self._supports)
        self._inline = config.policy.learner == "inline"
        # One-time costs (river's import, about a second) now, not in the first observation.
        self._policy.prepare()
        throttle = Throttle()  # shared by quarantines and refusals: its keys keep them apart
        self._quarantine = Quarantine(self._policy.exclude, throttle)
        self._max_latency_s = config.policy.max_latency_s
        # Without a log, a random tag in the ids' upper bits tells this scheduler's decisions
        # from another's (with a log, the run's id does; see _open_log).
        self._start_ids((random.SystemRandom().randrange(1 << 30, 1 << 31) << 32) | 1)
        self._log: Any = None
        db_path = str(db) if db is not None else (config.resolve_path(config.store.path) if config.store.path else None)
        if db_path:
            self._open_log(db_path)
        elif warm_start_from is not None and Path(warm_start_from).exists():
            self._warm_start(str(warm_start_from))
        self._outcomes = Outcomes(self._log, self._lock, self._counters, self._quarantine, throttle,
                                  self._max_latency_s)  # fmt: skip
        self._failover = Failover(
            executors=self._executors,
            usable=self.usable,
            candidates=config.candidates,
            fallbacks=config.fallbacks,
            timeout_s=config.policy.timeout_s,
            quarantine=self._quarantine,
            outcomes=self._outcomes,
            observed=self._observed,
            policy=self._policy,
            lock=self._lock,
            next_id=self._next_id,
            observe=self.observe,
        )
        # The decision and observation hot paths read these directly (see decide() and observe()).
        self._table = self._policy.table
        self._draw = self._policy.draw
        #: called with (decision, latency_s or None, ok) for every outcome; see add_observer
        self._observers: tuple[Observer, ...] = ()
        self._notify = self._outcomes.notify
        fast_path = getattr(self._log, "fast_path", None)
        self._log_queue: deque[Any] | None = None
        self._log_kick_at = 0
        if fast_path is not None:
            self._log_queue, self._log_kick_at = fast_path()
        self._learn_queue: deque[Observation] = deque(maxlen=None if self._inline else LEARN_BACKLOG)
        self._unlearned = 0  # observations skipped because the learner was behind (approximate)
        self._state_errors = 0  # reports the policy failed to make (see _policy_state)
        #: device telemetry (None when disabled or nothing is readable): logged with each
        #: decision, and its clocks handed to the policy before each observation is learned
        self.telemetry: Any = telemetry if telemetry is not None else build_telemetry(config, built.sim_device)
        feed = None
        if self.telemetry is not None:
            from .telemetry import ClockFeed

            feed = ClockFeed(self.telemetry, self._policy, self.usable)
        self._learner = Learner(self._policy, self._learn_queue, self._lock, self._counters, self._quarantine,
                                inline=self._inline, before_learning=feed)  # fmt: skip
        self._drain = self._learner.drain
        self._help = self._learner.help
        self._wake = self._learner.wake
        self._learn_now = self._learner.learn

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
        self._start_ids((int(run_id) << 32) | 1)

    def _start_ids(self, base: int) -> None:
        """Number decisions from ``base``; only those numbered so far may be observed."""
        self._next_id = itertools.count(base).__next__
        self._observed = ObservedIds(base)

    def _warm_start(self, path: str) -> None:
        """Resume from the log: replay its most recent outcomes for this device through the policy."""
        limit = self.config.store.warm_start_rows
        if limit > 0:
            rows = warm_start_rows(self.config, path, limit)
            learn_from_log(self._policy, rows, self.usable, self._max_latency_s, self._counters, path)

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
        # The hot path: one lookup in the policy's published table, one draw, one tuple. (After
        # close() there is no table: the slow path raises.)
        stage_ = _STAGES.get(stage)
        if after is None:
            prev = None
        elif after.__class__ is Decision:
            if after.stage is stage_:
                raise ValueError(f"after: a decision of the previous stage is expected, got one of {after.stage.value}")
            prev = after.choice.backend
        else:
            prev = parse_backend(after)  # type: ignore[arg-type]
        table = self._table
        if stage_ is None or table is None or shape.__class__ is not Shape:
            return self._decide_slow(stage, shape, context, prev)
        entry = table.lookup(stage_, shape, prev)
        if entry is None:
            return self._decide_slow(stage, shape, context, prev)
        # One draw per decision, needed or not: decision k uses the k-th draw whatever came
        # before, so two runs of one seed that learned differently (a learner thread's lag)
        # differ only in the decisions their learning changed, not in every one after.
        u = self._draw()
        choice = entry.exploit if u >= entry.explore else entry.pick(u)  # nearly always the first
        # tuple.__new__ directly: the named tuple's generated __new__ adds a third of a microsecond
        decision = _new_tuple(Decision, (self._next_id(), stage_, shape, choice, prev, _wallclock(), self.usable))
        queue = self._log_queue
        if queue is None and self._log is None:
            return decision  # nothing is logged: the context, telemetry included, goes nowhere
        if self.telemetry is not None:
            context = (self.telemetry.context or None) if context is None else self._with_telemetry(context)
        if queue is not None and len(queue) < self._log_kick_at:
            queue.append((decision, context))
        else:
            self._log.decision(decision, context)  # no fast path, or full or about to be: the log's own policy
        return decision

    def _decide_slow(
        self, stage: Stage | str, shape: Shape, context: Mapping[str, float] | None, prev: Backend | None
    ) -> Decision:
        if self._closed:
            raise SchedulerClosed("decide() after close()")
        stage_ = _STAGES.get(stage)
        if stage_ is None:
            stage_ = parse_stage(stage)
        if shape.__class__ is not Shape:
            raise TypeError(f"shape must be a Shape, got {type(shape).__name__}")
        with self._lock:
            choice = self._policy.choose(stage_, shape, prev)
        decision = Decision(self._next_id(), stage_, shape, choice, prev, _wallclock(), self.usable)
        if self._log is not None:
            if self.telemetry is not None:
                context = self._with_telemetry(context)
            self._log.decision(decision, context)
        return decision

    def _with_telemetry(self, context: Mapping[str, float] | None) -> Mapping[str, float] | None:
        """The context a decision is logged with: the latest telemetry, then the caller's own values."""
        latest = self.telemetry.context
        if context is None:
            return latest or None
        return {**latest, **context} if latest else context

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
            self._outcomes.refuse(decision, why, latency)
        if not ok:
            self._outcomes.failed(decision, latency, error)
            return
        if self._log is not None:
            self._log.outcome(decision.id, latency, True, error)
        if self._observers:
            self._notify(decision, latency, True)
        observation = _new_tuple(Observation, (decision.stage, decision.shape, decision.after, decision.backend,
                                               latency, decision.choice))  # fmt: skip
        if self._inline:
            self._learn_now(observation)
            return
        queue = self._learn_queue
        if len(queue) == LEARN_BACKLOG:
            self._unlearned += 1  # the append below pushes the oldest out
        queue.append(observation)
        waiting = len(queue)
        if waiting > HELP_MARK:
            self._help()
        elif waiting == 1:
            self._wake()

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
        return self._failover.execute(decision, inputs, context)

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
        return run_layer(self.run_stage, shape, inputs, after, context)

    # -- learning and outcomes ------------------------------------------------------------
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
            self._observers = self._outcomes.add_observer(fn)

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
                "late": self._failover.runner.late,
                # ... and those still running
                "abandoned_running": self._failover.runner.abandoned(),
                "skipped_quarantined": c.skipped,
                "refused": dict(c.refused),
                "warm_start_refused": c.warm_start_refused,
                "learn_errors": c.learn_errors,
                "observed_by_backend": {b.value: n for b, n in c.by_backend.items()},
                "quarantined": sorted(b.value for b in self._quarantine.until),
                "policy": {"kind": self._policy.name, **self._policy_state()},
            }
        if self._log is not None:
            out["log"] = dict(self._log.stats) if isinstance(self._log.stats, Mapping) else _asdict(self._log.stats)
        t = self.telemetry
        if t is not None:
            out["telemetry"] = {"reads": t.reads, "errors": t.errors, "age_s": t.age_s(), "latest": dict(t.context)}
        return out

    def _policy_state(self) -> dict[str, Any]:
        """The policy's report, or what went wrong making it: a service's stats and metrics
        scrapes must not fail with a policy's report (a custom policy's, or learned state gone
        bad), any more than its decisions may."""
        try:
            return dict(self._policy.state())
        except Exception as e:
            self._state_errors = n = self._state_errors + 1
            if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th, ...: a scrape every few seconds
                log.exception("the policy failed to report its state (%d so far)", n)
            return {"state_error": f"{type(e).__name__}: {e}"}

    # -- shutdown ---------------------------------------------------------------------
    def close(self) -> None:
        """Learn what is queued, flush and close the log, release executors. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._table = None  # decide() takes the slow path, which raises
        self._log_queue = None  # decisions from here on go through the log's API, which counts them as dropped
        self._learner.stop()
        if self.telemetry is not None:
            self.telemetry.stop()
        if self._log is not None:
            try:
                self._log.close()
            except (StoreError, OSError) as exc:  # closing must not raise into shutdown paths
                log.error("closing the decision log failed: %s", exc)
        self._failover.close()
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
