"""What device telemetry buys: regret against the oracle with the clocks read, without, and lied to.

    python benchmarks/bench_telemetry.py                 # every scenario, 5 seeds (~2 min)
    python benchmarks/bench_telemetry.py --seeds 0,1 --json
    python benchmarks/bench_telemetry.py --scenarios sim-periodic --seeds 0-79

Two families of scenarios, each over several seeds, every policy in the same run:

* **the simulated RK3588** (thermal throttling from its own heat model: the NPU's governor
  steps its clock down at 75 and 85 C): ``sim-steady`` (sustained decode) and
  ``sim-periodic`` (bursts of decode with idle gaps in which the NPU cools and recovers).
  The shipped config also scripts a burst of GPU contention from 8 to 24 s of the device's
  time: it falls in ``sim-periodic``'s third to fifth bursts (``sim-steady`` ends before it),
  and no clock shows it (it is load on the GPU, not a clock step): the GPU's load does;
* **an independent latency world** (:mod:`worlds`, not our simulator) whose NPU throttles
  (``npu-throttle``, ``npu-periodic``, ``npu-ramp`` on the ``soc`` world); its clock reads
  ``max / slowdown^(1/0.7)``: latency follows the clock with an elasticity of 0.7, not the
  1 the learner starts from. In ``npu-ramp-mixed`` the kernels do not follow it alike:
  attention, bound by memory, slows by the square root of what qkv slows by (elasticity
  0.35 against qkv's 0.7), which the learner must find out for each stage. In
  ``gpu-contention`` another client slows the GPU 3x in bursts: no clock shows it, its
  load does, as ``1 - slowdown^(-1/0.7)`` (the world's latency follows the load less than
  in proportion, not as the learner assumes), with a jitter (sd 0.02).

Policies: ``adaptive`` without telemetry, ``telemetry`` (the clocks read), ``lying`` (a clock
that always reads its maximum while the device is slow, and a load that comes and goes on its
own, slowing nothing; with ``--inverted-loads``, a load that reads busy when the backend is
free and free when it is busy), ``temperatures`` (a board whose clocks
cannot be read, no devfreq for them: only temperatures), and the oracle. The world's NPU
temperature is 50 C plus 20 C per unit of its log slowdown, with a sensor's jitter (sd 0.3 C). Reported: each
one's total latency over the oracle's, minus one (the regret), mean and worst over seeds,
and the ratios telemetry / without and temperatures / without; then the decisions' own regret, what each choice lost
against the best pair at the moment it was made, over the whole run and from the moment the NPU
first throttled (what telemetry can change); and the regret beyond what the same seeds cost on a
device that never throttles (first checks and exploration, which telemetry cannot change). On
the simulator the decisions' own regret and the total differ: its heat feeds the choices back
(the oracle, greedy, and a policy that returns to a recovered NPU sooner both heat it
sooner), so a better choice can end in a longer total.

Target: telemetry at most half the regret without in the throttling scenarios, no scenario
worse; lying telemetry not worse than none by more than noise.

Also: the median cost of one read of a board's sysfs (a fake RK3588 tree in a temporary
directory), which the sampler pays off the hot path a few times a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from worlds import GPU, NPU, SCENARIOS, Factor, Scenario, World, make_base, parse_seeds, ramp, workload

from adaptive_sched import Scheduler
from adaptive_sched.build import build_executors, build_policy, load_prior
from adaptive_sched.config import Config, load_config
from adaptive_sched.policies import AdaptiveParams, AdaptivePolicy, OraclePolicy
from adaptive_sched.telemetry import BackendReading, Sampler, SimTelemetry, Snapshot, SysfsTelemetry
from adaptive_sched.types import Backend, Stage
from adaptive_sched.workload import decode_steps, model_shape

QKV, ATTN = Stage.QKV, Stage.ATTN
VARIANTS = ("adaptive", "telemetry", "lying", "temperatures")
#: each variant's column
LABELS = {"adaptive": "without", "telemetry": "telemetry", "lying": "lying", "temperatures": "temps only"}
#: how the independent world's latency follows its clock: slowdown = (max / cur)^ELASTICITY;
#: and others' load on it: slowdown = (1 / (1 - load))^ELASTICITY
ELASTICITY = 0.7
#: the world scenarios whose slowdowns are others' load, not a clock
LOADED = frozenset({"gpu-contention"})
#: the world's telemetry is read four times per 1% of the run, in the run's own time (its progress)
WORLD_INTERVAL = 0.0025


def ramp_mixed(top: float, attn_share: float) -> Factor:
    """The NPU slows as :func:`worlds.ramp` makes it, its attention by ``slowdown^attn_share`` only."""
    qkv = ramp(NPU, top)

    def f(s: Stage, b: Backend, t: float) -> float:
        slow = qkv(s, b, t)
        return slow if s is QKV else slow**attn_share

    return f


#: the learning benchmark's scenarios, and those only this one runs (the clock is read from qkv's slowdown)
WORLD_SCENARIOS: dict[str, Scenario] = {
    **SCENARIOS,
    "npu-ramp-mixed": Scenario("npu-ramp-mixed", "the NPU slows steadily to 2.5x, its attention to 2.5^0.5x",
                               (ramp_mixed(2.5, 0.5),), worlds=("soc",)),
}  # fmt: skip


def configured(config: Config, *, telemetry: bool, seed: int, **sim: Any) -> Config:
    assert config.simulator is not None
    return dataclasses.replace(
        config,
        simulator=dataclasses.replace(config.simulator, seed=seed, **sim),
        telemetry=dataclasses.replace(config.telemetry, enabled=telemetry),
    )


class Lying:
    """A source whose clocks (current and cap) always read their maximum, and whose loads, where
    one is read, come and go on their own (none or half, flipping at one reading in ten: another
    client's work that slows nothing of ours); or, with ``inverted`` (``--inverted-loads``), read
    the opposite of what they are (busy when free, free when busy: the worst a load can lie).
    Temperatures as they are."""

    #: set by ``--inverted-loads``
    inverted = False

    def __init__(self, source: Any) -> None:
        self.source = source
        self.flips = random.Random(0).random
        self.on: dict[Backend, bool] = {}

    def _load(self, backend: Backend, load: float | None) -> float | None:
        if load is None:
            return None
        if self.inverted:
            return 1.0 - load
        on = self.on[backend] = self.on.get(backend, False) != (self.flips() < 0.1)
        return 0.5 if on else 0.0

    def read(self) -> Snapshot:
        s = self.source.read()
        lies = {b: dataclasses.replace(r, freq_hz=r.max_freq_hz, cap_hz=r.max_freq_hz, load=self._load(b, r.load))
                for b, r in s.backends.items()}  # fmt: skip
        return dataclasses.replace(s, backends=lies)


class Thermometer:
    """A source whose clocks cannot be read (a board without devfreq for them): temperatures and loads only."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def read(self) -> Snapshot:
        s = self.source.read()
        unread = {b: dataclasses.replace(r, freq_hz=None, cap_hz=None) for b, r in s.backends.items()}
        return dataclasses.replace(s, backends=unread)


#: how a source is seen by each variant that reads telemetry (the sampler's own for ``telemetry``)
SEEN_AS = {"lying": Lying, "temperatures": Thermometer}


# -- the simulated RK3588 -----------------------------------------------------------------------
SIM_THERMAL = {"backends": {"npu": {"tau_s": 2.0, "trips": [[75, 6.0e8], [85, 4.0e8]]}}}
#: the same device whose governor never trips: what the same seeds cost without throttling
SIM_NEVER_TRIPS = {"backends": {"npu": {"tau_s": 2.0, "trips": [[1000, 6.0e8]]}}}


class Run:
    """What one run cost: its total latency, and the part of it its choices lost against the best
    pair at the moment each was made (the decisions' own regret, which a device's heat does not
    feed back into: the total does, as a backend used more heats more and throttles sooner)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.best = 0.0
        self.lost = 0.0
        #: what the choices lost from the moment the device first throttled (what telemetry can
        #: change: before it, every variant runs the same first checks of a fresh device)
        self.lost_throttled = 0.0
        self.throttled = False

    def add(self, chosen: float, best: float, throttled: bool = False) -> None:
        self.total += chosen
        self.best += best
        self.lost += chosen - best
        self.throttled = self.throttled or throttled
        if self.throttled:
            self.lost_throttled += chosen - best

    @property
    def decision_regret(self) -> float:
        return self.lost / self.best if self.best else math.nan

    @property
    def throttled_regret(self) -> float:
        """The decisions' own regret from the first throttling on, over the whole run's best."""
        return self.lost_throttled / self.best if self.best else math.nan


#: the (qkv, attn) backend pairs a layer can run on
PAIRS = tuple((q, a) for q in (Backend.GPU, Backend.NPU) for a in (Backend.GPU, Backend.NPU))


def pair_costs(expected: Any, shape: Any) -> dict[tuple[Backend, Backend], float]:
    """The expected latency of each (qkv, attn) pair now, the handoff between them included."""
    return {(q, a): expected(QKV, shape, q, None) + expected(ATTN, shape, a, q) for q, a in PAIRS}


def best_pair(expected: Any, shape: Any) -> float:
    """The expected latency of the best (qkv, attn) pair now."""
    return min(pair_costs(expected, shape).values())


def sim_layers(
    scenario: str, variant: str, seed: int, thermal: dict[str, Any] = SIM_THERMAL, clock_interval_s: float | None = None
) -> Iterator[tuple[Any, Any, Callable[[], Any]]]:
    """Run ``variant`` (one of :data:`VARIANTS`, or ``oracle``) through the simulator's ``scenario``
    one layer at a time: yields the simulated device, the layer's shape, and a function that runs
    the layer (returning its :class:`~adaptive_sched.stage_runs.LayerRun`). Read what the device's
    state says of the layer before calling it: running it moves that state (heat).
    ``clock_interval_s`` replaces the config's ``telemetry.clock_interval_s`` (``telemetry``)."""
    base = load_config("rk3588-sim")
    config = configured(base, telemetry=variant != "adaptive", seed=seed, thermal=thermal, contention=False)
    if clock_interval_s is not None:
        config = dataclasses.replace(
            config, telemetry=dataclasses.replace(config.telemetry, clock_interval_s=clock_interval_s)
        )
    built = build_executors(config)
    device = built.sim_device
    if variant == "oracle":
        policy: Any = OraclePolicy(expected_latency=device.expected_latency)
    else:
        policy = build_policy(config, built, seed=seed)
    sampler = None
    if variant in SEEN_AS:
        sampler = Sampler(SEEN_AS[variant](SimTelemetry(device)), config.telemetry.interval_s, clock=lambda: device.now)
    model = model_shape("qwen2.5-1.5b")
    bursts = 1 if scenario == "sim-steady" else 6
    tokens = 192 if scenario == "sim-steady" else 48
    with Scheduler(config, policy=policy, executors=built.executors, telemetry=sampler) as sched:
        for burst in range(bursts):
            steps = decode_steps(model, prompt=32 + 16 * burst, tokens=tokens, precision="int8")
            for step in steps:
                for _ in range(model.layers):
                    yield device, step.shape, functools.partial(sched.run_attention, step.shape)
            if bursts > 1:
                device.idle(4.0)  # the NPU cools below its trips


def run_sim(scenario: str, variant: str, seed: int, thermal: dict[str, Any] = SIM_THERMAL) -> Run:
    npu_top = thermal["backends"]["npu"]["trips"][0][1]  # below the first trip's clock: throttled
    out = Run()
    for device, shape, run in sim_layers(scenario, variant, seed, thermal):
        best = best_pair(device.expected_latency, shape)
        throttled = (device.state().get("npu_freq_hz") or math.inf) <= npu_top
        out.add(run().latency_s, best, throttled)
    return out


# -- the independent world ----------------------------------------------------------------------
class WorldTelemetry:
    """The world's clocks: each backend's current slowdown read back as a clock (max /
    slowdown^(1/e)); and its temperature, 50 C plus 20 C per unit of log slowdown, with jitter.
    In the :data:`LOADED` scenarios the slowdown is others' load instead (``1 - slowdown^(-1/e)``,
    with jitter; others' alone, of the moment), the clock at its maximum and the temperature steady."""

    MAX_HZ = 1.0e9

    def __init__(self, world: World, seed: int) -> None:
        self.world = world
        self.jitter = random.Random(seed).gauss
        self.loaded = world.scenario.name in LOADED

    def read(self) -> Snapshot:
        w = self.world
        readings = {}
        for backend in (Backend.GPU, Backend.NPU):
            slow = 1.0
            for f in w.scenario.factors:
                slow *= f(QKV, backend, w.progress)
            slow = max(slow, 1.0)
            if self.loaded:  # others' share of the backend now (the world's own work is not in it)
                load = min(1.0, max(0.0, 1.0 - slow ** (-1.0 / ELASTICITY) + self.jitter(0.0, 0.02)))
                readings[backend] = BackendReading(temp_c=50.0 + self.jitter(0.0, 0.3), freq_hz=self.MAX_HZ,
                                                   max_freq_hz=self.MAX_HZ, load=load, cap_hz=self.MAX_HZ,
                                                   load_window_s=0.0)  # fmt: skip
                continue
            cur = self.MAX_HZ / slow ** (1.0 / ELASTICITY)
            temp = 50.0 + 20.0 * math.log(slow) + self.jitter(0.0, 0.3)
            # the throttle is a cap, as a thermal governor's on a board
            readings[backend] = BackendReading(temp_c=temp, freq_hz=cur, max_freq_hz=self.MAX_HZ, cap_hz=cur)
        return Snapshot(w.progress, readings)


def world_layers(
    scenario: str,
    variant: str,
    seed: int,
    layers: int,
    world_name: str = "soc",
    prefill: bool = True,
    decided: Callable[[Any, Any], None] | None = None,
) -> Iterator[Any]:
    """Run ``variant`` (one of :data:`VARIANTS`, or ``oracle``) through ``scenario`` on a
    world that is not our simulator, as ``bench_learning.py`` does, one layer at a time: yields the
    world (its ``progress`` set to the layer's), the shape, and the layer's qkv and attn decisions.
    Without ``prefill``, the requests' decode layers only (``bench_learning.py --workload decode``).
    ``decided(policy, decision)``, if given, is called with each decision before it is observed
    (what the policy knew when it made it)."""
    config = load_config("rk3588-sim")
    config = dataclasses.replace(config, telemetry=dataclasses.replace(config.telemetry, enabled=False))
    prior = load_prior(config)
    world = World(make_base(world_name, prior), WORLD_SCENARIOS[scenario], seed)
    steps = workload(layers, seed, WORLD_SCENARIOS[scenario].models, prefill)
    n = len(steps)
    sampler = None
    if variant == "telemetry" or variant in SEEN_AS:
        source: Any = WorldTelemetry(world, seed)
        if variant in SEEN_AS:
            source = SEEN_AS[variant](source)
        sampler = Sampler(source, interval_s=WORLD_INTERVAL, clock=lambda: world.progress)
    policy: Any = (OraclePolicy(expected_latency=world.expected) if variant == "oracle"
                   else AdaptivePolicy(AdaptiveParams(seed=seed)))  # fmt: skip
    with Scheduler(config, policy=policy, prior=prior, telemetry=sampler) as sched:
        for step in steps:
            world.progress = step.index / n
            shape = step.shape
            dq = sched.decide(QKV, shape)
            if decided is not None:
                decided(policy, dq)
            sched.observe(dq, world.sample(QKV, shape, dq.backend, None))
            da = sched.decide(ATTN, shape, after=dq)
            if decided is not None:
                decided(policy, da)
            sched.observe(da, world.sample(ATTN, shape, da.backend, dq.backend))
            yield world, shape, dq, da


def run_world(scenario: str, variant: str, seed: int, layers: int) -> Run:
    out = Run()
    for world, shape, dq, da in world_layers(scenario, variant, seed, layers):
        chosen = world.expected(QKV, shape, dq.backend, None) + world.expected(ATTN, shape, da.backend, dq.backend)
        throttled = any(f(QKV, b, world.progress) != 1.0 for f in world.scenario.factors for b in (GPU, NPU))
        out.add(chosen, best_pair(world.expected, shape), throttled)
    return out


# -- a board's sysfs: what one read costs -----------------------------------------------------------
def fake_rk3588(root: Path) -> None:
    zones = ["soc-thermal", "bigcore0-thermal", "bigcore1-thermal", "littlecore-thermal", "center-thermal",
             "gpu-thermal", "npu-thermal"]  # fmt: skip
    for i, kind in enumerate(zones):
        z = root / "class" / "thermal" / f"thermal_zone{i}"
        z.mkdir(parents=True)
        (z / "type").write_text(kind + "\n")
        (z / "temp").write_text(f"{45000 + 1000 * i}\n")
    # The GPU idles at a low clock under its load-following governor (not throttled: its cap is
    # its top), 34% busy; the NPU's thermal governor capped it at 800 MHz; the DDR runs at its top.
    for device, cur, cap, top, load in (("fb000000.gpu", 600_000_000, 1_000_000_000, 1_000_000_000, 34),
                                        ("fdab0000.npu", 800_000_000, 800_000_000, 1_000_000_000, 20),
                                        ("dmc", 2_112_000_000, 2_112_000_000, 2_112_000_000, 41)):  # fmt: skip
        d = root / "class" / "devfreq" / device
        d.mkdir(parents=True)
        (d / "load").write_text(f"{load}@{cur}Hz\n")
        (d / "polling_interval").write_text("50\n")  # ms
        (d / "cur_freq").write_text(f"{cur}\n")
        (d / "max_freq").write_text(f"{cap}\n")
        (d / "available_frequencies").write_text(" ".join(str(top * k // 4) for k in (1, 2, 3, 4)) + "\n")
    for cpu in range(8):
        c = root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "cpufreq"
        c.mkdir(parents=True)
        (c / "scaling_cur_freq").write_text("1800000\n")
        (c / "scaling_max_freq").write_text("1800000\n")  # capped by the thermal governor
        (c / "cpuinfo_max_freq").write_text("2400000\n")
    npu = root / "kernel" / "debug" / "rknpu"
    npu.mkdir(parents=True)
    (npu / "load").write_text("NPU load:  Core0: 12%, Core1:  0%, Core2:  3%,\n")


def read_cost_us(repeats: int = 2000) -> tuple[float, float]:
    """Median microseconds of one whole read of a fake RK3588 sysfs, and of one read of its clocks alone."""
    with tempfile.TemporaryDirectory() as tmp:
        fake_rk3588(Path(tmp))
        source = SysfsTelemetry(tmp, cpu_load=False)
        whole = source.read()
        times: dict[str, list[int]] = {"whole": [], "clocks": []}
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            source.read()
            t1 = time.perf_counter_ns()
            source.read_clocks(whole)
            t2 = time.perf_counter_ns()
            times["whole"].append(t1 - t0)
            times["clocks"].append(t2 - t1)
    return statistics.median(times["whole"]) / 1e3, statistics.median(times["clocks"]) / 1e3


def print_means(rows: list[dict[str, Any]], measure: str, title: str, first: str | None = None) -> None:
    """One table: per scenario, each variant's mean of ``measure``, and telemetry's and temperatures' over without."""
    print(f"\n{title}, mean:")
    head = f"{first:>16s} " if first else ""
    labels = " ".join(f"{LABELS[v]:>10s}" for v in VARIANTS)
    print(f"{'scenario':14s} {head}{labels} {'tel/without':>12s} {'temps/without':>14s}")
    for r in rows:
        lead = f"{r[first]:16.4f} " if first else ""
        cells = " ".join(f"{r[f'{v}:{measure}']:10.4f}" for v in VARIANTS)
        without = r[f"adaptive:{measure}"]
        ratios = [r[f"{v}:{measure}"] / without if without > 0 else math.nan for v in ("telemetry", "temperatures")]
        print(f"{r['scenario']:14s} {lead}{cells} {ratios[0]:12.2f} {ratios[1]:14.2f}")


#: the simulator's scenarios, then the independent world's, in the order they are reported
SIM_SCENARIOS = ("sim-steady", "sim-periodic")
SCENARIO_NAMES = (*SIM_SCENARIOS, "npu-throttle", "npu-periodic", "npu-ramp", "npu-ramp-mixed", "gpu-contention")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3,4", help="seeds and ranges of seeds: 0,1,2 or 0-9")
    ap.add_argument("--layers", type=int, default=6000, help="attention layers per world run")
    ap.add_argument("--scenarios", default=",".join(SCENARIO_NAMES), help="comma-separated (default: all)")
    ap.add_argument(
        "--inverted-loads",
        action="store_true",
        help="the lying variant's loads read the opposite of what they are (the worst a load can lie)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    Lying.inverted = args.inverted_loads
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        ap.error(str(exc))
    chosen = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in chosen if s not in SCENARIO_NAMES]
    if unknown or not chosen:
        ap.error(f"--scenarios: unknown {', '.join(unknown) or '(none given)'} (known: {', '.join(SCENARIO_NAMES)})")
    started = time.perf_counter()
    rows = []

    # Each scenario, and what the same seeds and workload cost on a device that never throttles
    # (the baseline: first checks and exploration, which telemetry cannot change).
    def sim(sc: str, v: str, s: int) -> Run:
        return run_sim(sc, v, s)

    def sim_never_throttling(sc: str, v: str, s: int) -> Run:
        return run_sim(sc, v, s, thermal=SIM_NEVER_TRIPS)

    def world(sc: str, v: str, s: int) -> Run:
        return run_world(sc, v, s, args.layers)

    def world_steady(sc: str, v: str, s: int) -> Run:
        return run_world("steady", v, s, args.layers)

    plan = [
        (name, *((sim, sim_never_throttling) if name in SIM_SCENARIOS else (world, world_steady)))
        for name in SCENARIO_NAMES
        if name in chosen
    ]
    baselines: dict[tuple[Any, str, int], float] = {}
    for scenario, run, baseline in plan:
        regrets: dict[str, list[float]] = {v: [] for v in VARIANTS}
        decisions: dict[str, list[float]] = {v: [] for v in VARIANTS}
        throttled: dict[str, list[float]] = {v: [] for v in VARIANTS}
        beyond: dict[str, list[float]] = {v: [] for v in VARIANTS}
        steady: list[float] = []
        for seed in seeds:
            key = (baseline, scenario if baseline is sim_never_throttling else "", seed)
            if key not in baselines:
                baselines[key] = (
                    baseline(scenario, "adaptive", seed).total / baseline(scenario, "oracle", seed).total - 1
                )
            steady.append(baselines[key])
            oracle = run(scenario, "oracle", seed).total
            for v in VARIANTS:
                r = run(scenario, v, seed)
                regrets[v].append(r.total / oracle - 1.0)
                decisions[v].append(r.decision_regret)
                throttled[v].append(r.throttled_regret)
                beyond[v].append(regrets[v][-1] - baselines[key])
        row: dict[str, Any] = {"scenario": scenario, "seeds": seeds, "never-throttling": statistics.mean(steady)}
        for v in VARIANTS:
            row[v] = statistics.mean(regrets[v])
            row[f"{v}:each"] = regrets[v]  # per seed, in the order of "seeds" (in --json)
            row[f"{v}:worst"] = max(regrets[v])
            row[f"{v}:decisions"] = statistics.mean(decisions[v])
            row[f"{v}:throttled"] = statistics.mean(throttled[v])
            row[f"{v}:beyond"] = statistics.mean(beyond[v])
        for v in ("telemetry", "temperatures"):
            row[f"{v}/without"] = row[v] / row["adaptive"] if row["adaptive"] > 0 else math.nan
        rows.append(row)
    cost = read_cost_us()
    if args.json:
        # what the rows were run under, for pairing them with another run's (compare_runs.py)
        run = {"benchmark": "telemetry", "layers": args.layers, "inverted_loads": args.inverted_loads, "seeds": seeds}
        print(
            json.dumps({"run": run, "rows": rows, "sysfs_read_us": cost[0], "sysfs_clocks_read_us": cost[1]}, indent=2)
        )
        return 0
    print(f"regret over the oracle (total latency / oracle's - 1), mean (worst) over seeds {seeds}:")
    labels = " ".join(f"{LABELS[v]:>16s}" for v in VARIANTS)
    print(f"{'scenario':14s} {labels} {'tel/without':>12s} {'temps/without':>14s}")
    for r in rows:
        cells = " ".join(f"{r[v]:8.4f} ({r[v + ':worst']:.4f})" for v in VARIANTS)
        print(f"{r['scenario']:14s} {cells} {r['telemetry/without']:12.2f} {r['temperatures/without']:14.2f}")
    own = "the decisions' own regret (what each choice lost against the best pair at that moment)"
    print_means(rows, "decisions", own)
    since = ("the same from the moment the device first slowed (the NPU throttled, the GPU contended; before it,"
             " every variant makes the same first checks of a fresh device), over the whole run's best")  # fmt: skip
    print_means(rows, "throttled", since)
    beyond = ("the regret beyond what the same seeds cost on a device that never throttles (the simulator's governor"
              " never tripping; the world steady)")  # fmt: skip
    print_means(rows, "beyond", beyond, first="never-throttling")
    print(f"one read of a fake RK3588 sysfs (7 zones, 3 devfreq, 2 devfreq loads, 8 cpufreq, rknpu load): "
          f"{cost[0]:.1f} us median; "
          f"of its devfreq clocks alone: {cost[1]:.1f} us")  # fmt: skip
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
