"""What a scheduler counts, and how often it warns about one kind of trouble.

>>> throttle = Throttle(every_s=3600)
>>> throttle.allow("gpu"), throttle.allow("gpu"), throttle.allow("npu")
(0, None, 0)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from .types import Backend

#: the least time between two warnings of one kind about one backend; those held back are
#: counted and the next warning says how many (a failing backend fails thousands of times a second)
WARN_EVERY_S = 10.0


@dataclass
class Counters:
    """The scheduler's counters, shared by its parts; written under the scheduler's lock."""

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


class Throttle:
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
