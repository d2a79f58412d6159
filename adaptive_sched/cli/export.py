"""``adaptive-sched export``: logged decisions as Parquet or Vowpal Wabbit ``cb_adf`` text."""

from __future__ import annotations

import argparse

from .output import emit

HELP = "export logged (context, action, cost, probability) rows as Parquet or VW cb_adf text"
CONFIG = False
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", action="append", required=True, metavar="PATH",
                   help="decision log, or a directory of them (*.db); repeat for several")  # fmt: skip
    p.add_argument("--format", required=True, choices=("parquet", "vw"),
                   help="parquet (needs pyarrow) or vw (cb_adf text, costs in ms)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (never overwritten)")
    p.add_argument("--run", type=int, help="only this run id")


def run(args: argparse.Namespace) -> int:
    from ..offline.export import export

    summary = export(args.db, args.out, args.format, run=args.run)
    data = {
        "out": summary.path,
        "format": summary.format,
        "rows": summary.rows,
        "sampled_rows": summary.sampled,
        "logs": list(summary.logs),
    }
    emit(args, data, lambda: f"wrote {summary.rows} decisions from {len(summary.logs)} log(s) to {summary.path}")
    return 0
