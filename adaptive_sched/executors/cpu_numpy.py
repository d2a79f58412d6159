"""The CPU backend: the reference numpy math, timed, with weights prepared once. Always available.

Like any inference runtime, it treats a weight array as immutable once it has seen it:
the FP16-rounded or INT8-quantised copy of ``w`` is kept (by array identity, for the
last few arrays) so a decode step does not re-convert a whole weight matrix.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from ..stages import attention_core, quantize_symmetric
from ..types import Backend, Precision, Shape, Stage
from .base import Executor, RunResult, WeightCache

#: prepared weight arrays kept (one per layer of a small model, or the layers in flight)
MAX_CACHED_WEIGHTS = 64


#: rows of K per float32 partial product: 127 * 127 * 1024 < 2**24, so every partial sum of
#: int8 products is an exact integer in float32 and BLAS does the work int32 matmul would
EXACT_K_CHUNK = 1024


def _int8_matmul(xq: np.ndarray, wq: np.ndarray) -> np.ndarray:
    """The exact integer product of int8-valued float32 arrays, as int32 accumulation gives it."""
    k = wq.shape[0]
    if k <= EXACT_K_CHUNK:
        return np.matmul(xq, wq).astype(np.float64)
    acc = np.zeros((*xq.shape[:-1], wq.shape[1]), dtype=np.float64)
    for start in range(0, k, EXACT_K_CHUNK):
        stop = min(start + EXACT_K_CHUNK, k)
        acc += np.matmul(xq[..., start:stop], wq[start:stop])
    return acc


class CpuNumpyExecutor(Executor):
    """Runs both stages with numpy on the host CPU (FP16 through float32 BLAS, INT8 through int32 matmul)."""

    kind = "cpu_numpy"
    OPTIONS = MappingProxyType({})  # nothing to set: numpy uses the BLAS it was built with

    def __init__(self, backend: Backend | str = Backend.CPU, **options: object) -> None:
        super().__init__(backend=backend, **options)
        self._weights: WeightCache[tuple[np.ndarray, ...]] = WeightCache(MAX_CACHED_WEIGHTS)
        self._cold = False

    def _prepared_weights(self, w: np.ndarray, precision: Precision) -> tuple[np.ndarray, ...]:
        hit = self._weights.get(w, precision)
        if hit is not None:
            return hit
        self._cold = True
        if precision is Precision.FP16:
            prepared: tuple[np.ndarray, ...] = (w.astype(np.float16).astype(np.float32),)
        else:
            wq, ws = quantize_symmetric(w, axis=0)
            prepared = (wq.astype(np.float32), ws.reshape(-1))
        self._weights.put(w, precision, prepared)
        return prepared

    def _qkv(self, shape: Shape, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        x, w, b = inputs["x"], inputs["w"], inputs.get("b")
        if shape.precision is Precision.FP16:
            (w32,) = self._prepared_weights(w, Precision.FP16)
            acc = np.matmul(x.astype(np.float16).astype(np.float32), w32)
        else:
            wq, ws = self._prepared_weights(w, Precision.INT8)
            xq, xs = quantize_symmetric(x)
            acc = _int8_matmul(xq.astype(np.float32), wq).astype(np.float32) * (xs * ws)
        if b is not None:
            acc = acc + b.astype(np.float32)
        return acc.astype(np.float32)

    def _run(
        self, stage: Stage, shape: Shape, inputs: Mapping[str, np.ndarray] | None, after: Backend | None
    ) -> RunResult:
        assert inputs is not None
        self._cold = False
        start = time.perf_counter()
        if stage is Stage.QKV:
            out = self._qkv(shape, inputs)
        else:
            out = attention_core(inputs["q"], inputs["k"], inputs["v"], shape.precision)
        return RunResult(output=out, latency_s=max(time.perf_counter() - start, 1e-9), cold=self._cold)

    def _close(self) -> None:
        self._weights.clear()
