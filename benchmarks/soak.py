"""Soak: threads x seconds through decide/observe/run with a log; memory sampled, every row accounted.

    python benchmarks/soak.py --threads 4 --seconds 120

Each thread loops over the entry points a service uses, on the shipped simulated RK3588
(learner thread, a SQLite log): ``decide`` + ``observe`` for both stages of a layer,
``run_attention`` (latency only), and every 16th iteration a ``run`` with inputs (the output
checked against the reference) on a second scheduler whose candidates are numpy executors on
worker threads (the path that keeps ``policy.timeout_s``; its CPU fallback runs on the
caller's thread), logging to the same file. Decode shapes move through the KV cache as a
generation would. A sampler thread reads the process's resident memory and thread count once
a second.

``--faults RATE`` makes the second scheduler's GPU executor misbehave on that share of its
runs (raise, return NaN, report a negative latency, or hang past ``policy.timeout_s``): the
outputs must still be correct, and the failed runs are counted and logged like the others.

At the end (after ``close()``) it prints throughput, resident memory (start, peak, end, and
the growth over the second half of the run), the scheduler's counters, and the account of
rows: decisions and outcomes made by the threads against those in the log file plus those
the log reports dropped; the script exits 1 if they do not balance.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from adaptive_sched import Scheduler, Shape
from adaptive_sched.executors import RunResult
from adaptive_sched.executors.cpu_numpy import CpuNumpyExecutor
from adaptive_sched.stages import make_inputs, reference

#: the deadline of the scheduler whose executor may hang (--faults), and how long a hang lasts
TIMEOUT_S = 0.05
HANG_S = 0.2


class InlineCpuExecutor(CpuNumpyExecutor):
    """numpy on the caller's thread: the fallback, which no deadline abandons."""

    RUNS_INLINE = True


class FlakyExecutor(CpuNumpyExecutor):
    """numpy on the CPU that misbehaves on a share of its runs."""

    def __init__(self, backend: str, rate: float, seed: int) -> None:
        super().__init__(backend)
        self._rate = rate
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self.faults = 0

    def _run(self, stage, shape, inputs, after):  # type: ignore[no-untyped-def]
        with self._lock:
            u, kind = self._rng.random(), int(self._rng.integers(4))
        result = super()._run(stage, shape, inputs, after)
        if u >= self._rate:
            return result
        with self._lock:
            self.faults += 1
        if kind == 0:
            raise RuntimeError("device lost")
        if kind == 1:
            out = result.output.copy()
            out.flat[0] = np.nan
            return RunResult(output=out, latency_s=result.latency_s)
        if kind == 2:
            return RunResult(output=result.output, latency_s=-1.0)
        time.sleep(HANG_S)
        return result


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Tally:
    """Rows one thread made: decisions and outcomes (each decision here gets one outcome)."""

    def __init__(self) -> None:
        self.decisions = 0
        self.outcomes = 0
        self.iterations = 0
        self.errors: list[str] = []


def worker(sched: Scheduler, real: Scheduler, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = (1536, 2048, 4096)[seed % 3]
    small = Shape(n=1, d=64, kv_len=8, heads=2)
    small_inputs = make_inputs("qkv", small)
    want = reference("qkv", small, small_inputs)
    kv = 128
    try:
        while not stop.is_set():
            shape = Shape(n=1, d=d, kv_len=kv, precision="int8")
            dq = sched.decide("qkv", shape)
            sched.observe(dq, float(rng.lognormal(-7.0, 0.2)))
            da = sched.decide("attn", shape, after=dq)
            sched.observe(da, float(rng.lognormal(-7.5, 0.2)))
            layer = sched.run_attention(shape)
            made = 4 + len(layer.qkv.failed) + len(layer.attn.failed)
            if tally.iterations % 16 == 0:
                run = real.run_stage("qkv", small, small_inputs)
                np.testing.assert_array_equal(run.output, want)
                made += 1 + len(run.failed)
            tally.decisions += made
            tally.outcomes += made
            tally.iterations += 1
            kv = 128 if kv >= 2048 else kv + 1
    except Exception as exc:  # reported and counted as a failure of the soak
        tally.errors.append(f"{type(exc).__name__}: {exc}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--db", help="log path (default: a temporary directory)")
    ap.add_argument("--faults", type=float, default=0.0, help="share of the GPU executor's runs that misbehave")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.db) if args.db else Path(tmp) / "soak.db"
        config = {
            "policy": {"kind": "adaptive", "learner": "thread"},
            "store": {"path": str(db)},
        }
        from adaptive_sched.config import load_config

        base = load_config("rk3588-sim").as_dict()
        base["policy"].update(config["policy"])
        base["store"].update(config["store"])
        sched = Scheduler.from_config(base)
        flaky = FlakyExecutor("gpu", args.faults, seed=7)
        real = Scheduler.from_config(
            {
                "device": "soak",
                "priors": "none",
                # as on a board, a CPU fallback: on a loaded host a healthy run on a worker thread
                # can wait past a 50 ms deadline for the GIL, and a stage must still run somewhere
                "backends": {
                    "gpu": "cpu_numpy",
                    "npu": "cpu_numpy",
                    "cpu": {"executor": "cpu_numpy", "role": "fallback"},
                },
                "policy": {"kind": "adaptive", "learner": "thread", "timeout_s": TIMEOUT_S if args.faults else 1.0},
                "store": {"path": str(db), "warm_start_rows": 0},
            },
            executors={"gpu": flaky, "npu": CpuNumpyExecutor("npu"), "cpu": InlineCpuExecutor("cpu")},
        )
        samples: list[tuple[float, float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            start = time.monotonic()
            while not stop.wait(1.0):
                samples.append((time.monotonic() - start, rss_mb(), threading.active_count()))

        tallies = [Tally() for _ in range(args.threads)]
        threads = [threading.Thread(target=worker, args=(sched, real, stop, t, i)) for i, t in enumerate(tallies)]
        sampler = threading.Thread(target=sample)
        rss_start = rss_mb()
        start = time.monotonic()
        sampler.start()
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        sampler.join()
        counted = ("observations", "unlearned", "failures", "late", "skipped_quarantined")
        stats = {key: sched.stats()[key] + real.stats()[key] for key in counted}
        stats["abandoned_running"] = real.stats()["abandoned_running"]
        stats["refused"] = {**sched.stats()["refused"], **real.stats()["refused"]}
        sched.close()
        real.close()
        log = {key: sched.stats()["log"][key] + real.stats()["log"][key] for key in sched.stats()["log"]
               if isinstance(sched.stats()["log"][key], int)}  # fmt: skip
        with sqlite3.connect(db) as con:
            (db_decisions,) = con.execute("SELECT count(*) FROM decisions").fetchone()
            (db_outcomes,) = con.execute("SELECT count(*) FROM outcomes").fetchone()

    # a stage sent past a quarantined backend adds a decision (and its 'not run' outcome)
    made_decisions = sum(t.decisions for t in tallies) + stats["skipped_quarantined"]
    made_outcomes = sum(t.outcomes for t in tallies) + stats["skipped_quarantined"]
    iterations = sum(t.iterations for t in tallies)
    errors = [e for t in tallies for e in t.errors]
    rss = [r for _, r, _ in samples] or [rss_start]
    half = [r for s, r, _ in samples if s >= elapsed / 2] or rss
    threads_seen = [n for _, _, n in samples] or [0]
    print(f"{args.threads} threads x {elapsed:.0f} s: {iterations} iterations, {made_decisions} decisions "
          f"({made_decisions / elapsed:.0f}/s)")  # fmt: skip
    print(f"resident memory MB: start {rss_start:.1f}, peak {max(rss):.1f}, end {rss[-1]:.1f}; "
          f"second half {min(half):.1f} to {max(half):.1f} (growth {half[-1] - half[0]:+.1f})")  # fmt: skip
    print(f"threads alive (sampled): {min(threads_seen)} to {max(threads_seen)}")
    print(f"scheduler: observations {stats['observations']}, unlearned {stats['unlearned']}, "
          f"failures {stats['failures']} (faults injected {flaky.faults}), refused {stats['refused']}, "
          f"late {stats['late']}, abandoned still running {stats['abandoned_running']}, "
          f"skipped while quarantined {stats['skipped_quarantined']}")  # fmt: skip
    lost = log["dropped"] + log["failed"] + log["rejected"] + log["lost_with_file"] + log["sampled_out"]
    print(f"log: written {log['written']}, dropped {log['dropped']}, failed {log['failed']}, "
          f"rejected {log['rejected']}, duplicates {log['duplicates']}, sampled out {log['sampled_out']}, "
          f"lost with file {log['lost_with_file']}, batches {log['batches']}")  # fmt: skip
    print(f"rows made: {made_decisions} decisions + {made_outcomes} outcomes = {made_decisions + made_outcomes}; "
          f"in the file: {db_decisions} + {db_outcomes} = {db_decisions + db_outcomes}; "
          f"not stored (dropped, failed, rejected, sampled out, lost): {lost}")  # fmt: skip
    balanced = (
        db_decisions + db_outcomes + lost == made_decisions + made_outcomes
        and db_decisions + db_outcomes == log["written"]
        and db_decisions <= made_decisions
    )
    print("rows accounted: " + ("yes" if balanced else "NO"))
    for e in errors[:5]:
        print(f"thread error: {e}", file=sys.stderr)
    return 0 if balanced and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
