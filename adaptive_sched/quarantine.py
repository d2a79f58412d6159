"""Backends that sit out for a while after failing, and where a failed stage goes next.

A backend that fails is quarantined for ``QUARANTINE_BASE`` observations, twice as long
with each further failure before a success (at most ``QUARANTINE_MAX_STRIKES``
doublings); the policy is told (``exclude``) so that it decides between the others.

>>> from adaptive_sched.types import Backend
>>> excluded = []
>>> q = Quarantine(lambda until: excluded.append(sorted(b.value for b in until)))
>>> q.strike(Backend.GPU, "driver reset", now=0)
>>> Backend.GPU in q, excluded[-1]
(True, ['gpu'])
>>> q.release(now=QUARANTINE_BASE)
>>> Backend.GPU in q, excluded[-1]
(False, [])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

from .counters import Throttle
from .executors import Executor
from .types import Backend, Decision

log = logging.getLogger(__name__)

#: decisions a quarantined backend sits out after its first failure; doubles with each strike
QUARANTINE_BASE = 64
QUARANTINE_MAX_STRIKES = 10


class Quarantine:
    """Which backends sit out, until which observation count, and how often each failed.

    Not locked: the scheduler calls :meth:`strike`, :meth:`release` and :meth:`cleared`
    with its lock held. ``until`` and ``strikes`` are read directly on the learning path
    (an empty dict is the common case, tested without a call); only this class writes them.

    Parameters
    ----------
    exclude : callable
        Told the backends quarantined now (backend -> observation count) after every change;
        the policy's ``exclude``.
    throttle : Throttle, optional
        Rate-limits the warnings (one per backend per ``WARN_EVERY_S``).
    """

    __slots__ = ("_exclude", "_throttle", "strikes", "until")

    def __init__(self, exclude: Callable[[Mapping[Backend, int]], None], throttle: Throttle | None = None) -> None:
        self._exclude = exclude
        self._throttle = throttle if throttle is not None else Throttle()
        #: backend -> the observation count it sits out until
        self.until: dict[Backend, int] = {}
        #: backend -> failures since its last success
        self.strikes: dict[Backend, int] = {}

    def __contains__(self, backend: object) -> bool:
        return backend in self.until

    def strike(self, backend: Backend, error: str | None, now: int) -> None:
        """``backend`` failed at observation count ``now``: quarantine it, longer than last time."""
        strikes = self.strikes[backend] = min(self.strikes.get(backend, 0) + 1, QUARANTINE_MAX_STRIKES)
        until = now + QUARANTINE_BASE * 2 ** (strikes - 1)
        self.until[backend] = until
        held = self._throttle.allow(("quarantine", backend))
        if held is not None:
            log.warning("backend %s quarantined for %d observations (strike %d): %s%s",
                        backend.value, until - now, strikes, error,
                        f" ({held} more failures since the last warning)" if held else "")  # fmt: skip
        self._exclude(self.until)

    def release(self, now: int) -> None:
        """Let back the backends whose time is up at observation count ``now``.

        Their strike count stays until a success, so a backend that fails again waits longer.
        """
        expired = [b for b, until in self.until.items() if until <= now]
        if expired:
            for backend in expired:
                del self.until[backend]
            self._exclude(self.until)

    def cleared(self, backend: Backend) -> None:
        """``backend`` succeeded: its next failure starts from the first strike again."""
        self.strikes.pop(backend, None)

    def next_backend(
        self,
        decision: Decision,
        tried: set[Backend],
        executors: Mapping[Backend, Executor],
        candidates: tuple[Backend, ...],
        fallbacks: tuple[Backend, ...],
    ) -> Backend | None:
        """Where ``decision``'s stage goes after failing on ``tried``; None if nowhere.

        First the candidates not quarantined, fastest predicted first; then the fallbacks;
        last the quarantined candidates (running one probes it). Only a backend whose
        executor is available and supports the stage's shape is chosen.
        """
        predicted = decision.predicted
        free = sorted((b for b in candidates if b not in tried and b not in self.until),
                      key=lambda b: predicted.get(b, math.inf))  # fmt: skip
        spare = [b for b in fallbacks if b not in tried]
        quarantined = [b for b in candidates if b not in tried and b in self.until]
        for backend in (*free, *spare, *quarantined):
            ex = executors.get(backend)
            if ex is not None and ex.is_available() and ex.supports(decision.stage, decision.shape):
                return backend
        return None
