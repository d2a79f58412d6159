"""What the deadline costs a stage: ``Scheduler.run`` with the executor on a worker thread vs inline.

    python benchmarks/bench_run_deadline.py

A stage is run on a worker thread so that the caller can abandon it at ``policy.timeout_s``
(a Python thread cannot be interrupted). This measures what that hand-off adds per ``run``,
side by side in one process: the same numpy executor, once as shipped (worker thread, a
deadline) and once declared ``RUNS_INLINE`` (the caller's thread, no deadline), alternating
rounds so that both see the same machine. Prints medians of per-call times (microseconds)
per shape and the difference, plus a stage loop where several threads run stages at once.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from adaptive_sched import Scheduler, Shape
from adaptive_sched.executors.cpu_numpy import CpuNumpyExecutor
from adaptive_sched.stages import make_inputs


class InlineCpuExecutor(CpuNumpyExecutor):
    """The same executor, run on the caller's thread (no deadline can be kept)."""

    RUNS_INLINE = True


CONFIG = {
    "device": "bench",
    "priors": "none",
    "backends": {"cpu": "cpu_numpy"},
    "policy": {"kind": "fixed", "backend": "cpu", "timeout_s": 5.0},
}


def scheduler(inline: bool) -> Scheduler:
    cls = InlineCpuExecutor if inline else CpuNumpyExecutor
    return Scheduler.from_config(CONFIG, executors={"cpu": cls("cpu")})


def per_call_us(sched: Scheduler, stage: str, shape: Shape, inputs: dict, n: int) -> tuple[float, float]:
    """Median and p99 of one ``run`` (microseconds)."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t = clock()
        sched.run(stage, shape, inputs)
        samples.append(clock() - t)
    samples.sort()
    return samples[n // 2] / 1e3, samples[min(n - 1, n * 99 // 100)] / 1e3


def threaded_us(sched: Scheduler, stage: str, shape: Shape, inputs: dict, n: int, threads: int) -> float:
    """Wall time per run with ``threads`` threads running stages at once (microseconds)."""

    def work() -> None:
        for _ in range(n):
            sched.run(stage, shape, inputs)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return (time.perf_counter() - start) / (n * threads) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="runs per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    cases = [
        ("qkv", Shape(n=1, d=64, heads=1)),  # nearly no work: the hand-off alone
        ("qkv", Shape(n=1, d=1536, precision="int8")),  # a decode GEMV of Qwen2.5-1.5B
        ("attn", Shape(n=1, d=1536, kv_len=512, precision="int8")),
    ]
    print(f"us per run ({args.rounds} alternating rounds of {args.n} runs; medians over rounds of p50 and p99)")
    print(f"{'stage':6} {'shape':30} {'inline p50':>11} {'worker p50':>11} {'added':>8} "
          f"{'inline p99':>11} {'worker p99':>11} {'added':>8}")  # fmt: skip
    for stage, shape in cases:
        inputs = make_inputs(stage, shape)
        rounds: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        with scheduler(True) as inline, scheduler(False) as worker:
            for s in (inline, worker):
                per_call_us(s, stage, shape, inputs, 200)  # warm: weights prepared, workers started
            for _ in range(args.rounds):
                for flag, s in ((True, inline), (False, worker)):
                    rounds[flag].append(per_call_us(s, stage, shape, inputs, args.n))
        a50, b50 = (statistics.median(r[0] for r in rounds[f]) for f in (True, False))
        a99, b99 = (statistics.median(r[1] for r in rounds[f]) for f in (True, False))
        label = f"n={shape.n} d={shape.d} kv={shape.kv_len} {shape.precision.value}"
        print(f"{stage:6} {label:30} {a50:11.1f} {b50:11.1f} {b50 - a50:+8.1f} "
              f"{a99:11.1f} {b99:11.1f} {b99 - a99:+8.1f}")  # fmt: skip

    stage, shape = cases[1]
    inputs = make_inputs(stage, shape)
    walls: dict[bool, list[float]] = {True: [], False: []}
    with scheduler(True) as inline, scheduler(False) as worker:
        for _ in range(args.rounds):
            for flag, s in ((True, inline), (False, worker)):
                walls[flag].append(threaded_us(s, stage, shape, inputs, args.n // 4, args.threads))
    a, b = statistics.median(walls[True]), statistics.median(walls[False])
    print(f"\n{args.threads} threads running qkv n=1 d=1536 int8 at once: wall us per run "
          f"inline {a:.1f}, worker {b:.1f} ({b - a:+.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
