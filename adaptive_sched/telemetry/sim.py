"""Telemetry of the simulated RK3588, from its own thermal and contention state.

The same reading a board's sysfs gives (:class:`~adaptive_sched.telemetry.SysfsTelemetry`):
each backend's temperature, current clock (stepped down by the thermal trips, which is
also its cap: no governor here lowers an idle backend's clock) and maximum clock (the
profile's nominal one), and its background load (of the moment: this process's own work is
not in it). Its time is the device's
virtual time, so a sampler driven by it samples the simulation as a board's would be.
"""

from __future__ import annotations

from typing import Any

from .snapshot import BackendReading, Snapshot


class SimTelemetry:
    """A :class:`~adaptive_sched.telemetry.TelemetrySource` over a ``SimulatedDevice``."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self._max = {b: float(p.clock_hz) for b, p in device.profile.backends.items()}

    def now(self) -> float:
        """The device's virtual time (seconds): the clock to sample it by."""
        return float(self.device.now)

    def read(self) -> Snapshot:
        state = self.device.state()
        backends = {}
        for backend, top in self._max.items():
            name = backend.value
            clock = state.get(f"{name}_freq_hz")
            backends[backend] = BackendReading(
                temp_c=state.get(f"{name}_temp_c"),
                freq_hz=clock,
                max_freq_hz=top,
                load=state.get(f"{name}_load"),
                cap_hz=clock,  # its governor is the thermal one alone: the clock it sets is its cap
                load_window_s=0.0,  # background work's share now
            )
        return Snapshot(self.now(), backends)

    def read_clocks(self, previous: Snapshot) -> Snapshot:
        """The clocks now (a simulated device reads everything for the same price)."""
        return self.read()

    def __repr__(self) -> str:
        return f"SimTelemetry({self.device!r})"
