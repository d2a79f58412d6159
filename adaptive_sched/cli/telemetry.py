"""``adaptive-sched telemetry``: what the scheduler sees of the device now (temperatures, clocks, loads)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from .output import emit, render_table

HELP = "print the device telemetry the scheduler reads: temperatures, clocks, loads"
CONFIG = True
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", metavar="PATH",
                   help="read this sysfs root instead of the config's telemetry.root (a board: /sys)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from ..build import build_telemetry
    from ..config import load_config

    config = load_config(args.config)
    telemetry = dataclasses.replace(config.telemetry, enabled=True)
    if args.root is not None:
        telemetry = dataclasses.replace(telemetry, root=args.root)
    config = dataclasses.replace(config, telemetry=telemetry)
    # With --root, a board's files even when the config simulates its device.
    device = None
    if (
        args.root is None
        and config.simulator is not None
        and any(bc.executor == "sim" for bc in config.backends.values())
    ):
        device = config.simulator.make_device()
    elif not Path(telemetry.root).is_dir():
        # The scheduler reads nothing there, silently (a board without those files); asked to
        # show what it reads, a root that is not there is most likely a mistyped path.
        print(f"adaptive-sched: error: telemetry root {telemetry.root}: no such directory", file=sys.stderr)
        return 1
    sampler = build_telemetry(config, device)
    snapshot = sampler.latest if sampler is not None else None
    if sampler is not None:
        sampler.stop()
    if not snapshot:
        where = "the simulated device" if device is not None else f"under {telemetry.root}"
        print(f"adaptive-sched: no telemetry readable {where}", file=sys.stderr)
        if args.output == "json":
            emit(args, {"source": where, "backends": {}, "zones": {}}, lambda: "")
        return 0
    data: dict[str, Any] = {
        "source": "simulated device" if device is not None else telemetry.root,
        "backends": {
            b.value: {**dataclasses.asdict(r), "clock_ratio": r.clock_ratio()} for b, r in snapshot.backends.items()
        },
        "ddr": {"freq_hz": snapshot.ddr_freq_hz, "max_freq_hz": snapshot.ddr_max_freq_hz},
        "zones": dict(snapshot.zones),
    }

    def table() -> str:
        rows = [[b, _num(r["temp_c"], "{:.1f}"), _num(r["freq_hz"], "{:.0f}", 1e-6), _num(r["cap_hz"], "{:.0f}", 1e-6),
                 _num(r["max_freq_hz"], "{:.0f}", 1e-6), _num(r["clock_ratio"], "{:.2f}"), _num(r["load"], "{:.0%}")]
                for b, r in data["backends"].items()]  # fmt: skip
        if snapshot.ddr_freq_hz is not None or snapshot.ddr_max_freq_hz is not None:
            ratio = (snapshot.ddr_freq_hz / snapshot.ddr_max_freq_hz
                     if snapshot.ddr_freq_hz and snapshot.ddr_max_freq_hz else None)  # fmt: skip
            rows.append(["ddr", "", _num(snapshot.ddr_freq_hz, "{:.0f}", 1e-6), "",
                         _num(snapshot.ddr_max_freq_hz, "{:.0f}", 1e-6), _num(ratio, "{:.2f}"), ""])  # fmt: skip
        out = render_table(["backend", "temp C", "clock MHz", "cap MHz", "max MHz", "ratio", "load"], rows)
        if snapshot.zones:
            zones = [[kind, f"{c:.1f}"] for kind, c in sorted(snapshot.zones.items())]
            out += "\n\n" + render_table(["thermal zone", "temp C"], zones)
        return out

    emit(args, data, table)
    return 0


def _num(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return "" if value is None else fmt.format(value * scale)
