"""The GPU backend (registry name ``gpu_opencl``): both stages as OpenCL kernels through pyopencl.

One concern per module:

==============  ==============================================================
``device``      finding and opening an OpenCL device; :class:`Tuning`
``programs``    the program and kernel cache (each variant built once)
``buffers``     the pool of device scratch buffers, reused across runs
``geometry``    macros and work sizes of each kernel for a shape; the kernels' limits
``kernels``     the OpenCL C sources
``executor``    :class:`OpenCLExecutor`: weights on the device, launches, timing
==============  ==============================================================

What runs on the device
-----------------------
* ``qkv``: a register-blocked GEMM (each work-item keeps ``R`` rows by ``VW`` columns of
  the output in ``floatVW`` accumulators); for decode-sized inputs (``batch * n`` of a few
  rows) the same kernel is built as a GEMV that gives each work-item several column vectors
  instead of several rows.
* ``attn``: causal multi-head attention with a numerically stable (online) softmax over
  the KV cache; each work-item owns a few queries of one (batch, head).
* INT8: activations (per tensor) and weights (per output column) are quantised on the
  device exactly as :func:`adaptive_sched.stages.quantize_symmetric` does, and products
  accumulate in int32 (or in float32 chunks that are exact, see
  :data:`~adaptive_sched.executors.opencl.kernels.GEMM`), so outputs match the reference.

FP16 precision is computed with float32 arithmetic everywhere. What changes with ``fp16``
is the *storage* of cached weights: half (2 bytes, read with the core ``vload_half``) or
float32. ``float16`` input arrays are read as half directly (no host conversion) unless
``fp16="float"``.

Timing: ``RunResult.latency_s`` is the wall time of the whole call (uploads, quantisation,
kernels, read-back); ``RunResult.device_s`` is the sum of the kernels' execution times from
OpenCL event profiling.

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
