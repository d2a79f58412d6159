"""Offline replay at scale: wall time and peak memory of ``adaptive-sched replay`` on a 1M-decision log.

Builds its own log (a schema made by the store's writer, then rows inserted directly
in one transaction, as a long decode run on the simulated RK3588 would have logged
them: qkv then attn per layer, an exploring behaviour policy, its probability vectors),
then runs the replay command in a fresh process, so its peak RSS is the replay's own,
and reports the median wall time over ``--repeat`` runs.

    python benchmarks/bench_replay.py                    # 1,000,000 decisions, 3 candidates
    python benchmarks/bench_replay.py --decisions 200000 --keep /tmp/replay-bench.db
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaptive_sched.store.connection import connect  # noqa: E402
from adaptive_sched.store.writer import DecisionLog  # noqa: E402


def build_log(path: Path, decisions: int, seed: int = 0) -> None:
    """``decisions`` rows (half qkv, half attn) of qwen2.5-1.5b decoding with a 128-token prompt."""
    rng = np.random.default_rng(seed)
    with DecisionLog(path) as log:
        run = log.start_run(device_profile="rk3588")
    layers = decisions // 2
    d, heads, prompt, context = 1536, 12, 128, 1024
    # kv_len grows every token and wraps after `context` tokens (a new prompt)
    token = np.arange(layers) // 28
    kv = prompt + token % context
    gpu_q, gpu_a = 0.2, 0.3  # behaviour: P(gpu) per stage; explored rows are the minority choice
    q_gpu = rng.random(layers) < gpu_q
    a_gpu = rng.random(layers) < gpu_a
    base = run << 32
    f = (None,) * 7  # derived features: replay does not read them
    lat_q = np.where(q_gpu, 0.9e-3, 0.6e-3) * rng.lognormal(0, 0.1, layers)
    cross = q_gpu != a_gpu
    lat_a = (np.where(a_gpu, 0.25e-3, 0.35e-3) + kv * 2e-7 + cross * 0.15e-3) * rng.lognormal(0, 0.1, layers)
    conn = connect(path)
    try:
        conn.execute("BEGIN")
        rows, outcomes = [], []
        t0 = 1.7e9
        for i in range(layers):
            for j, (stage, is_gpu, p_gpu, after, lat) in enumerate(
                (
                    ("qkv", q_gpu[i], gpu_q, None, lat_q[i]),
                    ("attn", a_gpu[i], gpu_a, "gpu" if q_gpu[i] else "npu", lat_a[i]),
                )
            ):
                seq = 2 * i + j + 1
                did = base | seq
                backend = "gpu" if is_gpu else "npu"
                prop = p_gpu if is_gpu else 1 - p_gpu
                t = t0 + seq * 1e-3
                rows.append((did, run, t, stage, 1, d, int(kv[i]), 1, heads, "int8", after, backend, float(prop),
                             int(prop < 0.5), 1, None, 1e-3, 1e-3, *f, 1.0, None, None, p_gpu, 1 - p_gpu))  # fmt: skip
                outcomes.append((did, t, float(lat), 1, None))
            if len(rows) >= 100_000:
                _flush(conn, rows, outcomes)
        _flush(conn, rows, outcomes)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _flush(conn, rows: list, outcomes: list) -> None:
    conn.executemany(f"INSERT INTO decisions VALUES ({', '.join('?' * 30)})", rows)
    conn.executemany("INSERT INTO outcomes VALUES (?, ?, ?, ?, ?)", outcomes)
    rows.clear()
    outcomes.clear()


FETCH_ONLY = (
    "import sys; from adaptive_sched.store.bulk_reads import iter_logged_columns\n"
    "n = sum(len(chunk) for chunk in iter_logged_columns(sys.argv[1], chunk_rows=16384))"
)


def measure(cmd: list[str]) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS in MB, exit status, CPU seconds) of one process running ``cmd``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    # wait4 gives this child's own resource usage (ru_maxrss in kB on Linux)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1024, proc.returncode, usage.ru_utime + usage.ru_stime


def fetch_once(db: Path) -> float:
    """Wall seconds of a process that only fetches the rows replay reads (the floor SQLite sets)."""
    wall, _, status, _ = measure([sys.executable, "-c", FETCH_ONLY, str(db)])
    if status != 0:
        raise SystemExit(f"fetching failed ({status})")
    return wall


def replay_once(db: Path, args: list[str]) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS in MB, exit status, CPU seconds) of one replay process."""
    wall, peak, status, cpu = measure(
        [sys.executable, "-m", "adaptive_sched", "replay", "--db", str(db), *args, "--output", "json"]
    )
    if status not in (0, 3):
        raise SystemExit(f"replay failed ({status})")
    return wall, peak, status, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decisions", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="build the log here (reused if it exists) instead of a temp dir")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = a.keep or Path(tmp) / "bench.db"
        if not db.exists():
            t = time.perf_counter()
            build_log(db, a.decisions)
            print(
                f"built {a.decisions} decisions in {time.perf_counter() - t:.1f} s ({db.stat().st_size / 2**20:.0f} MB)"
            )
        candidates = [
            "--candidate",
            str(ROOT / "adaptive_sched" / "configs" / "rk3588-sim.yaml"),
            "--policies",
            "gpu,npu",
        ]
        # the interpreter and imports alone, for scale
        base = [sys.executable, "-c", "import numpy, adaptive_sched.offline.replay, adaptive_sched.cli"]
        t = time.perf_counter()
        subprocess.run(base, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
        startup = time.perf_counter() - t
        walls, peaks, cpus, fetches = [], [], [], []
        for _ in range(a.repeat):  # interleaved, so both see the same load on the machine
            wall, peak, status, cpu = replay_once(db, candidates)
            walls.append(wall)
            peaks.append(peak)
            cpus.append(cpu)
            fetches.append(fetch_once(db))
        print(f"replay of {a.decisions} decisions, 3 candidates (rk3588-sim config, gpu-only, npu-only):")
        print(f"  wall time median {statistics.median(walls):.2f} s over {a.repeat} runs "
              f"(min {min(walls):.2f}, max {max(walls):.2f}); exit status {status}")  # fmt: skip
        print(f"  CPU time (user + system) median {statistics.median(cpus):.2f} s: less sensitive to other load")
        print(f"  peak RSS {max(peaks):.0f} MB (the largest of the replay processes)")
        fetch = statistics.median(fetches)
        print(f"  fetching the same rows from SQLite alone: median {fetch:.2f} s "
              f"(replay / fetch = {statistics.median(walls) / fetch:.2f})")  # fmt: skip
        print(f"  python start-up and imports alone: {startup:.2f} s; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
