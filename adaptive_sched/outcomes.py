"""Where a decision's outcome goes besides the policy: the log, the observers, the counters.

:class:`Outcomes` records the outcomes that are not learned from (failures, cold runs,
decisions skipped because their backend was quarantined) and refuses the observations
that must not be (a decision observed twice, another scheduler's, an implausible latency).
A learned outcome goes through ``Scheduler.observe``, which reads the same log and
observers directly: that is the hot path.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from .counters import Counters, Throttle
from .errors import ObservationRefused
from .quarantine import Quarantine
from .types import Decision

log = logging.getLogger(__name__)

#: why an observation was refused, as its message says it
REFUSALS = {
    "duplicate": "was observed before",
    "foreign": "is not a decision of this scheduler",
    "stale": "is too old to tell whether it was observed",
    "implausible": "has a latency above policy.max_latency_s",
}

#: called with (decision, latency_s or None, ok) for every outcome
Observer = Callable[[Decision, "float | None", bool], None]


class Outcomes:
    """Records outcomes that are not learned from, and refuses observations.

    Parameters
    ----------
    decision_log : optional
        The decision log (``outcome(id, latency_s, ok, error)``), or None.
    lock : RLock
        The scheduler's: every counter is written under it.
    counters, quarantine, throttle :
        The scheduler's.
    max_latency_s : float
        ``policy.max_latency_s``, named in the refusal of an implausible latency.
    """

    def __init__(
        self,
        decision_log: Any,
        lock: threading.RLock,
        counters: Counters,
        quarantine: Quarantine,
        throttle: Throttle,
        max_latency_s: float,
    ) -> None:
        self._log = decision_log
        self._lock = lock
        self._counters = counters
        self._quarantine = quarantine
        self._throttle = throttle
        self._max_latency_s = max_latency_s
        #: every observer, called on the thread that reports an outcome
        self.observers: tuple[Observer, ...] = ()

    def add_observer(self, fn: Observer) -> tuple[Observer, ...]:
        """Add ``fn``; the observers now (the caller holds the lock)."""
        self.observers = (*self.observers, fn)
        return self.observers

    def notify(self, decision: Decision, latency_s: float | None, ok: bool) -> None:
        """Call every observer; one that raises is logged once, then counted, never raised."""
        for fn in self.observers:
            try:
                fn(decision, latency_s, ok)
            except Exception:  # an observer must never raise into inference
                if not self._counters.observer_errors:
                    log.exception("an outcome observer failed (further failures are counted, not logged)")
                self._counters.observer_errors += 1

    def failed(self, decision: Decision, latency_s: float, error: str | None, *, quarantine: bool = True) -> None:
        """``decision`` failed (``latency_s`` NaN if unknown): log, notify, count; quarantine its backend."""
        if self._log is not None:
            self._log.outcome(decision.id, latency_s, False, error)
        if self.observers:
            self.notify(decision, None, False)
        with self._lock:
            self._counters.failures += 1
            if quarantine:
                self._quarantine.strike(decision.backend, error, self._counters.observations)

    def cold(self, decision: Decision, latency_s: float) -> None:
        """``decision`` ran but paid one-time costs (a kernel built, weights uploaded): logged, not learned."""
        if self._log is not None:
            self._log.outcome(decision.id, latency_s, True, "cold")
        if self.observers:
            self.notify(decision, None, True)

    def skipped(self, decision: Decision) -> None:
        """``decision`` was not run: its backend is quarantined and another one runs the stage."""
        if self._log is not None:
            self._log.outcome(decision.id, math.nan, False, "not run: backend quarantined")
        with self._lock:
            self._counters.skipped += 1

    def forced(self, decision: Decision, context: Any, *, rerun: bool) -> None:
        """``decision`` was forced (by a failure if ``rerun``, else by a quarantine): log it, count re-runs."""
        if rerun:
            with self._lock:
                self._counters.reruns += 1
        if self._log is not None:
            self._log.decision(decision, context)

    def refuse(self, decision: Decision, why: str, latency_s: float) -> NoReturn:
        """Count and (rate-limited) warn that ``decision``'s observation is refused, then raise.

        ``why`` is a key of :data:`REFUSALS`. Raises :class:`ObservationRefused`, always.
        """
        with self._lock:
            refused = self._counters.refused
            refused[why] = refused.get(why, 0) + 1
            held = self._throttle.allow(("refused", why))
        message = f"decision {decision.id} {REFUSALS[why]}"
        if why == "implausible":
            message += f" ({latency_s:g} s > {self._max_latency_s:g} s)"
        if held is not None:
            log.warning("observation refused: %s%s", message, f" ({held} more since the last warning)" if held else "")
        raise ObservationRefused(message)
