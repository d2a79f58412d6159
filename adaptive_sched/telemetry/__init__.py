"""Device telemetry: temperatures, clocks and loads, read off the hot path and handed to the policy.

Thermal throttling shows before it hurts: a thermal zone climbs, a devfreq clock steps down.
A :class:`Sampler` reads a :class:`TelemetrySource` a few times a second (on a thread of its
own on a board, or in the device's virtual time for the simulated one) and keeps the latest
:class:`Snapshot`. The scheduler attaches it to each logged decision and hands each
backend's clock ratio (the clock it may run at now, its thermal cap, over its maximum) to
the policy, which predicts a backend whose clock just dropped as slower before any of its
latencies shows it. Every reading is optional: a missing or unreadable file reads as
unknown, and unknown or stale telemetry leaves the scheduler as it is without it.

Sources: :class:`SysfsTelemetry` (Linux boards: ``/sys/class/thermal``, ``/sys/class/devfreq``,
cpufreq, ``rknpu/load``) and :class:`SimTelemetry` (the simulated RK3588's own state).
"""

from __future__ import annotations

from .sampler import ClockFeed, Sampler, TelemetrySource
from .sim import SimTelemetry
from .snapshot import BackendReading, Snapshot
from .sysfs import SysfsTelemetry

__all__ = ["BackendReading", "ClockFeed", "Sampler", "SimTelemetry", "Snapshot", "SysfsTelemetry", "TelemetrySource"]
