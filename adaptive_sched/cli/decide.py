"""``adaptive-sched decide``: one decision, for firmware scripts."""

from __future__ import annotations

import argparse

from .output import emit

HELP = "print the backend for one stage and shape"
CONFIG = True
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", required=True, choices=("qkv", "attn"))
    p.add_argument("--n", type=int, required=True, help="tokens in this step (1 in decode)")
    p.add_argument("--d", type=int, required=True, help="hidden dimension")
    p.add_argument("--kv-len", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int)
    p.add_argument("--precision", choices=("fp16", "int8"), default="fp16")
    p.add_argument("--after", choices=("cpu", "gpu", "npu"), help="backend the previous stage ran on")
    p.add_argument("--db", help="resume from (and log to) this SQLite file")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..scheduler import Scheduler
    from ..types import Shape

    config = load_config(args.config)
    shape = Shape(n=args.n, d=args.d, kv_len=args.kv_len, batch=args.batch, heads=args.heads,
                  precision=args.precision)  # fmt: skip
    with Scheduler(config, db=args.db) as sched:
        dq = sched.decide(args.stage, shape, after=args.after)
        data = {
            "stage": dq.stage.value,
            "backend": dq.backend.value,
            "propensity": dq.propensity,
            "explored": dq.explored,
            "predicted_ms": {b.value: v * 1e3 for b, v in dq.predicted.items()},
            "id": dq.id,
        }
    emit(args, data, lambda: dq.backend.value)
    return 0
