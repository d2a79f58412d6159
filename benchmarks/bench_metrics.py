"""What live metrics cost a service: ``observe`` with and without a metrics registry attached.

    python benchmarks/bench_metrics.py [--n 20000] [--rounds 5]

Two schedulers built the same way (the simulated RK3588, learner on its own thread, no
log), one with :func:`adaptive_sched.metrics.metrics_for` attached, are timed side by side,
round after round, on the same decisions: per ``observe`` call, the median over rounds of
each round's p50 and p99 (microseconds), and the ratio with/without. Also the time of one
scrape (``exposition``) of the scheduler with metrics. ``decide`` is not touched by metrics
(the outcome hook runs in ``observe``), so it is not timed here.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from adaptive_sched import Scheduler, Shape
from adaptive_sched.config import load_config
from adaptive_sched.metrics import exposition, metrics_for


def observe_times(sched: Scheduler, n: int) -> list[int]:
    shape = Shape(n=1, d=4096, kv_len=512, heads=32, precision="int8")
    decisions = [sched.decide("qkv" if i % 2 else "attn", shape) for i in range(n)]
    clock = time.perf_counter_ns
    out = []
    observe = sched.observe
    for d in decisions:
        t0 = clock()
        observe(d, 0.001)
        out.append(clock() - t0)
    sched.flush()
    return out


def pct(samples: list[int]) -> tuple[float, float]:
    samples = sorted(samples)
    return samples[len(samples) // 2] / 1e3, samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    config = load_config("rk3588-sim")
    # As a service runs it: observe only queues, the learner thread learns.
    config = dataclasses.replace(config, policy=dataclasses.replace(config.policy, learner="thread"))
    plain, metered = Scheduler(config), Scheduler(config)
    metrics_for(metered)
    results: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
    try:
        for _ in range(args.rounds):
            results["without"].append(pct(observe_times(plain, args.n)))
            results["with"].append(pct(observe_times(metered, args.n)))
        scrape = []
        for _ in range(20):
            t0 = time.perf_counter()
            exposition(metered)
            scrape.append(time.perf_counter() - t0)
    finally:
        plain.close()
        metered.close()
    p50 = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    p99 = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
    print(f"observe, {args.n} calls x {args.rounds} rounds (median of round percentiles, us)")
    for k in ("without", "with"):
        print(f"  {k:8s} metrics: p50 {p50[k]:.2f}  p99 {p99[k]:.2f}")
    print(f"  with/without: p50 {p50['with'] / p50['without']:.2f}x  p99 {p99['with'] / p99['without']:.2f}x")
    print(f"one scrape (exposition): median {statistics.median(scrape) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
