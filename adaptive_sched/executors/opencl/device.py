"""Finding and opening an OpenCL device, and the kernels' block shapes (:class:`Tuning`).

:func:`find_device` tries the devices matching a platform and device name (GPUs
first) and keeps the first one that really builds and runs a tiny kernel: a platform
can list a device whose compiler fails (PyPI-bundled PoCL on some hosts). pyopencl is
imported here, inside :func:`find_device`, never at import.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from ...errors import ConfigError
from . import kernels

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tuning:
    """Block shapes and work-group sizes of the kernels.

    The CPU defaults were measured on PoCL (2 cores, AVX2). The GPU defaults are a
    starting point for Valhall (Mali-G610), which has fewer registers per work-item
    than a CPU core has vector registers; measure with ``benchmarks/bench_opencl_gemm.py``
    and override through the ``tuning`` option.

    Parameters
    ----------
    gemm_rows : int
        Output rows per work-item in the prefill GEMM (``R``).
    gemm_vec : int
        Vector width of a column block: 2, 4, 8 or 16 (``VW``).
    gemm_unroll : int
        Unroll factor of the reduction loop.
    gemm_local_rows : int or None
        Work-items per work-group along rows; a group then shares one column strip of the
        weights, which stays in cache while every row block uses it. None lets the driver choose.
    gemv_max_rows : int
        ``batch * n`` up to this uses the GEMV variant (rows = ``batch * n``).
    gemv_col_vecs : int
        Column vectors per work-item in the GEMV (independent loads in flight).
    attn_rows : int
        Queries per work-item in prefill attention (rounded down to a power of two <= n).
    attn_vec : int
        Largest vector width over the head dimension.
    attn_tile : int
        Keys scored together before the softmax state is updated (a divisor of 1024).
    attn_parallel : int or None
        Work-items attention should have: when ``batch * heads`` query blocks are fewer (decode),
        the keys are split (flash-decoding) and the splits combined. None: one per compute unit
        on a CPU, 256 per compute unit on a GPU.
    attn_split_min_keys : int
        Fewest keys per split.
    """

    gemm_rows: int = 8
    gemm_vec: int = 16
    gemm_unroll: int = 2
    gemm_local_rows: int | None = 16
    gemv_max_rows: int = 4
    gemv_col_vecs: int = 4
    attn_rows: int = 4
    attn_vec: int = 16
    attn_tile: int = 8
    attn_parallel: int | None = None
    attn_split_min_keys: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in ("gemm_local_rows", "attn_parallel"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"tuning.{f.name} must be a positive integer, got {value!r}")
        if self.gemm_vec not in (2, 4, 8, 16):
            raise ConfigError(f"tuning.gemm_vec must be one of 2, 4, 8, 16, got {self.gemm_vec!r}")
        if 1024 % self.attn_tile:
            raise ConfigError(f"tuning.attn_tile must divide 1024, got {self.attn_tile!r}")
        if self.attn_vec not in (1, 2, 4, 8, 16):
            raise ConfigError(f"tuning.attn_vec must be one of 1, 2, 4, 8, 16, got {self.attn_vec!r}")

    @classmethod
    def for_device(cls, is_gpu: bool, overrides: Mapping[str, Any] | None) -> Tuning:
        """Defaults for a GPU or a CPU device, with ``overrides`` (unknown keys are an error)."""
        base = cls(gemm_rows=4, gemm_vec=8, gemm_local_rows=None, attn_rows=1, attn_vec=4) if is_gpu else cls()
        overrides = dict(overrides or {})
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            known = ", ".join(f.name for f in fields(cls))
            raise ConfigError(f"tuning: unknown key(s) {', '.join(sorted(unknown))} (known: {known})")
        return replace(base, **overrides)


@dataclass
class Device:
    """The OpenCL objects of the chosen device, and the tuning chosen for it."""

    cl: Any
    platform: Any
    device: Any
    context: Any
    queue: Any
    is_gpu: bool
    has_fp16: bool
    #: build options of the quantisation kernels (correctly rounded division when offered)
    quantize_options: str
    tuning: Tuning

    @property
    def name(self) -> str:
        """``"platform / device"``."""
        return f"{self.platform.name} / {self.device.name}"


def find_device(
    platform: str | None, device: str | None, build_options: str = "", tuning: Mapping[str, Any] | None = None
) -> Device | str:
    """The first usable device matching ``platform`` and ``device`` (substrings), or why there is none.

    Never raises for a missing or broken OpenCL installation: the reason is returned as a
    one-line string.
    """
    try:
        import pyopencl as cl
    except ImportError as exc:
        return f"pyopencl is not installed ({exc}); install adaptive-sched[opencl]"
    try:
        platforms = cl.get_platforms()
    except Exception as exc:  # no ICD loader configuration, or no vendor ICD at all
        return f"no OpenCL platform found ({short_error(exc)})"

    want_p = (platform or "").lower()
    want_d = (device or "").lower()
    seen: list[str] = []
    candidates: list[tuple[Any, Any]] = []
    for plat in platforms:
        try:
            devices = plat.get_devices()
        except Exception as exc:
            seen.append(f"{plat.name!r}: no devices ({short_error(exc)})")
            continue
        for dev in devices:
            seen.append(f"{plat.name!r}/{dev.name!r}")
            if want_p in plat.name.lower() and want_d in dev.name.lower():
                candidates.append((plat, dev))
    if not candidates:
        found = "; ".join(seen) or "none"
        return f"no OpenCL device matches platform={platform!r} device={device!r} (found: {found})"

    order = {cl.device_type.GPU: 0, cl.device_type.ACCELERATOR: 1}
    candidates.sort(key=lambda pd: min((r for t, r in order.items() if pd[1].type & t), default=2))
    failures = []
    for plat, dev in candidates:
        try:
            opened = open_device(cl, plat, dev, build_options, tuning)
        except Exception as exc:
            failures.append(f"{plat.name!r}/{dev.name!r}: {short_error(exc)}")
            logger.debug("OpenCL device %r on %r is unusable: %s", dev.name, plat.name, exc)
            continue
        logger.info("OpenCL executor uses %r on platform %r", dev.name, plat.name)
        return opened
    return "no matching OpenCL device can build a kernel: " + "; ".join(failures)


def open_device(cl: Any, plat: Any, dev: Any, build_options: str, tuning: Mapping[str, Any] | None) -> Device:
    """Create a context and a profiling queue on ``dev`` and prove its compiler works."""
    context = cl.Context([dev])
    queue = cl.CommandQueue(context, dev, properties=cl.command_queue_properties.PROFILING_ENABLE)
    program = compile_program(cl, context, kernels.PROBE, build_options)
    probe = np.zeros(1, dtype=np.float32)
    buf = cl.Buffer(context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=probe)
    program.probe(queue, (1,), None, buf)
    cl.enqueue_copy(queue, probe, buf)  # blocking: the kernel really ran
    is_gpu = bool(dev.type & cl.device_type.GPU)
    quantize_options = build_options
    if dev.single_fp_config & cl.device_fp_config.CORRECTLY_ROUNDED_DIVIDE_SQRT:
        # x / scale must round like numpy's division, or rint() can land one step away
        quantize_options += " -cl-fp32-correctly-rounded-divide-sqrt"
    return Device(
        cl=cl,
        platform=plat,
        device=dev,
        context=context,
        queue=queue,
        is_gpu=is_gpu,
        has_fp16="cl_khr_fp16" in dev.extensions,
        quantize_options=quantize_options,
        tuning=Tuning.for_device(is_gpu, tuning),
    )


def compile_program(cl: Any, context: Any, source: str, options: str) -> Any:
    """Build ``source`` quietly (the build log of a successful build is noise)."""
    with warnings.catch_warnings():
        # a successful build with a non-empty log (PoCL's ABI notes) is not worth a warning
        warnings.simplefilter("ignore", cl.CompilerWarning)
        # -w: some compilers (PoCL's clang) print warnings to stderr themselves
        return cl.Program(context, source).build(options=["-w", *options.split()])


def short_error(exc: BaseException) -> str:
    """One line out of a (possibly very long) OpenCL build log."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    text = (errors or lines or [type(exc).__name__])[0]
    text = " - ".join(dict.fromkeys(text.split(" - ")))  # pyopencl repeats "clX failed: CODE" per device
    return text if len(text) <= 200 else text[:197] + "..."
