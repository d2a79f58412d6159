"""Throughput of the simulated device in latency-only mode.

Runs 100,000 simulated stage runs (a decode loop: qkv then attn, alternating backends so
transitions are priced) three ways, side by side in one process:

* ``device.run`` directly (the scheduler's oracle and benchmarks use this path);
* ``device.run`` with noise, thermal drift and contention all on;
* ``SimExecutor.run`` (the executor protocol around it, latency-only: no inputs).

Prints runs per second and microseconds per run (median of 5 repeats) for each.

    python3 benchmarks/bench_sim.py [--runs 100000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from adaptive_sched.executors.sim import SimExecutor
from adaptive_sched.sim import SimulatedDevice
from adaptive_sched.types import Shape, Stage

BACKENDS = ("gpu", "npu")


def workload(runs: int) -> list[tuple[Stage, Shape, str, str | None]]:
    """Decode steps of a 1.5B-class layer with a growing KV cache and a few widths."""
    shapes = [
        Shape(n=1, d=d, kv_len=kv, precision=p)
        for d in (1536, 2048, 4096)
        for kv in (128, 256, 512)
        for p in ("int8", "fp16")
    ]
    calls: list[tuple[Stage, Shape, str, str | None]] = []
    i = 0
    while len(calls) < runs:
        shape = shapes[i % len(shapes)]
        q, a = BACKENDS[i % 2], BACKENDS[(i // 2) % 2]
        calls.append((Stage.QKV, shape, q, None))
        calls.append((Stage.ATTN, shape, a, q))
        i += 1
    return calls[:runs]


def time_device(calls: list, **options: Any) -> float:
    dev = SimulatedDevice("rk3588", seed=0, **options)
    run = dev.run
    start = time.perf_counter()
    for stage, shape, backend, after in calls:
        run(stage, shape, backend, after)
    return time.perf_counter() - start


def time_executor(calls: list) -> float:
    dev = SimulatedDevice("rk3588", seed=0)
    executors = {b: SimExecutor(b, device=dev) for b in BACKENDS}
    start = time.perf_counter()
    for stage, shape, backend, after in calls:
        executors[backend].run(stage, shape, after=executors[after].backend if after else None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    calls = workload(args.runs)
    cases = {
        "device.run (noise, thermal: profile defaults)": lambda: time_device(calls),
        "device.run (noise, thermal, contention on)": lambda: time_device(calls, contention=True),
        "device.run (noise and drift off)": lambda: time_device(calls, noise=False, thermal=False),
        "SimExecutor.run (latency-only)": lambda: time_executor(calls),
    }
    print(f"{args.runs} simulated stage runs, median of {args.repeats}:")
    for name, fn in cases.items():
        seconds = statistics.median(fn() for _ in range(args.repeats))
        print(f"  {name:<48} {args.runs / seconds:>10,.0f} runs/s  {seconds / args.runs * 1e6:6.2f} us/run")


if __name__ == "__main__":
    main()
