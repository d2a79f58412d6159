"""``adaptive-sched replay``: evaluate policies offline on logged decisions."""

from __future__ import annotations

import argparse

from .output import emit, render_table

HELP = "evaluate policies offline on logged decisions (IPS, SNIPS, DM, DR)"
CONFIG = True
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="SQLite decision log")
    p.add_argument("--policies", default="logged,static,gpu,npu",
                   help="comma-separated: logged, static, adaptive, gpu, npu, cpu")  # fmt: skip
    p.add_argument("--run", type=int, help="only this run id")


def run(args: argparse.Namespace) -> int:
    from ..replay import replay_command

    return int(replay_command(args, render_table=render_table, emit=emit) or 0)
