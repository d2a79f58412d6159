"""The ``telemetry`` section of a config (see :mod:`adaptive_sched.telemetry` and docs/telemetry.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..types import Backend
from ..validation import Problems


@dataclass(frozen=True)
class TelemetryConfig:
    """Device telemetry read beside the decisions (see :mod:`adaptive_sched.telemetry`).

    On a board it is read under ``root``; with a simulated device, from the simulation.
    Every file is optional: what cannot be read is unknown, never an error.
    """

    #: read telemetry, log it with each decision and let the policy use the clocks
    enabled: bool = True
    #: the sysfs root under which class/thermal, class/devfreq and cpufreq are read
    root: str = "/sys"
    #: seconds between two reads of everything
    interval_s: float = 0.25
    #: seconds between two reads of the clocks alone, in between (a few small devfreq files:
    #: governors step the clocks every 50 to 100 ms, and a clock that came back is what tells
    #: the scheduler a backend it stopped using is fast again); at most ``interval_s``. At 0.02
    #: the simulator's throttled runs lost less per decision and took longer: back on a
    #: recovered NPU sooner, they heat it sooner (docs/telemetry.md)
    clock_interval_s: float = 0.05
    #: a reading older than this (seconds) is stale and ignored (null: four intervals)
    max_age_s: float | None = None
    #: thermal zone type -> the backend (cpu, gpu, npu) whose temperature it is
    zones: dict[str, str] = field(default_factory=lambda: {"gpu-thermal": "gpu", "npu-thermal": "npu",
                                                           "soc-thermal": "cpu"})  # fmt: skip
    #: gpu, npu, ddr -> the devfreq device (a directory of /sys/class/devfreq) with its clocks
    devfreq: dict[str, str] = field(default_factory=lambda: {"gpu": "fb000000.gpu", "npu": "fdab0000.npu",
                                                             "ddr": "dmc"})  # fmt: skip

    def _validate(self, where: str) -> None:
        problems = Problems()
        if not self.interval_s > 0:
            problems.add(f"{where}.interval_s: must be > 0, got {self.interval_s!r}")
        if not 0 < self.clock_interval_s <= (self.interval_s if self.interval_s > 0 else math.inf):
            problems.add(f"{where}.clock_interval_s: must be > 0 and at most interval_s ({self.interval_s!r}), "
                         f"got {self.clock_interval_s!r}")  # fmt: skip
        if self.max_age_s is not None and not self.max_age_s > 0:
            problems.add(f"{where}.max_age_s: must be > 0 (or null: four intervals), got {self.max_age_s!r}")
        if not self.root:
            problems.add(f"{where}.root: must be a directory path, got an empty string")
        backends = {b.value for b in Backend}
        for zone, backend in self.zones.items():
            if backend not in backends:
                problems.add(f"{where}.zones.{zone}: expected cpu, gpu or npu, got {backend!r}")
        for name, device in self.devfreq.items():
            if name not in ("gpu", "npu", "ddr"):
                problems.add(f"{where}.devfreq.{name}: unknown (expected gpu, npu or ddr)")
            elif not isinstance(device, str) or not device or "/" in device:
                problems.add(f"{where}.devfreq.{name}: expected a devfreq device name, got {device!r}")
        problems.raise_if_any()
