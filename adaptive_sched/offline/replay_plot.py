"""A picture of a replay: each candidate's estimate and interval beside the logged policy's observed mean.

matplotlib (the ``plots`` extra) is imported only when a plot is drawn.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..errors import AdaptiveSchedError


def check_target(path: str | Path) -> None:
    """Refuse, before any work, a plot path that exists or cannot be written, or matplotlib missing."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise AdaptiveSchedError(f"--plot {p}: give a .png file name")
    if p.exists():
        raise AdaptiveSchedError(f"--plot {p}: the file exists; it is not overwritten (give a new name)")
    if not p.parent.is_dir():
        raise AdaptiveSchedError(f"--plot {p}: no directory {p.parent}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise AdaptiveSchedError("--plot needs matplotlib: pip install 'adaptive-sched[plots]'") from None


def plot_replay(result: Any, path: str | Path) -> None:
    """Draw the headline (DR per layer) of every candidate with its row and block intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = Path(path)
    ref = result.logged.get("pair") or next(iter(result.logged.values()))
    names = [c.name for c in result.candidates]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * max(1, len(names))))
    ax.axvspan(ref.row.low * 1e3, ref.row.high * 1e3, color="0.85", label="logged, observed (95%)")
    ax.axvline(ref.value * 1e3, color="0.4", lw=1)
    for i, c in enumerate(result.candidates):
        e = c.headline
        if not math.isfinite(e.value):
            continue
        color = (
            "tab:gray" if not c.supported else {"better": "tab:green", "worse": "tab:red"}.get(c.verdict, "tab:blue")
        )
        block = e.row.union(e.block)
        ax.plot([block.low * 1e3, block.high * 1e3], [i, i], color=color, lw=1, alpha=0.5)
        ax.plot([e.row.low * 1e3, e.row.high * 1e3], [i, i], color=color, lw=4)
        ax.plot([e.value * 1e3], [i], "o", color=color)
        ax.annotate(c.verdict, (block.high * 1e3, i), xytext=(4, -3), textcoords="offset points", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.7, len(names) - 0.3)
    unit = "layer" if result.pairs else "decision"
    ax.set_xlabel(f"DR estimate, ms per {unit} (thick: row bootstrap 95%, thin: block bootstrap)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.link(tmp, p)  # fails if p appeared meanwhile: never overwrite
    except FileExistsError:
        raise AdaptiveSchedError(f"--plot {p}: the file exists; it is not overwritten") from None
    finally:
        tmp.unlink(missing_ok=True)
