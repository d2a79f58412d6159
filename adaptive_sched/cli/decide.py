"""``adaptive-sched decide``: one decision, for firmware scripts.

A cold process answers from a snapshot of what the config's scheduler published (see
:mod:`adaptive_sched.store.snapshot`) with the standard library only; only when there is
none, or it is stale (new outcomes in the log, another boot, a changed prior), is a
scheduler built, learning from the log, and the snapshot refreshed.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from typing import Any

from .args import nonnegative_int, positive_int
from .output import emit, socket_request

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
    from .. import __version__
    from ..paths import resolve_config
    from ..store import snapshot
    from ..types import Shape, Stage

    shape = Shape(n=args.n, d=args.d, kv_len=args.kv_len, batch=args.batch, heads=args.heads,
                  precision=args.precision)  # fmt: skip
    stage = Stage(args.stage)
    key = snapshot.config_key(resolve_config(args.config), __version__)
    try:
        data = _from_snapshot(args, stage, shape, key)
        if data is None:
            data = _from_scheduler(args, stage, shape, key)
    except Exception as exc:
        # SQLite's own errors (locked past the busy timeout, read-only, disk full); sqlite3 is
        # loaded if one was raised, and a call without a log never imports it
        sqlite3 = sys.modules.get("sqlite3")
        if sqlite3 is None or not isinstance(exc, sqlite3.Error):
            raise
        from ..errors import StoreError

        raise StoreError(f"{args.db or 'the log of ' + args.config}: cannot read or write the log ({exc})") from exc
    _emit(args, data)
    return 0


def _from_snapshot(args: argparse.Namespace, stage: Any, shape: Any, key: str) -> dict[str, Any] | None:
    """The decision from a current snapshot (logged, with a log), or None to build a scheduler."""
    from pathlib import Path

    from ..store import snapshot

    db = args.db
    if db is None:
        cached = snapshot.read_cached(key)
        if cached is None or not cached.current():
            return None
        if cached.store_path is None:
            return _answer(cached, stage, shape, args.after, None, None)
        db = cached.store_path
    if not Path(db).exists():
        return None  # a new log: the scheduler's path creates it
    conn = snapshot.open_log(db)
    try:
        snap = snapshot.read_logged(conn, key)
        fresh = (
            snap is not None
            and snap.current()
            and snap.watermark == snapshot.outcome_watermark(conn)
            and snapshot.run_exists(conn, snap.run)
        )
        return _answer(snap, stage, shape, args.after, conn, snap.run) if fresh and snap else None
    finally:
        conn.close()


def _answer(snap: Any, stage: Any, shape: Any, after: str | None, conn: Any, run: int | None) -> dict[str, Any] | None:
    from ..store import snapshot

    entry = snap.entries.get(snapshot.entry_key(stage, shape, after, snap.lookahead))
    if entry is None:
        return None
    choice = snapshot.pick(entry, _uniform())
    decision_id = None if conn is None or run is None else snapshot.log_decision(conn, run, stage, shape, after, choice)
    return {
        "id": decision_id,
        "stage": stage.value,
        **snapshot.choice_fields(choice),
        "usable": list(snap.usable),
        "unavailable": dict(snap.unavailable),
    }


def _uniform() -> float:
    """A uniform draw in [0, 1) from the OS (``random`` costs a module import per process)."""
    return int.from_bytes(os.urandom(7), "big") / (1 << 56)


def _from_scheduler(args: argparse.Namespace, stage: Any, shape: Any, key: str) -> dict[str, Any]:
    """Build the scheduler (learning from the log), publish this decision's entry, save the snapshot."""
    from pathlib import Path

    from .. import __version__
    from ..config import load_config
    from ..errors import UnsupportedShape
    from ..scheduler import Scheduler
    from ..store import snapshot

    config = load_config(args.config)
    store_path = config.resolve_path(config.store.path) if config.store.path else None
    db = args.db or store_path
    # An existing file is checked (refused untouched if not ours) before anything is built;
    # a new log is created only once the scheduler exists (no backend usable: no file).
    conn = snapshot.open_log(db) if db and Path(db).exists() else None
    try:
        # Read before learning: an outcome that lands meanwhile makes the snapshot stale, not lost.
        watermark = snapshot.outcome_watermark(conn) if conn is not None else None
        old = snapshot.read_logged(conn, key) if conn is not None else snapshot.read_cached(key)
        with Scheduler(config, warm_start_from=db) as sched:
            why = sched.unsupported(stage, shape)
            if why:
                reasons = "; ".join(f"{b.value}: {r}" for b, r in why.items())
                raise UnsupportedShape(f"unsupported: no usable backend runs {stage.value} at {shape}: {reasons}")
            if db and conn is None:
                conn = snapshot.open_log(db)
                watermark = snapshot.outcome_watermark(conn)
            run = old.run if old is not None and conn is not None and snapshot.run_exists(conn, old.run) else None
            if conn is not None and run is None:
                run = snapshot.new_run(conn, snapshot.run_fields(config, __version__))
            fresh = snapshot.from_scheduler(sched, key, [(stage, shape, args.after)], store_path=store_path,
                                            watermark=watermark, run=run)  # fmt: skip
        if old is not None and old.watermark == watermark and old.current() and old.lookahead == fresh.lookahead:
            # the same learned state: what it published for other shapes still holds
            added = fresh.entries
            fresh = replace(fresh, entries=old.entries)
            for k, e in added.items():
                fresh = fresh.with_entry(k, e)
        if conn is not None:
            snapshot.save_logged(conn, fresh)
        if args.db is None:
            snapshot.write_cached(fresh if conn is None else _facts_only(fresh))
        data = _answer(fresh, stage, shape, args.after, conn, run)
        assert data is not None  # its entry was just added
        return data
    finally:
        if conn is not None:
            conn.close()


def _facts_only(snap: Any) -> Any:
    # The cache only says where the config's log is; its entries live in the log.
    return replace(snap, entries={}, run=None, watermark=None)


def _over_socket(args: argparse.Namespace) -> int:
    message: dict[str, Any] = {"op": "decide", "stage": args.stage, "n": args.n, "d": args.d,
                               "kv_len": args.kv_len, "batch": args.batch, "precision": args.precision}  # fmt: skip
    if args.heads is not None:
        message["heads"] = args.heads
    if args.after is not None:
        message["after"] = args.after
    reply = socket_request(args.socket, message, usage_codes=("bad_request",))
    if isinstance(reply, int):
        return reply
    reply.pop("ok", None)
    _emit(args, reply)
    return 0


def _emit(args: argparse.Namespace, data: dict[str, Any]) -> None:
    emit(args, data, lambda: str(data["backend"]))
