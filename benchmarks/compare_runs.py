"""Whether a change moved a benchmark: two runs' ``--json`` outputs, paired cell by cell.

    python benchmarks/bench_learning.py --policies adaptive --seeds 0-9 --json > before.json
    # ... change the code ...
    python benchmarks/bench_learning.py --policies adaptive --seeds 0-9 --json > after.json
    python benchmarks/compare_runs.py before.json after.json
    python benchmarks/compare_runs.py before.json after.json --policy no-online --top 20
    python benchmarks/compare_runs.py tel-before.json tel-after.json --policy telemetry

Reads ``bench_learning.py`` and ``bench_telemetry.py`` outputs (a variant of the latter, such
as ``telemetry`` or ``adaptive``, its run without, is compared as a policy; its cells are a
scenario on the simulator or on the independent world at a seed, and its figure one plus the
regret, the same total over the oracle's).

A cell is one scenario on one world at one seed. Both runs drive the same workload through
the same world for a cell, so the difference of a policy's total over the oracle's between
the two runs (after minus before) is what the change did there, with little of the seeds'
spread in it: the mean of these paired differences and its standard error (their standard
deviation over the square root of their number) say whether a change moved the whole, far
more sharply than the two runs' means side by side. Reported: each run's mean and worst cell
and its cells over 1.03 (the learning benchmark's targets); the paired mean, its standard error and a 95%
interval (normal approximation: with 30 cells or more); how many cells moved at all; the
same by world and by scenario; the cells that moved most.

Only cells present in both runs are paired (the others are counted). Runs of different
benchmarks, or whose conditions differ (``--workload``, ``--layers``, ``--inverted-loads``,
recorded in the JSON by the benchmark), are not the same runs and are refused. A reading,
not a test: nothing is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench_telemetry import SIM_SCENARIOS  # its scenarios on the simulated RK3588; the others run on the world

#: what makes two runs' cells the same runs (the seeds, policies and scenarios only choose which cells there are)
CONDITIONS = ("workload", "layers", "inverted_loads")
#: the learning benchmark's target for one cell
WORST_TARGET = 1.03

Cell = tuple[str, str, int]  # scenario, world, seed


class RunsDiffer(ValueError):
    """Two runs that cannot be paired (different conditions, no cell in common, a policy missing)."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One ``bench_learning.py --json`` output: a policy's total over the oracle's per cell."""

    path: str
    #: the benchmark that wrote it: ``learning`` or ``telemetry``
    benchmark: str
    #: the run's conditions (``CONDITIONS``), or None where the JSON predates their recording
    conditions: dict[str, Any] | None
    #: (scenario, world, seed) -> {policy: total / oracle's total}
    ratios: dict[Cell, dict[str, float]]


def load(path: str | Path) -> Run:
    """Read one run; a file that is not a benchmark's ``--json`` output is an error naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise RunsDiffer(f"{path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise RunsDiffer(f"{path}: not JSON ({exc}); give a benchmark's --json output") from exc
    if isinstance(data, dict) and isinstance(data.get("cells"), list):
        benchmark, ratios = "learning", _learning_ratios(path, data["cells"])
    elif isinstance(data, dict) and isinstance(data.get("rows"), list) and "sysfs_read_us" in data:
        benchmark, ratios = "telemetry", _telemetry_ratios(path, data["rows"])
    else:
        raise RunsDiffer(f"{path}: not the output of bench_learning.py --json or bench_telemetry.py --json")
    run = data.get("run")
    conditions = {k: run.get(k) for k in CONDITIONS} if isinstance(run, dict) else None
    return Run(str(path), benchmark, conditions, ratios)


def _learning_ratios(path: str | Path, cells: list[Any]) -> dict[Cell, dict[str, float]]:
    ratios: dict[Cell, dict[str, float]] = {}
    for i, c in enumerate(cells):
        try:
            totals, oracle = c["totals"], c["totals"]["oracle"]
            key = (str(c["scenario"]), str(c["world"]), int(c["seed"]))
            ratios[key] = {name: float(t) / oracle for name, t in totals.items()}
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise RunsDiffer(f"{path}: cell {i}: expected scenario, world, seed and totals with the oracle's") from exc
    return ratios


def _telemetry_ratios(path: str | Path, rows: list[Any]) -> dict[Cell, dict[str, float]]:
    """A telemetry row's per-seed regret of each variant (``V:each``), as one plus it per cell."""
    ratios: dict[Cell, dict[str, float]] = {}
    for i, r in enumerate(rows):
        try:
            scenario, seeds = str(r["scenario"]), [int(seed) for seed in r["seeds"]]
            where = "simulator" if scenario in SIM_SCENARIOS else "world"
            each = {k.removesuffix(":each"): v for k, v in r.items() if k.endswith(":each")}
            for j, seed in enumerate(seeds):
                ratios[(scenario, where, seed)] = {"oracle": 1.0, **{v: 1.0 + float(x[j]) for v, x in each.items()}}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RunsDiffer(f"{path}: row {i}: expected scenario, seeds and each variant's regret per seed") from exc
    return ratios


@dataclasses.dataclass(frozen=True)
class Group:
    """The paired differences of the cells of one world or one scenario."""

    name: str
    cells: int
    mean: float
    worst_before: float
    worst_after: float


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two runs' cells in common, paired on one policy's total over the oracle's."""

    policy: str
    #: cells of both runs, in order
    cells: list[Cell]
    before: list[float]
    after: list[float]
    #: cells present in only one run
    only_before: int
    only_after: int

    @property
    def differences(self) -> list[float]:
        return [a - b for b, a in zip(self.before, self.after, strict=True)]

    @property
    def mean(self) -> float:
        return statistics.mean(self.differences)

    @property
    def se(self) -> float:
        """The standard error of the mean difference (nan for a single cell)."""
        d = self.differences
        return statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan

    @property
    def moved(self) -> int:
        """Cells whose figure changed at all (a change that moves nothing moves no cell)."""
        return sum(d != 0.0 for d in self.differences)

    def by(self, what: str) -> list[Group]:
        """The cells grouped by ``what``, ``"world"`` or ``"scenario"``, in order of name."""
        field = ("scenario", "world").index(what)
        groups: dict[str, list[int]] = {}
        for i, cell in enumerate(self.cells):
            groups.setdefault(str(cell[field]), []).append(i)
        d = self.differences
        out = []
        for name, ix in sorted(groups.items()):
            worst_before, worst_after = max(self.before[i] for i in ix), max(self.after[i] for i in ix)
            out.append(Group(name, len(ix), statistics.mean(d[i] for i in ix), worst_before, worst_after))
        return out

    def largest(self, n: int) -> list[tuple[Cell, float, float]]:
        """The ``n`` cells that moved most, either way: (cell, before, after)."""
        order = sorted(range(len(self.cells)), key=lambda i: -abs(self.after[i] - self.before[i]))
        return [(self.cells[i], self.before[i], self.after[i]) for i in order[:n] if self.after[i] != self.before[i]]


def compare(before: Run, after: Run, policy: str = "adaptive") -> Comparison:
    """Pair the cells of the two runs on ``policy``'s total over the oracle's."""
    differ = (
        [f"benchmark {before.benchmark!r} against {after.benchmark!r}"] if before.benchmark != after.benchmark else []
    )
    if not differ and before.conditions is not None and after.conditions is not None:
        differ = [f"{k} {before.conditions[k]!r} against {after.conditions[k]!r}"
                  for k in CONDITIONS if before.conditions[k] != after.conditions[k]]  # fmt: skip
    if differ:
        raise RunsDiffer(f"{before.path} and {after.path} are not the same runs: {'; '.join(differ)}")
    both = [c for c in before.ratios if c in after.ratios]
    if not both:
        raise RunsDiffer(f"{before.path} and {after.path} have no cell (scenario, world, seed) in common")
    for run in (before, after):
        missing = [c for c in both if policy not in run.ratios[c]]
        if missing:
            have = sorted({p for r in run.ratios.values() for p in r})
            raise RunsDiffer(f"{run.path}: no policy {policy!r} in {len(missing)} of the cells in common "
                             f"(its policies: {', '.join(have)})")  # fmt: skip
    return Comparison(
        policy,
        both,
        [before.ratios[c][policy] for c in both],
        [after.ratios[c][policy] for c in both],
        only_before=len(before.ratios) - len(both),
        only_after=sum(c not in before.ratios for c in after.ratios),
    )


def _reading(mean: float, se: float, moved: int) -> str:
    if not moved:
        return "no cell moved"
    if math.isnan(se):
        return "one cell: no standard error"
    if abs(mean) <= 2 * se:
        return "within two standard errors of no change"
    return "lower (better)" if mean < 0 else "higher (worse)"


def _cell(c: Cell) -> str:
    return f"{c[0]}/{c[1]} seed {c[2]}"


def _table(groups: Iterable[Group], what: str) -> list[str]:
    lines = [f"  {what:<18s} {'cells':>5s} {'after - before':>15s} {'worst before':>13s} {'worst after':>12s}"]
    lines += [f"  {g.name:<18s} {g.cells:>5d} {g.mean:>+15.4f} {g.worst_before:>13.4f} {g.worst_after:>12.4f}"
              for g in groups]  # fmt: skip
    return lines


def render(cmp: Comparison, before: Run, after: Run, top: int = 8) -> str:
    n = len(cmp.cells)
    lines = [f"{cmp.policy} / oracle over {n} {'cell' if n == 1 else 'cells'} in common"
             + (f" ({cmp.only_before} only before, {cmp.only_after} only after, left out)"
                if cmp.only_before or cmp.only_after else "")]  # fmt: skip
    for label, run, values in (("before", before, cmp.before), ("after", after, cmp.after)):
        worst = max(range(n), key=values.__getitem__)
        over = sum(v > WORST_TARGET for v in values)
        lines.append(f"  {label:<6s} {run.path}: mean {statistics.mean(values):.4f}, worst {values[worst]:.4f} "
                     f"({_cell(cmp.cells[worst])}), {over} cells over {WORST_TARGET}")  # fmt: skip
    mean, se = cmp.mean, cmp.se
    interval = "" if math.isnan(se) else f", 95% interval [{mean - 1.96 * se:+.4f}, {mean + 1.96 * se:+.4f}]"
    lines.append(f"after - before, paired: mean {mean:+.4f}, se {se:.4f}{interval}: {_reading(mean, se, cmp.moved)}; "
                 f"{cmp.moved} of {n} cells moved")  # fmt: skip
    if before.conditions is None or after.conditions is None:
        lines.append("  (a run without its conditions recorded: paired by scenario, world and seed alone)")
    lines += ["", "by world:", *_table(cmp.by("world"), "world")]
    lines += ["", "by scenario:", *_table(cmp.by("scenario"), "scenario")]
    moved = cmp.largest(top)
    if moved:
        lines += ["", f"the {len(moved)} cells that moved most:"]
        lines += [f"  {_cell(c):<40s} {b:.4f} -> {a:.4f} ({a - b:+.4f})" for c, b, a in moved]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", help="a benchmark's --json output of the code before the change")
    ap.add_argument("after", help="the same command's output after it")
    ap.add_argument("--policy", default="adaptive", help="the policy compared (default: adaptive)")
    ap.add_argument("--top", type=int, default=8, help="how many of the cells that moved most to list")
    args = ap.parse_args(argv)
    if args.top < 0:
        ap.error("--top: a number of cells >= 0 is expected")
    try:
        before, after = load(args.before), load(args.after)
        cmp = compare(before, after, args.policy)
    except RunsDiffer as exc:
        print(f"compare_runs: error: {exc}", file=sys.stderr)
        return 1
    print(render(cmp, before, after, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
