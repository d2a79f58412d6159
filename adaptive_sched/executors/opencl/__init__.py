"""The GPU backend (registry name ``gpu_opencl``): both stages as OpenCL kernels through pyopencl.

One concern per module:

==============  ==============================================================
``device``      finding and opening an OpenCL device; :class:`Tuning`
``programs``    the program and kernel cache (each variant built once)
``buffers``     the pool of device scratch buffers, reused across runs
``kernels``     the OpenCL C sources
``executor``    :class:`OpenCLExecutor`: weights on the device, launches, timing
==============  ==============================================================

Importing this package imports neither pyopencl nor the executor module (the registry
imports :mod:`.executor` when a ``gpu_opencl`` backend is created); pyopencl is imported
when an executor probes its device.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("OpenCLExecutor", "Tuning"):
        from . import executor

        return getattr(executor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["OpenCLExecutor", "Tuning"]
