"""How far the shipped prior is from a device, on the shapes the learning benchmark runs.

    python benchmarks/bench_prior_fidelity.py                     # the simulated RK3588 and every world
    python benchmarks/bench_prior_fidelity.py --devices sim --seeds 0-9

The prior is where the scheduler starts: on the simulated RK3588 it should be close to the
simulator it was trained from, and on the worlds of :mod:`worlds` (which are not our
simulator) it is as wrong as a prior can be on a real board. For every distinct shape of
:func:`worlds.workload` (the default and the unseen model widths, ``--seeds``), per phase and
stage, against each device's noise-free latencies:

* ``|log err| gpu`` and ``npu``: the mean absolute log error of the prior's latency (0.69 is
  a factor of 2), every shape counted once;
* ``argmin regret``: what the prior's per-stage choice costs over the device's best backend,
  shapes weighted by how often the workload runs them (0: the prior always picks the faster).
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
from collections import Counter

from worlds import ATTN, GPU, NPU, QKV, ROOFLINES, UNSEEN_MODELS, make_base, parse_seeds, workload

from adaptive_sched.build import load_prior
from adaptive_sched.config import load_config
from adaptive_sched.sim import SimulatedDevice
from adaptive_sched.types import Backend, Shape


def shapes(seeds: list[int]) -> Counter[Shape]:
    """Every layer's shape of the learning benchmark's workloads (both model sets), with its count."""
    out: Counter[Shape] = Counter()
    for seed in seeds:
        for models in (None, UNSEEN_MODELS):
            out.update(step.shape for step in workload(6000, seed, models))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default=",".join(["sim", *ROOFLINES]), help="sim and/or world names")
    ap.add_argument("--seeds", default="0-2", help="the workloads' seeds (default 0-2)")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # the prior warns once per stage about extrapolated widths
    prior = load_prior(load_config("rk3588-sim"))
    counts = shapes(parse_seeds(args.seeds))
    sim = SimulatedDevice("rk3588", noise=False, thermal=False, contention=False)
    print(f"{len(counts)} distinct shapes; prior {prior.content_hash[:12]}")
    print(f"{'device':10s} {'phase':8s} {'stage':5s} {'|log err| gpu':>14s} {'npu':>6s} {'argmin regret':>14s}")
    for device in args.devices.split(","):
        world = None if device == "sim" else make_base(device)
        for phase in ("prefill", "decode"):
            for stage in (QKV, ATTN):
                errors: dict[Backend, list[float]] = {GPU: [], NPU: []}
                chosen = best = 0.0
                for shape, count in counts.items():
                    if (shape.n > 1) != (phase == "prefill"):
                        continue
                    believed = prior.latency(stage, shape)
                    true = {
                        b: sim.expected_latency(stage, shape, b) if world is None else world.stage_s(stage, shape, b)
                        for b in (GPU, NPU)
                    }
                    for b in (GPU, NPU):
                        errors[b].append(abs(math.log(believed[b] / true[b])))
                    chosen += count * true[min(believed, key=believed.__getitem__)]
                    best += count * min(true.values())
                print(
                    f"{device:10s} {phase:8s} {stage.value:5s} {statistics.mean(errors[GPU]):14.2f} "
                    f"{statistics.mean(errors[NPU]):6.2f} {chosen / best - 1:14.4f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
