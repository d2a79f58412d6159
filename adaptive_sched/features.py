"""The feature vector of a stage (Table 1 of the core paper, plus ``kv_len`` and ``batch``).

Definitions, for a :class:`~adaptive_sched.types.Shape` with ``b = batch``,
``keys = kv_len + n`` and element size ``s`` (2 bytes FP16, 1 byte INT8):

==========  ==========================================  =========================================
feature     qkv (``X[b,n,d] @ W[d,3d]``)                attn (per head, over the KV cache)
==========  ==========================================  =========================================
n, d        as in the shape                             as in the shape
P           0 for FP16, 1 for INT8                      same
flops       ``2*b*n*d*3d``                              ``4*b*n*keys*d + 5*b*heads*n*keys``
                                                        (QK^T and AV, plus ~5 ops per softmax score)
mem_bytes   ``s*(b*n*d + 3*d*d + b*n*3d)``              ``s*(2*b*n*d + 2*b*keys*d)``
            (X in, W in, QKV out)                       (Q in, K and V caches in, output)
intensity   ``flops / mem_bytes``                       same
ar          ``n / d``                                   same
score_size  ``n**2`` (the paper's definition)           same
pad_n       wasted fraction of ``n`` after padding      same
            to 64 bytes: ``(ceil(n/e)*e - n) /
            (ceil(n/e)*e)``, ``e = 64 / s``
pad_d       same for ``d``                              same
kv_len      cached tokens (0 in prefill from scratch)   same
batch       ``b``                                       same
==========  ==========================================  =========================================

Features are pure functions of the stage and shape, so they are computed once per
distinct shape and cached. :func:`features` can add what a static-graph backend's buckets
cost (``kv_bucket`` and ``pad_kv``, the fraction of the bucket's keys that is padding, and
``n_bucket`` and ``pad_n_bucket`` for prefill rows); they are not in :data:`FEATURE_NAMES`,
whose order trained priors depend on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

from .types import Shape, Stage, parse_stage

FEATURE_NAMES: tuple[str, ...] = (
    "n",
    "d",
    "P",
    "flops",
    "mem_bytes",
    "intensity",
    "ar",
    "score_size",
    "pad_n",
    "pad_d",
    "kv_len",
    "batch",
)

ALIGN_BYTES = 64


def pad_fraction(size: int, itemsize: int, align_bytes: int = ALIGN_BYTES) -> float:
    """Fraction of a padded dimension that is padding, aligning ``size`` elements to ``align_bytes``.

    >>> pad_fraction(40, 2)   # 40 fp16 -> 64 elements (128 bytes)
    0.375
    >>> pad_fraction(4096, 1)
    0.0
    """
    per_line = max(1, align_bytes // itemsize)
    padded = math.ceil(size / per_line) * per_line
    return (padded - size) / padded


def kv_bucket(keys: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket that holds ``keys`` keys, or None when ``keys`` exceeds the largest.

    Static-graph accelerators (the RK3588 NPU) run one prepared graph per shape; attention
    over a growing KV cache runs on the smallest prepared length that holds it, with the
    padded keys masked out. ``buckets`` need not be sorted.

    >>> kv_bucket(129, (64, 128, 256)), kv_bucket(128, (64, 128, 256)), kv_bucket(300, (64, 128, 256))
    (256, 128, None)
    """
    fitting = [b for b in buckets if b >= keys]
    return min(fitting) if fitting else None


def pad_kv_fraction(keys: int, buckets: Sequence[int]) -> float:
    """Fraction of a bucketed KV length that is padding (0.0 when no bucket holds ``keys``).

    >>> pad_kv_fraction(129, (128, 256))
    0.49609375
    """
    bucket = kv_bucket(keys, buckets)
    return 0.0 if bucket is None else (bucket - keys) / bucket


def stage_shape(stage: Stage | str, shape: Shape) -> Shape:
    """The shape that determines ``stage``'s cost: qkv ignores ``kv_len`` and ``heads``.

    >>> stage_shape("qkv", Shape(n=1, d=128, kv_len=512, heads=4))
    Shape(n=1, d=128, kv_len=0, batch=1, heads=2, precision=<Precision.FP16: 'fp16'>)
    """
    if parse_stage(stage) is Stage.QKV and (shape.kv_len != 0 or shape.heads != Shape(n=1, d=shape.d).heads):
        return Shape(n=shape.n, d=shape.d, kv_len=0, batch=shape.batch, precision=shape.precision)
    return shape


def stage_flops(stage: Stage, shape: Shape) -> int:
    """Arithmetic operations of one stage run (multiply and add count as two)."""
    b, n, d = shape.batch, shape.n, shape.d
    if stage is Stage.QKV:
        return 2 * b * n * d * 3 * d
    keys = shape.keys
    return 4 * b * n * keys * d + 5 * b * shape.heads * n * keys


def stage_mem_bytes(stage: Stage, shape: Shape) -> int:
    """Bytes read and written by one stage run (inputs, weights or caches, outputs)."""
    b, n, d, s = shape.batch, shape.n, shape.d, shape.precision.itemsize
    if stage is Stage.QKV:
        return s * (b * n * d + 3 * d * d + b * n * 3 * d)
    return s * (2 * b * n * d + 2 * b * shape.keys * d)


@lru_cache(maxsize=65536)
def _features(stage: Stage, shape: Shape) -> tuple[float, ...]:
    flops = stage_flops(stage, shape)
    mem = stage_mem_bytes(stage, shape)
    s = shape.precision.itemsize
    return (
        float(shape.n),
        float(shape.d),
        float(shape.precision.code),
        float(flops),
        float(mem),
        flops / mem,
        shape.n / shape.d,
        float(shape.n**2),
        pad_fraction(shape.n, s),
        pad_fraction(shape.d, s),
        float(shape.kv_len),
        float(shape.batch),
    )


def feature_vector(stage: Stage | str, shape: Shape) -> tuple[float, ...]:
    """The features of ``stage`` at ``shape``, in :data:`FEATURE_NAMES` order."""
    return _features(parse_stage(stage), shape)


def bucket_features(
    stage: Stage | str,
    shape: Shape,
    kv_buckets: Sequence[int] | None = None,
    n_buckets: Sequence[int] | None = None,
) -> dict[str, float]:
    """The bucket that holds ``shape`` and its padding: ``kv_bucket``, ``pad_kv``, ``n_bucket``, ``pad_n_bucket``.

    Keys count ``kv_len + n`` (attention only, decode steps); rows count ``n`` (prefill).
    A size beyond the largest bucket gives bucket 0 and padding 0 (no bucket holds it).

    >>> bucket_features("attn", Shape(n=1, d=64, kv_len=128), kv_buckets=(128, 256))
    {'kv_bucket': 256.0, 'pad_kv': 0.49609375}
    """
    stage = parse_stage(stage)
    out: dict[str, float] = {}
    if kv_buckets is not None and stage is Stage.ATTN and shape.n == 1:
        out["kv_bucket"] = float(kv_bucket(shape.keys, kv_buckets) or 0)
        out["pad_kv"] = pad_kv_fraction(shape.keys, kv_buckets)
    if n_buckets is not None and shape.n > 1:
        out["n_bucket"] = float(kv_bucket(shape.n, n_buckets) or 0)
        out["pad_n_bucket"] = pad_kv_fraction(shape.n, n_buckets)
    return out


def features(
    stage: Stage | str,
    shape: Shape,
    context: Mapping[str, float] | None = None,
    *,
    kv_buckets: Sequence[int] | None = None,
    n_buckets: Sequence[int] | None = None,
) -> dict[str, float]:
    """The features as a dict; optional device-state ``context`` values are added as is.

    With ``kv_buckets`` or ``n_buckets`` (a static-graph backend's), the
    :func:`bucket_features` are added too.

    >>> f = features("qkv", Shape(n=1, d=64, precision="int8"))
    >>> f["flops"], f["mem_bytes"], f["P"]
    (24576.0, 12544.0, 1.0)
    >>> features("attn", Shape(n=1, d=64, kv_len=99), kv_buckets=(128,))["pad_kv"]
    0.21875
    """
    out = dict(zip(FEATURE_NAMES, feature_vector(stage, shape), strict=True))
    out.update(bucket_features(stage, shape, kv_buckets, n_buckets))
    if context:
        for key, value in context.items():
            if key in out:
                raise ValueError(f"context key {key!r} clashes with a shape feature")
            out[key] = float(value)
    return out
