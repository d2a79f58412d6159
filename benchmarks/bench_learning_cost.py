"""What deciding and learning cost per call, with every piece of learning done inline, beside Vowpal Wabbit.

    python benchmarks/bench_learning_cost.py             # ~1 minute
    python benchmarks/bench_learning_cost.py --calls 50000
    python benchmarks/bench_learning_cost.py --no-source   # the installed build only

Two streams of decode layers (qkv then attention, latencies from the ``soc`` world of
:mod:`worlds`, so the policy keeps learning as it would on a device):

``100 shapes``       a service cycling over 100 distinct shapes
``100,000 shapes``   decode requests of six widths, both precisions and batches 1 to 8, from KV
                     lengths up to 60,000, growing by one per token: every layer a shape never
                     seen before
``decode loop``      what a model asks: its 28 layers at one shape per token, the KV cache
                     growing by one per token, requests of 64 to 512 tokens one after another

For each: ``decide`` p50/p99 (every call, and the calls whose exact shape was never seen
before), inline ``observe`` p50/mean/p99 and the longest single call after construction,
the ratio of the two streams' observe medians, and what one full pass of the garbage
collector costs over the heap the stream grew. Vowpal Wabbit's predict + learn on the
same stream is measured beside it (``--cb_explore_adf --epsilon 0.02 -q sa``; skipped
when the optional ``bench`` extra is not installed). Where the latency model is compiled
(see ``adaptive_sched/learners/native.py``), the same streams are then measured on its
Python source, in a process of its own, and the two builds compared.

Targets: decide p50 <= 1 us (never-seen shapes too); observe median <= 10 us, mean <= 20 us,
no call over 5 ms; the 100,000-shape stream within 1.2x of the 100-shape one.

Every figure is the call's own time: the clock's overhead (two reads around no call, the
median of a loop run right after each stream, 50 to 70 ns here) is subtracted, as
``bench_hot_path.py`` does.

The heap that exists once the scheduler is built is frozen (``gc.freeze()``), as a service
does after start-up: otherwise every full pass of the garbage collector walks numpy's and
river's modules and stalls whatever call triggers it for 20 to 40 ms, whatever the library does.
The benchmark's own bookkeeping is kept out of the collector's sight too, so that what is
measured is the library's heap: timings go to ``array`` (no object per sample), and which
shapes are new is worked out in a pass over the stream before the timed run (a set of
100,000 shapes, grown during the run, made full passes both more frequent and 2 ms longer).
"""

from __future__ import annotations

import argparse
import array
import dataclasses
import gc
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from worlds import SCENARIOS, World, make_base

from adaptive_sched import Scheduler, Shape
from adaptive_sched.config import load_config
from adaptive_sched.learners import native
from adaptive_sched.types import Stage

QKV, ATTN = Stage.QKV, Stage.ATTN


def stream(kind: str, n: int, seed: int) -> Iterator[Shape]:
    """The shapes of a stream, made as they are used (a list of them would weigh on the measure)."""
    rng = random.Random(seed)
    if kind == "100":
        pool = [
            Shape(n=1, d=d, kv_len=rng.randint(64, 2048), precision=rng.choice(("fp16", "int8")))
            for d in (1024, 1536, 2048, 4096)
            for _ in range(25)
        ]
        return (pool[i % len(pool)] for i in range(n))
    if kind == "decode":
        return itertools.islice(_decode_loop(rng), n)
    # decode requests of six widths, both precisions, batches 1 to 8, each starting at a KV
    # length up to 60,000 and growing by one per token: every layer a shape never seen before
    return itertools.islice(_decode_requests(rng), n)


def _decode_loop(rng: random.Random, layers: int = 28) -> Iterator[Shape]:
    while True:
        prompt = rng.randint(16, 1024)
        for t in range(rng.randint(64, 512)):
            shape = Shape(n=1, d=1536, kv_len=prompt + t, heads=12, precision="int8")
            for _ in range(layers):
                yield shape


def _decode_requests(rng: random.Random) -> Iterator[Shape]:
    while True:
        d = rng.choice((1024, 1536, 2048, 3072, 4096, 5120))
        batch, precision = rng.choice((1, 2, 4, 8)), rng.choice(("fp16", "int8"))
        start = rng.randint(0, 60_000)
        for t in range(64):
            yield Shape(n=1, d=d, kv_len=start + t, batch=batch, precision=precision)


def percentile(xs: Iterable[int], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1e3


def first_seen(shapes: Iterable[Shape]) -> bytearray:
    """1 for each shape of the stream whose exact shape comes for the first time, else 0."""
    seen: set[tuple[int, ...]] = set()
    flags = bytearray()
    for s in shapes:
        exact = (s.n, s.d, s.kv_len, s.batch, s.heads, s.precision.code)
        flags.append(exact not in seen)
        seen.add(exact)
    return flags


def measure(shapes: Iterable[Shape], new: bytearray, warmup: int) -> dict[str, Any]:
    """Time every decide and observe of the stream ``shapes``; ``new`` flags its never-seen shapes."""
    config = load_config("rk3588-sim")
    config = dataclasses.replace(config, policy=dataclasses.replace(config.policy, learner="inline"))
    world = World(make_base("soc"), SCENARIOS["steady"], seed=0)
    sample = world.sample
    clock = time.perf_counter_ns
    decide_all, decide_new, observe = array.array("q"), array.array("q"), array.array("q")
    gc.collect()
    with Scheduler(config) as sched:
        # As a service does once it has started: the garbage collector's full passes no longer
        # walk the interpreter's startup heap (numpy's and river's modules, ~100k objects,
        # 20 to 40 ms a pass here), only what was allocated since.
        gc.freeze()
        decide, obs = sched.decide, sched.observe
        for i, shape in enumerate(shapes):
            t0 = clock()
            dq = decide(QKV, shape)
            t1 = clock()
            lq = sample(QKV, shape, dq.backend, None)  # the world's answer, outside the timing
            t2 = clock()
            obs(dq, lq)
            t3 = clock()
            da = decide(ATTN, shape, after=dq)
            t4 = clock()
            la = sample(ATTN, shape, da.backend, dq.backend)
            t5 = clock()
            obs(da, la)
            t6 = clock()
            if i >= warmup:
                decide_all.append(t1 - t0)
                decide_all.append(t4 - t3)
                observe.append(t3 - t2)
                observe.append(t6 - t5)
                if new[i]:
                    decide_new.append(t1 - t0)
        stats = sched.stats()
        # what a full pass of the collector costs over the heap the run grew (the library's
        # tables, at their largest): the longest stall one could add to a call
        t0 = clock()
        gc.collect()
        full_pass = clock() - t0
        tracked = len(gc.get_objects())
    gc.unfreeze()
    clock_us = clock_overhead()
    return {
        "decide_p50": percentile(decide_all, 0.5) - clock_us,
        "decide_p99": percentile(decide_all, 0.99) - clock_us,
        "decide_new_p50": percentile(decide_new, 0.5) - clock_us if decide_new else float("nan"),
        "observe_p50": percentile(observe, 0.5) - clock_us,
        "observe_mean": statistics.mean(observe) / 1e3 - clock_us,
        "observe_p99": percentile(observe, 0.99) - clock_us,
        "observe_max": max(observe) / 1e3 - clock_us,
        "clock_ns": clock_us * 1e3,
        "distinct": sum(new),
        "full_pass_ms": full_pass / 1e6,
        "tracked": tracked,
        "entries": stats["policy"]["entries"],
    }


def clock_overhead(reads: int = 200_000) -> float:
    """The median time (us) between two clock reads around no call: what each timing of :func:`measure` includes."""
    clock = time.perf_counter_ns
    out = array.array("q")
    append = out.append
    for _ in range(reads):
        t = clock()
        append(clock() - t)
    return percentile(out, 0.5)


def machine_stalls(seconds: float) -> list[float]:
    """The longest gaps (ms) a bare loop sees over ``seconds``: what this machine's scheduler adds to any call.

    A virtual machine's host can take its CPU away for tens of milliseconds; a call caught by
    that is measured as long whatever it does, so the longest ``observe`` is read beside this.
    """
    clock = time.perf_counter_ns
    gaps = []
    t = clock()
    end = t + int(seconds * 1e9)
    while t < end:
        now = clock()
        if now - t > 1_000_000:
            gaps.append((now - t) / 1e6)
        t = now
    return sorted(gaps)[-3:]


def interpreter_ns(iterations: int = 2_000_000) -> float:
    """This machine's interpreter speed: ns per iteration of a loop of one call and one addition,
    the best of five. Every figure here is mostly interpreted Python: two machines' figures are
    compared through this, not through Vowpal Wabbit's, which is mostly compiled code."""

    def step(x: int) -> int:
        return x + 1

    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter_ns()
        x = 0
        for _ in range(iterations):
            x = step(x)
        best = min(best, (time.perf_counter_ns() - t0) / iterations)
    return best


def measure_vw(shapes: Iterable[Shape], warmup: int) -> float | None:
    try:
        from vowpalwabbit import Workspace
    except ImportError:
        return None

    vw = Workspace("--cb_explore_adf --epsilon 0.02 -q sa --quiet")
    clock = time.perf_counter_ns
    out: list[int] = []
    for i, s in enumerate(shapes):
        t0 = clock()
        shared = f"shared |s qkv {s.precision.value} ld:{math.log2(s.d):.3f} lk:{math.log2(s.kv_len + 2):.3f}"
        ex = [shared, "|a gpu", "|a npu"]
        pmf = vw.predict(ex)
        vw.learn([shared, f"0:1.0:{max(pmf[0], 1e-6):.6f} |a gpu", "|a npu"])
        if i >= warmup:
            out.append(clock() - t0)
    vw.finish()
    return percentile(out, 0.5)


STREAMS = (("100", "100 shapes"), ("100k", "100,000 shapes"), ("decode", "decode loop"))
COLUMNS = ("decide_p50", "decide_p99", "decide_new_p50", "observe_p50", "observe_mean", "observe_p99", "observe_max")


def measure_streams(calls: int, warmup: int) -> dict[str, dict[str, Any]]:
    rows = {}
    for kind, label in STREAMS:
        new = first_seen(stream(kind, calls, seed=1))
        rows[label] = measure(stream(kind, calls, seed=1), new, warmup)
    return rows


def source_rows(calls: int, warmup: int) -> dict[str, dict[str, Any]]:
    """The same streams with the latency model's Python source, in a process of its own."""
    env = {**os.environ, native.PURE_PYTHON: "1"}
    cmd = [sys.executable, __file__, "--calls", str(calls), "--warmup", str(warmup), "--rows-json"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def render(rows: dict[str, dict[str, Any]], title: str) -> None:
    head = ["stream", "distinct", "entries", "decide p50", "p99", "never-seen p50", "observe p50", "mean", "p99", "max"]
    clock_ns = ", ".join(f"{r['clock_ns']:.0f}" for r in rows.values())
    print(f"latency model: {title} (the clock's overhead, {clock_ns} ns, subtracted)")
    print("  ".join(f"{h:>14s}" for h in head))
    for label, r in rows.items():
        cells = [label, str(r["distinct"]), str(r["entries"])] + [f"{r[k]:.2f}" for k in COLUMNS]
        print("  ".join(f"{c:>14s}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100_000, help="layers per stream (two decisions each)")
    ap.add_argument("--warmup", type=int, default=3_000)
    ap.add_argument("--no-source", action="store_true", help="do not also measure the Python source build")
    ap.add_argument("--stall-check", type=float, default=20.0, help="seconds of a bare loop timing stalls")
    ap.add_argument("--rows-json", action="store_true", help=argparse.SUPPRESS)  # a source run's rows, for its parent
    args = ap.parse_args(argv)
    rows = measure_streams(args.calls, args.warmup)
    if args.rows_json:
        print(json.dumps(rows))
        return 0
    compiled = native.status()["build"] == "compiled"
    render(rows, native.describe())
    print(
        "\nA full pass of the garbage collector at the end of each stream (objects it walks, ms):",
        ", ".join(f"{label} {r['tracked']:,} / {r['full_pass_ms']:.2f}" for label, r in rows.items()),
    )
    a, b = rows["100 shapes"], rows["100,000 shapes"]
    print(f"\nobserve median, 100,000 over 100 shapes: {b['observe_p50'] / a['observe_p50']:.2f}x (target <= 1.2)")
    if compiled and not args.no_source:
        # the same streams on the source build, right after: the compiled build's gain, in one run
        print()
        source = source_rows(args.calls, args.warmup)
        render(source, "Python source (ADAPTIVE_SCHED_PURE_PYTHON=1)")
        print("observe p50 / mean, compiled over source: " + ", ".join(
            f"{label} {rows[label]['observe_p50'] / r['observe_p50']:.2f} / "
            f"{rows[label]['observe_mean'] / r['observe_mean']:.2f}" for label, r in source.items()))  # fmt: skip
    vw = measure_vw(stream("100", args.calls, seed=1), args.warmup)
    if vw is not None:
        print(f"\nVowpal Wabbit predict + learn, one decision, p50: {vw:.1f} us")
    stalls = machine_stalls(args.stall_check)
    print(f"this machine's own stalls, a bare loop over {args.stall_check:g} s, longest gaps (ms): "
          + (", ".join(f"{g:.2f}" for g in stalls) or "none over 1 ms"))  # fmt: skip
    print(f"this machine's interpreter, a loop of one call and one addition: {interpreter_ns():.1f} ns per iteration")
    print("(microseconds; this machine's load shows in every figure: compare within one run)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
