"""Where the learning benchmark's regret is, over many cells: which kind of layer loses, on which world.

    python benchmarks/regret_map.py                          # every scenario and world, seeds 0-2 (~25 s)
    python benchmarks/regret_map.py --worlds gpu-heavy --seeds 0-9
    python benchmarks/regret_map.py --workload decode --json

Runs the adaptive policy through the cells ``bench_learning.py`` runs (the same workload,
world and seed, inline learning), prices each layer's (qkv, attn) pair against the best pair
of that moment (noise-free, the handoff included, as the benchmark's totals are), and puts
each layer that lost into one of three kinds, in prefill or decode:

* **first contact**: a backend of the best pair had not yet run that stage at that precision
  and phase in this run (what the prior alone decided);
* **explored**: the pair held a probe, every group of the best pair having run;
* **exploit**: the choice the policy held fastest lost, every group of the best pair having run.

Each figure is per mille of the cell's best total, so a cell's kinds sum to its
adaptive/oracle - 1. Reported: the mean of each kind over the cells, the same per world, and
the cells with most regret (``trace_regret.py --scenario S --world W --seed N`` reads one
layer by layer). A reading, not a benchmark: nothing is timed.

The explored layers are then split by why the policy offered the probe (the qkv stage's, if
both stages probed), as its entries weigh it, read from the policy when the decision was made:
a detected slowdown lifting the budget (``alarm``), a group never checked here (``first
check``), a backend that changed lately (``recheck``), a group whose one run may have been a
spike (``doubt``), a change that may have reverted while its backend went unobserved
(``reversion``), else the exploration budget (``budget``).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import statistics
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench_telemetry import pair_costs, world_layers
from worlds import add_cell_options, chosen_cells

from adaptive_sched.types import Stage

QKV, ATTN = Stage.QKV, Stage.ATTN
KINDS = tuple(f"{kind} {phase}" for kind in ("first contact", "explored", "exploit") for phase in ("prefill", "decode"))
#: why a probe was offered, in the order ``AdaptivePolicy._publish`` weighs them
REASONS = ("alarm", "first check", "recheck", "doubt", "reversion", "budget")
PROBES = tuple(f"{reason} {phase}" for reason in REASONS for phase in ("prefill", "decode"))


def probe_reason(policy: Any, decision: Any) -> str:
    """Why the adaptive ``policy`` offers ``decision``'s backend (an explored one) now: what its
    entries weigh first, as ``AdaptivePolicy._publish`` does (read from its estimates at the
    decision, where the entry may have been computed a few observations before)."""
    stage, shape, backend = decision.stage, decision.shape, decision.backend
    probs = decision.probabilities
    exploit = max(probs, key=probs.__getitem__)
    est, clock, alarms = policy._est, policy._clock, policy._alarms
    model = est.model
    point = est.point(stage, shape)
    if alarms and (alarms.lifted(backend, clock) or alarms.lifted(exploit, clock)):
        return "alarm"
    if model.observed(stage, backend, point.group) < policy.params.first_checks:
        _, _, values, _ = policy._values(stage, shape, decision.after, point)
        fastest = min(values, key=values.__getitem__)
        if policy._first_check_slowness(stage, point, backend, fastest, values) is not None:
            return "first check"
        return "budget"  # beyond a first check's reach: probed as a checked alternative is
    if model.volatile(backend, clock):
        return "recheck"
    if model.doubt(stage, backend, point.group, point.phi[backend])[0]:
        return "doubt"
    if model.reversion(backend, clock)[2] > 0.0:
        return "reversion"
    return "budget"


def run_cell(args: tuple[str, str, int, int, bool]) -> dict[str, Any]:
    """One cell's regret by kind (per mille of its best total)."""
    scenario, world_name, seed, layers, prefill = args
    logging.getLogger("adaptive_sched.learners.priors").setLevel(logging.ERROR)  # unseen widths are the scenario
    ran: set[tuple[Stage, Any, Any, str]] = set()
    best_total = 0.0
    lost: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    probes: dict[str, float] = dict.fromkeys(PROBES, 0.0)
    reasons: dict[int, str] = {}

    def decided(policy: Any, decision: Any) -> None:
        if decision.explored:
            reasons[decision.id] = probe_reason(policy, decision)

    for world, shape, dq, da in world_layers(scenario, "adaptive", seed, layers, world_name, prefill, decided):
        why_qkv, why_attn = reasons.pop(dq.id, None), reasons.pop(da.id, None)
        why = why_qkv or why_attn  # a layer whose two stages probed: qkv's reason
        costs = pair_costs(world.expected, shape)
        best = min(costs, key=costs.__getitem__)
        best_total += costs[best]
        phase = shape.phase
        chosen = (dq.backend, da.backend)
        loss = costs[chosen] - costs[best]
        if loss > 0.0:
            if (QKV, best[0], shape.precision, phase) not in ran or (ATTN, best[1], shape.precision, phase) not in ran:
                kind = "first contact"
            else:
                kind = "explored" if dq.explored or da.explored else "exploit"
                if why is not None:
                    probes[f"{why} {phase}"] += loss
            lost[f"{kind} {phase}"] += loss
        ran.add((QKV, chosen[0], shape.precision, phase))
        ran.add((ATTN, chosen[1], shape.precision, phase))
    return {"scenario": scenario, "world": world_name, "seed": seed,
            "per_mille": {k: lost[k] / best_total * 1e3 for k in KINDS},
            "probes": {k: probes[k] / best_total * 1e3 for k in PROBES}}  # fmt: skip


def summarise(cells: list[dict[str, Any]], field: str = "per_mille") -> dict[str, dict[str, float]]:
    """The mean per mille of each of ``field``'s kinds over all cells (``all``) and over each world's."""
    groups: dict[str, list[dict[str, Any]]] = {"all": cells}
    for c in cells:
        groups.setdefault(c["world"], []).append(c)
    keys = KINDS if field == "per_mille" else PROBES
    return {name: {k: statistics.mean(c[field][k] for c in cs) for k in keys} for name, cs in groups.items()}


def render(cells: list[dict[str, Any]], top: int) -> str:
    means = summarise(cells)
    names = list(means)
    width = max(12, *(len(n) for n in names))
    counts = collections.Counter(c["world"] for c in cells)
    lines = [f"regret by kind, per mille of the best total, mean over cells ({len(cells)} cells)"]
    lines.append(f"{'':<22s}" + "".join(f"{n:>{width + 1}s}" for n in names))
    lines.append(f"{'cells':<22s}" + "".join(f"{len(cells) if n == 'all' else counts[n]:>{width + 1}d}" for n in names))
    for k in KINDS:
        lines.append(f"{k:<22s}" + "".join(f"{means[n][k]:>{width + 1}.2f}" for n in names))
    lines.append(f"{'total':<22s}" + "".join(f"{sum(means[n].values()):>{width + 1}.2f}" for n in names))
    lines += ["", "explored, by why the probe was offered"]
    why = summarise(cells, "probes")
    for k in PROBES:
        if any(why[n][k] for n in names):
            lines.append(f"{k:<22s}" + "".join(f"{why[n][k]:>{width + 1}.2f}" for n in names))
    worst = sorted(cells, key=lambda c: -sum(c["per_mille"].values()))[:top]
    if worst:
        lines += ["", f"the {len(worst)} cells with most regret:"]
        for c in worst:
            kinds = sorted(c["per_mille"].items(), key=lambda kv: -kv[1])
            parts = ", ".join(f"{k} {v:.1f}" for k, v in kinds if v >= 0.05)
            cell = f"{c['scenario']}/{c['world']} seed {c['seed']}"
            lines.append(f"  {cell:<36s} {sum(c['per_mille'].values()):6.1f}  ({parts})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_options(ap)
    ap.add_argument("--layers", type=int, default=6000, help="attention layers per run")
    ap.add_argument("--workload", choices=("mixed", "decode"), default="mixed",
                    help="requests with their prefills (default), or their decode layers only")  # fmt: skip
    ap.add_argument("--top", type=int, default=10, help="how many of the cells with most regret to list")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--json", action="store_true", help="every cell's figures, and the means")
    args = ap.parse_args(argv)
    if args.top < 0 or args.layers < 1 or args.jobs < 1:
        ap.error("--top must be >= 0, --layers and --jobs >= 1")
    prefill = args.workload == "mixed"
    jobs = [(s, w, seed, args.layers, prefill) for s, w, seed in chosen_cells(ap, args)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        cells = list(pool.map(run_cell, jobs))
    if args.json:
        print(json.dumps({"means": summarise(cells), "probes": summarise(cells, "probes"), "cells": cells}, indent=2))
    else:
        print(render(cells, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
