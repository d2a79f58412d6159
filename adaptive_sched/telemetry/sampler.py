"""Sampling telemetry off the hot path, and keeping the latest snapshot.

A :class:`Sampler` reads its source at most every ``interval_s`` and keeps the result in
plain attributes (``latest``, ``context``) that the scheduler's threads read without a
lock (an attribute read is atomic). It is refreshed either by a daemon thread of its own
(:meth:`start`; a board, in wall-clock time) or by whoever calls :meth:`poll` (the
learner, for a simulated device whose clock is virtual). A source that raises is counted
and its last good snapshot ages; past ``max_age_s`` it reads as stale (:meth:`fresh` is
None), which the policy treats as no telemetry at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from ..types import Backend
from .snapshot import Snapshot

log = logging.getLogger(__name__)

EMPTY_CONTEXT: Mapping[str, float] = {}


class TelemetrySource(Protocol):
    """Something that reads the device now. ``read`` should not raise (a sampler survives it if it does).

    A source may also have ``read_clocks(previous) -> Snapshot``: ``previous`` with only the
    clocks read again, cheaply; a sampler reads the clocks so between full reads.
    """

    def read(self) -> Snapshot: ...


class Sampler:
    """The latest :class:`Snapshot` of ``source``, refreshed every ``interval_s`` of ``clock``.

    Parameters
    ----------
    source : TelemetrySource
    interval_s : float
        The shortest time between two reads (default: four a second).
    clock_interval_s : float, optional
        The shortest time between two reads of the clocks alone, in between (default:
        ``interval_s``, no reads of the clocks alone; a source without ``read_clocks`` is read whole).
    max_age_s : float, optional
        How old a snapshot may be and still count (default: four intervals).
    clock : callable
        Seconds, monotonic: ``time.monotonic`` on a board, the simulated device's virtual time.
    """

    def __init__(
        self,
        source: TelemetrySource,
        interval_s: float = 0.25,
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        clock_interval_s: float | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        if clock_interval_s is not None and not 0 < clock_interval_s <= interval_s:
            raise ValueError(f"clock_interval_s must be > 0 and at most interval_s, got {clock_interval_s!r}")
        self.source = source
        self.interval_s = float(interval_s)
        self.clock_interval_s = float(clock_interval_s) if clock_interval_s is not None else self.interval_s
        self._read_clocks_of: Callable[[Snapshot], Snapshot] | None = getattr(source, "read_clocks", None)
        self.max_age_s = float(max_age_s) if max_age_s is not None else 4.0 * self.interval_s
        self.clock = clock
        #: the latest snapshot read (None before the first), and when (``clock``'s time)
        self.latest: Snapshot | None = None
        self.read_at = -float("inf")
        #: the latest snapshot as a decision's logged context (empty when stale or unknown)
        self.context: Mapping[str, float] = EMPTY_CONTEXT
        #: reads so far, and reads that raised
        self.reads = 0
        self.errors = 0
        self._due = -float("inf")
        self._clocks_due = -float("inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> Snapshot | None:
        """Read the source if ``interval_s`` has passed since the last read; the fresh snapshot or None."""
        now = self.clock()
        if now >= self._due:
            self._read(now)
        elif now >= self._clocks_due:
            self._read(now, clocks_only=True)
        latest = self._fresh_at(now)
        if latest is None:
            self.context = EMPTY_CONTEXT  # stale: decisions are logged without it
        return latest

    def read_now(self, min_gap_s: float = 0.0) -> Snapshot | None:
        """Read the source now, unless the last read is younger than ``min_gap_s``; the fresh snapshot or None."""
        now = self.clock()
        if now - self.read_at >= min_gap_s:
            self._read(now, clocks_only=True)
        return self._fresh_at(now)

    def fresh(self) -> Snapshot | None:
        """The latest snapshot if it is no older than ``max_age_s``, else None."""
        return self._fresh_at(self.clock())

    def _fresh_at(self, now: float) -> Snapshot | None:
        return self.latest if now - self.read_at <= self.max_age_s else None

    def age_s(self) -> float:
        """Seconds since the latest read (infinite before the first)."""
        return self.clock() - self.read_at

    def _read(self, now: float, clocks_only: bool = False) -> None:
        """Read the source (``clocks_only``: the clocks alone, when it can and a whole reading exists)."""
        latest, read_clocks = self.latest, self._read_clocks_of
        self._clocks_due = now + self.clock_interval_s
        if not (clocks_only and read_clocks is not None and latest is not None):
            read_clocks = None
            self._due = now + self.interval_s
        try:
            snapshot = self.source.read() if read_clocks is None else read_clocks(latest)  # type: ignore[arg-type]
        except Exception:  # telemetry must never break inference: keep the last, let it age
            self.errors += 1
            if self.errors & (self.errors - 1) == 0:  # the 1st, 2nd, 4th, 8th, ...
                log.warning("reading telemetry from %r failed (%d so far)", self.source, self.errors, exc_info=True)
            return
        self.reads += 1
        self.latest = snapshot
        self.read_at = now
        self.context = snapshot.as_context()

    # -- a thread of its own (a board) ----------------------------------------------------------
    def start(self) -> None:
        """Read every ``interval_s`` (the clocks every ``clock_interval_s``) on a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="adaptive-sched-telemetry", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = self.clock()
            self._read(now, clocks_only=now < self._due)
            self._stop.wait(self.clock_interval_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (if started) and wait for it."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def __repr__(self) -> str:
        return (f"Sampler({self.source!r}, interval_s={self.interval_s:g}, clock_interval_s={self.clock_interval_s:g}, "
                f"reads={self.reads}, errors={self.errors})")  # fmt: skip


class ClockListener(Protocol):
    """What a :class:`ClockFeed` feeds (a policy): it takes clock ratios, temperatures and loads,
    and may ask for a reading now."""

    clocks_wanted: bool

    def on_clocks(self, ratios: Mapping[Backend, float | None]) -> None: ...

    def on_temperatures(self, temps: Mapping[Backend, float | None]) -> None: ...

    def on_loads(self, loads: Mapping[Backend, float | None], at: float, settle_s: Mapping[Backend, float]) -> None: ...


class ClockFeed:
    """Hands a policy each backend's clock ratio, then its temperature, then its load, whenever the
    sampler has a new snapshot, or none fresh any more (then every value is None: no telemetry).
    The CPU's load is never handed on: it counts this process's own threads, whatever runs where.
    With the loads goes how long after a backend last ran its load counts others' work alone.

    Called by the learner before each observation it learns: with a sampler on a thread of
    its own it only looks at the latest snapshot; otherwise it polls (a simulated device's
    virtual time), so the read happens off the decision path either way. A policy surprised
    by a latency (``Policy.clocks_wanted``) gets a reading at once, whatever the interval:
    readings come a few times a second and latencies hundreds, so a clock that just stepped
    is otherwise learned from the latencies first, as a change of the backend's level, and
    only then explained by the clock.
    """

    __slots__ = ("_backends", "_clock", "_countdown", "_interval_s", "_min_gap_s", "_policy", "_read", "_read_now",
                 "_seen")  # fmt: skip

    #: observations between two looks at the sampler: readings come a few times a second,
    #: observations thousands of times, and a look costs a clock read
    EVERY = 16
    #: the shortest time between two readings asked for by surprises, over the sampler's interval
    SURPRISE_GAP = 1.0 / 25.0
    #: how far back a load may count where its source does not say (seconds): the longest known,
    #: rknpu's latch of the second before, up to a second old
    UNKNOWN_LOAD_WINDOW_S = 2.0

    def __init__(self, sampler: Sampler, policy: ClockListener, backends: tuple[Backend, ...]) -> None:
        self._read = sampler.fresh if sampler.running else sampler.poll
        self._read_now = sampler.read_now
        self._clock = sampler.clock
        self._interval_s = sampler.interval_s
        self._min_gap_s = sampler.interval_s * self.SURPRISE_GAP
        self._policy = policy
        self._backends = backends
        self._seen: Snapshot | None = None
        self._countdown = 0

    def __call__(self) -> None:
        policy = self._policy
        if policy.clocks_wanted:
            policy.clocks_wanted = False
            snapshot = self._read_now(self._min_gap_s)
        else:
            self._countdown -= 1
            if self._countdown > 0:
                return
            self._countdown = self.EVERY
            snapshot = self._read()
        if snapshot is self._seen:
            return
        self._seen = snapshot
        ratios = snapshot.clock_ratios() if snapshot is not None else {}
        temps = snapshot.temperatures() if snapshot is not None else {}
        loads = snapshot.loads() if snapshot is not None else {}
        policy.on_clocks({b: ratios.get(b) for b in self._backends})
        policy.on_temperatures({b: temps.get(b) for b in self._backends})
        windows = snapshot.load_windows() if snapshot is not None else {}
        at = snapshot.taken_at if snapshot is not None else self._clock()
        # a backend's load no longer counts its own work once past its window, and the reading's
        # loads may be a whole read's interval old (between whole reads, the clocks alone are read)
        settle = {b: (w if (w := windows.get(b)) is not None else self.UNKNOWN_LOAD_WINDOW_S) + self._interval_s
                  for b in self._backends}  # fmt: skip
        policy.on_loads({b: None if b is Backend.CPU else loads.get(b) for b in self._backends}, at, settle)
