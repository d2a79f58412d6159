"""``adaptive-sched decide``: one decision, for firmware scripts."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .args import nonnegative_int, positive_int
from .output import emit

HELP = "print the backend for one stage and shape"
CONFIG = True
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stage", required=True, choices=("qkv", "attn"))
    p.add_argument("--n", type=positive_int, required=True, help="tokens in this step (1 in decode)")
    p.add_argument("--d", type=positive_int, required=True, help="hidden dimension")
    p.add_argument("--kv-len", type=nonnegative_int, default=0)
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--heads", type=positive_int)
    p.add_argument("--precision", choices=("fp16", "int8"), default="fp16")
    p.add_argument("--after", choices=("cpu", "gpu", "npu"), help="backend the previous stage ran on")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--db", help="resume from (and log to) this SQLite file")
    where.add_argument("--socket", help="ask the server at this socket (adaptive-sched serve) instead")


def run(args: argparse.Namespace) -> int:
    if args.heads is not None and args.d % args.heads:
        print(f"adaptive-sched: error: argument --heads: must divide --d ({args.d}), got {args.heads}",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.socket:
        return _over_socket(args)
    from ..config import load_config
    from ..errors import UnsupportedShape
    from ..scheduler import Scheduler
    from ..service import decision_fields
    from ..types import Shape

    config = load_config(args.config)
    shape = Shape(n=args.n, d=args.d, kv_len=args.kv_len, batch=args.batch, heads=args.heads,
                  precision=args.precision)  # fmt: skip
    with Scheduler(config, db=args.db) as sched:
        why = sched.unsupported(args.stage, shape)
        if why:
            reasons = "; ".join(f"{b.value}: {r}" for b, r in why.items())
            raise UnsupportedShape(f"unsupported: no usable backend runs {args.stage} at {shape}: {reasons}")
        dq = sched.decide(args.stage, shape, after=args.after)
        data = decision_fields(dq)
        data["unavailable"] = {b.value: reason for b, reason in sched.unavailable.items()}
    _emit(args, data)
    return 0


def _over_socket(args: argparse.Namespace) -> int:
    from ..service import request

    message: dict[str, Any] = {"op": "decide", "stage": args.stage, "n": args.n, "d": args.d,
                               "kv_len": args.kv_len, "batch": args.batch, "precision": args.precision}  # fmt: skip
    if args.heads is not None:
        message["heads"] = args.heads
    if args.after is not None:
        message["after"] = args.after
    reply = request(args.socket, message)
    if not reply.get("ok"):
        error = reply.get("error") or {}
        print(f"adaptive-sched: error: {error.get('message', reply)}", file=sys.stderr)
        return 2 if error.get("code") == "bad_request" else 1
    reply.pop("ok", None)
    _emit(args, reply)
    return 0


def _emit(args: argparse.Namespace, data: dict[str, Any]) -> None:
    emit(args, data, lambda: str(data["backend"]))
