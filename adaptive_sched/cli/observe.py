"""``adaptive-sched observe``: report what a decided stage cost, to the log or to a server."""

from __future__ import annotations

import argparse
import sys

from .args import positive_float, positive_int
from .output import emit, socket_request

HELP = "report the latency (or failure) of a decision made by decide or serve"
CONFIG = False
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="the SQLite log the decision was made with (decide --db)")
    where.add_argument("--socket", help="the socket of the server that made the decision (serve)")
    p.add_argument("--id", type=positive_int, required=True, help="the decision's id")
    p.add_argument("--latency-ms", type=positive_float, help="what the stage took, in milliseconds")
    p.add_argument("--failed", action="store_true", help="the stage failed (the latency is then optional)")
    p.add_argument("--error", help="what went wrong (with --failed)")


def run(args: argparse.Namespace) -> int:
    if args.latency_ms is None and not args.failed:
        print("adaptive-sched: error: argument --latency-ms: required unless --failed", file=sys.stderr)
        return 2
    if args.error is not None and not args.failed:
        print("adaptive-sched: error: argument --error: only with --failed", file=sys.stderr)
        return 2
    if args.socket:
        return _over_socket(args)
    from ..store.outcomes import AlreadyObserved, UnknownDecision, record_outcome

    latency_s = None if args.latency_ms is None else args.latency_ms / 1e3
    try:
        record_outcome(args.db, args.id, latency_s, ok=not args.failed, error=args.error)
    except (UnknownDecision, AlreadyObserved) as exc:
        print(f"adaptive-sched: error: argument --id: {exc}", file=sys.stderr)
        return 2
    _emit(args)
    return 0


def _over_socket(args: argparse.Namespace) -> int:
    message: dict[str, object] = {"op": "observe", "id": args.id, "failed": args.failed}
    if args.latency_ms is not None:
        message["latency_ms"] = args.latency_ms
    if args.error is not None:
        message["error"] = args.error
    reply = socket_request(args.socket, message, usage_codes=("unknown_id", "bad_request"))
    if isinstance(reply, int):
        return reply
    _emit(args)
    return 0


def _emit(args: argparse.Namespace) -> None:
    data = {"id": args.id, "observed": True, "failed": args.failed, "latency_ms": args.latency_ms}
    emit(args, data, lambda: f"observed decision {args.id}")
