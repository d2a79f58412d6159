"""``adaptive-sched profile``: sweep a grid of shapes over the config's executors."""

from __future__ import annotations

import argparse

from .output import Progress

HELP = "sweep a grid of shapes over the config's executors into the profiles table"
CONFIG = True
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", "-g", default="paper", help="grid YAML path or shipped name (default: paper)")
    p.add_argument("--db", required=True, help="SQLite file for the profiles")
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    from ..offline.profiling import profile_command

    return int(profile_command(args, progress=Progress("profile")) or 0)
