"""Latency worlds for the learning benchmark: latency models that are not our simulator.

The scheduler's prior is built from our simulated RK3588, so judging the scheduler on
that simulator would judge it where its prior is right by construction. These worlds are
written independently of :mod:`adaptive_sched.sim` (no code or constant shared with it):

``soc``
    An RK3588-like SoC from first principles: per backend a launch cost per kernel, a
    compute rate and a memory bandwidth per precision, small-tensor inefficiency, NPU
    alignment padding; GPU attention is a bandwidth-bound 3-kernel pipeline, NPU
    attention pays for its softmax. Which backend wins moves with d, kv_len and precision,
    and in places differs from what the prior believes by large factors.
``npu-heavy``
    A different SoC (a Snapdragon-class NPU several times the GPU, a slower GPU).
``gpu-heavy``
    A SoC whose GPU is the strong unit (a phone-class GPU with fast INT8 dot products, several
    times a small NPU whose calls are costly): the opposite of what the prior believes of INT8.
``int8-gpu``
    The prior's precision strengths reversed: a GPU whose INT8 dot-product path runs at five
    times its FP16 rate, an NPU built for FP16 that runs INT8 at a third of it. The prior
    believes the GPU's INT8 prefills 10 to 13 times dearer than they are (25 times in
    ``gpu-heavy``), where the NPU it prefers is 1.5 to 6 times dearer than it believes.
``random-0``, ``random-1``, ...
    Device profiles drawn at random over what mobile GPUs and NPUs span (:func:`random_units`),
    never looked at while the scheduler was built: whether its behaviour holds elsewhere.
``prior``
    A world that is exactly the prior (the prior is right), so that one perturbation of it
    measures what one wrong belief costs (for example one (stage, backend) 10x faster than
    the prior says).

A :class:`Scenario` scales a world's latencies over the run: by (stage, backend), by
backend over a span of the run (throttling, contention), periodically, as a ramp, or
with heavy-tailed noise. Time is the layer index, so every policy meets the same
conditions at the same point of the workload, and the oracle is well defined.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adaptive_sched.types import Backend, Shape, Stage

GPU, NPU = Backend.GPU, Backend.NPU
QKV, ATTN = Stage.QKV, Stage.ATTN

# ------------------------------------------------------------------------------------------
# Base latency models
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One processor: a roofline with per-kernel costs."""

    launch_s: float
    #: effective ops/s of a large, well-shaped GEMM per precision
    ops: dict[str, float]
    #: effective bytes/s streaming weights or the KV cache, per precision
    bandwidth: dict[str, float]
    #: kernels per stage (the GPU runs attention as QK^T, softmax, AV)
    kernels: dict[Stage, int]
    #: work (outputs) at which a kernel reaches half its rate: small tensors are inefficient
    half_outputs: float
    #: matmul dimensions are padded to this many elements (0: none)
    align: int = 0
    #: extra cost factor of attention's softmax and layout on this unit
    attn_factor: float = 1.0


def _pad(x: int, a: int) -> int:
    return x if a <= 0 else -(-x // a) * a


def roofline(unit: Unit, stage: Stage, shape: Shape) -> float:
    p = shape.precision.value
    s = shape.precision.itemsize
    b, n, d = shape.batch, shape.n, shape.d
    if stage is QKV:
        m, k, nn = b * n, _pad(d, unit.align), _pad(3 * d, unit.align)
        flops = 2 * m * k * nn
        nbytes = s * (m * k + k * nn + m * nn)
        outputs = m * nn
    else:
        keys = shape.kv_len + n
        keys_p = _pad(keys, unit.align)
        flops = 4 * b * n * keys_p * d + 5 * b * shape.heads * n * keys_p
        nbytes = s * (2 * b * n * d + 2 * b * keys_p * d)
        outputs = b * shape.heads * n * keys_p
    occupancy = outputs / (outputs + unit.half_outputs)
    compute = flops / (unit.ops[p] * occupancy)
    memory = nbytes / (unit.bandwidth[p] * min(1.0, 4 * occupancy))
    t = unit.kernels[stage] * unit.launch_s + max(compute, memory)
    return t * (unit.attn_factor if stage is ATTN else 1.0)


SOC = {
    # Mali-class GPU through OpenCL: cheap-ish launches, good FP16 rate, INT8 needs unpacking.
    GPU: Unit(launch_s=9e-5, ops={"fp16": 6.0e11, "int8": 2.4e11}, bandwidth={"fp16": 1.9e10, "int8": 1.3e10},
              kernels={QKV: 1, ATTN: 3}, half_outputs=2.0e3),
    # A 3-core NPU through a static-graph runtime: costly calls, strong INT8, weak FP16, weak softmax.
    NPU: Unit(launch_s=2.2e-4, ops={"fp16": 2.5e11, "int8": 1.1e12}, bandwidth={"fp16": 1.4e10, "int8": 2.0e10},
              kernels={QKV: 1, ATTN: 1}, half_outputs=8.0e3, align=32, attn_factor=1.6),
}  # fmt: skip

NPU_HEAVY = {
    GPU: Unit(launch_s=1.5e-4, ops={"fp16": 2.5e11, "int8": 1.2e11}, bandwidth={"fp16": 1.2e10, "int8": 9e9},
              kernels={QKV: 1, ATTN: 3}, half_outputs=4.0e3),
    NPU: Unit(launch_s=6e-5, ops={"fp16": 1.5e12, "int8": 3.0e12}, bandwidth={"fp16": 3.0e10, "int8": 3.6e10},
              kernels={QKV: 1, ATTN: 1}, half_outputs=2.0e3, align=64, attn_factor=1.1),
}  # fmt: skip


GPU_HEAVY = {
    GPU: Unit(launch_s=5e-5, ops={"fp16": 2.0e12, "int8": 2.5e12}, bandwidth={"fp16": 4.0e10, "int8": 4.0e10},
              kernels={QKV: 1, ATTN: 3}, half_outputs=2.0e3),
    NPU: Unit(launch_s=3e-4, ops={"fp16": 2.0e11, "int8": 6.0e11}, bandwidth={"fp16": 1.2e10, "int8": 1.4e10},
              kernels={QKV: 1, ATTN: 1}, half_outputs=8.0e3, align=32, attn_factor=2.0),
}  # fmt: skip

INT8_GPU = {
    GPU: Unit(launch_s=9e-5, ops={"fp16": 2.4e11, "int8": 1.2e12}, bandwidth={"fp16": 1.3e10, "int8": 2.2e10},
              kernels={QKV: 1, ATTN: 3}, half_outputs=2.0e3),
    NPU: Unit(launch_s=1.2e-4, ops={"fp16": 7.0e11, "int8": 2.4e11}, bandwidth={"fp16": 2.0e10, "int8": 1.3e10},
              kernels={QKV: 1, ATTN: 1}, half_outputs=4.0e3, align=32, attn_factor=1.0),
}  # fmt: skip

#: the roofline worlds by name
ROOFLINES = {"soc": SOC, "npu-heavy": NPU_HEAVY, "gpu-heavy": GPU_HEAVY, "int8-gpu": INT8_GPU}

#: name prefix of a device profile drawn at random (``random-3``): see :func:`random_units`
RANDOM = "random-"


def is_random(name: str) -> bool:
    """Whether ``name`` is that of a device profile drawn at random (``random-3``)."""
    return name.startswith(RANDOM) and name[len(RANDOM) :].isdigit()


def takes_random(scenario: Scenario) -> bool:
    """Whether ``scenario`` may run on a profile drawn at random: all but the prior's own, which
    perturb the prior itself."""
    return "prior" not in scenario.worlds


def random_units(k: int) -> dict[Backend, Unit]:
    """Device profile ``k`` drawn at random, the same for a ``k`` on every machine.

    The four named worlds are what the scheduler's behaviour was checked against while it
    was built; these are not, so they say whether what was learned there holds on a device
    nobody looked at. Each unit's rates are drawn log-uniformly over what mobile GPUs and NPUs
    span: a launch cost of 30 to 400 us, an FP16 rate of 0.15 to 2.5 TOPS, INT8 at 0.3 to 5
    times it, 8 to 40 GB/s with INT8 streaming 0.7 to 1.5 times faster, the NPU's matmuls
    padded to 32 or 64 and its attention 1 to 2 times dearer for its softmax.
    """

    rng = random.Random(1000 + k)

    def log_uniform(lo: float, hi: float) -> float:
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))

    units = {}
    for backend in (GPU, NPU):
        fp16, bandwidth = log_uniform(1.5e11, 2.5e12), log_uniform(8e9, 4e10)
        units[backend] = Unit(
            launch_s=log_uniform(3e-5, 4e-4),
            ops={"fp16": fp16, "int8": fp16 * log_uniform(0.3, 5.0)},
            bandwidth={"fp16": bandwidth, "int8": bandwidth * log_uniform(0.7, 1.5)},
            kernels={QKV: 1, ATTN: 3 if backend is GPU else 1},
            half_outputs=rng.choice((2e3, 4e3, 8e3)),
            align=0 if backend is GPU else rng.choice((32, 64)),
            attn_factor=1.0 if backend is GPU else log_uniform(1.0, 2.0),
        )
    return units


class BaseWorld:
    """Noise-free latencies of one stage on one backend, and of handing a stage's input between backends."""

    name = "base"
    sync_s = 1.2e-4
    copy_bps = 8e9

    def stage_s(self, stage: Stage, shape: Shape, backend: Backend) -> float:
        raise NotImplementedError

    def handoff_s(self, stage: Stage, shape: Shape, src: Backend | None, dst: Backend) -> float:
        if src is None or src is dst:
            return 0.0
        moved = (3 if stage is ATTN else 1) * shape.batch * shape.n * shape.d * shape.precision.itemsize
        return self.sync_s + moved / self.copy_bps


class RooflineWorld(BaseWorld):
    def __init__(self, name: str, units: dict[Backend, Unit]) -> None:
        self.name = name
        self.units = units

    def stage_s(self, stage: Stage, shape: Shape, backend: Backend) -> float:
        return roofline(self.units[backend], stage, shape)


class PriorWorld(BaseWorld):
    """Exactly what the prior predicts (at the prior's 1/16-octave grid, as the policy reads it)."""

    name = "prior"

    def __init__(self, prior: Any) -> None:
        self.prior = prior
        self._cache: dict[tuple[Stage, Shape], dict[Backend, float]] = {}

    def stage_s(self, stage: Stage, shape: Shape, backend: Backend) -> float:
        key = (stage, shape)
        est = self._cache.get(key)
        if est is None:
            est = self._cache[key] = dict(self.prior.latency(stage, shape))
        return est[backend]


def make_base(name: str, prior: Any = None) -> BaseWorld:
    if name in ROOFLINES:
        return RooflineWorld(name, ROOFLINES[name])
    if is_random(name):
        return RooflineWorld(name, random_units(int(name[len(RANDOM) :])))
    if name == "prior":
        return PriorWorld(prior)
    raise ValueError(f"unknown world {name!r}")


# ------------------------------------------------------------------------------------------
# Scenarios: how the world changes over the run
# ------------------------------------------------------------------------------------------

#: (stage or None for every stage, backend, progress in [0, 1]) -> latency factor
Factor = Callable[[Stage, Backend, float], float]


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    factors: tuple[Factor, ...] = ()
    #: log-normal noise sigma
    sigma: float = 0.08
    #: share of observations that are spikes, and their factor
    spike_rate: float = 0.0
    spike_factor: float = 8.0
    #: the workload's models (d values); None: the default mix
    models: tuple[tuple[int, int], ...] | None = None
    #: base world names this scenario runs on
    worlds: tuple[str, ...] = ("soc", "npu-heavy", "gpu-heavy", "int8-gpu")


def during(backend: Backend, start: float, end: float, factor: float, stage: Stage | None = None) -> Factor:
    def f(s: Stage, b: Backend, t: float) -> float:
        return factor if b is backend and start <= t < end and (stage is None or s is stage) else 1.0

    return f


def periodic(backend: Backend, period: float, duty: float, factor: float) -> Factor:
    def f(s: Stage, b: Backend, t: float) -> float:
        return factor if b is backend and (t / period) % 1.0 < duty else 1.0

    return f


def ramp(backend: Backend, top: float) -> Factor:
    def f(s: Stage, b: Backend, t: float) -> float:
        return 1.0 + (top - 1.0) * t if b is backend else 1.0

    return f


def always(stage: Stage, backend: Backend, factor: float) -> Factor:
    def f(s: Stage, b: Backend, t: float) -> float:
        return factor if s is stage and b is backend else 1.0

    return f


DEFAULT_MODELS = ((1024, 16), (1536, 12), (2048, 32), (3072, 24), (4096, 32))
UNSEEN_MODELS = ((896, 14), (2560, 20), (3584, 28), (5120, 40))

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("steady", "a steady device"),
        Scenario("npu-throttle", "the NPU runs 2.6x slower for 40% of the run", (during(NPU, 0.3, 0.7, 2.6),)),
        Scenario("npu-periodic", "the NPU throttles 2.5x on and off (8 periods)", (periodic(NPU, 0.125, 0.5, 2.5),)),
        Scenario("gpu-contention", "another client slows the GPU 3x in bursts (5 periods, 30% duty)",
                 (periodic(GPU, 0.2, 0.3, 3.0),)),
        Scenario("gpu-attn-faster", "GPU attention 2.2x faster than the base world", (always(ATTN, GPU, 1 / 2.2),)),
        Scenario("spikes", "2% of observations are 8x spikes (preemption); means steady", spike_rate=0.02),
        Scenario("heavy-noise", "noise sigma 0.3 and 1% 20x spikes", sigma=0.3, spike_rate=0.01, spike_factor=20.0),
        Scenario("firmware-swap", "at half time the NPU's qkv gets 2x faster and GPU attention 2x slower",
                 (during(NPU, 0.5, 1.01, 0.5, QKV), during(GPU, 0.5, 1.01, 2.0, ATTN))),
        Scenario("npu-ramp", "the NPU slows steadily to 2.5x by the end (thermal creep)", (ramp(NPU, 2.5),)),
        Scenario("unseen-models", "model widths the prior never saw (896, 2560, 3584, 5120)", models=UNSEEN_MODELS),
        # The prior is exactly right, but for one (stage, backend) that is faster than it believes: the
        # direction that hides the best choice.
        Scenario("prior-3x-off", "the prior is right but GPU attention is 3x faster than it says",
                 (always(ATTN, GPU, 1 / 3),), worlds=("prior",)),
        Scenario("prior-20x-off", "the prior is right but NPU qkv is 20x faster than it says",
                 (always(QKV, NPU, 1 / 20),), worlds=("prior",)),
        Scenario("prior-right", "the prior is exactly right", worlds=("prior",)),
    )
}  # fmt: skip


def parse_seeds(text: str) -> list[int]:
    """The seeds of ``--seeds``, each once, in order: a comma-separated list of seeds and
    inclusive ranges, such as ``0,1,2``, ``0-29`` or ``0-2,9``. The worst cells are mostly
    single events, which three seeds seldom show; a range makes a run over many seeds one command."""
    seeds: dict[int, None] = {}
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            lo = int(first)
            hi = int(last) if dash else lo
        except ValueError:
            raise ValueError(f"--seeds: {part.strip()!r} is not a seed or a range of seeds (like 0-29)") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"--seeds: {part.strip()!r} is not a range of seeds >= 0 (like 0-29)")
        seeds.update(dict.fromkeys(range(lo, hi + 1)))
    return list(seeds)


def add_cell_options(ap: argparse.ArgumentParser) -> None:
    """The options that choose a benchmark's cells (a scenario on a world at a seed):
    ``--scenarios``, ``--worlds``, ``--random-worlds`` and ``--seeds`` (see :func:`chosen_cells`)."""
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: all)")
    ap.add_argument("--worlds", default="", help="comma-separated base worlds to keep (default: each scenario's all)")
    ap.add_argument(
        "--random-worlds",
        type=int,
        default=0,
        metavar="N",
        help="run the scenarios of the four named device profiles on N profiles drawn at random instead "
        "(random-0 ... random-N-1, see worlds.random_units); the prior's own world is kept",
    )
    ap.add_argument("--seeds", default="0,1,2", help="seeds and ranges of seeds: 0,1,2 or 0-29")


def chosen_cells(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """The (scenario, world, seed) cells :func:`add_cell_options`' options choose, in order; an
    unknown scenario or world, or a bad seed, ends the program with an error naming the option."""
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        ap.error(f"--scenarios: unknown {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        ap.error(str(exc))
    if args.random_worlds < 0:
        ap.error("--random-worlds: a number of device profiles >= 0 is expected")
    drawn = tuple(f"{RANDOM}{k}" for k in range(args.random_worlds))
    worlds_of = {s: drawn if drawn and takes_random(SCENARIOS[s]) else SCENARIOS[s].worlds for s in scenarios}
    kept = [w for w in args.worlds.split(",") if w]
    known = {w for worlds in worlds_of.values() for w in worlds}
    if set(kept) - known:
        ap.error(f"--worlds: unknown {', '.join(sorted(set(kept) - known))} (known: {', '.join(sorted(known))})")
    cells = [(s, w, seed) for s in scenarios for w in worlds_of[s] if not kept or w in kept for seed in seeds]
    if not cells:
        ap.error("--worlds: none of the scenarios runs on these worlds")
    return cells


# ------------------------------------------------------------------------------------------
# The workload and the world that answers it
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One attention layer of one decode (or prefill) step."""

    index: int
    shape: Shape


def workload(
    layers: int, seed: int, models: Sequence[tuple[int, int]] | None = None, prefill: bool = True
) -> list[Step]:
    """``layers`` attention layers: requests of a random model and precision, a prefill then decode tokens.

    Each request takes a model width from ``models``, a precision, a prompt of 64 to 1024
    tokens and runs 8 layers per token for a random number of tokens; kv_len grows by one
    per token, so shapes are almost never repeated exactly. Without ``prefill``, the same
    requests' decode tokens only (prefills run elsewhere, or their cost is not the question).
    """
    rng = random.Random(seed)
    models = models or DEFAULT_MODELS
    steps: list[Step] = []
    while len(steps) < layers:
        d, heads = rng.choice(models)
        precision = rng.choice(("fp16", "int8"))
        kv = int(2 ** rng.uniform(6, 10.5))
        tokens = rng.randint(20, 120)
        per_token = 8
        if prefill:
            prompt = Shape(n=min(kv, 512), d=d, heads=heads, precision=precision)
            steps.extend(Step(len(steps) + i, prompt) for i in range(per_token))
        for t in range(tokens):
            shape = Shape(n=1, d=d, kv_len=min(kv + t, 2048), heads=heads, precision=precision)
            steps.extend(Step(len(steps) + i, shape) for i in range(per_token))
    return steps[:layers]


@dataclass
class World:
    """A base world under a scenario, with seeded noise. ``progress`` is set by the driver."""

    base: BaseWorld
    scenario: Scenario
    seed: int
    progress: float = 0.0
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed * 7919 + 17)

    def expected(self, stage: Stage, shape: Shape, backend: Backend, after: Backend | None) -> float:
        t = self.base.stage_s(stage, shape, backend)
        for f in self.scenario.factors:
            t *= f(stage, backend, self.progress)
        return t + self.base.handoff_s(stage, shape, after, backend)

    def sample(self, stage: Stage, shape: Shape, backend: Backend, after: Backend | None) -> float:
        t = self.expected(stage, shape, backend, after)
        sc = self.scenario
        t *= math.exp(sc.sigma * self._rng.gauss(0.0, 1.0) - sc.sigma**2 / 2)
        if sc.spike_rate and self._rng.random() < sc.spike_rate:
            t *= sc.spike_factor
        return t
