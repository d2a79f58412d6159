"""Feeding a prepared RKNN model: inputs padded to its bucket, the mask, the output cut back.

A bucketed model (see :mod:`.rknn_models`) serves every shape up to its own: the inputs
are padded to the bucket, a mask hides the padded keys and rows, and the output is cut
back to the true shape. The calibration shapes a converter quantises with are spread
over the shapes a bucket serves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from ..stages import causal_mask, input_shapes, output_shape
from ..types import Shape, Stage
from .rknn_models import MASK, ModelEntry, group_key


def _pad(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    extra = size - a.shape[axis]
    if extra == 0:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    return np.pad(a, widths)


def bucket_mask(n: int, kv_len: int, rows: int, keys: int) -> np.ndarray:
    """The ``[rows, keys]`` 0/1 mask of a bucket attention model serving ``n`` queries after ``kv_len`` keys.

    Query ``i < n`` sees keys ``0 .. kv_len + i`` (causal); a padding row sees key 0 only,
    so its softmax stays finite (its output is dropped).

    >>> bucket_mask(2, 1, rows=3, keys=4).astype(int).tolist()
    [[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]
    """
    if n > rows or kv_len + n > keys:
        raise ValueError(f"bucket of {rows} rows x {keys} keys cannot hold n={n} after kv_len={kv_len}")
    mask = np.zeros((rows, keys), dtype=np.float32)
    mask[:n, : kv_len + n] = causal_mask(n, kv_len + n)
    mask[n:, 0] = 1.0
    return mask


def model_feed(entry: ModelEntry, shape: Shape, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The arrays to pass to ``inference`` for ``entry`` running a call at ``shape``, in the model's order.

    Each input is reshaped and cast to its spec; for a bucket model, ``shape`` may be
    smaller than the entry's and the inputs are padded with zeros (query rows, key rows)
    and the ``mask`` built. A missing optional bias becomes zeros.
    """
    if not entry.holds(entry.stage, shape):
        raise ValueError(f"{entry.file} ({entry.describe()}) does not hold {entry.stage.value} at {shape}")
    big = entry.shape
    feed = []
    for spec in entry.inputs:
        a: np.ndarray | None
        if spec.name == MASK:
            a = bucket_mask(shape.n, shape.kv_len, big.n, big.keys)
        else:
            a = inputs.get(spec.name)
            if a is None:  # only the optional bias can be absent: the model adds zeros
                a = np.zeros(spec.shape, dtype=spec.dtype)
            elif entry.bucket and spec.name in ("x", "q", "k", "v"):
                dims = input_shapes(entry.stage, shape)[spec.name]
                a = np.asarray(a).reshape(dims)
                axis, size = (1, big.n) if spec.name == "x" else (2, big.n if spec.name == "q" else big.keys)
                a = _pad(a, axis, size)
        feed.append(np.ascontiguousarray(np.asarray(a).reshape(spec.shape), dtype=spec.dtype))
    return feed


def take_output(entry: ModelEntry, shape: Shape, out: np.ndarray) -> np.ndarray:
    """The caller's output at ``shape`` from the model's output (padding rows dropped), float32."""
    want = output_shape(entry.stage, shape)
    full = output_shape(entry.stage, entry.shape)
    out = np.asarray(out).reshape(full)
    if entry.bucket and shape.n != entry.shape.n:
        out = out[:, : shape.n] if entry.stage is Stage.QKV else out[:, :, : shape.n]
    return np.ascontiguousarray(out.reshape(want), dtype=np.float32)


def bucket_size(entry: ModelEntry) -> int:
    """What a bucket model's size is counted in: keys for decode attention, query rows otherwise."""
    return entry.shape.keys if entry.stage is Stage.ATTN and entry.shape.n == 1 else entry.shape.n


def smallest_served(entry: ModelEntry, siblings: Iterable[ModelEntry]) -> int:
    """The smallest size (see :func:`bucket_size`) of the calls a bucket model serves among ``siblings``.

    The executor runs a call on the smallest bucket that holds it, so a bucket serves the
    sizes above the next smaller sibling bucket of its group, and the smallest bucket
    every size from 1.

    >>> group = [ModelEntry.for_shape("attn", Shape(n=1, d=64, kv_len=k - 1), bucket=True) for k in (16, 32)]
    >>> smallest_served(group[1], group), smallest_served(group[0], group)
    (17, 1)
    """
    size = bucket_size(entry)
    below = [
        bucket_size(e)
        for e in siblings
        if e.bucket
        and e.stage is entry.stage
        and group_key(e.stage, e.shape) == group_key(entry.stage, entry.shape)
        and (e.shape.n == 1) == (entry.shape.n == 1)
        and bucket_size(e) < size
    ]
    return max(below) + 1 if below else 1


def calibration_shapes(entry: ModelEntry, samples: int, seed: int = 0, smallest: int | None = None) -> list[Shape]:
    """The call shapes a model's calibration samples are drawn at: the range of calls it will serve.

    An exact model serves one shape. A bucket model serves every size from ``smallest``
    (:func:`smallest_served`; default half its size plus one, as for power-of-two buckets)
    up to its own, and its int8 ranges must hold for all of them: fewer keys give larger
    outputs, and the padding is zeros. A quarter of the samples are at each end of that
    range (where the tensors' ranges are widest), the rest drawn uniformly in between.
    """
    big = entry.shape
    if not entry.bucket or samples < 1:
        return [big] * samples
    size = bucket_size(entry)
    lo = max(1, min(size, size // 2 + 1 if smallest is None else smallest))
    rng = np.random.default_rng(seed)
    # a quarter at each end: the fewest keys give the widest outputs, the most the widest sums
    ends = max(1, samples // 4)
    middle = [int(v) for v in rng.integers(lo, size + 1, size=max(0, samples - 2 * ends))]
    picks = [lo] * ends + [size] * ends + middle
    shapes = []
    for pick in sorted(picks[:samples]):
        if entry.stage is Stage.ATTN and big.n == 1:
            n, kv = 1, pick - 1  # decode over `pick` keys
        else:
            n, kv = pick, big.kv_len  # prefill rows (after the same cache, if any)
        shapes.append(Shape(n=n, d=big.d, kv_len=kv, batch=big.batch, heads=big.heads, precision=big.precision))
    return shapes


__all__ = [
    "bucket_mask",
    "bucket_size",
    "calibration_shapes",
    "model_feed",
    "smallest_served",
    "take_output",
]
