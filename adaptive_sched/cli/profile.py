"""``adaptive-sched profile``: sweep a grid of shapes over the config's executors."""

from __future__ import annotations

import argparse
import sys

from .args import nonnegative_int, positive_int
from .output import add_quiet, emit, progress_for

HELP = "sweep a grid of shapes over the config's executors into the profiles table"
CONFIG = True
OUTPUT = True

#: the summary keys of the table form, in order
_TABLE_KEYS = ("device", "grid", "db", "total", "measured", "skipped", "failed", "elapsed_s")
#: failed points named on stderr (all are in the summary and the table)
_LISTED_FAILURES = 5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", "-g", default="paper", help="grid YAML path or shipped name (default: paper)")
    p.add_argument("--db", required=True, help="SQLite file for the profiles")
    p.add_argument("--repetitions", type=positive_int, default=5, help="timed runs per point (default: 5)")
    p.add_argument("--warmup", type=nonnegative_int, default=1, help="untimed runs per point (default: 1)")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    """Sweep, print the summary; exit 1 only when every point measured in this sweep failed."""
    from ..offline.profiling import profile_config

    bar = progress_for(args, "profile")
    summary = profile_config(
        args.config,
        args.grid,
        args.db,
        warmup=args.warmup,
        repetitions=args.repetitions,
        progress=lambda event: bar(event.done, event.total),
    )
    data = summary.as_dict()
    emit(args, data, lambda: "\n".join(f"{key:<9} {data[key]}" for key in _TABLE_KEYS))
    if args.output != "json":
        for f in summary.failures[:_LISTED_FAILURES]:
            sys.stderr.write(f"failed: {f['stage']} on {f['backend']} n={f['n']} d={f['d']}: {f['error']}\n")
    return 1 if summary.all_failed else 0
