"""``adaptive-sched check``: the executor conformance suite on the config's executors."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .output import emit, render_table

HELP = "run the executor conformance suite on the config's executors"
CONFIG = True
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Nothing beyond ``--config`` and ``--output``."""


def run(args: argparse.Namespace) -> int:
    from ..checks import iter_checks
    from ..config import load_config
    from ..executors import create_executor

    config = load_config(args.config)
    results = []
    usable = []  # candidate backends whose executor is available here
    for backend, bc in config.backends.items():

        def factory(backend: Any = backend, bc: Any = bc) -> Any:
            options = dict(bc.options)
            if bc.executor == "sim":
                assert config.simulator is not None
                options["device"] = config.simulator.make_device()
            return create_executor(bc.executor, backend=backend, **options)

        if bc.role == "candidate":
            probe = factory()
            if probe.is_available():
                usable.append(backend)
            probe.close()
        for r in iter_checks(factory):
            results.append({"backend": backend.value, "executor": bc.executor, "check": r.check,
                            "status": r.status, "message": r.message})  # fmt: skip
    rows = [[r["backend"], r["executor"], r["check"], r["status"], r["message"]] for r in results]
    emit(args, results, lambda: render_table(["backend", "executor", "check", "status", "message"], rows))
    failed = sum(r["status"] == "failed" for r in results)
    passed = sum(r["status"] == "passed" for r in results)
    skipped = sum(r["status"] == "skipped" for r in results)
    print(f"{passed} passed, {failed} failed, {skipped} skipped", file=sys.stderr)
    if not usable:
        print("adaptive-sched: error: no candidate backend is usable here", file=sys.stderr)
    return 1 if failed or not usable else 0
