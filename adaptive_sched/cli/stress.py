"""``adaptive-sched stress``: load this host's CPU cores or OpenCL device, to watch the scheduler adapt."""

from __future__ import annotations

import argparse
import sys
import time

from .args import positive_float, positive_int

HELP = "load this host's CPU cores or OpenCL device (to watch the scheduler adapt)"
CONFIG = False
OUTPUT = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", choices=("cpu", "opencl"), default="opencl")
    p.add_argument("--platform", default="Portable Computing Language", help="OpenCL platform name substring")
    p.add_argument("--seconds", type=positive_float, default=30.0, help="how long to load it (> 0)")
    p.add_argument("--workers", type=positive_int, default=2, help="processes that load it (>= 1)")


def run(args: argparse.Namespace) -> int:
    """Keep ``--workers`` processes busy for ``--seconds``: on the CPU cores, or on an OpenCL device."""
    import multiprocessing as mp

    target = _burn_cpu if args.target == "cpu" else _burn_opencl
    procs = [mp.Process(target=target, args=(args.seconds, args.platform), daemon=True) for _ in range(args.workers)]
    for p in procs:
        p.start()
    where = "CPU cores" if args.target == "cpu" else "the OpenCL device"
    print(f"loading {where} from {args.workers} processes for {args.seconds:.0f} s (Ctrl-C stops)", file=sys.stderr)
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
    return 0 if all(p.exitcode == 0 for p in procs) else 1


def _burn_cpu(seconds: float, platform: str) -> None:
    import numpy as np

    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        a = np.tanh(a @ a)


def _burn_opencl(seconds: float, platform: str) -> None:
    # Another client of the "GPU": large projections back to back, as a video or a second
    # model would submit them.
    from ..executors import create_executor
    from ..stages import make_inputs
    from ..types import Shape

    ex = create_executor("gpu_opencl", backend="gpu", platform=platform)
    if not ex.is_available():
        raise SystemExit(f"adaptive-sched stress: no OpenCL device: {ex.unavailable_reason}")
    shape = Shape(n=256, d=1024)
    inputs = make_inputs("qkv", shape)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ex.run("qkv", shape, inputs)
