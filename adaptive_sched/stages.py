"""Reference numpy math for the two attention stages.

Every executor is checked against these functions. Conventions:

* ``qkv``: inputs ``x [batch, n, d]``, ``w [d, 3d]``, optional ``b [3d]``;
  output ``qkv [batch, n, 3d]`` (Q, K and V side by side).
* ``attn``: inputs ``q [batch, heads, n, head_dim]`` and the caches
  ``k, v [batch, heads, kv_len + n, head_dim]`` (the current step's keys and
  values already appended); output ``o [batch, heads, n, head_dim]``. Query ``i``
  sits at position ``kv_len + i`` and attends to keys ``0 .. kv_len + i`` (causal).

Precision (what each precision's reference computes):

* FP16: inputs are rounded to float16, products accumulate in float32, the
  output is float32 (what a GPU kernel with fp32 accumulators produces).
* INT8 ``qkv``: symmetric quantisation (scale = max|a| / 127; weights per output
  column, activations per tensor), int32 accumulation, dequantised float32 output.
* INT8 ``attn``: what the RKNN models of ``scripts/build_rknn_models.py`` hold in int8,
  each tensor per tensor with an asymmetric int8 scale over its range
  (:func:`quantize_asymmetric`), as rknn-toolkit2's ``w8a8`` quantisation table shows: the
  inputs ``q``, ``k``, ``v``; the scaled scores ``s = Q K^T / sqrt(h_d)``, their row
  maximum and ``s - rowmax``; ``exp(s - rowmax)`` (in [0, 1] by construction). The integer
  products of ``Q K^T`` accumulate exactly (up to head_dim 256). The rest (``exp(..) @ V``,
  its row sums, their quotient: the output) runs in float16, as the models keep it: those
  tensors are heavy-tailed (attention on one key makes the output a row of V), and one
  static int8 scale for them clipped outliers in 2 of 7 decode buckets over 30 seeds. The
  probabilities themselves are never quantised:
  spread over hundreds of keys they are all far below the largest, and one scale for the
  tensor rounds them away (the old reference, with a fixed 1/127 step, was off by 0.19 of
  max|output| at 128 keys). The ranges are each tensor's own (the best a calibration can
  do) unless static ranges are given, as a model calibrated ahead of time has them.

The precision references model what an executor at that precision computes; whether an
executor is *right* is judged against :func:`exact`, the float64 math, within
:func:`adaptive_sched.checks.tolerance` (see :func:`relative_error`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from .errors import UnsupportedShape
from .types import Precision, Shape, Stage, parse_stage

Arrays = Mapping[str, np.ndarray]

INT8_MAX = 127
#: the 256 levels of an asymmetric int8 tensor
INT8_LEVELS = 255

#: the tensors of INT8 attention that an RKNN model holds in int8, in graph order
ATTN_INT8_TENSORS = ("q", "k", "v", "scores", "rowmax", "shifted", "exp")


def quantize_symmetric(a: np.ndarray, axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Quantise ``a`` to int8 with a symmetric scale (per tensor, or per slice along ``axis``).

    Returns ``(q, scale)`` with ``a ~= q * scale``; an all-zero slice gets scale 1.

    >>> q, s = quantize_symmetric(np.array([-2.0, 0.5, 1.0]))
    >>> q.tolist(), round(float(s), 6)
    ([-127, 32, 64], 0.015748)
    """
    a = np.asarray(a, dtype=np.float32)
    if axis is None:
        amax = np.float32(np.max(np.abs(a))) if a.size else np.float32(0)
    else:
        amax = np.max(np.abs(a), axis=axis, keepdims=True)
    scale = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(a / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


class QuantRange(NamedTuple):
    """The float range ``[lo, hi]`` an asymmetric int8 tensor covers (``lo <= 0 <= hi``)."""

    lo: float
    hi: float

    @classmethod
    def of(cls, a: np.ndarray) -> QuantRange:
        """The range of ``a`` itself, widened to include 0 (zero must be exact, as in RKNN)."""
        a = np.asarray(a)
        if a.size == 0:
            return cls(0.0, 0.0)
        return cls(min(0.0, float(np.min(a))), max(0.0, float(np.max(a))))

    def union(self, other: QuantRange) -> QuantRange:
        return QuantRange(min(self.lo, other.lo), max(self.hi, other.hi))

    @property
    def scale(self) -> float:
        return (self.hi - self.lo) / INT8_LEVELS if self.hi > self.lo else 1.0

    @property
    def zero_point(self) -> int:
        return int(np.clip(np.rint(-128 - self.lo / self.scale), -128, 127))


def _f16(a: Any) -> np.ndarray:
    return np.asarray(a).astype(np.float16).astype(np.float32)


def quantize_asymmetric(a: np.ndarray, rng: QuantRange | None = None) -> tuple[np.ndarray, float, int]:
    """Quantise ``a`` per tensor to int8 over ``rng`` (default: ``a``'s own range), as RKNN does.

    Returns ``(q, scale, zero_point)`` with ``a ~= (q - zero_point) * scale``; values outside
    ``rng`` clip, as they do on an NPU whose scales were fixed by calibration.

    >>> q, s, z = quantize_asymmetric(np.array([0.0, 0.1, 0.26]))
    >>> q.tolist(), z
    ([-128, -30, 127], -128)
    """
    rng = QuantRange.of(a) if rng is None else rng
    scale, zp = rng.scale, rng.zero_point
    levels = np.rint(np.asarray(a, dtype=np.float64) / scale) if np.asarray(a).dtype == np.float64 else (
        np.rint(np.asarray(a, dtype=np.float32) / np.float32(scale)))  # fmt: skip
    return np.clip(levels + zp, -128, 127).astype(np.int8), scale, zp


def _levels(a: np.ndarray, rng: QuantRange | None) -> tuple[np.ndarray, float]:
    """``a`` quantised, as the float32 integers ``q - zero_point``, and the scale."""
    q, scale, zp = quantize_asymmetric(a, rng)
    return q.astype(np.float32) - np.float32(zp), scale


def fake_quantize(a: np.ndarray, rng: QuantRange | None = None) -> np.ndarray:
    """``a`` quantised by :func:`quantize_asymmetric` and dequantised again (float32 for float32 input)."""
    q, scale, zp = quantize_asymmetric(a, rng)
    dtype = np.float64 if np.asarray(a).dtype == np.float64 else np.float32
    return ((q.astype(np.float64) - zp) * scale).astype(dtype)


def qkv_projection(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, precision: Precision) -> np.ndarray:
    """``x @ w + b`` at ``precision`` (see the module docstring)."""
    if precision is Precision.FP16:
        acc = np.matmul(x.astype(np.float16).astype(np.float32), w.astype(np.float16).astype(np.float32))
    else:
        xq, xs = quantize_symmetric(x)
        wq, ws = quantize_symmetric(w, axis=0)  # one scale per output column
        acc32 = np.matmul(xq.astype(np.int32), wq.astype(np.int32))
        acc = acc32.astype(np.float32) * (xs * ws.reshape(-1))
    if b is not None:
        acc = acc + b.astype(np.float32)
    return acc.astype(np.float32)


def causal_mask(n: int, keys: int) -> np.ndarray:
    """Boolean ``[n, keys]`` mask, True where query ``i`` may see key ``j`` (``j <= keys - n + i``)."""
    offset = keys - n
    return np.arange(keys)[None, :] <= (np.arange(n)[:, None] + offset)


def softmax(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float32 (masked entries should be ``-inf``)."""
    scores = scores.astype(np.float32)
    shifted = scores - np.max(scores, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def attention_core(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    precision: Precision,
    ranges: Mapping[str, QuantRange] | None = None,
) -> np.ndarray:
    """Causal multi-head attention of ``q`` over the caches ``k`` and ``v``.

    ``ranges`` (INT8 only) fixes the quantisation range of any of :data:`ATTN_INT8_TENSORS`
    (a calibrated model's static ranges); a tensor without one uses its own range
    (``exp`` uses [0, 1]). Values outside a given range clip, as on the NPU.
    """
    n, keys, head_dim = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = np.float32(1.0 / np.sqrt(head_dim))
    if precision is Precision.FP16:
        q32 = q.astype(np.float16).astype(np.float32)
        k32 = k.astype(np.float16).astype(np.float32)
        scores = np.matmul(q32, np.swapaxes(k32, -1, -2))
        scores = np.where(causal_mask(n, keys), scores * scale, -np.inf)
        p = softmax(scores)
        out = np.matmul(p.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32))
        return out.astype(np.float32)
    r = dict(ranges or {})
    unknown = set(r) - set(ATTN_INT8_TENSORS)
    if unknown:
        raise ValueError(f"ranges: unknown tensor(s) {', '.join(sorted(unknown))} (expected {ATTN_INT8_TENSORS})")
    visible = causal_mask(n, keys)
    (qi, qs), (ki, ks), (vi, vs) = (_levels(a, r.get(name)) for name, a in (("q", q), ("k", k), ("v", v)))
    # integer products summed in float32: exact as an int32 accumulator while head_dim <= 256 (255**2 * 256 < 2**24)
    raw = np.matmul(qi, np.swapaxes(ki, -1, -2))
    scores = fake_quantize(raw * np.float32(qs * ks * float(scale)), r.get("scores"))
    row_max = fake_quantize(np.max(np.where(visible, scores, -np.inf), axis=-1, keepdims=True), r.get("rowmax"))
    shifted = fake_quantize(np.where(visible, scores - row_max, np.float32(0)), r.get("shifted"))
    # exp(s - max) lies in [0, 1] whatever the data: its int8 range needs no calibration
    e = fake_quantize(np.where(visible, np.exp(shifted), np.float32(0)), r.get("exp", QuantRange(0.0, 1.0)))
    # the division side runs in float16: e @ V, the row sums and the output are heavy-tailed (attention
    # on one key makes the output a row of V), so a static int8 scale would clip them
    num = _f16(np.matmul(e, vi) * np.float32(vs))
    den = _f16(np.sum(e, axis=-1, keepdims=True, dtype=np.float32))
    return _f16(num / den).astype(np.float32)


def attention_int8_fixed_grid(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """INT8 attention with the probabilities on a fixed grid of 1/127, as the OpenCL kernel computes it.

    ``q``, ``k`` and ``v`` are quantised symmetrically per tensor, the probabilities with the
    fixed scale 1/127 (no max pass). That rounds most probabilities to zero once they spread
    over more than a few dozen keys: against :func:`exact` it is off by about 0.19 of
    max|output| at 128 keys and 0.5 at 512. Kept to check that kernel bit for bit; the INT8
    reference is :func:`attention_core`.
    """
    n, keys, head_dim = q.shape[-2], k.shape[-2], q.shape[-1]
    qq, qs = quantize_symmetric(q)
    kq, ks = quantize_symmetric(k)
    acc = np.matmul(qq.astype(np.int32), np.swapaxes(kq.astype(np.int32), -1, -2))
    scores = acc.astype(np.float32) * (qs * ks) * np.float32(1.0 / np.sqrt(head_dim))
    p = softmax(np.where(causal_mask(n, keys), scores, -np.inf))
    pq = np.rint(p * INT8_MAX).astype(np.int32)
    vq, vs = quantize_symmetric(v)
    return (np.matmul(pq, vq.astype(np.int32)).astype(np.float32) * (vs / INT8_MAX)).astype(np.float32)


def exact(stage: Stage | str, shape: Shape, inputs: Arrays) -> np.ndarray:
    """The stage's math in float64 without any rounding: what every precision is judged against.

    >>> shape = Shape(n=1, d=64, kv_len=3)
    >>> inputs = make_inputs("attn", shape)
    >>> relative_error(reference("attn", shape, inputs), exact("attn", shape, inputs)) < 1e-3
    True
    """
    stage = parse_stage(stage)
    check_inputs(stage, shape, inputs)
    if stage is Stage.QKV:
        out = np.matmul(np.asarray(inputs["x"], np.float64), np.asarray(inputs["w"], np.float64))
        b = inputs.get("b")
        return out if b is None else out + np.asarray(b, np.float64)
    q, k, v = (np.asarray(inputs[name], np.float64) for name in ("q", "k", "v"))
    n, keys = q.shape[-2], k.shape[-2]
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / np.sqrt(q.shape[-1])
    scores = np.where(causal_mask(n, keys), scores, -np.inf)
    e = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
    return np.matmul(e / np.sum(e, axis=-1, keepdims=True), v)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """``max |got - want| / max |want|`` (over the whole output; 1 stands in for an all-zero ``want``).

    One scale for the whole tensor, not per element: a per-element relative error would
    call the rounding of a near-zero output an arbitrarily large error.

    >>> relative_error(np.array([1.0, 2.5]), np.array([1.0, 2.0]))
    0.25
    """
    want = np.asarray(want, dtype=np.float64)
    diff = np.abs(np.asarray(got, dtype=np.float64) - want)
    if diff.size == 0:
        return 0.0
    scale = float(np.max(np.abs(want))) or 1.0
    worst = float(np.max(diff))
    return worst / scale if np.isfinite(worst) else float("inf")


def input_shapes(stage: Stage | str, shape: Shape) -> dict[str, tuple[int, ...]]:
    """The array shapes a stage expects as inputs."""
    stage = parse_stage(stage)
    b, n, d = shape.batch, shape.n, shape.d
    if stage is Stage.QKV:
        return {"x": (b, n, d), "w": (d, 3 * d), "b": (3 * d,)}
    h, hd = shape.heads, shape.head_dim
    return {"q": (b, h, n, hd), "k": (b, h, shape.keys, hd), "v": (b, h, shape.keys, hd)}


def output_shape(stage: Stage | str, shape: Shape) -> tuple[int, ...]:
    """The array shape a stage returns."""
    stage = parse_stage(stage)
    if stage is Stage.QKV:
        return (shape.batch, shape.n, 3 * shape.d)
    return (shape.batch, shape.heads, shape.n, shape.head_dim)


def make_inputs(stage: Stage | str, shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic float32 inputs of the right shapes (weights scaled like a trained layer)."""
    rng = np.random.default_rng(seed)
    shapes = input_shapes(stage, shape)
    out: dict[str, np.ndarray] = {}
    for name, dims in shapes.items():
        scale = 1.0 / np.sqrt(shape.d) if name == "w" else (0.1 if name == "b" else 1.0)
        out[name] = (rng.standard_normal(dims) * scale).astype(np.float32)
    return out


def serving_inputs(stage: Stage | str, shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`make_inputs` with the weights (``w``, ``b``) read-only, as a served model's are.

    A model's weights never change while it runs, and executors keep what they derive from
    read-only weights (converted copies, device buffers; see ``executors.base.read_only``).
    Timing a stage on fresh or writable weights would time their conversion or upload
    instead: on a 2-core host, numpy's FP16 decode projection at d=896 took 13.6 ms that way
    instead of 0.12 ms.
    """
    inputs = make_inputs(stage, shape, seed)
    for name in ("w", "b"):
        if name in inputs:
            inputs[name].setflags(write=False)
    return inputs


def check_inputs(stage: Stage | str, shape: Shape, inputs: Arrays) -> None:
    """Raise :class:`UnsupportedShape` naming the first input that is missing or mis-shaped."""
    stage = parse_stage(stage)
    for name, dims in input_shapes(stage, shape).items():
        if name == "b" and inputs.get("b") is None:
            continue  # the bias is optional
        if name not in inputs:
            raise UnsupportedShape(f"{stage.value}: missing input {name!r} (expected shape {dims})")
        got = tuple(np.shape(inputs[name]))
        if got != dims:
            raise UnsupportedShape(f"{stage.value}: input {name!r} has shape {got}, expected {dims} for {shape}")


def reference(stage: Stage | str, shape: Shape, inputs: Arrays) -> np.ndarray:
    """Run ``stage`` at ``shape`` on ``inputs`` with the reference math."""
    stage = parse_stage(stage)
    check_inputs(stage, shape, inputs)
    if stage is Stage.QKV:
        return qkv_projection(inputs["x"], inputs["w"], inputs.get("b"), shape.precision)
    return attention_core(inputs["q"], inputs["k"], inputs["v"], shape.precision)


def split_heads(qkv: np.ndarray, shape: Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a ``qkv`` output ``[b, n, 3d]`` into Q, K, V of shape ``[b, heads, n, head_dim]``."""
    b, n = qkv.shape[0], qkv.shape[1]
    h, hd = shape.heads, shape.head_dim
    parts = qkv.reshape(b, n, 3, h, hd).transpose(2, 0, 3, 1, 4)
    return parts[0], parts[1], parts[2]
