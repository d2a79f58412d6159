"""``adaptive-sched train``: the per-stage priors from profiles, beside other classifiers."""

from __future__ import annotations

import argparse
import json
import sys

from .output import render_table

HELP = "train the per-stage priors from profiles and compare classifiers"
CONFIG = False
OUTPUT = True

_HEADERS = ("stage", "model", "accuracy", "regret %", "worst x", "wrong", "tested", "fit s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    # learners.models is cheap (river loads only when a model is built): --help stays fast
    from ..learners.models import MODELS, STAGE_MODELS

    models = sorted(MODELS)
    p.add_argument("--db", required=True, help="SQLite file holding profiles")
    p.add_argument("--device", default="rk3588", help="device profile the profiles were measured on")
    p.add_argument("--qkv-model", default=STAGE_MODELS["qkv"], choices=models, help="classifier of the qkv stage")
    p.add_argument("--attn-model", default=STAGE_MODELS["attn"], choices=models, help="classifier of the attn stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", help="also write the prior to this JSON file")


def run(args: argparse.Namespace) -> int:
    """Train from ``--db``, print the comparison, optionally export the prior."""
    from ..offline.training import train_priors
    from ..store.prior_files import write_prior_json

    report = train_priors(
        args.db,
        device=args.device,
        models={"qkv": args.qkv_model, "attn": args.attn_model},
        seed=args.seed,
    )
    if args.export:
        assert report.prior is not None
        write_prior_json(report.prior, args.export)
    if args.output == "json":
        sys.stdout.write(json.dumps(report.as_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n")
        return 0
    rows = [
        [e["stage"], e["model"] + (" *" if e["chosen"] else ""), e["accuracy"], e["regret_pct"],
         e["max_slowdown"], e["mispredicted"], e["tested"], e["fit_s"]]
        for e in report.comparison
    ]  # fmt: skip
    sys.stdout.write(render_table(_HEADERS, rows) + "\n")
    sys.stdout.write(f"prior {report.name!r} ({report.content_hash[:16]}) saved to {args.db}\n")
    return 0
