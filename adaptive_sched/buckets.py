"""The shape buckets decisions are keyed by: the one definition the policies and a cold ``decide`` share.

Imports nothing but the types, so a cold ``adaptive-sched decide`` (which reads a saved
snapshot with the standard library) keys its lookups exactly as the policy that published
them, without importing the policies.
"""

from __future__ import annotations

from typing import Any

from .types import Shape, Stage

_ATTN = Stage.ATTN  # a module constant: looking it up on the enum costs more than the rest


def bucket_key(stage: Stage, shape: Shape, lookahead: bool = True) -> tuple[Any, ...]:
    """The shape's bucket as ``stage`` sees it (what decisions and learned corrections are shared by).

    Never the exact shape (kv_len grows every token): sequence and KV lengths in
    quarter-octave buckets (:func:`~adaptive_sched.types.length_bucket`; exact up to 64
    and 16), which the shape computed once, when it was made. ``qkv`` ignores the KV cache
    unless it plans ``attn`` after it (``lookahead``).

    >>> bucket_key(Stage.QKV, Shape(n=1, d=2048, kv_len=300), lookahead=False)
    (1, 2048, 32, 1, <Precision.FP16: 'fp16'>, 0)
    """
    if stage is _ATTN or lookahead:
        return shape.bucket
    return (*shape.bucket[:5], 0)


def entry_key(stage: Stage, shape: Shape, after: Any, lookahead: bool = True) -> tuple[Any, ...]:
    """The key of the published entry a decision reads: the stage, the shape's bucket, the previous backend.

    >>> a, b = Shape(n=1, d=2048, kv_len=300), Shape(n=1, d=2048, kv_len=310)
    >>> entry_key(Stage.ATTN, a, None) == entry_key(Stage.ATTN, b, None)
    True
    >>> entry_key(Stage.ATTN, a, None)
    (<Stage.ATTN: 'attn'>, (1, 2048, 32, 1, <Precision.FP16: 'fp16'>, 256), None)
    """
    return (stage, bucket_key(stage, shape, lookahead), after)
