"""The rule the scheduler starts from when it has no offline prior: a roofline per backend.

Latency is estimated as ``overhead + max(flops / peak, bytes / bandwidth)`` with
constants per backend and precision taken from published figures for the RK3588
(see ../DESIGN notes in the device profile). It is deliberately coarse: it only has
to start the bandit somewhere sensible, never at random; observations correct it.
"""

from __future__ import annotations

from functools import lru_cache

from ..features import stage_flops, stage_mem_bytes
from ..types import Backend, Precision, Shape, Stage, parse_stage

#: (peak ops/s, bandwidth B/s, per-call overhead s) per backend and precision:
#: Mali-G610 clpeak (910 GFLOPS fp16, 125 GIOPS int), NPU matmul measurements
#: (tens to hundreds of GOPS for typical LLM shapes), A76 NEON, shared LPDDR ~20 GB/s.
ROOFLINE: dict[Backend, dict[Precision, tuple[float, float, float]]] = {
    Backend.GPU: {Precision.FP16: (400e9, 18e9, 150e-6), Precision.INT8: (100e9, 18e9, 150e-6)},
    Backend.NPU: {Precision.FP16: (150e9, 14e9, 250e-6), Precision.INT8: (300e9, 16e9, 250e-6)},
    Backend.CPU: {Precision.FP16: (40e9, 12e9, 20e-6), Precision.INT8: (60e9, 12e9, 20e-6)},
}


class RooflineRule:
    """A prior-shaped object built from the roofline table; never extrapolating, never trained.

    >>> rule = RooflineRule((Backend.GPU, Backend.NPU))
    >>> rule.choose("qkv", Shape(n=512, d=2048))
    <Backend.GPU: 'gpu'>
    """

    name = "roofline-rule"
    device = ""
    content_hash = ""

    def __init__(self, backends: tuple[Backend, ...]) -> None:
        self.backends = tuple(backends)

    def latency(self, stage: Stage | str, shape: Shape) -> dict[Backend, float]:
        return dict(_latency(parse_stage(stage), shape, self.backends))

    def choose(self, stage: Stage | str, shape: Shape) -> Backend:
        est = self.latency(stage, shape)
        return min(est, key=est.__getitem__)

    def extrapolating(self, stage: Stage | str, shape: Shape) -> bool:
        return False


@lru_cache(maxsize=16384)
def _latency(stage: Stage, shape: Shape, backends: tuple[Backend, ...]) -> tuple[tuple[Backend, float], ...]:
    flops, nbytes = stage_flops(stage, shape), stage_mem_bytes(stage, shape)
    out = []
    for backend in backends:
        peak, bandwidth, overhead = ROOFLINE.get(backend, ROOFLINE[Backend.CPU])[shape.precision]
        out.append((backend, overhead + max(flops / peak, nbytes / bandwidth)))
    return tuple(out)
