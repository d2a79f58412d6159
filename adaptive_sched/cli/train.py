"""``adaptive-sched train``: the per-stage priors from profiles, beside other classifiers."""

from __future__ import annotations

import argparse

from .output import render_table

HELP = "train the per-stage priors from profiles and compare classifiers"
CONFIG = False
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="SQLite file holding profiles")
    p.add_argument("--device", default="rk3588", help="device profile the profiles were measured on")
    p.add_argument("--qkv-model", default="rf")
    p.add_argument("--attn-model", default="knn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", help="also write the prior to this JSON file")


def run(args: argparse.Namespace) -> int:
    from ..offline.training import train_command

    return int(train_command(args, render_table=render_table) or 0)
