"""The simulated backend: reference outputs, modelled latencies from a :class:`SimulatedDevice`.

Several executors (one per backend) share one device, so heat, contention and the virtual
clock are common to them, as on a real SoC::

    >>> from adaptive_sched.sim import SimulatedDevice
    >>> from adaptive_sched.types import Shape
    >>> dev = SimulatedDevice("rk3588", seed=0)
    >>> gpu, npu = SimExecutor("gpu", device=dev), SimExecutor("npu", device=dev)
    >>> shape = Shape(n=1, d=1024, kv_len=128, precision="int8")
    >>> q = gpu.run("qkv", shape)                       # latency only: no inputs, no output
    >>> a = npu.run("attn", shape, after=gpu.backend)   # pays the GPU -> NPU handoff
    >>> q.output is None and abs(dev.now - q.latency_s - a.latency_s) < 1e-12
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..sim import DeviceProfile, SimulatedDevice, load_profile, why_unsupported
from ..stages import reference
from ..types import Backend, Shape, Stage
from .base import Executor, RunResult


class SimExecutor(Executor):
    """One backend of a simulated device.

    Parameters
    ----------
    backend : {"gpu", "npu", "cpu"}, default "gpu"
    device : SimulatedDevice, optional
        The device shared with the other backends' executors. When None, the executor
        builds its own (lazily, on first use) from ``profile``, ``seed`` and ``drift``.
    profile : str or Path, default "rk3588"
        Device profile name or path, used when ``device`` is None.
    seed : int, default 0
    **drift
        ``noise``, ``thermal``, ``contention``, ``steps``: passed to
        :class:`~adaptive_sched.sim.SimulatedDevice` when it is built here.

    With inputs, the output is the numpy reference of :mod:`adaptive_sched.stages`
    (bit for bit); without, the run is latency-only. Either way the latency comes from
    the device model and advances its virtual clock.
    """

    kind = "sim"
    OPTIONS = MappingProxyType({
        "device": "the simulated device shared with the other backends (built by the scheduler)",
        "profile": "device profile name or path, when no device is given",
        "seed": "seed of the device built here",
        "noise": "latency noise of the device built here",
        "thermal": "thermal drift of the device built here",
        "contention": "background load of the device built here",
        "steps": "scripted changes of the device built here",
    })  # fmt: skip
    INTERNAL_OPTIONS = frozenset({"device"})
    RUNS_INLINE = True  # its latency is modelled: a run never waits for a device
    latency_only = True

    def __init__(
        self,
        backend: Backend | str = Backend.GPU,
        device: SimulatedDevice | None = None,
        profile: str = "rk3588",
        seed: int = 0,
        **drift: Any,
    ) -> None:
        super().__init__(backend, device=device, profile=profile, seed=seed, **drift)
        unknown = set(drift) - {"noise", "thermal", "contention", "steps"}
        if unknown:
            raise ConfigError(f"sim executor: unknown option(s) {', '.join(sorted(unknown))}")
        self._device = device
        self._support: dict[tuple[Stage, Shape], str | None] = {}
        self._profile_name = profile
        self._seed = seed
        self._drift = drift

    @property
    def device(self) -> SimulatedDevice:
        """The simulated device (built on first use when none was given)."""
        if self._device is None:
            self._device = SimulatedDevice(self._profile_name, seed=self._seed, **self._drift)
        return self._device

    def _profile(self) -> DeviceProfile:
        # Reading the (cached) profile does not build a device: supports() stays cheap.
        return self._device.profile if self._device is not None else load_profile(self._profile_name)

    def _probe(self) -> str | None:
        profile = self._profile()
        if self.backend not in profile.backends:
            return f"device profile {profile.name!r} has no {self.backend.value} backend"
        return None

    def _supports(self, stage: Stage, shape: Shape) -> str | None:
        # The base class asks twice per run; the answer is a pure function of the shape.
        key = (stage, shape)
        if key not in self._support:
            self._support[key] = why_unsupported(self._profile(), stage, shape, self.backend)
        return self._support[key]

    def _run(
        self, stage: Stage, shape: Shape, inputs: Mapping[str, np.ndarray] | None, after: Backend | None
    ) -> RunResult:
        output = reference(stage, shape, inputs) if inputs is not None else None
        return RunResult(output=output, latency_s=self.device.run(stage, shape, self.backend, after))
