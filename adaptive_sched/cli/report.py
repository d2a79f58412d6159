"""``adaptive-sched report``: summarise a decision log."""

from __future__ import annotations

import argparse

from .output import emit, render_table

HELP = "summarise a decision log"
CONFIG = False
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="SQLite decision log")


def run(args: argparse.Namespace) -> int:
    from ..replay import report_command

    return int(report_command(args, render_table=render_table, emit=emit) or 0)
