"""``adaptive-sched executors``: which of the config's executors run here."""

from __future__ import annotations

import argparse
import sys

from .output import emit, render_table

HELP = "list the config's executors and whether they run here"
CONFIG = True
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Nothing beyond ``--config`` and ``--output``."""


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..executors import create_executor

    config = load_config(args.config)
    rows, data = [], []
    for backend, bc in config.backends.items():
        options = dict(bc.options)
        if bc.executor == "sim":
            assert config.simulator is not None
            options["device"] = config.simulator.make_device()
        ex = create_executor(bc.executor, backend=backend, **options)
        ok = ex.is_available()
        device = getattr(ex, "device_name", None) or ""  # which OpenCL device a name substring matched
        buckets = getattr(ex, "bucket_summary", None) or ""  # a static-graph backend's kv and n buckets
        rows.append([backend.value, bc.executor, bc.role, "yes" if ok else "no", device, buckets,
                     ex.unavailable_reason])  # fmt: skip
        data.append({"backend": backend.value, "executor": bc.executor, "role": bc.role, "available": ok,
                     "device": device, "buckets": buckets, "reason": ex.unavailable_reason})  # fmt: skip
        ex.close()
    headers = ["backend", "executor", "role", "available", "device", "buckets", "reason"]
    emit(args, data, lambda: render_table(headers, rows))
    if not any(d["available"] for d in data if d["role"] == "candidate"):
        print("adaptive-sched: error: no candidate backend is usable here", file=sys.stderr)
        return 1
    return 0
