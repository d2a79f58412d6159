"""The CPU backend: the reference numpy math, timed. Always available."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..stages import reference
from ..types import Backend, Shape, Stage
from .base import Executor, RunResult, wall_time


class CpuNumpyExecutor(Executor):
    """Runs both stages with numpy on the host CPU (BLAS for FP16 via float32, int32 matmul for INT8)."""

    kind = "cpu_numpy"

    def _run(
        self, stage: Stage, shape: Shape, inputs: Mapping[str, np.ndarray] | None, after: Backend | None
    ) -> RunResult:
        assert inputs is not None
        output, seconds = wall_time(reference, stage, shape, inputs)
        return RunResult(output=output, latency_s=max(seconds, 1e-9))
