"""Where one benchmark run's regret comes from: when in the run, in which kind of stage, in which layers.

    python benchmarks/trace_regret.py --scenario gpu-contention --seed 0
    python benchmarks/trace_regret.py --scenario npu-throttle --seed 2 --telemetry
    python benchmarks/trace_regret.py --scenario steady --world npu-heavy --seed 1 --top 20
    python benchmarks/trace_regret.py --scenario npu-throttle --world int8-gpu --workload decode
    python benchmarks/trace_regret.py --scenario sim-periodic --seed 2 --telemetry
    python benchmarks/trace_regret.py --scenario sim-steady --seed 0 --telemetry --clock-interval 0.1

Runs the adaptive policy once, as ``bench_learning.py`` and ``bench_telemetry.py`` do (the
same workload, world and seed, inline learning; ``--workload decode`` its decode layers
alone; ``--telemetry`` reads the world's NPU clock as ``bench_telemetry.py`` does), and
splits what its choices lost against the best pair of each layer, in per mille of the run's
best total (the sum is the cell's adaptive/oracle - 1): ``sim-steady`` and ``sim-periodic``
run the simulated RK3588 instead (``--telemetry``: read through the scheduler's sampler),
where the sum is the decisions' own regret of ``bench_telemetry.py``, not the total's, which
the device's heat feeds back into.

* by tenth (``--bins``) of the run;
* by phase and precision, exploit or explored, and which pair was chosen against the best;
* the costliest layers: when, the shape, what was chosen and with which probabilities, what
  the policy predicted for each backend against what the world says;
* on the simulator, the whole run against the oracle's (the benchmark's regret) by the NPU's
  clock: the share of the time spent at each clock, and the pairs run there. How long the
  NPU stays throttled is decided by what ran on it, and when (``--clock-interval``: how often
  the scheduler reads the clocks, which sets how soon it sees a throttled NPU recover).

A diagnostic for reading one cell, not a benchmark: nothing is timed.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
from typing import Any

from bench_telemetry import SIM_SCENARIOS, WORLD_SCENARIOS, pair_costs, sim_layers, world_layers
from worlds import RANDOM, is_random, takes_random

from adaptive_sched.types import Backend, Stage

QKV, ATTN = Stage.QKV, Stage.ATTN
BACKENDS = (Backend.GPU, Backend.NPU)


@dataclasses.dataclass
class Layer:
    progress: float
    shape: Any
    chosen: tuple[Backend, Backend]
    explored: bool
    lost: float
    best: tuple[Backend, Backend]
    detail: str


def _ms(values: Any) -> str:
    return ", ".join(f"{b.value} {v * 1e3:.3g}" for b, v in values.items())


def _p(values: Any) -> str:
    return ", ".join(f"{b.value} {p:.3g}" for b, p in values.items())


def _layer(progress: float, shape: Any, dq: Any, da: Any, costs: Any, qkv_world: Any, attn_world: Any) -> Layer | None:
    """The layer if its choice lost against the best pair (``costs``: each pair's latency)."""
    best = min(costs, key=costs.__getitem__)
    chosen = (dq.backend, da.backend)
    lost = costs[chosen] - costs[best]
    if lost <= 0.0:
        return None
    detail = (
        f"qkv: p ({_p(dq.probabilities)}), predicted ms ({_ms(dq.choice.predicted)}), "
        f"world ({_ms(qkv_world)})\n      attn: p ({_p(da.probabilities)}), "
        f"predicted ms ({_ms(da.choice.predicted)}), world ({_ms(attn_world)})"
    )
    return Layer(progress, shape, chosen, dq.explored or da.explored, lost, best, detail)


def trace(
    scenario: str, world_name: str, seed: int, layers: int, telemetry: bool, prefill: bool = True
) -> tuple[float, list[Layer]]:
    """The run's best total (seconds), and every layer whose choice lost against the best pair
    (without ``prefill``, of the decode-only workload)."""
    if scenario in SIM_SCENARIOS:
        return trace_sim(scenario, seed, telemetry)
    total_best = 0.0
    out: list[Layer] = []
    variant = "telemetry" if telemetry else "adaptive"
    for world, shape, dq, da in world_layers(scenario, variant, seed, layers, world_name, prefill):
        expected = world.expected
        costs = pair_costs(expected, shape)
        total_best += min(costs.values())
        qkv_world = {b: expected(QKV, shape, b, None) for b in BACKENDS}
        attn_world = {b: expected(ATTN, shape, b, dq.backend) for b in BACKENDS}
        layer = _layer(world.progress, shape, dq, da, costs, qkv_world, attn_world)
        if layer is not None:
            out.append(layer)
    return total_best, out


def trace_sim(
    scenario: str, seed: int, telemetry: bool, clock_interval_s: float | None = None, clocks: Clocks | None = None
) -> tuple[float, list[Layer]]:
    """:func:`trace` on the simulated RK3588: what each layer cost is read before it runs (it heats
    the device); its progress is the layer's share of the run's layers. ``clocks``, if given,
    also tallies the run by the NPU's clock (see :func:`sim_clocks`)."""
    total_best = 0.0
    seen: list[tuple[Any, Any, Any, Any, Any]] = []
    variant = "telemetry" if telemetry else "adaptive"
    for device, shape, run in sim_layers(scenario, variant, seed, clock_interval_s=clock_interval_s):
        expected = device.expected_latency
        costs = pair_costs(expected, shape)
        total_best += min(costs.values())
        qkv_world = {b: expected(QKV, shape, b, None) for b in BACKENDS}
        hz = _npu_hz(device)
        layer = run()
        if clocks is not None:
            clocks.add(hz, layer)
        attn_world = {b: expected(ATTN, shape, b, layer.qkv.backend) for b in BACKENDS}
        seen.append((shape, layer.qkv.decision, layer.attn.decision, costs, (qkv_world, attn_world)))
    out = []
    for i, (shape, dq, da, costs, (qkv_world, attn_world)) in enumerate(seen):
        lost = _layer(i / len(seen), shape, dq, da, costs, qkv_world, attn_world)
        if lost is not None:
            out.append(lost)
    return total_best, out


@dataclasses.dataclass
class Clocks:
    """Where one run on the simulator spent its time, by the NPU's clock when each layer ran."""

    total_s: float = 0.0
    #: seconds run at each NPU clock (Hz)
    time_at: collections.Counter[float] = dataclasses.field(default_factory=collections.Counter)
    #: layers run at each NPU clock on each (qkv, attn) pair
    layers_at: collections.Counter[tuple[float, str]] = dataclasses.field(default_factory=collections.Counter)
    layers: int = 0

    def add(self, hz: float, layer: Any) -> None:
        """One layer run at the NPU clock ``hz`` (read before it ran: running it heats the NPU)."""
        self.total_s += layer.latency_s
        self.time_at[hz] += layer.latency_s
        self.layers_at[(hz, _pair((layer.qkv.backend, layer.attn.backend)))] += 1
        self.layers += 1

    def report(self, name: str) -> str:
        parts = []
        for hz, t in sorted(self.time_at.items(), reverse=True):
            pairs = ", ".join(f"{pair} {n / self.layers:.1%}" for (at, pair), n in sorted(self.layers_at.items())
                              if at == hz and n / self.layers >= 0.001)  # fmt: skip
            parts.append(f"{hz / 1e6:.0f} MHz {t / self.total_s:.1%} of the time ({pairs})")
        return f"  {name}: {self.total_s:.3f} s; " + "; ".join(parts)


def sim_clocks(scenario: str, variant: str, seed: int, clock_interval_s: float | None = None) -> Clocks:
    """The whole run of ``variant`` (``adaptive``, ``telemetry`` or ``oracle``) on the simulator, by
    the NPU's clock. What throttling costs a run depends as much on how long the NPU stays
    throttled (which what runs on it, and when, decides through its heat) as on each choice."""
    out = Clocks()
    for device, _shape, run in sim_layers(scenario, variant, seed, clock_interval_s=clock_interval_s):
        hz = _npu_hz(device)
        out.add(hz, run())
    return out


def _npu_hz(device: Any) -> float:
    return float(device.state().get("npu_freq_hz") or 0.0)


def _pair(pair: tuple[Backend, Backend]) -> str:
    return f"{pair[0].value}+{pair[1].value}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", required=True, choices=sorted((*WORLD_SCENARIOS, *SIM_SCENARIOS)))
    ap.add_argument(
        "--world", default="soc", help="a base world of the scenario (soc, npu-heavy, gpu-heavy, ..., random-0, ...)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=6000)
    ap.add_argument(
        "--workload",
        choices=("mixed", "decode"),
        default="mixed",
        help="as bench_learning.py's: requests' prefills and decode tokens, or the decode layers alone",
    )
    ap.add_argument(
        "--telemetry",
        action="store_true",
        help="read the world's NPU clock (the simulator's telemetry), as bench_telemetry does",
    )
    ap.add_argument(
        "--clock-interval",
        type=float,
        default=None,
        help="sim-steady and sim-periodic with --telemetry: read the clocks every this many seconds "
        "(default: the config's telemetry.clock_interval_s)",
    )
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--top", type=int, default=8, help="costliest layers shown")
    args = ap.parse_args(argv)
    if args.scenario in SIM_SCENARIOS:
        args.world = "the simulator"
    else:
        scenario = WORLD_SCENARIOS[args.scenario]
        if args.world not in scenario.worlds and not (is_random(args.world) and takes_random(scenario)):
            also = f" (or a profile drawn at random: {RANDOM}0, {RANDOM}1, ...)" if takes_random(scenario) else ""
            ap.error(f"--world: {args.scenario} runs on {', '.join(scenario.worlds)}{also}")
    if args.clock_interval is not None and not (args.scenario in SIM_SCENARIOS and args.telemetry):
        ap.error("--clock-interval: only with --telemetry on sim-steady or sim-periodic")
    if args.workload == "decode" and args.scenario in SIM_SCENARIOS:
        ap.error("--workload: the simulator's scenarios run their own workload")
    if args.clock_interval is not None and args.clock_interval <= 0:
        ap.error(f"--clock-interval: must be > 0 seconds, got {args.clock_interval}")
    ours = Clocks()
    if args.scenario in SIM_SCENARIOS:
        best, lost = trace_sim(args.scenario, args.seed, args.telemetry, args.clock_interval, ours)
    else:
        prefill = args.workload == "mixed"
        best, lost = trace(args.scenario, args.world, args.seed, args.layers, args.telemetry, prefill)
    mille = 1000.0 / best
    total = sum(x.lost for x in lost) * mille
    print(f"{args.scenario} on {args.world}, seed {args.seed}{', telemetry' if args.telemetry else ''}: "
          f"regret {total:.2f} per mille of the best total ({best:.2f} s)")  # fmt: skip
    bins = [0.0] * args.bins
    for x in lost:
        bins[min(args.bins - 1, int(x.progress * args.bins))] += x.lost * mille
    print("by part of the run: " + "  ".join(f"{i / args.bins:.2f}: {v:.2f}" for i, v in enumerate(bins)))
    kinds: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
    for x in lost:
        phase = x.shape.phase
        kinds[(phase, x.shape.precision.value, "explored" if x.explored else "exploit",
               f"{_pair(x.chosen)} for {_pair(x.best)}")] += x.lost * mille  # fmt: skip
    print("by kind (phase, precision, exploit or explored, pair chosen for the best):")
    for kind, v in kinds.most_common(10):
        print(f"  {v:7.2f}  {' '.join(kind)}")
    print(f"the {args.top} costliest layers:")
    for x in sorted(lost, key=lambda x: -x.lost)[: args.top]:
        s = x.shape
        how = f"{_pair(x.chosen)}{' (explored)' if x.explored else ''} for {_pair(x.best)}"
        print(f"  {x.lost * mille:6.2f}  at {x.progress:.4f}  n={s.n} d={s.d} kv={s.kv_len} {s.precision.value}: "
              f"{how}, lost {x.lost * 1e3:.1f} ms")  # fmt: skip
        print(f"      {x.detail}")
    if args.scenario in SIM_SCENARIOS:
        oracle = sim_clocks(args.scenario, "oracle", args.seed)
        print(f"the whole run, by the NPU's clock (regret {ours.total_s / oracle.total_s - 1:.4f}, "
              f"the benchmark's figure; its heat feeds back into it):")  # fmt: skip
        print(ours.report("adaptive" + (", telemetry" if args.telemetry else "")))
        print(oracle.report("oracle"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
