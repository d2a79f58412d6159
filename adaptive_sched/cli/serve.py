"""``adaptive-sched serve``: one scheduler for many clients, on a Unix domain socket."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from .args import nonnegative_int

HELP = "serve decisions and observations over a Unix socket (newline-delimited JSON, see docs/serve.md)"
CONFIG = True
OUTPUT = False

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", required=True, help="path of the socket to create (owner-only)")
    p.add_argument("--db", help="log decisions and outcomes to this SQLite file (overrides store.path)")
    p.add_argument("--metrics-port", type=nonnegative_int, metavar="PORT",
                   help="also serve Prometheus metrics on http://127.0.0.1:PORT/metrics")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..scheduler import Scheduler
    from ..service import DecisionService, ServiceError

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    # Installed before the scheduler exists: a signal during start-up is a clean stop too.
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        config = load_config(args.config)
        with Scheduler(config, db=args.db) as sched:
            # The metrics first: every outcome the socket takes is counted.
            metrics = None
            if args.metrics_port is not None:
                metrics = _serve_metrics(sched, args.metrics_port)
                if metrics is None:
                    return 1
            service = DecisionService(sched, args.socket)
            try:
                service.start()
            except ServiceError as exc:
                if metrics is not None:
                    metrics.shutdown()
                print(f"adaptive-sched: error: {exc}", file=sys.stderr)
                return 1
            usable = ", ".join(b.value for b in sched.usable)
            print(f"adaptive-sched: serving on {args.socket} (backends: {usable})", file=sys.stderr)
            try:
                while not stop.is_set():
                    stop.wait(0.5)
            finally:
                if metrics is not None:
                    metrics.shutdown()
                # Answer what clients already sent, then the scheduler's close flushes the log.
                service.stop()
                db = args.db or (config.resolve_path(config.store.path) if config.store.path else None)
                if db:
                    _save_snapshot(args, sched, service, db)
        print("adaptive-sched: stopped; log flushed", file=sys.stderr)
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _serve_metrics(sched: Any, port: int) -> Any:
    """Start the Prometheus endpoint; None (after saying why) if it cannot be started."""
    try:
        from ..metrics import start_metrics_server

        server = start_metrics_server(sched, port)
    except ImportError:
        print("adaptive-sched: error: --metrics-port needs prometheus-client (pip install 'adaptive-sched[metrics]')",
              file=sys.stderr)  # fmt: skip
        return None
    except OSError as exc:
        print(f"adaptive-sched: error: --metrics-port {port}: {exc}", file=sys.stderr)
        return None
    host, bound = server.server_address[:2]
    print(f"adaptive-sched: metrics at http://{host}:{bound}/metrics", file=sys.stderr)
    return server


def _save_snapshot(args: argparse.Namespace, sched: Any, service: Any, db: str) -> None:
    """Leave in the log what the scheduler publishes now, so ``decide --db`` starts from it.

    Never fails the shutdown: without a snapshot, the next ``decide`` learns the log again.
    """
    import sqlite3

    from .. import __version__
    from ..errors import AdaptiveSchedError
    from ..paths import resolve_config
    from ..store import snapshot

    try:
        sched.flush()  # every outcome learned and committed: the watermark then covers them
        key = snapshot.config_key(resolve_config(args.config), __version__)
        fields = snapshot.run_fields(sched.config, __version__)
        saved = snapshot.save_for_log(sched, key, db, service.served(), fields)
        log.info("saved what the scheduler publishes for %d shape buckets in %s", len(saved.entries), db)
    except (AdaptiveSchedError, sqlite3.Error, OSError) as exc:
        log.warning("%s: no decision snapshot saved (%s); the next decide learns the log again", db, exc)
