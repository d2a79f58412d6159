"""The decision hot path: what a decision costs, and what the learner costs a concurrent loop.

    python benchmarks/bench_hot_path.py

Prints, measured side by side in one run:

* ``decide`` alone (on shapes seen before, and on shapes never seen before in a bucket
  already published: a KV length that grows every token), ``decide`` + log enqueue, and
  ``observe`` (enqueue only, learner on its own thread): p50 and p99 in microseconds
  (targets: decide p50 <= 1 us, never-seen shapes too; decide + log p50 <= 1 us, p99 <= 10 us),
  and making a ``Shape`` (once per shape, shared by the decisions of its layers);
* a stage loop (a small numpy matmul per iteration, timed) alone, and with a scheduler whose
  learner thread is kept busy by the loop's own decisions: p50/p99 per iteration and the p99
  the learner adds (target: <= 0.2 ms).

The clock's own overhead (the same timing loop around no call) is measured and subtracted.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from adaptive_sched import Scheduler, Shape
from adaptive_sched.config import load_config


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    samples_ns.sort()
    n = len(samples_ns)
    return samples_ns[n // 2] / 1e3, samples_ns[min(n - 1, int(n * 0.99))] / 1e3


def time_calls(call, args: list, out: list[int]) -> None:
    """Time ``call(*a)`` for each of ``args`` on its own, appending nanoseconds to ``out``.

    The loop is written out so that only the call and the two clock reads fall between
    the reads; ``call=None`` times the same loop around no call (the clock's overhead).
    """
    clock = time.perf_counter_ns
    append = out.append
    if call is None:
        for _ in args:
            t = clock()
            append(clock() - t)
    else:
        for a in args:
            t = clock()
            call(*a)
            append(clock() - t)


def scheduler(db: str | None, learner: str) -> Scheduler:
    config = load_config("rk3588-sim")
    import dataclasses

    config = dataclasses.replace(config, policy=dataclasses.replace(config.policy, learner=learner))
    return Scheduler(config, db=db)


def decision_costs(n: int, db_dir: Path, chunk: int = 2000) -> None:
    """Each call measured in chunks, the variants interleaved chunk by chunk so that they
    see the same machine. Between chunks the learners and the log writer catch up: a
    service makes thousands of decisions a second, not the million this loop could (what
    a busy learner costs is measured by :func:`learner_interference`)."""
    shapes = [Shape(n=1, d=1536, kv_len=k, heads=12, precision="int8") for k in range(128, 192)]
    calls = [("qkv", shapes[i % 64]) for i in range(chunk)]
    # KV lengths from 32,768 up share a few buckets (quarter octaves of 8,192 lengths): every
    # call below is a shape never seen before, its bucket published once at the start
    longer = (Shape(n=1, d=1536, kv_len=32_768 + k, heads=12, precision="int8") for k in itertools.count())
    plain = scheduler(None, "thread")
    logged = scheduler(str(db_dir / "hot.db"), "thread")
    for sched in (plain, logged):
        for s in (*shapes, Shape(n=1, d=1536, kv_len=32_768, heads=12, precision="int8")):
            sched.observe(sched.decide("qkv", s), 1e-3)  # publish every bucket first: the hot path is a table hit
        sched.flush()
    variants: dict[str, tuple[Any, Any]] = {
        "clock overhead (subtracted below)": (None, calls),
        "decide": (plain.decide, calls),
        "decide, a shape never seen": (plain.decide, "new"),
        "decide + log enqueue": (logged.decide, calls),
        # what the caller pays once per shape (its checks, hash and decision bucket), beside
        # what each of its decisions costs
        "making a Shape": (Shape, [(1, 1536, 128 + i % 64, 1, 12, "int8") for i in range(chunk)]),
        # a decision is observed once, by the scheduler that made it: fresh ones, made untimed
        "observe (no log, learner thread)": (plain.observe, plain),
        "observe (logged, learner thread)": (logged.observe, logged),
    }
    samples: dict[str, list[int]] = {label: [] for label in variants}
    for _ in range(max(1, n // chunk)):
        for label, (call, args) in variants.items():
            if args == "new":
                args = [("qkv", next(longer)) for _ in range(chunk)]
            elif isinstance(args, Scheduler):
                args = [(args.decide(stage, shape), 1e-3) for stage, shape in calls]
            time_calls(call, args, samples[label])
            # Learners and the writer catch up before the next variant: each call is timed
            # on its own, not against a learner thread kept busy by the previous variant.
            plain.flush()
            logged.flush()
    overhead = percentiles(samples.pop("clock overhead (subtracted below)"))[0]
    head = f"call (clock overhead {overhead * 1e3:.0f} ns subtracted)"
    print(f"{head:46s} {'p50 us':>9s} {'p99 us':>9s}")
    for label, out in samples.items():
        p50, p99 = percentiles(out)
        print(f"{label:46s} {p50 - overhead:9.3f} {p99 - overhead:9.3f}")
    plain.close()
    logged.close()
    log_stats = logged.stats()["log"]
    print(f"{'  log: written / dropped':46s} {log_stats['written']:>9} {log_stats['dropped']:>9}")


def stage_loop(iterations: int, sched: Scheduler | None) -> tuple[float, float]:
    a = np.random.default_rng(0).standard_normal((96, 96)).astype(np.float32)
    shapes = [Shape(n=1, d=1536, kv_len=k, heads=12, precision="int8") for k in range(128, 1152)]
    clock = time.perf_counter_ns
    out = []
    for i in range(iterations):
        t = clock()
        a = np.tanh(a @ a)  # the "stage": ~0.1 ms of work that releases the GIL in BLAS
        if sched is not None:
            shape = shapes[i % len(shapes)]
            dq = sched.decide("qkv", shape)
            sched.observe(dq, 1e-3 * (1.0 + 0.05 * (i % 7)))
            da = sched.decide("attn", shape, after=dq)
            sched.observe(da, 5e-4)
        out.append(clock() - t)
    return percentiles(out)


def learner_interference(iterations: int, repeats: int) -> None:
    alone, busy = [], []
    for _ in range(repeats):
        alone.append(stage_loop(iterations, None))
        with scheduler(None, "thread") as sched:
            busy.append(stage_loop(iterations, sched))
            learned = sched.stats()["observations"]
    a50 = statistics.median(x[0] for x in alone)
    a99 = statistics.median(x[1] for x in alone)
    b50 = statistics.median(x[0] for x in busy)
    b99 = statistics.median(x[1] for x in busy)
    print(f"\nstage loop, {iterations} iterations x {repeats} runs (medians of runs); learned {learned} per run")
    print(f"{'':34s} {'p50 us':>9s} {'p99 us':>9s}")
    print(f"{'loop alone':34s} {a50:9.1f} {a99:9.1f}")
    print(f"{'loop + decide/observe + learner':34s} {b50:9.1f} {b99:9.1f}")
    print(f"added by scheduling and learning: p50 {b50 - a50:+.1f} us, p99 {b99 - a99:+.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200_000, help="calls per hot-path measurement")
    ap.add_argument("--iterations", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        decision_costs(args.n, Path(tmp))
    learner_interference(args.iterations, args.repeats)


if __name__ == "__main__":
    main()
