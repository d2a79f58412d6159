"""OpenCL executor vs numpy on the same machine: qkv GEMM and GEMV, attention prefill and decode.

Both sides run in this one process, interleaved in blocks (numpy block, OpenCL block, ...),
so a slow or noisy moment hits both; each block starts after a short pause, so neither side
is timed while the other's worker threads are still spinning. Each figure is a median over
all repetitions. The load average is printed: figures taken while other jobs use the cores
are not comparable with figures from an idle machine.

Columns
-------
device  median kernel time from OpenCL event profiling (``RunResult.device_s``)
wall    median ``RunResult.latency_s``: uploads of the activations, kernels, read-back
numpy   median of the same math in numpy float32 (``x @ w``; matmul-softmax-matmul for attention)
ref     median of the CPU executor (``cpu_numpy``: the reference math with its fp16/int8 rounding)
ratios  device/numpy and wall/numpy (below 1: the OpenCL device is faster)

Weights are marked read-only, so the executor uploads them once (as a serving runtime would).

Run::

    python benchmarks/bench_opencl_gemm.py                 # default cases, 5 x 5 repetitions
    python benchmarks/bench_opencl_gemm.py --blocks 9 --per-block 7 --platform portable
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from adaptive_sched.executors.cpu_numpy import CpuNumpyExecutor
from adaptive_sched.executors.opencl import OpenCLExecutor
from adaptive_sched.stages import causal_mask, make_inputs
from adaptive_sched.types import Shape, Stage

T = TypeVar("T")

#: (label, stage, shape, executor fp16 mode)
CASES = [
    ("qkv prefill fp32 storage", Stage.QKV, Shape(n=128, d=1024), "float"),
    ("qkv prefill fp16 (half w)", Stage.QKV, Shape(n=128, d=1024), "half"),
    ("qkv prefill int8", Stage.QKV, Shape(n=128, d=1024, precision="int8"), "float"),
    ("qkv decode GEMV fp32", Stage.QKV, Shape(n=1, d=1024), "float"),
    ("qkv decode GEMV fp16 (half w)", Stage.QKV, Shape(n=1, d=1024), "half"),
    ("qkv decode GEMV int8", Stage.QKV, Shape(n=1, d=1024, precision="int8"), "float"),
    ("attn prefill n=128", Stage.ATTN, Shape(n=128, d=1024), "float"),
    ("attn prefill n=128 int8", Stage.ATTN, Shape(n=128, d=1024, precision="int8"), "float"),
    ("attn decode kv=2047", Stage.ATTN, Shape(n=1, d=1024, kv_len=2047), "float"),
    ("attn decode kv=2047 int8", Stage.ATTN, Shape(n=1, d=1024, kv_len=2047, precision="int8"), "float"),
]


def numpy_fp32(stage: Stage, shape: Shape, inputs: dict[str, np.ndarray]) -> Callable[[], object]:
    """The stage in plain float32 numpy (BLAS matmul), the baseline the targets refer to."""
    if stage is Stage.QKV:
        x = inputs["x"].reshape(-1, shape.d)
        w, b = inputs["w"], inputs["b"]
        return lambda: x @ w + b
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    mask = causal_mask(shape.n, shape.keys)
    scale = np.float32(1.0 / np.sqrt(shape.head_dim))

    def attn() -> np.ndarray:
        s = np.where(mask, (q @ np.swapaxes(k, -1, -2)) * scale, -np.inf)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)) @ v

    return attn


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def block(fn: Callable[[], T], reps: int, settle: float) -> list[T]:
    """``reps`` timings of ``fn`` after a pause and one untimed call.

    Both OpenBLAS and PoCL keep their worker threads spinning for a while after a call; on
    a 2-core machine the spinning threads of one library slow the other down severalfold.
    The pause lets them go idle before the other side is timed.
    """
    time.sleep(settle)
    fn()
    return [fn() for _ in range(reps)]


def bench_case(
    ex: OpenCLExecutor, cpu: CpuNumpyExecutor, stage: Stage, shape: Shape, blocks: int, per_block: int, settle: float
) -> dict[str, float]:
    inputs = make_inputs(stage, shape, seed=0)
    for a in inputs.values():
        a.setflags(write=False)
    baseline = numpy_fp32(stage, shape, inputs)
    ex.run(stage, shape, inputs)  # build the programs, upload the weights
    dev: list[float] = []
    wall: list[float] = []
    ref_t: list[float] = []
    np_t: list[float] = []
    for _ in range(blocks):
        np_t += block(lambda: timed(baseline), per_block, settle)
        runs = block(lambda: ex.run(stage, shape, inputs), per_block, settle)
        dev += [r.device_s or 0.0 for r in runs]
        wall += [r.latency_s for r in runs]
        ref_t += block(lambda: cpu.run(stage, shape, inputs).latency_s, max(1, per_block // 2), settle)
    return {
        "device": statistics.median(dev),
        "wall": statistics.median(wall),
        "numpy": statistics.median(np_t),
        "ref": statistics.median(ref_t),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platform", help="OpenCL platform name substring")
    parser.add_argument("--device", help="OpenCL device name substring")
    parser.add_argument("--blocks", type=int, default=5, help="interleaved blocks (default 5)")
    parser.add_argument("--per-block", type=int, default=5, help="repetitions per block (default 5)")
    parser.add_argument("--settle", type=float, default=0.3, help="pause before each block, s (default 0.3)")
    parser.add_argument("--only", help="run only cases whose label contains this text")
    args = parser.parse_args(argv)

    executors = {
        mode: OpenCLExecutor(platform=args.platform, device=args.device, fp16=mode) for mode in ("float", "half")
    }
    probe = executors["float"]
    if not probe.is_available():
        print(f"OpenCL not available: {probe.unavailable_reason}", file=sys.stderr)
        return 1
    cpu = CpuNumpyExecutor()
    print(f"device: {probe.device_name}")
    print(
        f"numpy {np.__version__}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
        f"cpus={os.cpu_count()}; {args.blocks} blocks x {args.per_block} reps, medians; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    header = f"{'case':32} {'device ms':>10} {'wall ms':>9} {'numpy ms':>9} {'ref ms':>9} {'dev/np':>7} {'wall/np':>8}"
    print(header)
    print("-" * len(header))
    for label, stage, shape, mode in CASES:
        if args.only and args.only not in label:
            continue
        r = bench_case(executors[mode], cpu, stage, shape, args.blocks, args.per_block, args.settle)
        print(
            f"{label:32} {r['device'] * 1e3:10.3f} {r['wall'] * 1e3:9.3f} {r['numpy'] * 1e3:9.3f} "
            f"{r['ref'] * 1e3:9.3f} {r['device'] / r['numpy']:7.2f} {r['wall'] / r['numpy']:8.2f}",
            flush=True,
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    for ex in executors.values():
        ex.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
