"""The GPU backend: both stages as OpenCL kernels through pyopencl.

Written for the Mali-G610 of an RK3588 and tested on PoCL (OpenCL on the host CPU).
pyopencl is imported only when the executor probes its device, so importing
:mod:`adaptive_sched.executors` never imports it.

See :mod:`adaptive_sched.executors.opencl` for what runs on the device, in which
storage, and how a run is timed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from ...errors import ConfigError, ExecutorError, ExecutorUnavailable
from ...types import Backend, Precision, Shape, Stage
from ..base import Executor, RunResult, WeightCache, read_only
from .buffers import BufferPool, round_up
from .device import Device, Tuning, find_device, short_error
from .geometry import attn_config, ceil_div, gemm_config, tensor_sizes, unsupported
from .kernels import FLOAT, HALF, INT8
from .programs import Launch, ProgramCache

logger = logging.getLogger(__name__)

FP16_MODES = ("auto", "half", "float")
WEIGHT_CACHE_MODES = ("readonly", "identity", "off")


@dataclass
class _CachedWeights:
    """Device copies of one weight array (the :class:`WeightCache` keeps the array itself)."""

    buffer: Any
    code: int
    scale: Any = None  # per-column scales (INT8)
    nbytes: int = 0


def _release_weights(entry: _CachedWeights) -> None:
    for buf in (entry.buffer, entry.scale):
        if buf is not None:
            buf.release()


def _validate_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    text = str(value).lower()
    if text not in allowed:
        raise ConfigError(f"{name}: unknown value {value!r} (expected one of {', '.join(map(repr, allowed))})")
    return text


class OpenCLExecutor(Executor):
    """Runs ``qkv`` and ``attn`` as OpenCL kernels on a GPU (or any OpenCL device).

    Creating the executor touches no device; :meth:`is_available` finds the device, builds
    a tiny kernel on it and never raises.

    Parameters
    ----------
    backend : str, default "gpu"
        The backend name this executor answers for.
    platform, device : str, optional
        Case-insensitive substrings of the OpenCL platform and device names (``"mali"``,
        ``"rusticl"``, ``"portable"``). Among matching devices GPUs come first; the first one
        that builds the probe kernel is used. Never "the first device" blindly: a platform
        that lists a device whose compiler fails (PyPI-bundled PoCL on some hosts) is skipped.
    fp16 : {"auto", "half", "float"}, default "auto"
        Storage of cached weights for FP16 precision. ``"auto"`` is half when the device has
        ``cl_khr_fp16`` and float32 otherwise; ``"half"`` forces half storage (``vload_half``
        is core OpenCL); ``"float"`` uses float32 storage and converts ``float16`` inputs on the
        host. Arithmetic is float32 in every mode.
    weight_cache : {"readonly", "identity", "off"}, default "readonly"
        When the weights (``w``) of ``qkv`` are uploaded once and reused: ``"readonly"`` for
        arrays nobody can write to (``w.setflags(write=False)`` and every base read-only);
        ``"identity"`` whenever the same array object comes back (the caller promises not to
        modify it in place); ``"off"`` uploads them on every run.
    max_cached_weights : int, default 4
        Weight arrays kept on the device (least recently used are dropped).
    tuning : mapping, optional
        Overrides of :class:`Tuning` (block shapes, work-group sizes).
    build_options : str, optional
        Extra options for every OpenCL program build.

    Examples
    --------
    >>> ex = OpenCLExecutor(platform="portable")          # doctest: +SKIP
    >>> ex.is_available(), ex.unavailable_reason          # doctest: +SKIP
    (True, '')
    >>> ex.run("qkv", Shape(n=128, d=1024)).device_s     # doctest: +SKIP
    0.0101
    """

    kind = "gpu_opencl"

    OPTIONS = MappingProxyType({
        "platform": "OpenCL platform name substring",
        "device": "OpenCL device name substring",
        "fp16": "FP16 arithmetic: auto, half or float",
        "weight_cache": "keep device copies of weights: readonly, identity or off",
        "max_cached_weights": "device copies of weights kept",
        "tuning": "kernel tuning overrides",
        "build_options": "extra options for every OpenCL program build",
    })  # fmt: skip

    def __init__(
        self,
        backend: Backend | str = Backend.GPU,
        platform: str | None = None,
        device: str | None = None,
        fp16: str = "auto",
        weight_cache: str = "readonly",
        max_cached_weights: int = 4,
        tuning: Mapping[str, Any] | None = None,
        build_options: str = "",
        **options: Any,
    ) -> None:
        super().__init__(backend, **options)
        self.platform = None if platform is None else str(platform)
        self.device = None if device is None else str(device)
        self.fp16 = _validate_choice("fp16", fp16, FP16_MODES)
        self.weight_cache = _validate_choice("weight_cache", weight_cache, WEIGHT_CACHE_MODES)
        if isinstance(max_cached_weights, bool) or not isinstance(max_cached_weights, int) or max_cached_weights < 0:
            raise ConfigError(f"max_cached_weights must be an integer >= 0, got {max_cached_weights!r}")
        self.max_cached_weights = max_cached_weights
        self.tuning_overrides = dict(tuning or {})
        Tuning.for_device(False, self.tuning_overrides)  # reject unknown keys now, not at first run
        self.build_options = str(build_options)

        self._lock = threading.RLock()
        self._dev: Device | None = None
        self._programs = ProgramCache(self.kind, self.build_options)
        self._pool = BufferPool(self.kind)
        # weights (variant: int8, half or float storage) and biases, kept on the device
        self._weights: WeightCache[_CachedWeights] = WeightCache(max_cached_weights, _release_weights)
        self._biases: WeightCache[_CachedWeights] = WeightCache(max_cached_weights, _release_weights)
        self._zero_bias_len = 0  # floats of the pooled all-zero bias that are known to be zero
        self._counters = {
            "weight_uploads": 0,
            "weight_cache_hits": 0,
            "weight_cache_fills": 0,
            "weight_evictions": 0,
        }

    # -- availability ---------------------------------------------------------
    def _probe(self) -> str | None:
        with self._lock:  # two threads asking at once must not open two contexts
            found = find_device(self.platform, self.device, self.build_options, self.tuning_overrides)
            if isinstance(found, str):
                return found
            self._dev = found
            return None

    # -- introspection --------------------------------------------------------
    @property
    def device_name(self) -> str | None:
        """``"platform / device"`` of the device in use, or None before a successful probe."""
        if not self.is_available() or self._dev is None:
            return None
        return self._dev.name

    @property
    def half_weights(self) -> bool:
        """True if cached FP16 weights are stored as half on this device."""
        self.is_available()
        return self.fp16 == "half" or (self.fp16 == "auto" and self._dev is not None and self._dev.has_fp16)

    def cache_info(self) -> dict[str, int]:
        """Counters of the program, buffer and weight caches (for tests and diagnostics)."""
        with self._lock:
            return dict(
                self._counts(),
                programs=len(self._programs),
                buffers=len(self._pool),
                buffer_bytes=self._pool.nbytes,
                cached_weights=len(self._weights),
                cached_weight_bytes=sum(e.nbytes for e in self._weights.values()),
            )

    def _counts(self) -> dict[str, int]:
        """Every counter, the caches' own included."""
        return dict(
            self._counters,
            program_builds=self._programs.builds,
            first_launches=self._programs.first_launches,
            buffer_allocs=self._pool.allocs,
        )

    @property
    def _tuning(self) -> Tuning:
        return self._dev.tuning if self._dev is not None else Tuning()

    # -- support --------------------------------------------------------------
    def _supports(self, stage: Stage, shape: Shape) -> str | None:
        reason = unsupported(stage, shape)
        if reason is not None:
            return reason
        if self.is_available() and self._dev is not None:
            sizes = tensor_sizes(stage, shape)
            biggest = max(sizes.values())
            dev = self._dev.device
            total = 4 * sum(sizes.values()) * (2 if shape.precision is Precision.INT8 else 1)
            if 4 * biggest > dev.max_mem_alloc_size:
                return f"a {4 * biggest} byte buffer exceeds the device's max allocation ({dev.max_mem_alloc_size})"
            if total > dev.global_mem_size:
                return f"needs about {total} bytes of device memory, more than {dev.global_mem_size}"
        return None

    # -- building -------------------------------------------------------------
    def _require(self) -> Device:
        if not self.is_available() or self._dev is None:
            raise ExecutorUnavailable(f"{self.kind} is not available: {self.unavailable_reason}")
        return self._dev

    def _kernel(self, source_name: str, kernel_name: str, macros: Mapping[str, int]) -> Any:
        """The kernel ``kernel_name`` of program ``source_name`` built with ``macros`` (built once)."""
        return self._programs.kernel(self._require(), source_name, kernel_name, macros)

    @property
    def _attn_parallel(self) -> int:
        """Work-items the attention should have at least (``tuning.attn_parallel`` or a device default)."""
        if self._tuning.attn_parallel is not None:
            return self._tuning.attn_parallel
        dev = self._require()
        # a CPU core runs one work-item at a time; a Mali core keeps hundreds of threads in flight
        return dev.device.max_compute_units * (256 if dev.is_gpu else 1)

    def _prepare(self, stage: Stage, shape: Shape) -> None:
        """Build the programs ``stage`` at ``shape`` needs for float32 inputs (the common case)."""
        with self._lock:
            self._require()
            quant = shape.precision is Precision.INT8
            if stage is Stage.QKV:
                w_code = INT8 if quant else (HALF if self._weights_cacheable_as_half() else FLOAT)
                codes = [(FLOAT, INT8)] if quant else sorted({(FLOAT, FLOAT), (FLOAT, w_code)})
                for x_code, wc in codes:
                    macros, _, _ = gemm_config(self._tuning, shape, x_code, wc, quant)
                    self._kernel("GEMM", "gemm", macros)
            else:
                code = INT8 if quant else FLOAT
                macros, _, _ = attn_config(self._tuning, shape, (code, code, code), quant, self._attn_parallel)
                self._kernel("ATTENTION", "attention_int8" if quant else "attention", macros)
            if quant or (stage is Stage.QKV and self.half_weights):
                self._kernel("QUANTIZE", "quantize", {"VW": 16})

    def _weights_cacheable_as_half(self) -> bool:
        return self.half_weights and self.weight_cache != "off" and self.max_cached_weights > 0

    # -- buffers --------------------------------------------------------------
    def _buffer(self, role: str, nbytes: int) -> Any:
        """A device buffer of at least ``nbytes`` for ``role``, reused across runs and shapes."""
        return self._pool.get(self._require(), role, nbytes)

    def _upload(self, launch: Launch, role: str, array: np.ndarray) -> Any:
        dev = self._require()
        array = np.ascontiguousarray(array)
        buf = self._buffer(role, array.nbytes)
        launch.keep.append(array)
        launch.transfers.append(dev.cl.enqueue_copy(dev.queue, buf, array, is_blocking=False))
        return buf

    def _host(self, array: np.ndarray, allow_half: bool = True) -> tuple[np.ndarray, int]:
        """``array`` as the host data to upload and its storage code (float16 stays half if allowed)."""
        if array.dtype == np.float16 and allow_half and self.fp16 != "float":
            return np.ascontiguousarray(array), HALF
        return np.ascontiguousarray(array, dtype=np.float32), FLOAT

    def _enqueue(self, launch: Launch, name: str, kernel: Any, gsize: tuple, lsize: tuple | None, *args: Any) -> None:
        self._programs.enqueue(self._require(), launch, name, kernel, gsize, lsize, *args)

    # -- quantisation ---------------------------------------------------------
    def _quantize_tensor(
        self, launch: Launch, role: str, src: Any, count: int, scales: Any, slot: int, as_float: bool = False
    ) -> Any:
        """Quantise ``count`` floats of ``src`` per tensor; the scale goes to ``scales[slot]``.

        The result is an int8 buffer, or with ``as_float`` the same integers stored as floats.
        """
        parts = min(64, ceil_div(count, 4096))
        chunk = round_up(ceil_div(count, parts), 16)
        parts = ceil_div(count, chunk)
        partial = self._buffer(f"{role}.absmax", 4 * parts)
        out = self._buffer(f"{role}.q", count * (4 if as_float else 1))
        i32 = np.int32
        self._enqueue(
            launch,
            f"absmax_{role}",
            self._kernel("QUANTIZE", "absmax_partial", {"VW": 16}),
            (parts,),
            None,
            src,
            i32(count),
            i32(chunk),
            partial,
        )
        self._enqueue(
            launch,
            f"quantize_{role}",
            self._kernel("QUANTIZE", "quantize_to_float" if as_float else "quantize", {"VW": 16}),
            (parts,),
            None,
            src,
            i32(count),
            i32(chunk),
            partial,
            i32(parts),
            out,
            scales,
            i32(slot),
        )
        return out

    # -- weights --------------------------------------------------------------
    def _cacheable(self, w: np.ndarray) -> bool:
        if self.weight_cache == "off" or self.max_cached_weights == 0:
            return False
        return self.weight_cache == "identity" or read_only(w)

    def _weights_for(self, launch: Launch, w: np.ndarray, quant: bool) -> tuple[Any, int, Any]:
        """Device weights ``(buffer, storage code, column scales or None)``, from the cache when allowed."""
        cacheable = self._cacheable(w)
        variant = "int8" if quant else ("half" if self.half_weights else "float")
        if cacheable:
            hit = self._weights.get(w, variant)
            if hit is not None:
                self._counters["weight_cache_hits"] += 1
                return hit.buffer, hit.code, hit.scale
        self._counters["weight_uploads"] += 1
        if cacheable:
            self._counters["weight_cache_fills"] += 1
        k_rows, n_cols = w.shape
        count = k_rows * n_cols
        host, code = self._host(w, allow_half=not quant)
        if not cacheable:
            src = self._upload(launch, "w", host)
            if not quant:
                return src, code, None
            scale = self._buffer("w.scale", 4 * n_cols)
            q = self._buffer("w.q", count)
            self._quantize_columns(launch, src, k_rows, n_cols, scale, q)
            return q, INT8, scale

        # a cached entry owns its buffers; the float upload goes through the shared scratch
        dev = self._require()
        mf = dev.cl.mem_flags
        needs_kernel = quant or (variant == "half" and code == FLOAT)
        src = self._upload(launch, "w", host) if needs_kernel else None
        try:
            if quant:
                buf = dev.cl.Buffer(dev.context, mf.READ_WRITE, count)
                scale = dev.cl.Buffer(dev.context, mf.READ_WRITE, 4 * n_cols)
                self._quantize_columns(launch, src, k_rows, n_cols, scale, buf)
                entry = _CachedWeights(buf, INT8, scale, count + 4 * n_cols)
            elif src is not None:
                buf = dev.cl.Buffer(dev.context, mf.READ_WRITE, 2 * count)
                chunk = 1 << 16
                self._enqueue(
                    launch,
                    "to_half",
                    self._kernel("QUANTIZE", "to_half", {"VW": 16}),
                    (ceil_div(count, chunk),),
                    None,
                    src,
                    np.int32(count),
                    np.int32(chunk),
                    buf,
                )
                entry = _CachedWeights(buf, HALF, None, 2 * count)
            else:
                buf = dev.cl.Buffer(dev.context, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=host)
                entry = _CachedWeights(buf, code, None, host.nbytes)
        except ExecutorError:
            raise
        except Exception as exc:
            raise ExecutorError(
                f"{self.kind}: cannot keep weights of shape {w.shape} on the device: {short_error(exc)}"
            ) from exc
        dropped = self._weights.put(w, variant, entry)
        if dropped:
            first = self._counters["weight_evictions"] == 0
            self._counters["weight_evictions"] += dropped
            if first:
                # A model with more layers than the cache holds uploads every layer's weights on
                # every run, and each of those runs is cold, so the scheduler never learns this backend.
                logger.warning(
                    "%s: more weight arrays in use than max_cached_weights=%d; the least recently used "
                    "are dropped and uploaded again when they come back",
                    self.kind,
                    self.max_cached_weights,
                )
        return entry.buffer, entry.code, entry.scale

    def _quantize_columns(self, launch: Launch, src: Any, k_rows: int, n_cols: int, scale: Any, out: Any) -> None:
        i32 = np.int32
        rows = 64
        self._enqueue(
            launch,
            "column_scale",
            self._kernel("QUANTIZE", "column_scale", {"VW": 16}),
            (ceil_div(n_cols, 16),),
            None,
            src,
            i32(k_rows),
            i32(n_cols),
            scale,
        )
        self._enqueue(
            launch,
            "quantize_columns",
            self._kernel("QUANTIZE", "quantize_columns", {"VW": 16}),
            (ceil_div(n_cols, 16), ceil_div(k_rows, rows)),
            None,
            src,
            i32(k_rows),
            i32(n_cols),
            i32(rows),
            scale,
            out,
        )

    def _bias_for(self, launch: Launch, bias: np.ndarray | None, n_cols: int) -> Any:
        """The bias on the device: cached like the weights, zeros when there is none."""
        if bias is None:
            buf = self._buffer("b.zero", 4 * n_cols)
            if self._zero_bias_len < n_cols:  # new or grown buffer: its content is undefined
                self._upload(launch, "b.zero", np.zeros(n_cols, np.float32))
                self._zero_bias_len = n_cols
            return buf
        if not self._cacheable(bias):
            return self._upload(launch, "b", np.asarray(bias, np.float32).reshape(-1))
        hit = self._biases.get(bias)
        if hit is not None:
            return hit.buffer
        dev = self._require()
        self._counters["weight_cache_fills"] += 1
        host = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
        mf = dev.cl.mem_flags
        buf = dev.cl.Buffer(dev.context, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=host)
        self._biases.put(bias, None, _CachedWeights(buf, FLOAT, None, host.nbytes))
        return buf

    # -- running --------------------------------------------------------------
    def _run(
        self, stage: Stage, shape: Shape, inputs: Mapping[str, np.ndarray] | None, after: Backend | None
    ) -> RunResult:
        assert inputs is not None
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.kind} executor is closed")
            dev = self._require()
            launch = Launch()
            before = self._counts()
            start = time.perf_counter()
            try:
                if stage is Stage.QKV:
                    out, details = self._run_qkv(launch, shape, inputs)
                else:
                    out, details = self._run_attn(launch, shape, inputs)
            except (ExecutorError, ExecutorUnavailable):
                raise
            except dev.cl.Error as exc:
                raise ExecutorError(
                    f"{self.kind}: {stage.value} at {shape} failed on {dev.device.name!r}: {short_error(exc)}"
                ) from exc
            wall = time.perf_counter() - start
            per_kernel: dict[str, float] = {}
            for name, event in launch.kernels:
                per_kernel[name] = per_kernel.get(name, 0.0) + 1e-9 * (event.profile.end - event.profile.start)
            transfer = sum(1e-9 * (e.profile.end - e.profile.start) for e in launch.transfers)
            device_s = sum(per_kernel.values())
            # one-time costs: a program built, a buffer grown, weights converted into the cache, or
            # a kernel's first launch at a work size (PoCL compiles its work-group loop then)
            one_time = ("program_builds", "buffer_allocs", "weight_cache_fills", "first_launches")
            after_run = self._counts()
            cold = any(after_run[k] != before[k] for k in one_time)
        details.update(device=dev.device.name, kernels_s=per_kernel, transfer_s=transfer)
        return RunResult(
            output=out, latency_s=max(wall, 1e-9), device_s=max(device_s, 1e-9), details=details, cold=cold
        )

    def _run_qkv(self, launch: Launch, shape: Shape, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        dev = self._require()
        quant = shape.precision is Precision.INT8
        m, k_rows, n_cols = shape.batch * shape.n, shape.d, 3 * shape.d
        w_buf, w_code, w_scale = self._weights_for(launch, inputs["w"], quant)
        b_buf = self._bias_for(launch, inputs.get("b"), n_cols)
        x_host, x_code = self._host(inputs["x"].reshape(m, k_rows), allow_half=not quant)
        x_buf = self._upload(launch, "x", x_host)
        x_scale = self._buffer("x.scale", 4)
        if quant:
            # quantised activations as float-valued integers: exact, and cheaper to broadcast
            x_buf, x_code = self._quantize_tensor(launch, "x", x_buf, m * k_rows, x_scale, 0, as_float=True), FLOAT
        out_buf = self._buffer("out", 4 * m * n_cols)
        macros, gsize, lsize = gemm_config(self._tuning, shape, x_code, w_code, quant)
        i32 = np.int32
        self._enqueue(
            launch,
            "gemv" if macros["CB"] > 1 else "gemm",
            self._kernel("GEMM", "gemm", macros),
            gsize,
            lsize,
            x_buf,
            w_buf,
            b_buf,
            x_scale,
            w_scale if w_scale is not None else x_scale,
            out_buf,
            i32(m),
            i32(k_rows),
            i32(n_cols),
        )
        out = np.empty((shape.batch, shape.n, n_cols), np.float32)
        launch.transfers.append(dev.cl.enqueue_copy(dev.queue, out, out_buf))  # blocking
        storage = {FLOAT: "float", HALF: "half", INT8: "int8"}
        activations = "int8" if quant else storage[x_code]  # int8 values, held as floats for the GEMM
        return out, {"weights": storage[w_code], "activations": activations, "block": dict(macros)}

    def _run_attn(self, launch: Launch, shape: Shape, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        dev = self._require()
        quant = shape.precision is Precision.INT8
        scales = self._buffer("qkv.scale", 12)
        bufs: list[Any] = []
        codes: list[int] = []
        for name in ("q", "k", "v"):
            host, code = self._host(inputs[name], allow_half=not quant)
            buf = self._upload(launch, name, host)
            if quant:
                buf, code = self._quantize_tensor(launch, name, buf, host.size, scales, len(bufs)), INT8
            bufs.append(buf)
            codes.append(code)
        q_buf, k_buf = bufs[0], bufs[1]
        out_shape = inputs["q"].shape
        out_buf = self._buffer("out", 4 * int(np.prod(out_shape)))
        macros, gsize, chunk = attn_config(
            self._tuning, shape, (codes[0], codes[1], codes[2]), quant, self._attn_parallel
        )
        splits, rows, hd = gsize[2], shape.batch * shape.heads * shape.n, shape.head_dim
        i32 = np.int32
        geometry = (i32(shape.n), i32(shape.keys), np.float32(1.0 / math.sqrt(hd)), i32(chunk))
        if quant:
            stats = self._buffer("attn.stats", 8 * splits * rows)
            partial = self._buffer("attn.partial", 4 * splits * rows * hd) if splits > 1 else stats
            kern = self._kernel("ATTENTION", "attention_stats", macros)
            self._enqueue(launch, "attention_stats", kern, gsize, None, q_buf, k_buf, *geometry, scales, stats)
            kern = self._kernel("ATTENTION", "attention_int8", macros)
            self._enqueue(launch, "attention", kern, gsize, None, *bufs, *geometry, scales, stats, out_buf, partial)
            if splits > 1:
                kern = self._kernel("ATTENTION", "attention_sum_int8", macros)
                self._enqueue(
                    launch, "attention_combine", kern, (rows,), None, partial, i32(rows), i32(splits), scales, out_buf
                )
        else:
            partial = self._buffer("attn.partial", 4 * splits * rows * (hd + 2)) if splits > 1 else out_buf
            kern = self._kernel("ATTENTION", "attention", macros)
            self._enqueue(launch, "attention", kern, gsize, None, *bufs, *geometry, out_buf, partial)
            if splits > 1:
                kern = self._kernel("ATTENTION", "attention_combine", macros)
                self._enqueue(
                    launch, "attention_combine", kern, (rows,), None, partial, i32(rows), i32(splits), out_buf
                )
        out = np.empty(out_shape, np.float32)
        launch.transfers.append(dev.cl.enqueue_copy(dev.queue, out, out_buf))  # blocking
        storage = {FLOAT: "float", HALF: "half", INT8: "int8"}
        return out, {"activations": storage[codes[0]], "block": dict(macros, splits=splits, chunk=chunk)}

    # -- closing --------------------------------------------------------------
    def _close(self) -> None:
        with self._lock:
            dev = self._dev
            if dev is not None:
                try:
                    dev.queue.finish()
                except Exception as exc:  # a dying driver must not stop the release
                    logger.debug("OpenCL queue finish failed on close: %s", exc)
            self._weights.clear()  # releases the device copies
            self._biases.clear()
            self._pool.clear()
            self._programs.clear()
            self._dev = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(backend={self.backend.value!r}, platform={self.platform!r}, "
            f"device={self.device!r}, fp16={self.fp16!r})"
        )
