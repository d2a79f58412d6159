"""The cost model: pure functions of (profile, stage, shape, backend).

See :mod:`adaptive_sched.sim` for the formula and the effects a profile may switch on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..features import stage_flops, stage_mem_bytes
from ..types import Backend, Precision, Shape, Stage, parse_backend, parse_stage
from .schema import BackendProfile, DeviceProfile, PageStride


@dataclass(frozen=True)
class StageCost:
    """Noise-free cost of one stage run at the nominal clock, split by what scales it.

    ``fixed_s`` (launches, layout conversion, the page-stride penalty) does not depend on the backend's
    clock; ``compute_s`` scales with it, and so does ``memory_s`` when ``memory_clocked``
    (else it is bound by DRAM). The latency is
    ``fixed_s + max(compute_s, memory_s) * f_nominal / f_now`` with the clocked parts scaled.
    """

    fixed_s: float
    compute_s: float
    memory_s: float
    memory_clocked: bool = False

    def latency(self, clock_ratio: float = 1.0) -> float:
        """Latency at ``clock_ratio = f_now / f_nominal``."""
        memory = self.memory_s / clock_ratio if self.memory_clocked else self.memory_s
        return self.fixed_s + max(self.compute_s / clock_ratio, memory)


def _gemms(stage: Stage, shape: Shape) -> tuple[tuple[int, int, int, int], ...]:
    """The stage's matrix products as (count, M, K, N)."""
    b, n, d = shape.batch, shape.n, shape.d
    if stage is Stage.QKV:
        return ((1, b * n, d, 3 * d),)
    heads, hd, keys = shape.heads, shape.head_dim, shape.keys
    assert heads is not None
    return ((b * heads, n, hd, keys), (b * heads, n, keys, hd))  # Q K^T, then P V


def _input_elements(stage: Stage, shape: Shape) -> int:
    """Elements of every input of a stage (weights and KV caches included)."""
    b, n, d = shape.batch, shape.n, shape.d
    if stage is Stage.QKV:
        return b * n * d + 3 * d * d + 3 * d
    return b * d * (n + 2 * shape.keys)


def _activation_bytes(stage: Stage, shape: Shape) -> tuple[int, int]:
    """(input, output) activation bytes of a stage; weights and KV caches stay in place."""
    s, rows, d = shape.precision.itemsize, shape.batch * shape.n, shape.d
    if stage is Stage.QKV:
        return s * rows * d, s * rows * 3 * d
    return s * rows * 3 * d, s * rows * d  # the new token's Q, K and V in; the attention output out


def _ceil_to(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def bucketed_shape(bp: BackendProfile, stage: Stage, shape: Shape) -> Shape:
    """The shape ``backend`` actually runs: attention on a static-graph backend runs on the
    smallest prepared KV bucket holding ``kv_len + n`` keys (``shape`` itself otherwise, and
    when no bucket holds them: :func:`why_unsupported` then says so).
    """
    if stage is not Stage.ATTN or bp.kv_buckets is None:
        return shape
    bucket = bp.kv_buckets.bucket(shape.keys)
    if bucket is None or bucket == shape.keys:
        return shape
    return replace(shape, kv_len=bucket - shape.n)


def _occupancy(bp: BackendProfile, outputs: int) -> float:
    """Share of the rate and bandwidth a stage with ``outputs`` work-items reaches (small-tensor effect)."""
    return outputs / (outputs + bp.occupancy_half) if bp.occupancy_half > 0 else 1.0


def _gemm_s(bp: BackendProfile, precision: Precision, count: int, m: int, k: int, n: int, occupancy: float) -> float:
    """Compute seconds of ``count`` (M x K) @ (K x N) products: padded FLOPs over the effective rate."""
    s = precision.itemsize
    rate = bp.rates[precision]
    if bp.align is not None:
        k_elems = max(1, bp.align.k_bytes // s)
        k, n = _ceil_to(k, k_elems), _ceil_to(n, bp.align.n_elements[precision])
    eff = occupancy * rate.efficiency
    if bp.shape_half is not None:
        h = bp.shape_half
        eff *= (m / (m + h.m)) * (k / (k + h.k)) * (n / (n + h.n))
    if bp.row_align and m > bp.row_align and m % bp.row_align:
        if m < 2 * bp.row_align:
            eff *= bp.unaligned_efficiency  # more rows than one tile, fewer than two: the untiled path
        else:
            eff *= m / _ceil_to(m, bp.row_align)  # tiled, the last tile computing padding rows
    return 2.0 * count * m * k * n / (rate.peak_flops * eff)


def stage_cost(profile: DeviceProfile, stage: Stage | str, shape: Shape, backend: Backend | str) -> StageCost:
    """The noise-free :class:`StageCost` of ``stage`` at ``shape`` on ``backend``.

    >>> from adaptive_sched.sim import load_profile
    >>> c = stage_cost(load_profile("rk3588"), "qkv", Shape(n=1, d=2048, precision="int8"), "gpu")
    >>> c.memory_s > c.compute_s   # a decode GEMV is bound by DRAM on the GPU
    True
    """
    stage, backend = parse_stage(stage), parse_backend(backend)
    bp = profile.backends[backend]
    shape = bucketed_shape(bp, stage, shape)
    prec = shape.precision
    rate = bp.rates[prec]
    gemms = _gemms(stage, shape)
    count, m, _, n = gemms[0]
    occupancy = _occupancy(bp, count * m * n)
    compute = sum(_gemm_s(bp, prec, *g, occupancy) for g in gemms)
    if stage is Stage.ATTN:
        # softmax: about five element-wise operations per score, on the padded score row
        keys = shape.keys
        if bp.align is not None:
            keys = _ceil_to(keys, bp.align.n_elements[prec])
        assert shape.heads is not None
        compute += 5.0 * shape.batch * shape.heads * shape.n * keys / (rate.peak_flops * rate.efficiency * occupancy)
    compute += rate.element_s * _input_elements(stage, shape)
    moved = stage_mem_bytes(stage, shape)
    if stage is Stage.ATTN:
        # the work-items (one per score) stream the K and V rows; the query rows and the
        # output are a fixed share of the bytes, not spread over more work-items as keys grow
        cache = 2 * shape.precision.itemsize * shape.batch * shape.keys * shape.d
        memory = (cache / occupancy + moved - cache) / bp.bandwidth_Bps
    else:
        memory = moved / (bp.bandwidth_Bps * occupancy)
    fixed = bp.calls[stage][prec] * bp.launch_s
    if bp.layout_Bps > 0:
        fixed += sum(_activation_bytes(stage, shape)) / bp.layout_Bps
    if bp.page_stride is not None and stage is Stage.ATTN:
        fixed += page_stride_s(bp.page_stride, shape)
    return StageCost(fixed_s=fixed, compute_s=compute, memory_s=memory, memory_clocked=bp.clock_bound_memory)


def page_stride_s(ps: PageStride, shape: Shape) -> float:
    """The page-stride penalty of one decode attention run over a token-major KV cache.

    Each head reads ``head_dim`` elements per key at a stride of one cache row
    (``d * itemsize`` bytes), for K and for V, so one head's sweep touches
    ``2 * keys * min(1, row / page)`` pages. Up to the TLB's reach they all hit; past it a
    cyclic sweep misses each page once per sweep, on a fraction ``1 - entries / pages`` of its
    pages, that is on ``(1 - entries / pages) * min(1, row / page)`` of its accesses (rows
    shorter than a page share one). The penalty is that fraction of ``penalty_s`` per
    sequence: bounded by ``batch * penalty_s``, whatever the number of keys (see the profile
    for why it saturates).
    """
    if shape.n > ps.max_n:
        return 0.0
    per_page = min(1.0, shape.d * shape.precision.itemsize / ps.page_bytes)
    pages = 2 * shape.keys * per_page
    miss = max(0.0, 1.0 - ps.tlb_entries / pages) * per_page
    return ps.penalty_s[shape.precision] * shape.batch * miss


def gemv_s(
    profile: DeviceProfile,
    backend: Backend | str,
    k: int,
    n: int,
    precision: Precision | str,
    *,
    weight_bytes: float | None = None,
    cores: int = 1,
) -> float:
    """Seconds of one ``(1 x K) @ (K x N)`` product on ``backend`` with no launch: the larger of its
    compute and its weight stream, ``weight_bytes`` per weight (default: the precision's size) over
    ``cores`` cores, whose streams add up to ``profile.dram_Bps`` at most.

    The ``qkv`` stage of a decode step is this product at ``K = d, N = 3d`` (plus its launches).

    >>> from adaptive_sched.sim import load_profile
    >>> p = load_profile("rk3588")
    >>> gemv_s(p, "npu", 4096, 4096, "int8", cores=3) < gemv_s(p, "npu", 4096, 4096, "int8")
    True
    """
    bp = profile.backends[parse_backend(backend)]
    precision = Precision(precision)
    size = precision.itemsize if weight_bytes is None else weight_bytes
    occupancy = _occupancy(bp, n)
    compute = _gemm_s(bp, precision, 1, 1, k, n, occupancy)
    bandwidth = min(cores * bp.bandwidth_Bps, profile.dram_Bps)
    memory = (size * k * n + precision.itemsize * (k + n)) / (bandwidth * occupancy)
    return max(compute, memory)


def roofline_s(profile: DeviceProfile, stage: Stage | str, shape: Shape, backend: Backend | str) -> float:
    """The physical floor of a stage: the larger of its bytes over the backend's bandwidth and its
    FLOPs over the backend's peak (Table 1's ``mem_bytes`` and ``flops``), with no launch.

    >>> from adaptive_sched.sim import load_profile
    >>> shape = Shape(n=1, d=4096, kv_len=4096, precision="int8")
    >>> round(roofline_s(load_profile("rk3588"), "attn", shape, "gpu") * 1e3, 2)  # 33.6 MB of K and V
    1.23
    """
    stage, backend = parse_stage(stage), parse_backend(backend)
    bp = profile.backends[backend]
    memory = stage_mem_bytes(stage, shape) / bp.bandwidth_Bps
    compute = stage_flops(stage, shape) / bp.rates[shape.precision].peak_flops
    return max(memory, compute)


def latency_bound(profile: DeviceProfile, stage: Stage | str, shape: Shape, backend: Backend | str) -> float:
    """The backend's documented envelope at ``shape`` (see :class:`~adaptive_sched.sim.schema.Bound`):
    ``roofline_factor`` times the roofline at the shape the backend runs (its KV bucket), plus
    its launches, ``extra_s`` and the page-stride penalty at its saturation. Infinite when the
    profile declares no bound for the backend.
    """
    stage, backend = parse_stage(stage), parse_backend(backend)
    bp = profile.backends[backend]
    if bp.bound is None:
        return math.inf
    run = bucketed_shape(bp, stage, shape)
    out = bp.bound.roofline_factor * roofline_s(profile, stage, run, backend)
    out += bp.calls[stage][shape.precision] * bp.launch_s + bp.bound.extra_s
    if bp.page_stride is not None and stage is Stage.ATTN and shape.n <= bp.page_stride.max_n:
        out += bp.page_stride.penalty_s[shape.precision] * shape.batch
    return out


def transition_cost(
    profile: DeviceProfile, stage: Stage | str, shape: Shape, src: Backend | str, dst: Backend | str
) -> float:
    """Seconds added when ``stage`` on ``dst`` consumes an output produced on ``src`` (0 if the same).

    >>> from adaptive_sched.sim import load_profile
    >>> p = load_profile("rk3588")
    >>> transition_cost(p, "attn", Shape(n=1, d=64), "gpu", "gpu")
    0.0
    """
    stage, src, dst = parse_stage(stage), parse_backend(src), parse_backend(dst)
    if src is dst:
        return 0.0
    moved = _activation_bytes(stage, shape)[0]
    return profile.transition.sync_s[(src, dst)] + moved / profile.transition.bandwidth_Bps


def largest_buffer_bytes(stage: Stage | str, shape: Shape) -> int:
    """The largest single tensor a stage needs: weights, KV cache, or the fp32 score matrix."""
    stage = parse_stage(stage)
    s, b, d = shape.precision.itemsize, shape.batch, shape.d
    if stage is Stage.QKV:
        return max(s * d * 3 * d, s * b * shape.n * 3 * d)
    assert shape.heads is not None
    return max(s * b * shape.keys * d, 4 * b * shape.heads * shape.n * shape.keys)


def why_unsupported(profile: DeviceProfile, stage: Stage | str, shape: Shape, backend: Backend | str) -> str | None:
    """None if ``backend`` of ``profile`` can run ``stage`` at ``shape``, else the reason."""
    stage, backend = parse_stage(stage), parse_backend(backend)
    bp = profile.backends.get(backend)
    if bp is None:
        return f"device profile {profile.name!r} has no {backend.value} backend"
    for rule in bp.unsupported:
        rule_stage, _, rule_prec = rule.partition(":")
        if rule_stage in ("*", stage.value) and rule_prec in ("*", shape.precision.value):
            what = f"{stage.value} {shape.precision.value}"
            return f"profile {profile.name!r} marks {what} unsupported on {backend.value}"
    if stage is Stage.ATTN and bp.kv_buckets is not None and bp.kv_buckets.bucket(shape.keys) is None:
        where = f"on {backend.value} holds them (largest {bp.kv_buckets.largest})"
        return f"attention over {shape.keys} keys: no prepared KV bucket {where}"
    shape = bucketed_shape(bp, stage, shape)
    if bp.max_k is not None:
        k = max(k for _, _, k, _ in _gemms(stage, shape))
        if k > bp.max_k:
            return f"matmul K={k} exceeds the {backend.value} limit K <= {bp.max_k}"
    need = largest_buffer_bytes(stage, shape)
    if need > bp.max_buffer_bytes:
        gib, limit = need / 2**30, bp.max_buffer_bytes / 2**30
        return f"needs a {gib:.1f} GiB buffer, over the {backend.value} limit of {limit:.1f} GiB"
    return None
