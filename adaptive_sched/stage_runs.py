"""What running through the scheduler returns, and one attention layer run as its two stages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ExecutorError, UnsupportedShape
from .executors import RunResult
from .stages import split_heads
from .types import Backend, Decision, Shape, Stage


@dataclass(frozen=True)
class StageRun:
    """One stage run through the scheduler: the decision and what the executor returned."""

    decision: Decision
    result: RunResult
    #: decisions that failed before this one succeeded (their backends are quarantined)
    failed: tuple[Decision, ...] = ()

    @property
    def output(self) -> np.ndarray | None:
        return self.result.output

    @property
    def latency_s(self) -> float:
        return self.result.latency_s

    @property
    def backend(self) -> Backend:
        return self.decision.backend


@dataclass(frozen=True)
class LayerRun:
    """qkv then attn for one attention layer (see :meth:`Scheduler.run_attention`)."""

    qkv: StageRun
    attn: StageRun
    #: attention output [batch, heads, n, head_dim] (None in latency-only mode)
    output: np.ndarray | None = None
    #: the KV caches with this step's keys and values appended
    k_cache: np.ndarray | None = None
    v_cache: np.ndarray | None = None

    @property
    def latency_s(self) -> float:
        return self.qkv.latency_s + self.attn.latency_s


def run_layer(
    run_stage: Callable[..., StageRun],
    shape: Shape,
    inputs: Mapping[str, np.ndarray] | None,
    after: Any,
    context: Mapping[str, float] | None,
) -> LayerRun:
    """``qkv`` then ``attn`` through ``run_stage`` (``Scheduler.run_stage``), the KV caches extended.

    The contract is :meth:`Scheduler.run_attention`'s: missing or misshapen inputs raise
    :class:`UnsupportedShape` naming the input.
    """
    if inputs is None:
        qkv = run_stage(Stage.QKV, shape, None, after=after, context=context)
        attn = run_stage(Stage.ATTN, shape, None, after=qkv.decision, context=context)
        return LayerRun(qkv=qkv, attn=attn)
    missing = [k for k in ("x", "w") if k not in inputs]
    if missing:
        raise UnsupportedShape(f"run_attention: missing input {missing[0]!r}")
    qkv = run_stage(Stage.QKV, shape, {k: inputs[k] for k in ("x", "w", "b") if k in inputs}, after=after,
                    context=context)  # fmt: skip
    if qkv.output is None:
        raise ExecutorError(f"{qkv.backend.value}: qkv returned no output although inputs were given")
    q, k_new, v_new = split_heads(qkv.output, shape)
    k_cache = _extend_cache(inputs, "k_cache", k_new, shape)
    v_cache = _extend_cache(inputs, "v_cache", v_new, shape)
    attn = run_stage(Stage.ATTN, shape, {"q": q, "k": k_cache, "v": v_cache}, after=qkv.decision, context=context)
    return LayerRun(qkv=qkv, attn=attn, output=attn.output, k_cache=k_cache, v_cache=v_cache)


def _extend_cache(inputs: Mapping[str, np.ndarray], name: str, new: np.ndarray, shape: Shape) -> np.ndarray:
    cache = inputs.get(name)
    if cache is None:
        if shape.kv_len:
            raise UnsupportedShape(f"run_attention: missing input {name!r} for kv_len={shape.kv_len}")
        return np.ascontiguousarray(new)
    expected = (shape.batch, shape.heads, shape.kv_len, shape.head_dim)
    if tuple(cache.shape) != expected:
        raise UnsupportedShape(f"run_attention: input {name!r} has shape {tuple(cache.shape)}, expected {expected}")
    return np.concatenate([cache, new], axis=2)
