"""Reference numpy math for the two attention stages.

Every executor is checked against these functions. Conventions:

* ``qkv``: inputs ``x [batch, n, d]``, ``w [d, 3d]``, optional ``b [3d]``;
  output ``qkv [batch, n, 3d]`` (Q, K and V side by side).
* ``attn``: inputs ``q [batch, heads, n, head_dim]`` and the caches
  ``k, v [batch, heads, kv_len + n, head_dim]`` (the current step's keys and
  values already appended); output ``o [batch, heads, n, head_dim]``. Query ``i``
  sits at position ``kv_len + i`` and attends to keys ``0 .. kv_len + i`` (causal).

Precision:

* FP16: inputs are rounded to float16, products accumulate in float32, the
  output is float32 (what a GPU kernel with fp32 accumulators produces).
* INT8: symmetric quantisation (scale = max|a| / 127; weights per output
  column, activations per tensor), int32 accumulation, dequantised float32
  output. Softmax always runs in float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import UnsupportedShape
from .types import Precision, Shape, Stage, parse_stage

Arrays = Mapping[str, np.ndarray]

INT8_MAX = 127


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


def attention_core(q: np.ndarray, k: np.ndarray, v: np.ndarray, precision: Precision) -> np.ndarray:
    """Causal multi-head attention of ``q`` over the caches ``k`` and ``v``."""
    n, keys, head_dim = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = np.float32(1.0 / np.sqrt(head_dim))
    if precision is Precision.FP16:
        q32 = q.astype(np.float16).astype(np.float32)
        k32 = k.astype(np.float16).astype(np.float32)
        scores = np.matmul(q32, np.swapaxes(k32, -1, -2))
    else:
        qq, qs = quantize_symmetric(q)
        kq, ks = quantize_symmetric(k)
        acc = np.matmul(qq.astype(np.int32), np.swapaxes(kq.astype(np.int32), -1, -2))
        scores = acc.astype(np.float32) * (qs * ks)
    scores = np.where(causal_mask(n, keys), scores * scale, -np.inf)
    p = softmax(scores)
    if precision is Precision.FP16:
        out = np.matmul(p.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32))
    else:
        # Probabilities lie in [0, 1]: a fixed scale of 1/127 quantises them without a max pass.
        pq = np.rint(p * INT8_MAX).astype(np.int32)
        vq, vs = quantize_symmetric(v)
        out = np.matmul(pq, vq.astype(np.int32)).astype(np.float32) * (vs / INT8_MAX)
    return out.astype(np.float32)


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
