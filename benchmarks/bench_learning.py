"""How well the scheduler learns, against Vowpal Wabbit, the static prior, single backends and the oracle.

Every policy drives the same workload (requests of mixed model widths, precisions and KV
lengths, each a prefill then decode tokens; see :func:`worlds.workload`) through the public ``decide``/``observe``
API, against latency worlds that are not our simulator (:mod:`worlds`), under scenarios
where the prior or the world is wrong or changing, over several seeds:

    python benchmarks/bench_learning.py                       # every scenario, 3 seeds (~6 min)
    python benchmarks/bench_learning.py --worlds soc,npu-heavy   # two of the four device profiles
    python benchmarks/bench_learning.py --scenarios steady,spikes --seeds 0
    python benchmarks/bench_learning.py --policies adaptive,vw-eps --json
    python benchmarks/bench_learning.py --policies adaptive --seeds 0-29   # the tail: rare events
    python benchmarks/bench_learning.py --workload decode    # decode layers only, no prefills
    python benchmarks/bench_learning.py --random-worlds 6    # on six device profiles drawn at random
    python benchmarks/bench_learning.py --policies vw-eps,vw-squarecb --vw-actions npu,gpu

Reported per scenario and world: each policy's total latency over the oracle's (noise-free
latencies of the backends it chose, so noise does not blur the comparison), the mean and
worst over seeds, and each policy's cost per decision in microseconds (median of
decide + observe). Policies:

=================  ===========================================================================
adaptive           our scheduler (builtin prior, inline learner)
adaptive-thread    the same with ``learner: thread``, the caller never yielding the GIL
no-online          ablation: the online per-(stage, backend) model off (shared drift term only)
static             the core paper's selector (the prior's classifiers), never updated
gpu-only, npu-only single backends
epsilon            epsilon-greedy (5%) on observed means per shape bucket, no prior
vw-eps             Vowpal Wabbit ``--cb_explore_adf --epsilon 0.02 -q sa``, relative cost, no prior
vw-squarecb        Vowpal Wabbit ``--cb_explore_adf --squarecb -q sa``, relative cost, no prior
oracle             knows the world's current noise-free latencies; plans the best pair
=================  ===========================================================================

Targets: over every scenario and seed, adaptive/oracle worst <= 1.03 and
mean <= 1.015; per scenario no worse than the best Vowpal Wabbit configuration + 0.005 and
than the best single backend; adaptive-thread learns >= 90% of observations and stays
within 0.01 of adaptive. Vowpal Wabbit is the optional ``bench`` extra
(``pip install -e '.[bench]'``); without it the VW columns are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from worlds import SCENARIOS, World, add_cell_options, chosen_cells, make_base, workload

from adaptive_sched import Scheduler
from adaptive_sched.build import load_prior
from adaptive_sched.config import load_config
from adaptive_sched.learners import native
from adaptive_sched.learners.latency import ModelParams
from adaptive_sched.policies import AdaptiveParams, AdaptivePolicy, FixedPolicy, OraclePolicy, Policy, make_policy
from adaptive_sched.types import Backend, Shape, Stage

QKV, ATTN = Stage.QKV, Stage.ATTN
GPU, NPU = Backend.GPU, Backend.NPU
#: scenarios whose device never changes: every drift alarm raised there is a false one
STEADY = ("steady", "spikes", "heavy-noise", "prior-right", "unseen-models")
#: the order Vowpal Wabbit's examples list the actions in (``--vw-actions``): with no prior, its
#: first predictions tie, and a tie goes to the first
VW_ACTIONS = (GPU, NPU)
ALL_POLICIES = ("adaptive", "adaptive-thread", "no-online", "static", "gpu-only", "npu-only", "epsilon",
                "vw-eps", "vw-squarecb", "oracle")  # fmt: skip


@dataclasses.dataclass
class Result:
    total_s: float = 0.0
    #: per-stage decide + observe times (ns), sampled
    costs_ns: list[int] = dataclasses.field(default_factory=list)
    learned: float = 1.0
    #: drift alarms raised (ours), and observations
    alarms: int = 0
    observations: int = 0


def _config(learner: str) -> Any:
    config = load_config("rk3588-sim")
    return dataclasses.replace(config, policy=dataclasses.replace(config.policy, learner=learner))


def drive_scheduler(sched: Scheduler, world: World, steps: Sequence[Any]) -> Result:
    out = Result()
    clock = time.perf_counter_ns
    n = len(steps)
    expected, sample = world.expected, world.sample
    decide, observe = sched.decide, sched.observe
    for step in steps:
        world.progress = step.index / n
        shape = step.shape
        t0 = clock()
        dq = decide(QKV, shape)
        t1 = clock()
        lq = sample(QKV, shape, dq.backend, None)
        t2 = clock()
        observe(dq, lq)
        da = decide(ATTN, shape, after=dq)
        t3 = clock()
        la = sample(ATTN, shape, da.backend, dq.backend)
        t4 = clock()
        observe(da, la)
        t5 = clock()
        if step.index % 7 == 0:
            # decide + observe of both stages, the world's own time left out, per stage
            out.costs_ns.append(((t1 - t0) + (t3 - t2) + (t5 - t4)) // 2)
        out.total_s += expected(QKV, shape, dq.backend, None) + expected(ATTN, shape, da.backend, dq.backend)
    return out


def run_ours(name: str, world: World, steps: Sequence[Any], prior: Any, seed: int) -> Result:
    learner = "thread" if name == "adaptive-thread" else "inline"
    config = _config(learner)
    policy: Policy
    if name in ("adaptive", "adaptive-thread"):
        policy = AdaptivePolicy(AdaptiveParams(seed=seed))
    elif name == "no-online":
        policy = AdaptivePolicy(AdaptiveParams(seed=seed, model=ModelParams(regression=False)))
    elif name == "static":
        policy = make_policy("static")
    elif name == "gpu-only":
        policy = FixedPolicy("gpu")
    elif name == "npu-only":
        policy = FixedPolicy("npu")
    elif name == "epsilon":
        policy = make_policy("epsilon", epsilon=0.05, seed=seed)
    elif name == "oracle":
        policy = OraclePolicy(expected_latency=world.expected)
    else:
        raise ValueError(name)
    with Scheduler(config, policy=policy, prior=prior) as sched:
        out = drive_scheduler(sched, world, steps)
        sched.flush()
        stats = sched.stats()
    out.observations = stats["observations"]
    out.alarms = sum(stats["policy"].get("drift_alarms", {}).values())
    if stats.get("learn_errors"):
        raise RuntimeError(f"{name}: {stats['learn_errors']} observations failed to be learned")
    if learner == "thread":
        out.learned = 1.0 - stats["unlearned"] / max(1, 2 * len(steps))
    return out


# -- Vowpal Wabbit ---------------------------------------------------------------------------
def _features(stage: Stage, shape: Shape, after: Backend | None) -> str:
    keys = shape.kv_len + shape.n if stage is ATTN else 0
    return (
        f"shared |s {stage.value} {shape.precision.value} after_{after.value if after else 'none'} "
        f"ld:{math.log2(shape.d):.3f} lk:{math.log2(keys + 1):.3f} ln:{math.log2(shape.n):.3f}"
    )


def run_vw(name: str, world: World, steps: Sequence[Any], seed: int,
           actions: tuple[Backend, ...] = VW_ACTIONS) -> Result:  # fmt: skip
    import random

    from vowpalwabbit import Workspace

    explore = "--epsilon 0.02" if name == "vw-eps" else "--squarecb"
    vw = Workspace(f"--cb_explore_adf {explore} -q sa --quiet --random_seed {seed}")
    rng = random.Random(seed)
    # relative cost: latency over a running mean for that stage and shape bucket
    means: dict[tuple[Any, ...], list[float]] = {}
    out = Result()
    clock = time.perf_counter_ns
    n = len(steps)

    def choose(stage: Stage, shape: Shape, after: Backend | None) -> tuple[int, float, list[str]]:
        ex = [_features(stage, shape, after), *(f"|a {a.value}" for a in actions)]
        pmf = vw.predict(ex)
        u, c = rng.random(), 0.0
        for i, p in enumerate(pmf):
            c += p
            if u < c:
                return i, p, ex
        return len(pmf) - 1, pmf[-1], ex

    def learn(stage: Stage, shape: Shape, i: int, p: float, ex: list[str], latency: float) -> None:
        key = (stage, shape.d, shape.precision, shape.n, (shape.kv_len + shape.n).bit_length())
        m = means.setdefault(key, [0.0, 0])
        m[1] += 1
        m[0] += (latency - m[0]) / m[1]
        ex = list(ex)
        ex[1 + i] = f"0:{latency / m[0]:.6f}:{max(p, 1e-6):.6f} {ex[1 + i]}"
        vw.learn(ex)

    for step in steps:
        world.progress = step.index / n
        shape = step.shape
        t0 = clock()
        iq, pq, exq = choose(QKV, shape, None)
        q = actions[iq]
        lq = world.sample(QKV, shape, q, None)
        learn(QKV, shape, iq, pq, exq, lq)
        ia, pa, exa = choose(ATTN, shape, q)
        a = actions[ia]
        la = world.sample(ATTN, shape, a, q)
        learn(ATTN, shape, ia, pa, exa, la)
        if step.index % 7 == 0:
            out.costs_ns.append((clock() - t0) // 2)
        out.total_s += world.expected(QKV, shape, q, None) + world.expected(ATTN, shape, a, q)
    vw.finish()
    return out


# -- one cell: a scenario on a world with a seed -----------------------------------------------
def run_cell(args: tuple[Any, ...]) -> dict[str, Any]:
    """One cell: ``args`` are the scenario, world, seed, layers, policy names, whether requests
    have prefills, and optionally Vowpal Wabbit's action order (:data:`VW_ACTIONS`)."""
    scenario_name, world_name, seed, layers, names, prefill, *vw_order = args
    vw_actions = vw_order[0] if vw_order else VW_ACTIONS
    scenario = SCENARIOS[scenario_name]
    # model widths the prior never saw are a scenario here, not news: each cell's fresh prior
    # would warn of them again
    logging.getLogger("adaptive_sched.learners.priors").setLevel(logging.ERROR)
    prior = load_prior(_config("inline"))
    steps = workload(layers, seed, scenario.models, prefill)
    out: dict[str, Any] = {"scenario": scenario_name, "world": world_name, "seed": seed, "totals": {},
                           "us_per_decision": {}, "learned": {}, "alarms": {}}  # fmt: skip
    for name in names:
        world = World(make_base(world_name, prior), scenario, seed)
        if name.startswith("vw"):
            try:
                result = run_vw(name, world, steps, seed, vw_actions)
            except ImportError:
                continue
        else:
            result = run_ours(name, world, steps, prior, seed)
        out["totals"][name] = result.total_s
        out["us_per_decision"][name] = statistics.median(result.costs_ns) / 1e3 if result.costs_ns else math.nan
        out["learned"][name] = result.learned
        if result.observations:
            out["alarms"][name] = (result.alarms, result.observations)
    return out


def summarise(cells: list[dict[str, Any]], names: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["scenario"], c["world"]), []).append(c)
    rows = []
    for (scenario, world), cs in groups.items():
        row: dict[str, Any] = {"scenario": scenario, "world": world, "seeds": len(cs)}
        for name in names:
            ratios = [c["totals"][name] / c["totals"]["oracle"] for c in cs if name in c["totals"]]
            if ratios:
                row[name] = statistics.mean(ratios)
                row[f"{name}:worst"] = max(ratios)
        rows.append(row)
    ours = [c["totals"]["adaptive"] / c["totals"]["oracle"] for c in cells if "adaptive" in c["totals"]]
    summary: dict[str, Any] = {}
    if ours:
        summary["adaptive_mean"] = statistics.mean(ours)
        summary["adaptive_worst"] = max(ours)
        worst = max((c for c in cells if "adaptive" in c["totals"]),
                    key=lambda c: c["totals"]["adaptive"] / c["totals"]["oracle"])  # fmt: skip
        summary["adaptive_worst_cell"] = f"{worst['scenario']}/{worst['world']} seed {worst['seed']}"
        checks = {
            "worst <= 1.03": summary["adaptive_worst"] <= 1.03,
            "mean <= 1.015": summary["adaptive_mean"] <= 1.015,
        }
        vw_gap, single_gap, thread_gap = [], [], []
        for r in rows:
            vws = [r[k] for k in ("vw-eps", "vw-squarecb") if k in r]
            if vws:
                vw_gap.append(r["adaptive"] - min(vws))
            singles = [r[k] for k in ("gpu-only", "npu-only") if k in r]
            if singles:
                single_gap.append(r["adaptive"] - min(singles))
            if "adaptive-thread" in r:
                thread_gap.append(r["adaptive-thread"] - r["adaptive"])
        if vw_gap:
            summary["worst_gap_to_best_vw"] = max(vw_gap)
            checks["<= best VW + 0.005"] = max(vw_gap) <= 0.005
        if single_gap:
            summary["worst_gap_to_best_single"] = max(single_gap)
            checks["<= best single backend"] = max(single_gap) <= 0.0
        if thread_gap:
            learned = [c["learned"]["adaptive-thread"] for c in cells if "adaptive-thread" in c["learned"]]
            summary["thread_worst_gap"] = max(thread_gap)
            summary["thread_min_learned"] = min(learned)
            checks["thread within 0.01"] = max(thread_gap) <= 0.01
            checks["thread learns >= 90%"] = min(learned) >= 0.9
        summary["checks"] = checks
    costs = {}
    for name in names:
        vals = [c["us_per_decision"][name] for c in cells if name in c["us_per_decision"]]
        vals = [v for v in vals if not math.isnan(v)]
        if vals:
            costs[name] = statistics.median(vals)
    summary["us_per_decision"] = costs
    # drift alarms on devices that never change (spikes and heavy noise included): all false
    steady = [c["alarms"]["adaptive"] for c in cells if c["scenario"] in STEADY and "adaptive" in c.get("alarms", {})]
    if steady:
        alarms, observations = sum(a for a, _ in steady), sum(n for _, n in steady)
        summary["false_alarms_per_10k"] = 1e4 * alarms / observations
        summary.setdefault("checks", {})["false alarms <= 1 per 10k"] = summary["false_alarms_per_10k"] <= 1.0
    return rows, summary


def render(rows: list[dict[str, Any]], summary: dict[str, Any], names: Sequence[str]) -> str:
    shown = [n for n in names if any(n in r for r in rows)]
    head = ["scenario", "world", *shown]
    table = [head]
    for r in sorted(rows, key=lambda r: (r["scenario"], r["world"])):
        table.append([r["scenario"], r["world"], *(f"{r[n]:.3f}" if n in r else "-" for n in shown)])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in table]  # fmt: skip
    lines.append("")
    lines.append(f"latency model: {native.describe()}")
    lines.append("us per decision (median of decide + observe): " + ", ".join(
        f"{k} {v:.1f}" for k, v in summary.get("us_per_decision", {}).items()))  # fmt: skip
    if "adaptive_mean" in summary:
        lines.append(f"adaptive / oracle over every cell and seed: mean {summary['adaptive_mean']:.4f}, "
                     f"worst {summary['adaptive_worst']:.4f} ({summary['adaptive_worst_cell']})")  # fmt: skip
        for k in ("worst_gap_to_best_vw", "worst_gap_to_best_single", "thread_worst_gap", "thread_min_learned",
                  "false_alarms_per_10k"):  # fmt: skip
            if k in summary:
                lines.append(f"{k}: {summary[k]:+.4f}")
        lines.append("checks: " + ", ".join(f"{k}: {'ok' if v else 'MISSED'}" for k, v in summary["checks"].items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_options(ap)
    ap.add_argument("--policies", default=",".join(ALL_POLICIES), help="comma-separated (oracle is always run)")
    ap.add_argument("--layers", type=int, default=6000, help="attention layers per run (two decisions each)")
    ap.add_argument(
        "--workload",
        choices=("mixed", "decode"),
        default="mixed",
        help="requests with their prefills (default), or their decode layers only",
    )
    ap.add_argument(
        "--vw-actions",
        default=",".join(b.value for b in VW_ACTIONS),
        help="the order Vowpal Wabbit's examples list the backends in (npu,gpu: whether its lead "
        "somewhere comes from breaking its first ties toward the GPU)",
    )
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    order = args.vw_actions.split(",")
    if sorted(order) != sorted(b.value for b in VW_ACTIONS):
        ap.error(f"--vw-actions: the backends {', '.join(b.value for b in VW_ACTIONS)} in some order, "
                 f"got {args.vw_actions!r}")  # fmt: skip
    vw_actions = tuple(Backend(b) for b in order)
    names = tuple(dict.fromkeys([*args.policies.split(","), "oracle"]))
    unknown = [n for n in names if n not in ALL_POLICIES]
    if unknown:
        ap.error(f"--policies: unknown {', '.join(unknown)} (known: {', '.join(ALL_POLICIES)})")
    chosen = chosen_cells(ap, args)
    prefill = args.workload == "mixed"
    jobs = [(s, w, seed, args.layers, names, prefill, vw_actions) for s, w, seed in chosen]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        cells = list(pool.map(run_cell, jobs))
    rows, summary = summarise(cells, names)
    if args.json:
        # what the cells were run under, for pairing them with another run's (compare_runs.py)
        seeds = list(dict.fromkeys(seed for _, _, seed in chosen))
        run = {"benchmark": "learning", "workload": args.workload, "layers": args.layers, "seeds": seeds,
               "policies": list(names), "random_worlds": args.random_worlds,
               "vw_actions": [b.value for b in vw_actions]}  # fmt: skip
        print(json.dumps({"run": run, "rows": rows, "summary": summary, "cells": cells}, indent=2))
    else:
        print(render(rows, summary, names))
    print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
