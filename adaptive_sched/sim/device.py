"""The simulated device: stage latencies on a virtual clock, with drift."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..types import Backend, Shape, Stage, parse_backend, parse_stage
from .costs import StageCost, stage_cost, transition_cost
from .drift import Step, _Contention, _override, _Thermal
from .loading import load_profile
from .schema import ContentionProfile, DeviceProfile, ThermalProfile

logger = logging.getLogger(__name__)

#: backend order used for per-backend random streams (a stable spawn key per backend)
_STREAM_INDEX = {Backend.CPU: 1, Backend.GPU: 2, Backend.NPU: 3}


class SimulatedDevice:
    """A simulated SoC on a virtual clock: stage latencies, thermal drift, contention, steps.

    Parameters
    ----------
    profile : DeviceProfile or str or Path, default "rk3588"
        The device profile, or its shipped name or path.
    seed : int, default 0
        Seeds the noise and the contention processes (separate streams).
    noise : bool or float, default True
        Log-normal latency noise with the profile's sigma (True), none (False), or this sigma.
    thermal, contention : None, bool or mapping
        None keeps the profile's default; a bool switches the process on or off; a mapping
        overrides settings, e.g. ``{"backends": {"npu": {"tau_s": 5.0}}}``.
    steps : iterable of Step or mapping
        Scripted changes, e.g. ``{"time_s": 10.0, "backend": "gpu", "slowdown": 2.0}``.

    Same seed and same call sequence give the same latencies. All methods are thread-safe.

    Examples
    --------
    >>> dev = SimulatedDevice("rk3588", seed=1)
    >>> shape = Shape(n=1, d=1536, kv_len=128, precision="int8")
    >>> lat = dev.run("qkv", shape, "npu")
    >>> dev.idle(0.01)
    >>> round(dev.now - lat, 6)
    0.01
    >>> sorted(dev.state())[:3]
    ['cpu_freq_hz', 'cpu_load', 'cpu_temp_c']
    """

    def __init__(
        self,
        profile: DeviceProfile | str | Path = "rk3588",
        *,
        seed: int = 0,
        noise: bool | float = True,
        thermal: bool | Mapping[str, Any] | None = None,
        contention: bool | Mapping[str, Any] | None = None,
        steps: Iterable[Step | Mapping[str, Any]] = (),
    ) -> None:
        import numpy as np

        self.profile = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
        self.seed = int(seed)
        if isinstance(noise, bool):
            self.noise_sigma = self.profile.noise_sigma if noise else 0.0
        elif isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0:
            self.noise_sigma = float(noise)
        else:
            raise ConfigError(f"noise: expected true, false or a sigma >= 0, got {noise!r}")
        self.thermal: ThermalProfile = _override(self.profile.thermal, thermal, "thermal")
        self.contention: ContentionProfile = _override(self.profile.contention, contention, "contention")
        self.backends: tuple[Backend, ...] = tuple(self.profile.backends)
        try:
            parsed = sorted((Step.from_value(s) for s in steps), key=lambda s: s.time_s)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"steps: {exc}") from None
        for step in parsed:
            if step.backend not in self.profile.backends:
                raise ConfigError(f"steps: backend {step.backend.value!r} is not in profile {self.profile.name!r}")
            if step.contention is not None and step.backend not in self.contention.backends:
                name = self.profile.name
                raise ConfigError(f"steps: profile {name!r} has no contention settings for {step.backend.value}")
        self.steps: tuple[Step, ...] = tuple(parsed)

        self._lock = threading.Lock()
        self._now = 0.0
        self._next_step = 0
        self._next_step_time = self.steps[0].time_s if self.steps else math.inf
        self._slow = dict.fromkeys(self.backends, 1.0)
        self._thermal = {
            b: _Thermal(p, self.profile.backends[b].clock_hz, self.thermal.ambient_c)
            for b, p in self.thermal.backends.items()
            if self.thermal.enabled
        }
        self._contention = {
            b: _Contention(p, np.random.default_rng([self.seed, _STREAM_INDEX[b]]), self.contention.enabled)
            for b, p in self.contention.backends.items()
        }
        self._noise_rng = np.random.default_rng([self.seed, 0])
        self._noise: list[float] = []
        self._noise_at = 0
        self._cost: dict[tuple[Stage, Shape, Backend], StageCost] = {}
        self._transition: dict[tuple[Stage, Shape, Backend, Backend], float] = {}
        logger.debug("created %r", self)

    # -- model lookups (cached, pure) ------------------------------------------------------------
    def stage_cost(self, stage: Stage | str, shape: Shape, backend: Backend | str) -> StageCost:
        """The cached noise-free :class:`StageCost` at the nominal clock."""
        stage, backend = parse_stage(stage), parse_backend(backend)
        key = (stage, shape, backend)
        cost = self._cost.get(key)
        if cost is None:
            if backend not in self.profile.backends:
                raise ConfigError(f"device profile {self.profile.name!r} has no {backend.value} backend")
            cost = self._cost[key] = stage_cost(self.profile, stage, shape, backend)
        return cost

    def _transition_s(self, stage: Stage, shape: Shape, src: Backend, dst: Backend) -> float:
        key = (stage, shape, src, dst)
        t = self._transition.get(key)
        if t is None:
            if src not in self.profile.backends:
                raise ConfigError(f"device profile {self.profile.name!r} has no {src.value} backend")
            t = self._transition[key] = transition_cost(self.profile, stage, shape, src, dst)
        return t

    # -- state ---------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        """Virtual seconds since the device started."""
        return self._now

    def _apply_steps(self, now: float) -> None:
        while now >= self._next_step_time:
            step = self.steps[self._next_step]
            if step.slowdown is not None:
                self._slow[step.backend] = step.slowdown
            if step.contention is not None:
                self._contention[step.backend].forced = step.contention
            self._next_step += 1
            self._next_step_time = self.steps[self._next_step].time_s if self._next_step < len(self.steps) else math.inf

    def _factors(self, backend: Backend, now: float) -> tuple[float, float]:
        """(clock ratio, slowdown) of ``backend`` at ``now``; advances the time-driven processes."""
        self._apply_steps(now)
        slow = self._slow[backend]
        cont = self._contention.get(backend)
        if cont is not None:
            cont.advance(now)
            if cont.active():
                slow *= cont.p.slowdown
        th = self._thermal.get(backend)
        if th is None:
            return 1.0, slow
        level = th.at(now)[1] if now > th.since else th.level
        return (1.0 if level == 0 else th.clock(level) / th.nominal), slow

    def _latency(self, stage: Stage, shape: Shape, backend: Backend, after: Backend | None) -> float:
        cost = self._cost.get((stage, shape, backend)) or self.stage_cost(stage, shape, backend)
        ratio, slow = self._factors(backend, self._now)
        lat = cost.latency(ratio) * slow
        if after is not None and after is not backend:
            lat += self._transition_s(stage, shape, after, backend)
        return lat

    def run(
        self, stage: Stage | str, shape: Shape, backend: Backend | str, after: Backend | str | None = None
    ) -> float:
        """Run ``stage`` at ``shape`` on ``backend``: sample its latency and advance the clock by it.

        ``after`` is the backend that produced this stage's input; a different backend adds
        the transition cost. The backend heats for the duration; the others cool.
        """
        stage, backend = parse_stage(stage), parse_backend(backend)
        after_b = None if after is None else parse_backend(after)
        with self._lock:
            lat = self._latency(stage, shape, backend, after_b)
            if self.noise_sigma:
                if self._noise_at >= len(self._noise):
                    self._refill_noise()
                lat *= self._noise[self._noise_at]
                self._noise_at += 1
            th = self._thermal.get(backend)
            if th is not None:
                th.cool_to(self._now)
                th.heat(lat)
            self._now += lat
            return lat

    def _refill_noise(self) -> None:
        import numpy as np

        draws = self._noise_rng.standard_normal(4096)
        self._noise = np.exp(self.noise_sigma * draws).tolist()
        self._noise_at = 0

    def expected_latency(
        self, stage: Stage | str, shape: Shape, backend: Backend | str, after: Backend | str | None = None
    ) -> float:
        """The noise-free latency :meth:`run` would have now (the median of its samples)."""
        stage, backend = parse_stage(stage), parse_backend(backend)
        after_b = None if after is None else parse_backend(after)
        with self._lock:
            return self._latency(stage, shape, backend, after_b)

    def idle(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass with nothing running (every backend cools)."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds

    def state(self) -> dict[str, float]:
        """Observable device state, as a board's sysfs would report it.

        Per backend ``b`` in the profile: ``{b}_temp_c`` (thermal zone, C),
        ``{b}_freq_hz`` (devfreq/cpufreq current clock) and ``{b}_load`` (share of the
        backend taken by background work: ``1 - 1/slowdown`` while contended, else 0).
        On an RK3588 these come from ``/sys/class/thermal/thermal_zone*/temp``,
        ``/sys/class/devfreq/{fb000000.gpu,fdab0000.npu}/cur_freq``, cpufreq, and
        ``/sys/kernel/debug/rknpu/load``.
        """
        out: dict[str, float] = {}
        with self._lock:
            now = self._now
            self._apply_steps(now)
            for b in self.backends:
                name = b.value
                th = self._thermal.get(b)
                if th is None:
                    out[f"{name}_temp_c"] = self.thermal.ambient_c
                    out[f"{name}_freq_hz"] = self.profile.backends[b].clock_hz
                else:
                    temp, level = th.at(now) if now > th.since else (th.temp, th.level)
                    out[f"{name}_temp_c"] = temp
                    out[f"{name}_freq_hz"] = th.clock(level)
                cont = self._contention.get(b)
                load = 0.0
                if cont is not None:
                    cont.advance(now)
                    if cont.active():
                        load = 1.0 - 1.0 / cont.p.slowdown
                out[f"{name}_load"] = load
        return out

    def __repr__(self) -> str:
        return (
            f"SimulatedDevice({self.profile.name!r}, seed={self.seed}, noise={self.noise_sigma:g}, "
            f"thermal={self.thermal.enabled}, contention={self.contention.enabled}, now={self._now:.6f})"
        )
