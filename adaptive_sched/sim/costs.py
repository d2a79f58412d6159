"""The cost model: pure functions of (profile, stage, shape, backend).

See :mod:`adaptive_sched.sim` for the formula and the effects a profile may switch on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..features import stage_mem_bytes
from ..types import Backend, Shape, Stage, parse_backend, parse_stage
from .schema import BackendProfile, DeviceProfile, KVStride


@dataclass(frozen=True)
class StageCost:
    """Noise-free cost of one stage run at the nominal clock, split by what scales it.

    ``fixed_s`` (launches, layout conversion, page walks) does not depend on the backend's
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
    s = prec.itemsize
    rate = bp.rates[prec]
    peak = rate.peak_flops * rate.efficiency
    gemms = _gemms(stage, shape)
    if bp.occupancy_half > 0:
        count, m, _, n = gemms[0]
        outputs = count * m * n
        occupancy = outputs / (outputs + bp.occupancy_half)
    else:
        occupancy = 1.0
    compute = 0.0
    for count, m, k, n in gemms:
        if bp.align is not None:
            k_elems = max(1, bp.align.k_bytes // s)
            k, n = _ceil_to(k, k_elems), _ceil_to(n, bp.align.n_elements[prec])
        eff = occupancy
        if bp.shape_half is not None:
            h = bp.shape_half
            eff *= (m / (m + h.m)) * (k / (k + h.k)) * (n / (n + h.n))
        if bp.row_align and m > 1 and m % bp.row_align:
            eff *= bp.unaligned_efficiency
        compute += 2.0 * count * m * k * n / (peak * eff)
    if stage is Stage.ATTN:
        # softmax: about five element-wise operations per score, on the padded score row
        keys = shape.keys
        if bp.align is not None:
            keys = _ceil_to(keys, bp.align.n_elements[prec])
        assert shape.heads is not None
        compute += 5.0 * shape.batch * shape.heads * shape.n * keys / (peak * occupancy)
    compute += rate.element_s * _input_elements(stage, shape)
    memory = stage_mem_bytes(stage, shape) / (bp.bandwidth_Bps * occupancy)
    fixed = bp.calls[stage][prec] * bp.launch_s
    if bp.layout_Bps > 0:
        fixed += sum(_activation_bytes(stage, shape)) / bp.layout_Bps
    if bp.kv_stride is not None and stage is Stage.ATTN and shape.n <= bp.kv_stride.max_n:
        fixed += _page_walks(bp.kv_stride, shape) * bp.kv_stride.walk_s
    return StageCost(fixed_s=fixed, compute_s=compute, memory_s=memory, memory_clocked=bp.clock_bound_memory)


def _page_walks(kv: KVStride, shape: Shape) -> float:
    """Expected TLB misses of one decode attention run over a token-major cache.

    Each head reads ``head_dim`` elements per key at a stride of one cache row
    (``d * itemsize`` bytes), for K and for V. One head's sweep touches
    ``2 * keys * min(1, row / page)`` pages; with more pages than TLB entries a
    cyclic sweep misses on a fraction ``1 - entries / pages`` of its accesses
    (random replacement), and every miss is a page-table walk.
    """
    assert shape.heads is not None
    keys = shape.keys
    row = shape.d * shape.precision.itemsize
    pages = 2 * keys * min(1.0, row / kv.page_bytes)
    miss = max(0.0, 1.0 - kv.tlb_entries / pages)
    return 2.0 * shape.batch * shape.heads * shape.n * keys * miss


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
