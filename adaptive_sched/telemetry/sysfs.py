"""Telemetry from a Linux board's sysfs: thermal zones, devfreq clocks and loads, cpufreq, the RKNPU's load.

Everything is read under one root (``/sys`` by default; a test points it at a fake tree)::

    class/thermal/thermal_zone*/{type,temp}      millidegrees C, one zone per type
    class/devfreq/<device>/{cur_freq,max_freq}   Hz (RK3588: fb000000.gpu, fdab0000.npu, dmc);
                                                 max_freq is the cap the thermal governor lowers,
                                                 the maximum the top of available_frequencies
                                                 where listed
    class/devfreq/<device>/load                  "94@800000000Hz": percent busy at a clock
                                                 (Rockchip's kernels; GPU and NPU), over the
                                                 last polling_interval (ms)
    devices/system/cpu/cpu*/cpufreq/{scaling_cur_freq,scaling_max_freq,cpuinfo_max_freq}   kHz
    kernel/debug/rknpu/load                      "NPU load:  Core0: 12%, Core1:  0%, ..."

Each file is optional: one that is absent, unreadable or holds garbage reads as unknown,
never as an error. Which files exist is found once, and found again (at most every
``rediscover_s``) after one that was there vanishes or a new read finds nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import math
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from ..types import Backend
from .snapshot import BackendReading, Snapshot, finite

#: RK3588 thermal zone types and the backend each one reports on
RK3588_ZONES: Mapping[str, str] = {
    "gpu-thermal": "gpu",
    "npu-thermal": "npu",
    "soc-thermal": "cpu",
}
#: RK3588 devfreq devices: GPU (Mali-G610), NPU, and the DDR controller
RK3588_DEVFREQ: Mapping[str, str] = {
    "gpu": "fb000000.gpu",
    "npu": "fdab0000.npu",
    "ddr": "dmc",
}
#: how far back the NPU's load counts: rknpu latches its busy time once a second, over the
#: second before (its devfreq load too), so a reading may count work up to two seconds old
RKNPU_LOAD_WINDOW_S = 2.0
_PERCENT = re.compile(rb"(\d+(?:\.\d+)?)\s*%")


def _read(path: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of a small sysfs file; None if it is absent or unreadable."""
    try:
        with open(path, "rb", buffering=0) as f:  # unbuffered: half the cost of a buffered open here
            return f.read(limit)
    except OSError:
        return None


def read_number(path: str) -> float | None:
    """The first number in a small sysfs file; None if absent, unreadable or garbage."""
    parts = (_read(path, 64) or b"").split()
    return finite(parts[0]) if parts else None


def _top_frequency(path: str) -> float | None:
    """The largest of the clocks a devfreq device lists (``available_frequencies``), or None."""
    values = [v for v in (finite(part) for part in (_read(path, 4096) or b"").split()) if v is not None and v > 0]
    return max(values) if values else None


def read_devfreq_load(path: str) -> float | None:
    """The busy share (0 to 1) from a devfreq ``load`` file (``"94@800000000Hz"``); None if garbage."""
    text = _read(path, 64)
    if not text:
        return None
    percent = finite(text.split(b"@", 1)[0].strip())
    return percent / 100.0 if percent is not None and 0.0 <= percent <= 100.0 else None


def read_npu_load(path: str) -> float | None:
    """The mean of the NPU cores' loads (0 to 1) from rknpu's ``load`` file."""
    text = _read(path, 256)
    if text is None:
        return None
    loads = [float(m) for m in _PERCENT.findall(text)]
    if not loads:
        return None
    return min(1.0, max(0.0, sum(loads) / len(loads) / 100.0))


class SysfsTelemetry:
    """A :class:`~adaptive_sched.telemetry.TelemetrySource` over a board's sysfs.

    Parameters
    ----------
    root : str
        The sysfs root (``/sys``).
    zones : mapping
        Thermal zone type -> backend name (``cpu``, ``gpu``, ``npu``) it reports on.
    devfreq : mapping
        ``gpu``/``npu``/``ddr`` -> devfreq device directory name.
    cpu_load : bool
        Read the CPU's load with psutil, when it is installed.
    """

    def __init__(
        self,
        root: str = "/sys",
        zones: Mapping[str, str] = RK3588_ZONES,
        devfreq: Mapping[str, str] = RK3588_DEVFREQ,
        *,
        cpu_load: bool = True,
        rediscover_s: float = 5.0,
    ) -> None:
        self.root = str(root)
        self.zones = {zone: Backend(name) for zone, name in zones.items()}
        self.devfreq = dict(devfreq)
        self.rediscover_s = rediscover_s
        self._psutil: Any = None
        if cpu_load:
            try:
                import psutil

                psutil.cpu_percent(interval=None)  # the first call only starts its count
                self._psutil = psutil
            except ImportError:
                pass
        self._found_at = -float("inf")
        self._zone_files: list[tuple[str, str]] = []  # (type, temp path)
        self._clock_files: dict[str, tuple[str, str]] = {}  # backend/ddr -> (cur, max)
        self._clock_tops: dict[str, float] = {}  # backend/ddr -> the top of its available clocks
        self._cpu_files: list[tuple[str, str, str]] = []
        self._npu_load = ""
        self._load_files: dict[Backend, tuple[str, float | None]] = {}  # devfreq's load, and its window
        self._missing = True  # a file found before could not be read: look again

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def discover(self) -> None:
        """Find which of the files this reads exist now."""
        self._found_at = time.monotonic()
        zones = []
        for zone_dir in sorted(glob.glob(self._path("class", "thermal", "thermal_zone*"))):
            try:
                with open(os.path.join(zone_dir, "type"), "rb") as f:
                    kind = f.read(64).decode("ascii", "replace").strip()
            except OSError:
                continue
            if kind:
                zones.append((kind, os.path.join(zone_dir, "temp")))
        self._zone_files = zones
        clocks = {}
        tops = {}
        loads = {}
        for name, device in self.devfreq.items():
            base = self._path("class", "devfreq", device)
            if os.path.isdir(base):
                clocks[name] = (os.path.join(base, "cur_freq"), os.path.join(base, "max_freq"))
                # max_freq is the current cap, which the thermal governor lowers: the top of the
                # clocks the device lists is its real maximum, against which throttling shows
                top = _top_frequency(os.path.join(base, "available_frequencies"))
                if top is not None:
                    tops[name] = top
                if name in ("gpu", "npu") and os.path.exists(load := os.path.join(base, "load")):
                    polling_ms = read_number(os.path.join(base, "polling_interval"))
                    window = RKNPU_LOAD_WINDOW_S if name == "npu" else None if polling_ms is None else polling_ms / 1e3
                    loads[Backend(name)] = (load, window)
        self._clock_files = clocks
        self._clock_tops = tops
        self._load_files = loads
        cpus = []
        for cpufreq in sorted(glob.glob(self._path("devices", "system", "cpu", "cpu[0-9]*", "cpufreq"))):
            cpus.append((os.path.join(cpufreq, "scaling_cur_freq"), os.path.join(cpufreq, "scaling_max_freq"),
                         os.path.join(cpufreq, "cpuinfo_max_freq")))  # fmt: skip
        self._cpu_files = cpus
        load = self._path("kernel", "debug", "rknpu", "load")
        self._npu_load = load if os.path.exists(load) else ""

    def read(self) -> Snapshot:
        now = time.monotonic()
        if now - self._found_at >= self.rediscover_s and (self._missing or not self.found_anything()):
            self.discover()
        self._missing = False
        zones: dict[str, float] = {}
        for kind, path in self._zone_files:
            milli = read_number(path)
            if milli is None:
                self._missing = True
            else:
                zones[kind] = milli / 1000.0
        temps: dict[Backend, float] = {}
        for kind, celsius in zones.items():
            backend = self.zones.get(kind)
            if backend is not None and celsius > temps.get(backend, -math.inf):
                temps[backend] = celsius  # a processor's hottest zone: the one its governor throttles on
        clocks: dict[str, tuple[float | None, float | None, float | None]] = {}
        for name in self._clock_files:
            cur, cap, top = self._clock(name)
            if cur is None or top is None:
                self._missing = True
            clocks[name] = (cur, cap, top)
        if self._cpu_files:
            cores = [BackendReading(freq_hz=_khz(cur), max_freq_hz=_khz(top), cap_hz=_khz(cap))
                     for cur, cap, top in self._cpu_files]  # fmt: skip
            known = [(ratio, core) for core in cores if (ratio := core.clock_ratio()) is not None]
            if known:  # the fastest core: what a CPU stage runs on
                core = max(known, key=lambda rc: rc[0])[1]
                clocks["cpu"] = (core.freq_hz, core.cap_hz, core.max_freq_hz)
            else:
                self._missing = True
        loads: dict[Backend, tuple[float, float | None]] = {}  # and their windows
        for backend, (path, window) in self._load_files.items():
            load = read_devfreq_load(path)
            if load is None:
                self._missing = True
            else:
                loads[backend] = (load, window)
        if self._npu_load:  # rknpu's own count, per core, where debugfs is readable: rather than devfreq's
            npu = read_npu_load(self._npu_load)
            if npu is not None:
                loads[Backend.NPU] = (npu, RKNPU_LOAD_WINDOW_S)
        if self._psutil is not None:
            with contextlib.suppress(Exception):  # psutil on an odd system: the CPU's load is unknown
                loads[Backend.CPU] = (self._psutil.cpu_percent(interval=None) / 100.0, None)  # since the last read
        backends: dict[Backend, BackendReading] = {}
        for backend in Backend:
            cur, cap, top = clocks.get(backend.value, (None, None, None))
            load, window = loads.get(backend, (None, None))
            reading = BackendReading(temps.get(backend), cur, top, load, cap, window)
            if reading != EMPTY:
                backends[backend] = reading
        ddr_cur, _, ddr_max = clocks.get("ddr", (None, None, None))
        return Snapshot(now, backends, ddr_cur, ddr_max, zones)

    def read_clocks(self, previous: Snapshot) -> Snapshot:
        """``previous`` with the devfreq clocks read now (two or three small files: about a
        quarter of a full read); temperatures, loads and the CPU's clock are carried over."""
        now = time.monotonic()
        backends = dict(previous.backends)
        ddr_cur, ddr_max = previous.ddr_freq_hz, previous.ddr_max_freq_hz
        for name in self._clock_files:
            cur, cap, top = self._clock(name)
            if cur is None:
                self._missing = True
                continue
            if name == "ddr":
                ddr_cur, ddr_max = cur, top
                continue
            backend = Backend(name)
            backends[backend] = dataclasses.replace(backends.get(backend, EMPTY), freq_hz=cur, max_freq_hz=top,
                                                    cap_hz=cap)  # fmt: skip
        return Snapshot(now, backends, ddr_cur, ddr_max, previous.zones)

    def _clock(self, name: str) -> tuple[float | None, float | None, float | None]:
        """A devfreq device's current clock, its cap now (``max_freq``, which the thermal governor
        lowers) and its maximum (the top of its available clocks if listed, else the cap)."""
        cur_path, max_path = self._clock_files[name]
        cap = read_number(max_path)
        return read_number(cur_path), cap, self._clock_tops.get(name) or cap

    def found_anything(self) -> bool:
        """Whether the last :meth:`discover` found any file to read (psutil's CPU load aside)."""
        return bool(self._zone_files or self._clock_files or self._cpu_files or self._npu_load or self._load_files)

    def __repr__(self) -> str:
        return f"SysfsTelemetry(root={self.root!r})"


EMPTY = BackendReading()


def _khz(path: str) -> float | None:
    """A cpufreq file's kHz, in Hz (None: unreadable)."""
    value = read_number(path)
    return None if value is None else value * 1e3
