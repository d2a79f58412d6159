"""Drift in virtual time: scripted steps, per-run overrides, thermal and contention state."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigError
from ..types import Backend, parse_backend
from .loading import _backend_key, _Node, _parse_contention_params, _parse_thermal_params
from .schema import ContentionParams, ThermalParams, ThermalProfile


@dataclass(frozen=True)
class Step:
    """A scripted change at virtual time ``time_s`` on ``backend``.

    ``slowdown`` (if given) makes every later run on the backend that many times slower
    than the model (1.0 restores it); ``contention`` (if given) forces the background
    load on (True) or off (False) from then on, overriding the Markov process.

    >>> Step(time_s=2.0, backend="npu", slowdown=3.0).backend
    <Backend.NPU: 'npu'>
    """

    time_s: float
    backend: Backend
    slowdown: float | None = None
    contention: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", parse_backend(self.backend))
        if not (isinstance(self.time_s, (int, float)) and math.isfinite(self.time_s) and self.time_s >= 0):
            raise ValueError(f"step time_s must be a finite number >= 0, got {self.time_s!r}")
        if self.slowdown is not None and not (self.slowdown > 0 and math.isfinite(self.slowdown)):
            raise ValueError(f"step slowdown must be a finite number > 0, got {self.slowdown!r}")
        if self.contention is not None and not isinstance(self.contention, bool):
            raise ValueError(f"step contention must be true, false or absent, got {self.contention!r}")
        if self.slowdown is None and self.contention is None:
            raise ValueError("a step needs a slowdown or a contention change")

    @classmethod
    def from_value(cls, value: Step | Mapping[str, Any]) -> Step:
        """A step from a :class:`Step` or a mapping with the same keys (YAML)."""
        if isinstance(value, Step):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"a step must be a mapping, got {value!r}")
        unknown = set(value) - {"time_s", "backend", "slowdown", "contention"}
        if unknown:
            raise ValueError(f"unknown step key(s): {', '.join(sorted(unknown))}")
        if "time_s" not in value or "backend" not in value:
            raise ValueError("a step needs time_s and backend")
        return cls(**dict(value))


def _params_dict(params: Any) -> dict[str, Any]:
    out = dataclasses.asdict(params)
    if "trips" in out:
        out["trips"] = [list(t) for t in out["trips"]]
    return out


def _override(section: Any, value: Any, where: str) -> Any:
    """``section`` (a ThermalProfile or ContentionProfile) with per-run options applied.

    ``None`` keeps the profile's default, a bool switches the process on or off, and a
    mapping overrides settings (``enabled``, ``ambient_c``, ``backends: {npu: {tau_s: 5}}``)
    and switches the process on unless it says ``enabled: false``. Overrides are validated
    like the profile itself.
    """
    if value is None:
        return section
    if isinstance(value, bool):
        return replace(section, enabled=value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected true, false or a mapping of settings, got {value!r}")
    thermal = isinstance(section, ThermalProfile)
    parse = _parse_thermal_params if thermal else _parse_contention_params
    node = _Node(value, where)
    changes: dict[str, Any] = {"enabled": node.boolean("enabled", True)}
    if thermal:
        changes["ambient_c"] = node.number("ambient_c", section.ambient_c, low=-273.15)
    backends = dict(section.backends)
    if node.has("backends"):
        sub = node.node("backends")
        for name in list(sub.data):
            backend = _backend_key(sub, name)
            if backend not in backends:
                raise ConfigError(f"{sub.key(name)}: the profile has no {where} settings for this backend")
            fields = sub.raw(name)
            if not isinstance(fields, Mapping):
                raise ConfigError(f"{sub.key(name)}: expected a mapping of settings, got {fields!r}")
            merged = {**_params_dict(backends[backend]), **fields}
            backends[backend] = sub.part(parse, _Node(merged, sub.key(name), sub.problems, parent=sub))
    changes["backends"] = backends
    node.done()
    return replace(section, **changes)


class _Thermal:
    """Temperature and clock level of one backend; updated lazily in closed form."""

    __slots__ = ("ambient", "level", "nominal", "p", "since", "temp")

    def __init__(self, params: ThermalParams, nominal_hz: float, ambient_c: float) -> None:
        self.p, self.nominal, self.ambient = params, nominal_hz, ambient_c
        self.temp, self.since, self.level = ambient_c, 0.0, 0

    def clock(self, level: int | None = None) -> float:
        """Clock (Hz) at ``level`` (default: the current one); level 0 is the nominal clock."""
        level = self.level if level is None else level
        return self.nominal if level == 0 else self.p.trips[level - 1][1]

    def _relevel(self, temp: float, level: int) -> int:
        trips, hyst = self.p.trips, self.p.hysteresis_c
        while level < len(trips) and temp >= trips[level][0]:
            level += 1
        while level > 0 and temp < trips[level - 1][0] - hyst:
            level -= 1
        return level

    def at(self, now: float) -> tuple[float, int]:
        """(temperature, level) at ``now`` after idling since the last update (no mutation)."""
        temp = self.ambient + (self.temp - self.ambient) * math.exp(-(now - self.since) / self.p.tau_s)
        return temp, self._relevel(temp, self.level)

    def cool_to(self, now: float) -> None:
        if now > self.since:
            self.temp, self.level = self.at(now)
            self.since = now

    def heat(self, seconds: float) -> None:
        """Busy for ``seconds`` at the current clock, starting at :attr:`since`."""
        p = self.p
        target = self.ambient + p.rise_c * (self.clock() / self.nominal) ** p.power_exponent
        self.temp = target + (self.temp - target) * math.exp(-seconds / p.tau_s)
        self.since += seconds
        self.level = self._relevel(self.temp, self.level)


class _Contention:
    """On/off background load of one backend: exponential holding times from its own stream."""

    __slots__ = ("forced", "next_switch", "on", "p", "rng")

    def __init__(self, params: ContentionParams, rng: Any, enabled: bool) -> None:
        self.p, self.rng, self.on, self.forced = params, rng, False, None if enabled else False
        self.next_switch = self._hold(False) if enabled else math.inf

    def _hold(self, on: bool) -> float:
        rate = self.p.off_rate_hz if on else self.p.on_rate_hz
        return float(self.rng.exponential(1.0 / rate)) if rate > 0 else math.inf

    def advance(self, now: float) -> None:
        # Switch times depend only on virtual time, so they may be drawn ahead without
        # changing what any later call sees.
        while now >= self.next_switch:
            self.on = not self.on
            self.next_switch += self._hold(self.on)

    def active(self) -> bool:
        return self.on if self.forced is None else self.forced
