"""Reading a prior file: what the bounds checks (size, UTF-8, nesting depth) cost.

    python benchmarks/bench_prior_load.py              # the shipped rk3588 prior
    python benchmarks/bench_prior_load.py --rows 5000  # a prior grown to that many rows per stage

Prints, measured side by side in one run (medians over ``--rounds``, rounds interleaved):

* ``checked``: :func:`adaptive_sched.store.prior_files.read_prior_json` (read at most
  16 MB + 1 byte, decode UTF-8, parse, walk the nesting depth, verify hashes and bounds);
* ``unchecked``: the same file read, parsed and verified without the size cap and the
  depth walk (``Path.read_text`` + ``json.loads`` + ``prior_from_dict``);
* their ratio, and the depth walk alone.

Timings on a shared 2-core machine are noisy: compare the columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from adaptive_sched.learners.prior_data import TrainingRow, prior_from_dict
from adaptive_sched.store.prior_files import builtin_path, read_prior_json, write_prior_json
from adaptive_sched.store.priors import json_depth
from adaptive_sched.types import Shape


def grown(path: Path, rows: int, out: Path) -> Path:
    """The prior at ``path`` with each stage's rows repeated (shifted in n) up to ``rows``."""
    data = read_prior_json(path)
    stages = {}
    for stage, sp in data.stages.items():
        extra: list[TrainingRow] = []
        i = 0
        while len(sp.rows) + len(extra) < rows:
            r = sp.rows[i % len(sp.rows)]
            bump = 1 + i // len(sp.rows)
            s = r.shape
            shape = Shape(n=s.n + 1000 * bump, d=s.d, kv_len=s.kv_len, batch=s.batch, precision=s.precision)
            extra.append(TrainingRow(shape, dict(r.latency_s)))
            i += 1
        stages[stage] = replace(sp, rows=(*sp.rows, *extra))
    return write_prior_json(replace(data, stages=stages), out)


def unchecked(path: Path) -> object:
    return prior_from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=0, help="grow each stage to this many rows (0: the shipped prior)")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = builtin_path("rk3588")
        if args.rows:
            path = grown(path, args.rows, Path(tmp) / "grown.json")
        parsed = json.loads(path.read_text(encoding="utf-8"))
        timings: dict[str, list[float]] = {"checked": [], "unchecked": [], "depth walk": []}
        for _ in range(args.rounds):
            for name, fn in (
                ("checked", lambda: read_prior_json(path)),
                ("unchecked", lambda: unchecked(path)),
                ("depth walk", lambda: json_depth(parsed)),
            ):
                start = time.perf_counter()
                fn()
                timings[name].append(time.perf_counter() - start)
        rows = sum(len(s["rows"]) for s in parsed["stages"].values())
        print(f"prior {path.name}: {path.stat().st_size} bytes, {rows} rows, {args.rounds} rounds")
        med = {k: statistics.median(v) for k, v in timings.items()}
        for name, value in med.items():
            print(f"  {name:<10} median {value * 1e3:8.3f} ms")
        print(f"  checked / unchecked: {med['checked'] / med['unchecked']:.3f}")


if __name__ == "__main__":
    main()
