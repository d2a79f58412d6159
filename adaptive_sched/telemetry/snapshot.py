"""One reading of the device: per backend its temperature, clock and load; the DDR clock; the zones.

A :class:`Snapshot` travels to two places: the policy, as each backend's clock ratio
(:meth:`Snapshot.clock_ratios`), and the decision log, as a flat mapping of numbers
(:meth:`Snapshot.as_context`) whose keys are those of ``SimulatedDevice.state()``::

    {backend}_temp_c  {backend}_freq_hz  {backend}_max_freq_hz  {backend}_cap_hz  {backend}_load
    ddr_freq_hz  ddr_max_freq_hz

>>> from adaptive_sched.types import Backend
>>> s = Snapshot(0.0, {Backend.GPU: BackendReading(temp_c=71.5, freq_hz=6e8, max_freq_hz=1e9)})
>>> s.clock_ratios()[Backend.GPU], s.as_context()["gpu_temp_c"]
(0.6, 71.5)
>>> idle = BackendReading(freq_hz=3e8, max_freq_hz=1e9, cap_hz=1e9)   # idle, not throttled
>>> idle.clock_ratio()
1.0
>>> Snapshot.from_context(s.as_context()).backends[Backend.GPU].freq_hz
600000000.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..types import Backend

#: the fields of a backend's reading, as they are named in a decision's logged context
FIELDS = ("temp_c", "freq_hz", "max_freq_hz", "cap_hz", "load")


def finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite number, else None (garbage reads as unknown)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class BackendReading:
    """What is known of one backend now; each value None when it could not be read.

    ``freq_hz`` is the clock it runs at now, ``max_freq_hz`` the highest it ever runs at, and
    ``cap_hz`` the highest it may run at now: thermal throttling lowers the cap, while a
    load-following governor (the Mali's and the RKNPU's) also lowers the current clock of a
    backend that merely sits idle, and raises it again as soon as work comes.
    """

    temp_c: float | None = None
    freq_hz: float | None = None
    max_freq_hz: float | None = None
    #: share of the backend busy (0 to 1), from whatever reports it (devfreq's ``load``, rknpu's, the CPU's)
    load: float | None = None
    cap_hz: float | None = None
    #: how far back before the reading the load may count (seconds; None: unknown): a devfreq
    #: polling interval, rknpu's once-a-second latch of the second before it
    load_window_s: float | None = None

    def clock_ratio(self) -> float | None:
        """The clock work sent here would run at, over the maximum, in (0, 1]: the cap when it
        is known (an idle backend's current clock says nothing of its speed once given work),
        else the current clock; None when unknown or nonsense."""
        clock = self.cap_hz if self.cap_hz is not None else self.freq_hz
        top = self.max_freq_hz
        if clock is None or top is None or not (clock > 0 and top > 0):
            return None
        return min(1.0, clock / top)


@dataclass(frozen=True)
class Snapshot:
    """The device at ``taken_at`` (the sampler's clock: monotonic seconds, or the simulated device's)."""

    taken_at: float
    backends: Mapping[Backend, BackendReading] = field(default_factory=dict)
    ddr_freq_hz: float | None = None
    ddr_max_freq_hz: float | None = None
    #: every thermal zone read, by its type (``soc-thermal``, ``gpu-thermal``, ...), in C
    zones: Mapping[str, float] = field(default_factory=dict)

    def clock_ratios(self) -> dict[Backend, float | None]:
        """Each backend's :meth:`BackendReading.clock_ratio` (None: unknown)."""
        return {b: r.clock_ratio() for b, r in self.backends.items()}

    def temperatures(self) -> dict[Backend, float | None]:
        """Each backend's temperature in C (None: unknown)."""
        return {b: r.temp_c for b, r in self.backends.items()}

    def loads(self) -> dict[Backend, float | None]:
        """Each backend's busy share, 0 to 1 (None: unknown)."""
        return {b: r.load for b, r in self.backends.items()}

    def load_windows(self) -> dict[Backend, float | None]:
        """How far back each backend's load may count, in seconds (None: unknown)."""
        return {b: r.load_window_s for b, r in self.backends.items()}

    def as_context(self) -> dict[str, float]:
        """The known values as a flat mapping of finite numbers (see the module docstring)."""
        out: dict[str, float] = {}
        for backend, reading in self.backends.items():
            for name in FIELDS:
                value = getattr(reading, name)
                if value is not None:
                    out[f"{backend.value}_{name}"] = value
        if self.ddr_freq_hz is not None:
            out["ddr_freq_hz"] = self.ddr_freq_hz
        if self.ddr_max_freq_hz is not None:
            out["ddr_max_freq_hz"] = self.ddr_max_freq_hz
        return out

    @classmethod
    def from_context(cls, context: Mapping[str, Any], taken_at: float = math.nan) -> Snapshot:
        """The snapshot a logged context holds (unknown keys and non-numbers are ignored)."""
        backends: dict[Backend, BackendReading] = {}
        for backend in Backend:
            values = {name: finite(context.get(f"{backend.value}_{name}")) for name in FIELDS}
            if any(v is not None for v in values.values()):
                backends[backend] = BackendReading(**values)
        return cls(taken_at, backends, finite(context.get("ddr_freq_hz")), finite(context.get("ddr_max_freq_hz")))

    def __bool__(self) -> bool:
        return bool(self.backends) or self.ddr_freq_hz is not None or bool(self.zones)
