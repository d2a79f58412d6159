"""Learning from observations off the inference threads, and from a log at a warm start.

``observe`` only queues an observation; a :class:`Learner` thread takes the queue in
short slices, yielding the GIL between them so that inference threads do not wait for
it; an observation queued to an empty queue wakes it (:meth:`Learner.wake`). A caller
that never releases the GIL would starve that thread, so past a mark the caller helps
(:meth:`Learner.help`). With ``policy.learner: inline`` there is no thread:
the caller learns at once (:meth:`Learner.learn`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from .counters import Counters
from .policies import Observation, Policy
from .quarantine import Quarantine
from .types import Backend, Decision

log = logging.getLogger(__name__)

#: longest stretch the learner thread runs before yielding the GIL to inference threads ...
LEARN_SLICE_S = 50e-6
#: ... and how long it then sleeps. A real sleep, not ``sleep(0)``: a thread that releases the
#: GIL and takes it straight back usually wins it again, and an inference thread waiting for it
#: would wait for the interpreter's switch interval (5 ms).
LEARN_PAUSE_S = 50e-6
#: observations a helping caller learns at a time
HELP_BATCH = 4
#: the longest a helping caller waits for the learner thread to finish its slice
HELP_WAIT_S = 1e-3


class Learner:
    """Feeds queued observations to the policy, on a thread of its own unless ``inline``.

    The scheduler appends to ``queue`` (it owns the queue's bound and counts what falls
    off it); everything here learns under ``lock``, the scheduler's, and never raises
    into the caller: a policy that fails to learn is counted in ``counters.learn_errors``.
    Each observation learned counts in ``counters`` and may let a quarantined backend back.
    The thread starts at construction (unless ``inline``); :meth:`stop` ends it.

    Parameters
    ----------
    policy : Policy
        What learns (``learn``), and refreshes its published entries (``pending``, ``catch_up``).
    queue : deque
        The observations waiting to be learned.
    lock : RLock
        The scheduler's lock.
    counters, quarantine :
        The scheduler's.
    inline : bool
        No thread: the owner calls :meth:`learn` with each observation.
    before_learning : callable, optional
        Called before each observation is learned, under the lock (see ``telemetry.ClockFeed``).
    """

    def __init__(
        self,
        policy: Policy,
        queue: deque[Observation],
        lock: threading.RLock,
        counters: Counters,
        quarantine: Quarantine,
        *,
        inline: bool,
        before_learning: Callable[[], None] | None = None,
    ) -> None:
        self.queue = queue
        # called before each observation is learned (the telemetry's clocks reach the policy)
        self._before = before_learning
        self._policy = policy
        self._lock = lock
        self._counters = counters
        self._quarantine = quarantine
        # Read on every observation learned: empty dicts are the common case.
        self._until = quarantine.until
        self._strikes = quarantine.strikes
        self._stop = threading.Event()
        self._wake = threading.Event()
        #: wake the learner thread: an observation was queued to an empty queue
        self.wake = self._wake.set
        self._thread: threading.Thread | None = None
        if not inline:
            self._thread = threading.Thread(target=self._loop, name="adaptive-sched-learner", daemon=True)
            self._thread.start()

    def drain(self) -> None:
        """Learn every queued observation on the caller's thread."""
        queue = self.queue
        with self._lock:
            while queue:
                self._learn_one(queue.popleft())

    def learn(self, observation: Observation) -> None:
        """Learn one observation on the caller's thread now (``inline``: nothing is queued)."""
        with self._lock:
            self._learn_one(observation)

    def help(self) -> None:
        """Learn a few queued observations on the caller's thread (the backlog is past its mark).

        If the learner thread holds the lock (it may have been switched out in the middle of
        its slice, while this thread keeps the GIL), wait for it a little: waiting releases
        the GIL, so the learner finishes its slice (tens of microseconds) and lets go.
        """
        if not self._lock.acquire(timeout=HELP_WAIT_S):
            return
        queue = self.queue
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

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (it learns what is queued first) and learn whatever it left here."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                log.error("the learner thread did not stop within %g s; learning what is queued here", timeout_s)
        left = len(self.queue)
        if left:
            try:
                self.drain()
            except Exception:  # closing must not raise into shutdown paths
                log.exception("learning the %d queued observations at close failed", left)

    def _learn_one(self, observation: Observation) -> None:
        c = self._counters
        c.observations += 1
        backend = observation.backend
        c.by_backend[backend] = c.by_backend.get(backend, 0) + 1
        if self._until:
            self._quarantine.release(c.observations)
        if self._strikes:
            self._quarantine.cleared(backend)
        if self._before is not None:
            try:
                self._before()
            except Exception:  # telemetry that fails is no telemetry: the observation is still learned
                log.debug("handing telemetry to the policy failed", exc_info=True)
        try:
            self._policy.learn(observation)
        except Exception:  # learning must never raise into inference: count it, say it (rarely), go on
            c.learn_errors += 1
            if c.learn_errors & (c.learn_errors - 1) == 0:  # the 1st, 2nd, 4th, 8th, ...
                log.exception("the policy failed to learn from an observation (%d so far)", c.learn_errors)

    def _loop(self) -> None:
        queue = self.queue
        policy = self._policy
        clock = time.perf_counter
        # Each round holds the GIL for about one slice (observations to learn from, or a
        # refresh of the policy's entries), then sleeps so that inference threads take it:
        # a learner that held it longer would show in their tail latency.
        wake = self._wake
        while not self._stop.is_set() or queue:
            wake.clear()  # (before the queue is looked at: an observation queued after is not missed)
            deadline = clock() + LEARN_SLICE_S
            try:
                if queue:
                    with self._lock:
                        while queue and clock() < deadline:
                            self._learn_one(queue.popleft())
                elif policy.pending():
                    policy.catch_up(deadline)
                else:
                    wake.wait(0.002)
                    continue
            except IndexError:  # a helping caller took the last observation
                pass
            except Exception:  # learning must never take the service down
                log.exception("the learner thread failed on an observation or a refresh; it goes on")
            time.sleep(LEARN_PAUSE_S)


def learn_from_log(
    policy: Policy,
    rows: Iterable[tuple[Decision, float]],
    candidates: tuple[Backend, ...],
    max_latency_s: float,
    counters: Counters,
    source: str,
) -> int:
    """Warm start: replay logged ``(decision, latency_s)`` outcomes through ``policy``; how many it learned.

    Only outcomes between backends still among ``candidates`` are learned. A log is input
    too: a latency above ``max_latency_s`` is not learned but counted in
    ``counters.warm_start_refused``. ``source`` names the log in messages.
    """
    n = 0
    usable = set(candidates)
    learn = policy.learn
    for decision, latency_s in rows:
        if not latency_s <= max_latency_s:  # 1e300 s is not a latency
            counters.warm_start_refused += 1
            continue
        if decision.backend in usable and (decision.after is None or decision.after in usable):
            # No choice attached: a restart re-learns what runs cost, not what probing spent.
            learn(Observation(decision.stage, decision.shape, decision.after, decision.backend, latency_s))
            n += 1
    if n:
        log.info("warm start: learned from %d logged outcomes in %s", n, source)
    if counters.warm_start_refused:
        log.warning("warm start: %d logged latencies above policy.max_latency_s=%g s in %s were not learned",
                    counters.warm_start_refused, max_latency_s, source)  # fmt: skip
    return n
