#!/usr/bin/env python3
"""Plot how each simulated stage grows, per backend, against its roofline and its envelope.

Writes one PNG per stage and backend into docs/ (``sim-attn-gpu.png``, ...):

* ``attn``: decode attention (n=1) against kv_len, 16 to 8192 cached tokens;
* ``qkv``:  the projection against n (1 to 512 rows; it does not depend on kv_len),

each for d = 1024, 2048, 4096, FP16 and INT8 side by side, with the stage's roofline (bytes
over the backend's bandwidth, FLOPs over its peak) dashed and the profile's documented
envelope (``bound``) dotted. Noise and drift are off: these are the model's medians.
It also prints the attention figures as a table.

Needs matplotlib (``pip install adaptive-sched[plots]``).

Usage: python scripts/plot_sim_scaling.py [--profile rk3588] [--out docs]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from adaptive_sched.sim import DeviceProfile, latency_bound, load_profile, roofline_s, stage_cost, why_unsupported
from adaptive_sched.types import Backend, Precision, Shape, Stage

WIDTHS = (1024, 2048, 4096)
COLOURS = {1024: "tab:blue", 2048: "tab:orange", 4096: "tab:green"}
TABLE_KV = (64, 128, 256, 512, 1024, 2048, 4096, 8192)


def kv_points() -> list[int]:
    """Cache lengths from 16 to 8192: every power of two and the step just below it (the NPU's buckets)."""
    points = {16, 8192}
    for e in range(4, 14):
        points.update({2**e - 2, 2**e - 1, 2**e, int(1.5 * 2**e)})
    return sorted(p for p in points if 16 <= p <= 8192)


def n_points() -> list[int]:
    return [1, 2, 4, 8, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512]


def series(profile: DeviceProfile, stage: Stage, backend: Backend, d: int, precision: Precision, xs: list[int]):
    """(x, latency, roofline, bound) lists for the supported points."""
    out: tuple[list[float], list[float], list[float], list[float]] = ([], [], [], [])
    for x in xs:
        if stage is Stage.ATTN:
            shape = Shape(n=1, d=d, kv_len=x, precision=precision)
        else:
            shape = Shape(n=x, d=d, precision=precision)
        if why_unsupported(profile, stage, shape, backend) is not None:
            continue
        out[0].append(x)
        out[1].append(stage_cost(profile, stage, shape, backend).latency() * 1e3)
        out[2].append(roofline_s(profile, stage, shape, backend) * 1e3)
        out[3].append(latency_bound(profile, stage, shape, backend) * 1e3)
    return out


def plot(profile: DeviceProfile, stage: Stage, backend: Backend, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    xs = kv_points() if stage is Stage.ATTN else n_points()
    for ax, precision in zip(axes, Precision, strict=True):
        for d in WIDTHS:
            x, latency, roof, bound = series(profile, stage, backend, d, precision, xs)
            c = COLOURS[d]
            ax.plot(x, latency, color=c, lw=2, label=f"d={d}")
            ax.plot(x, roof, color=c, lw=1, ls="--")
            ax.plot(x, bound, color=c, lw=1, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{stage.value} on {backend.value}, {precision.value}")
        ax.set_xlabel("kv_len (cached tokens), n = 1" if stage is Stage.ATTN else "n (rows), kv_len = 0")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency (ms)")
    handles, labels = axes[0].get_legend_handles_labels()
    handles += [plt.Line2D([], [], color="grey", ls="--"), plt.Line2D([], [], color="grey", ls=":")]
    labels += ["roofline (bytes / bandwidth, FLOPs / peak)", "documented envelope (bound)"]
    axes[1].legend(handles, labels, loc="upper left", fontsize=8)
    fig.suptitle(f"Simulated {profile.name}: model latency (solid), noise and drift off", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def table(profile: DeviceProfile) -> str:
    """Decode attention latency (ms) against kv_len, per backend, precision and width."""
    head = f"{'backend':<7} {'prec':<4} {'d':>5} " + " ".join(f"{kv:>7}" for kv in TABLE_KV)
    lines = [head]
    for backend in profile.backends:
        for precision in Precision:
            for d in WIDTHS:
                cells = []
                for kv in TABLE_KV:
                    shape = Shape(n=1, d=d, kv_len=kv, precision=precision)
                    if why_unsupported(profile, Stage.ATTN, shape, backend) is not None:
                        cells.append(f"{'-':>7}")
                    else:
                        cells.append(f"{stage_cost(profile, Stage.ATTN, shape, backend).latency() * 1e3:7.2f}")
                lines.append(f"{backend.value:<7} {precision.value:<4} {d:>5} " + " ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="rk3588", help="device profile name or path")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    args = parser.parse_args(argv)
    profile = load_profile(args.profile)
    args.out.mkdir(parents=True, exist_ok=True)
    for stage in Stage:
        for backend in profile.backends:
            path = args.out / f"sim-{stage.value}-{backend.value}.png"
            plot(profile, stage, backend, path)
            print(f"wrote {path}", file=sys.stderr)
    print("decode attention latency (ms) against kv_len ('-': unsupported)")
    print(table(profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
