"""A cold ``adaptive-sched decide``, as a firmware script pays for it: a whole new process.

    python benchmarks/bench_cold_decide.py              # 100k-decision log, 15 rounds
    python benchmarks/bench_cold_decide.py --quick      # 5k decisions, 5 rounds

Measured side by side in one run, the commands interleaved round by round (A B C D A B C
D ...) so that every column sees the same load on a shared machine; medians of the rounds:

* ``python -c pass``: the interpreter's own start-up, the floor;
* ``decide`` without ``--db`` (the default config), answered from the snapshot in the
  user's cache directory (a temporary one here);
* ``decide --db LOG`` on a log of ``--decisions`` decisions with their outcomes, answered
  from the snapshot kept in the log;
* for reference, ``decide --db LOG`` just after an ``observe`` made the snapshot stale: it
  builds the scheduler and re-learns the log (what every call cost before snapshots).

The first call of each kind (which builds the snapshot) is made before timing. Also
checked, once: the fast paths import neither numpy nor river nor sqlite_utils.

Child processes run from compiled bytecode, as an installed package does (a private
``PYTHONPYCACHEPREFIX``), unless ``--no-bytecode``: where ``PYTHONDONTWRITEBYTECODE`` is set
every process compiles every module it imports, which adds tens of milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DECIDE = ["-m", "adaptive_sched", "decide", "--stage", "attn", "--n", "1", "--d", "2048", "--kv-len", "700",
          "--precision", "int8", "--after", "gpu"]  # fmt: skip


def build_log(path: Path, decisions: int) -> None:
    """A log of ``decisions`` decisions, each observed, through the scheduler's own API."""
    sys.path.insert(0, str(ROOT))
    from adaptive_sched import Scheduler, Shape
    from adaptive_sched.config import load_config

    base = load_config("rk3588-sim").as_dict()
    base["store"]["on_full"] = "block"  # a benchmark log must hold every row
    with Scheduler.from_config(base, db=path) as sched:
        for i in range(decisions // 2):
            shape = Shape(n=1, d=2048, kv_len=i % 2048, precision="int8")
            dq = sched.decide("qkv", shape)
            sched.observe(dq, 1e-3)
            da = sched.decide("attn", shape, after=dq)
            sched.observe(da, 5e-4)


def timed(argv: list[str], env: dict[str, str], quiet: bool = False) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - start


def imports_heavy(argv: list[str], env: dict[str, str]) -> list[str]:
    out = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env, check=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr  # fmt: skip
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in out.splitlines() if "|" in line}
    return sorted(names & {"numpy", "river", "sqlite_utils"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-bytecode", action="store_true",
                        help="compile every module in every process (PYTHONDONTWRITEBYTECODE)")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.decisions, args.rounds = 5_000, 5
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        if not args.no_bytecode:
            # As an installed package runs: from compiled bytecode (kept out of the checkout)
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        db = Path(tmp) / "log.db"
        t0 = time.perf_counter()
        build_log(db, args.decisions)
        print(f"log: {args.decisions} decisions with outcomes, built in {time.perf_counter() - t0:.1f} s")
        py = sys.executable
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "decide (default config)": [py, *DECIDE],
            "decide --db (100k log)" if args.decisions == 100_000 else "decide --db": [py, *DECIDE, "--db", str(db)],
        }
        for argv in list(commands.values())[1:]:
            timed(argv, env)  # builds the snapshot
            heavy = imports_heavy(argv[1:], env)
            print(f"{' '.join(argv[4:6])} ... {' '.join(argv[-2:])}: heavy imports on the fast path: {heavy or 'none'}")
        stale_argv = [py, *DECIDE, "--db", str(db), "-o", "json"]
        samples: dict[str, list[float]] = {name: [] for name in commands}
        samples["decide --db, stale (re-learns)"] = []
        for _ in range(args.rounds):
            for name, argv in commands.items():
                samples[name].append(timed(argv, env))
            # an outcome makes the snapshot stale: the next call re-learns the log
            out = subprocess.run(stale_argv, env=env, check=True, capture_output=True, text=True).stdout
            decision_id = str(json.loads(out)["id"])
            subprocess.run([py, "-m", "adaptive_sched", "observe", "--db", str(db), "--id", decision_id,
                            "--latency-ms", "0.5"], env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            samples["decide --db, stale (re-learns)"].append(timed([py, *DECIDE, "--db", str(db)], env, quiet=True))
        floor = statistics.median(samples["python -c pass"])
        print(f"\n{args.rounds} rounds, medians (min .. max):")
        for name, values in samples.items():
            med = statistics.median(values)
            print(f"  {name:34s} {med * 1e3:7.1f} ms  ({min(values) * 1e3:.1f} .. {max(values) * 1e3:.1f})"
                  f"  {med / floor:5.1f}x python -c pass")  # fmt: skip


if __name__ == "__main__":
    main()
