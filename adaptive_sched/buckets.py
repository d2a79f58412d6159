"""The shape buckets decisions are keyed by: the one definition the policies and a cold ``decide`` share.

Imports nothing but the types, so a cold ``adaptive-sched decide`` (which reads a saved
snapshot with the standard library) keys its lookups exactly as the policy that published
them, without importing the policies.
"""

from __future__ import annotations

from typing import Any

from .types import Shape, Stage

_ATTN = Stage.ATTN  # a module constant: looking it up on the enum costs more than the rest


def entry_key(stage: Stage, shape: Shape, after: Any, lookahead: bool = True) -> tuple[Any, ...]:
    """The key of the published entry a decision reads: the stage, the shape's bucket, the previous backend.

    Never the exact shape (kv_len grows every token): sequence and KV lengths in
    quarter-octave buckets (from their top three bits; exact up to 16) share what is
    learned, and the key costs a few integer operations. ``qkv`` ignores the KV cache
    unless it plans ``attn`` after it (``lookahead``). Written out rather than in helper
    calls: every decision on a shape not seen lately computes it.

    >>> a, b = Shape(n=1, d=2048, kv_len=300), Shape(n=1, d=2048, kv_len=310)
    >>> entry_key(Stage.ATTN, a, None) == entry_key(Stage.ATTN, b, None)
    True
    """
    n = shape.n
    if stage is _ATTN or lookahead:
        kv = shape.kv_len + n
        if kv > 16:
            top = kv.bit_length()
            kv = (top << 2) | ((kv >> (top - 3)) & 3)
    else:
        kv = 0
    if n > 64:
        top = n.bit_length()
        n = (top << 2) | ((n >> (top - 3)) & 3)
    return (stage, n, shape.d, shape.heads, shape.batch, shape.precision, kv, after)


def bucket_key(stage: Stage, shape: Shape, lookahead: bool = True) -> tuple[Any, ...]:
    """The shape bucket of :func:`entry_key` alone (what learned corrections are shared by).

    >>> bucket_key(Stage.QKV, Shape(n=1, d=2048, kv_len=300), lookahead=False)
    (1, 2048, 32, 1, <Precision.FP16: 'fp16'>, 0)
    """
    return entry_key(stage, shape, None, lookahead)[1:-1]
