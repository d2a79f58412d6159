"""The report's figures (PNG, matplotlib) and the ``report.md`` that embeds them.

matplotlib is an optional dependency (the ``plots`` extra): only :func:`write_report`
imports it, with the non-interactive Agg backend, so nothing else in the package needs it.

Every figure is :data:`FIGURE_PX` pixels, with a title, axis labels with units and a
legend. Lines drawn from the policy's logged predictions rather than from measurements
say so in their label.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AdaptiveSchedError
from .report import Report, Series

#: (width, height) of every figure in pixels
FIGURE_PX = (1200, 560)
_DPI = 100
#: a colour per backend, the same in every figure
COLOURS = {"gpu": "#1f77b4", "npu": "#d62728", "cpu": "#7f7f7f"}
#: the figures, in the order report.md shows them: file name -> caption
FIGURES = {
    "latency.png": "Latency per stage over time, coloured by the backend chosen; exploration probes marked",
    "share.png": "Share of each backend per stage and shape bucket over time",
    "events.png": "Exploration probability (lifted after a drift alarm) and failures/quarantines over time",
    "cumulative.png": "Cumulative latency against the static prior and each single backend",
    "exploration.png": "Exploration cost over time against explore_budget",
    "telemetry.png": "Device telemetry (temperature, clock over its maximum, load) beside the backend chosen",
}
#: time bins of the share and event figures
BINS = 60


def _colour(backend: str) -> str:
    return COLOURS.get(backend, "#2ca02c")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise AdaptiveSchedError(
            "report --out draws with matplotlib, which is not installed: pip install 'adaptive-sched[plots]'"
        ) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _figure(plt: Any, rows: int = 1, cols: int = 1, **kw: Any) -> tuple[Any, Any]:
    w, h = FIGURE_PX
    fig, axes = plt.subplots(rows, cols, figsize=(w / _DPI, h / _DPI), dpi=_DPI, squeeze=False, **kw)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    # No bbox "tight": every figure keeps exactly FIGURE_PX.
    fig.savefig(path, dpi=_DPI)


def _stages(s: Series) -> list[str]:
    order = {"qkv": 0, "attn": 1}
    return sorted(set(s.stage), key=lambda x: (order.get(x, 9), x))


def _bins(t: np.ndarray, n: int = BINS) -> np.ndarray:
    hi = float(t.max()) if len(t) else 1.0
    return np.linspace(0.0, hi if hi > 0 else 1.0, n + 1)


def _legend(ax: Any, **kw: Any) -> Any:
    """A legend, if anything on ``ax`` has a label (a log with no outcomes has nothing to list)."""
    handles, labels = ax.get_legend_handles_labels()
    return ax.legend(handles, labels, **kw) if handles else None


def _plain_log_ticks(ax: Any) -> None:
    """Log-scale ticks as plain numbers (0.4, 1, 10), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    def minor(v: float, _pos: int) -> str:
        # label 2x, 3x and 5x of each decade only: all nine crowd the axis
        return f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def plot_latency(s: Series, path: Path, plt: Any) -> None:
    stages = _stages(s)
    fig, axes = _figure(plt, len(stages), 1, sharex=True)
    for ax, stage in zip(axes[:, 0], stages, strict=True):
        here = (s.stage == stage) & s.ok
        for backend in sorted(set(s.backend[here])):
            m = here & (s.backend == backend)
            ax.scatter(s.t[m], s.latency_s[m] * 1e3, s=3, color=_colour(backend), alpha=0.5, label=backend,
                       rasterized=True, linewidths=0)  # fmt: skip
        probes = here & s.explored
        if probes.any():
            ax.scatter(s.t[probes], s.latency_s[probes] * 1e3, s=28, facecolors="none", edgecolors="black",
                       linewidths=0.8, label=f"exploration probe ({int(probes.sum())})")  # fmt: skip
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_ylabel(f"{stage} latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        legend = _legend(ax, loc="upper left", fontsize=8)
        for handle in legend.legend_handles if legend is not None else ():
            handle.set_alpha(1.0)
            if hasattr(handle, "set_sizes"):  # the data's dots are too small to read in a legend
                handle.set_sizes([30])
    axes[-1, 0].set_xlabel(s.time_label)
    fig.suptitle("Stage latency over time, by backend chosen")
    fig.tight_layout()
    _save(fig, path)


def plot_share(s: Series, path: Path, plt: Any) -> None:
    stages = _stages(s)
    counts = Counter(s.bucket)
    # The buckets with most decisions (a service sees many; three per stage stay readable); a
    # bucket of a few decisions (a single prefill) would be a sliver on this time axis.
    buckets = [b for b, n in counts.most_common(3) if n >= 0.02 * len(s)] or [counts.most_common(1)[0][0]]
    left_out = len(counts) - len(buckets)
    backends = sorted(set(s.backend))
    fig, axes = _figure(plt, len(stages), len(buckets), sharex=True, sharey=True)
    edges = _bins(s.t)
    mid = (edges[:-1] + edges[1:]) / 2
    for i, stage in enumerate(stages):
        for j, bucket in enumerate(buckets):
            ax = axes[i, j]
            m = (s.stage == stage) & (s.bucket == bucket)
            per = np.array([np.histogram(s.t[m & (s.backend == b)], edges)[0] for b in backends], dtype=float)
            total = per.sum(axis=0)
            keep = total > 0
            if keep.any():
                share = per[:, keep] / total[keep] * 100
                ax.stackplot(mid[keep], share, colors=[_colour(b) for b in backends], labels=backends, alpha=0.85)
            else:
                ax.text(0.5, 0.5, "no decisions", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{stage}, {bucket}", fontsize=9)
            ax.set_ylim(0, 100)
            if j == 0:
                ax.set_ylabel("share of decisions (%)")
            if i == len(stages) - 1:
                ax.set_xlabel(s.time_label, fontsize=8)
    _legend(axes[0, 0], loc="lower left", fontsize=8)
    more = f" ({left_out} smaller bucket(s) not shown)" if left_out else ""
    fig.suptitle(f"Share of each backend per stage and shape bucket{more}")
    fig.tight_layout()
    _save(fig, path)


def plot_events(s: Series, path: Path, plt: Any) -> None:
    fig, axes = _figure(plt, 2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    top, bottom = axes[0, 0], axes[1, 0]
    edges = _bins(s.t)
    mid = (edges[:-1] + edges[1:]) / 2
    idx = np.clip(np.digitize(s.t, edges) - 1, 0, len(mid) - 1)
    for stage, style in zip(_stages(s), ("-", "--", ":"), strict=False):
        m = (s.stage == stage) & np.isfinite(s.explore_prob)
        if not m.any():
            continue
        peak = np.full(len(mid), np.nan)
        np.fmax.at(peak, idx[m], s.explore_prob[m] * 100)
        top.plot(mid, peak, style, color="black", label=f"{stage}: highest exploration probability")
    top.set_ylabel("exploration probability (%)")
    top.set_title("drift alarms are not rows of the log; after one, the policy lifts the exploration probability",
                  fontsize=9)  # fmt: skip
    top.grid(True, alpha=0.3)
    _legend(top, loc="upper right", fontsize=8)
    backends = sorted(set(s.backend))
    for k, backend in enumerate(backends):
        m = s.failed & (s.backend == backend)
        timeout = m & np.array([e == "timeout" for e in s.error], dtype=bool)
        bottom.scatter(s.t[m & ~timeout], np.full(int((m & ~timeout).sum()), k), marker="x", color=_colour(backend),
                       label=f"{backend} failed ({int((m & ~timeout).sum())})")  # fmt: skip
        bottom.scatter(s.t[timeout], np.full(int(timeout.sum()), k), marker="v", color=_colour(backend),
                       label=f"{backend} timed out ({int(timeout.sum())})")  # fmt: skip
    bottom.set_yticks(range(len(backends)), backends)
    bottom.set_ylim(-0.5, len(backends) - 0.5)
    bottom.set_ylabel("quarantined backend")
    bottom.set_xlabel(s.time_label)
    bottom.grid(True, axis="x", alpha=0.3)
    _legend(bottom, loc="upper right", fontsize=7, ncol=max(1, len(backends)))
    fig.suptitle("Drift alarms (their effect on exploration) and failures that quarantine a backend")
    fig.tight_layout()
    _save(fig, path)


def plot_telemetry(s: Series, path: Path, plt: Any) -> None:
    fig, axes = _figure(plt, 4, 1, sharex=True, gridspec_kw={"height_ratios": [2, 2, 1.5, 1]})
    temp, clock, load, choice = axes[0, 0], axes[1, 0], axes[2, 0], axes[3, 0]
    panels = {"temp_c": temp, "clock": clock, "load": load}
    backends = sorted(set(s.backend))
    shown = False
    for key, values in s.telemetry.items():
        backend, _, what = key.partition("_")
        m = np.isfinite(values)
        if not m.any():
            continue
        ax = panels[what]
        ax.plot(s.t[m], values[m], color=_colour(backend), label=backend, drawstyle="steps-post")
        shown = True
    if not shown:
        temp.text(0.5, 0.5, "no telemetry in this log (telemetry disabled, or nothing readable)",
                  ha="center", va="center", transform=temp.transAxes)  # fmt: skip
    temp.set_ylabel("temperature (C)")
    clock.set_ylabel("clock / max")
    clock.set_ylim(0, 1.05)
    load.set_ylabel("load")
    load.set_ylim(0, 1.05)
    for ax in (temp, clock, load):
        ax.grid(True, alpha=0.3)
        _legend(ax, loc="lower left", fontsize=8)
    edges = _bins(s.t)
    mid = (edges[:-1] + edges[1:]) / 2
    per = np.array([np.histogram(s.t[s.backend == b], edges)[0] for b in backends], dtype=float)
    total = per.sum(axis=0)
    keep = total > 0
    if keep.any():
        choice.stackplot(mid[keep], per[:, keep] / total[keep] * 100, colors=[_colour(b) for b in backends],
                         labels=backends, alpha=0.85)  # fmt: skip
    choice.set_ylim(0, 100)
    choice.set_ylabel("chosen (%)")
    choice.set_xlabel(s.time_label)
    fig.suptitle("Device telemetry beside the backend chosen (all stages)")
    fig.tight_layout()
    _save(fig, path)


def _filled(s: Series, pred: np.ndarray) -> np.ndarray:
    """``pred`` with gaps (a backend quarantined or not yet predicted) filled from the nearest earlier
    prediction of the same stage and shape bucket (or the next one, before the first)."""
    out = pred.copy()
    groups = np.array([f"{a}|{b}" for a, b in zip(s.stage, s.bucket, strict=True)], dtype=object)
    for key in set(groups):
        idx = np.flatnonzero(groups == key)
        values = out[idx]
        known = np.flatnonzero(np.isfinite(values))
        if known.size == 0 or known.size == len(values):
            continue
        # index of the last known value at or before each position (the first known one before it)
        last = np.maximum.accumulate(np.where(np.isfinite(values), np.arange(len(values)), -1))
        last[last < 0] = known[0]
        out[idx] = values[last]
    return out


def counterfactual_totals(s: Series) -> dict[str, np.ndarray]:
    """Cumulative latency (s) per decision: observed, and estimated for the static prior and each backend.

    The estimates are the policy's logged predictions for the backend each alternative
    would have chosen, at the moment of each decision. Where it predicted nothing for a
    backend (quarantined, say) the nearest prediction for the same stage and shape bucket
    stands in.
    """
    observed = np.cumsum(np.nan_to_num(s.latency_s))
    out = {"observed (this run)": observed}
    filled = {b: _filled(s, pred) for b, pred in s.predicted.items()}
    if len(s) and all(s.static_choice):
        static = np.full(len(s), np.nan)
        for backend, pred in filled.items():
            m = s.static_choice == backend
            static[m] = pred[m]
        out["static prior (estimated from logged predictions)"] = np.cumsum(np.nan_to_num(static))
    for backend, pred in sorted(filled.items()):
        if np.isfinite(pred).any():
            out[f"{backend}-only (estimated from logged predictions)"] = np.cumsum(np.nan_to_num(pred))
    return out


def plot_cumulative(s: Series, path: Path, plt: Any) -> None:
    fig, axes = _figure(plt, 1, 2, gridspec_kw={"width_ratios": [3, 2]})
    ax, gap = axes[0, 0], axes[0, 1]
    totals = counterfactual_totals(s)
    observed = totals["observed (this run)"]
    for name, total in totals.items():
        backend = name.split("-only")[0]
        style: dict[str, Any] = {"color": "black", "linewidth": 2.2}
        if name.startswith("static"):
            style = {"color": "#ff7f0e", "linestyle": "--", "linewidth": 1.6}
        elif "-only" in name:
            style = {"color": _colour(backend), "linestyle": ":", "linewidth": 1.6}
        label = f"{name}: {total[-1]:.2f} s" if len(total) else name
        ax.plot(s.t, total, label=label, **style)
        if total is not observed:
            gap.plot(s.t, total - observed, **style)
    ax.set_xlabel(s.time_label)
    ax.set_ylabel("cumulative stage latency (s)")
    ax.set_title("Cumulative latency: observed and what the alternatives would have cost", fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend(ax, loc="upper left", fontsize=8)
    gap.axhline(0.0, color="black", linewidth=2.2)
    gap.set_xlabel(s.time_label, fontsize=8)
    gap.set_ylabel("alternative minus observed (s)")
    gap.set_title("What this run saved (above 0) or lost (below)", fontsize=10)
    gap.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def probe_costs(s: Series) -> np.ndarray:
    """Per decision, what a probe cost beyond the best predicted backend (s; 0 for exploits)."""
    pred = np.vstack(list(s.predicted.values())) if s.predicted else np.full((1, len(s)), np.nan)
    with np.errstate(all="ignore"):
        best = np.nanmin(np.where(np.isfinite(pred), pred, np.inf), axis=0)
    lat = np.nan_to_num(s.latency_s)
    return np.where(s.explored & np.isfinite(best), np.maximum(lat - best, 0.0), 0.0)


def exploration_share(s: Series) -> np.ndarray:
    """Running share of total latency spent on probes (their latency beyond the best prediction)."""
    total = np.cumsum(np.nan_to_num(s.latency_s))
    with np.errstate(all="ignore"):
        return np.where(total > 0, np.cumsum(probe_costs(s)) / total, 0.0)


def plot_exploration(s: Series, budget: float | None, path: Path, plt: Any) -> None:
    fig, axes = _figure(plt)
    ax = axes[0, 0]
    edges = _bins(s.t)
    spent = np.histogram(s.t, edges, weights=probe_costs(s))[0]
    total = np.histogram(s.t, edges, weights=np.nan_to_num(s.latency_s))[0]
    with np.errstate(all="ignore"):
        per_bin = np.where(total > 0, spent / total * 100, np.nan)
    share = exploration_share(s) * 100
    ax.stairs(per_bin, edges, color="#ff7f0e", fill=True, alpha=0.5, label="in each time bin")
    ax.plot(s.t, share, color="black", label=f"since the start (now {share[-1]:.3f}%)" if len(share) else "")
    if budget is not None:
        ax.axhline(budget * 100, color="#d62728", linestyle="--", label=f"explore_budget: {budget * 100:.2f}%")
    # A costly probe of a rare shape (a prefill on the slow backend) would flatten the rest.
    finite = per_bin[np.isfinite(per_bin)]
    top = max(4 * (budget or 0) * 100, 2 * float(np.median(finite)) if finite.size else 0.0, 1e-3)
    high = max(float(finite.max()) if finite.size else 0.0, float(share.max()) if len(share) else 0.0)
    if high > top:
        ax.set_ylim(0, top)
        ax.text(0.01, 0.97, f"off the scale: up to {high:.1f}%", transform=ax.transAxes, va="top", fontsize=8)
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel(s.time_label)
    ax.set_ylabel("probes' extra latency / total latency (%)")
    ax.set_title(f"Exploration cost over time ({int(s.explored.sum())} probes; a probe's cost: its latency beyond "
                 "the best predicted backend)", fontsize=10)  # fmt: skip
    ax.grid(True, alpha=0.3)
    _legend(ax, loc="upper right", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _md_table(report: Report) -> str:
    head = "| stage | backend | decisions | explored | p50 ms | p95 ms | p99 ms | failed | no outcome |"
    lines = [head, "|" + "---|" * 9]

    def f(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"

    for r in report.summaries:
        lines.append(f"| {r.stage} | {r.backend} | {r.decisions} | {r.explored} | {f(r.p50_ms)} | {f(r.p95_ms)} | "
                     f"{f(r.p99_ms)} | {r.failed} | {r.no_outcome} |")  # fmt: skip
    return "\n".join(lines)


def write_report(
    report: Report, out: str | Path, *, overwrite: bool = False, progress: Callable[[int, int], None] | None = None
) -> list[Path]:
    """Write the figures and ``report.md`` into ``out``; return their paths (report.md last).

    Files already in ``out`` that the report would replace are refused (an
    :class:`~adaptive_sched.errors.AdaptiveSchedError` names them) unless ``overwrite``.
    """
    s = report.series
    if s is None or len(s) == 0:
        raise AdaptiveSchedError(f"{report.source}: no decisions in the selection: nothing to plot")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AdaptiveSchedError(f"--out {out}: exists and is not a directory")
    targets = [out / name for name in FIGURES] + [out / "report.md"]
    existing = [p.name for p in targets if p.exists()]
    if existing and not overwrite:
        raise AdaptiveSchedError(f"--out {out}: would replace {', '.join(existing)}; choose another directory "
                                 "or pass --overwrite")  # fmt: skip
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    drawers: dict[str, Callable[[Path], None]] = {
        "latency.png": lambda p: plot_latency(s, p, plt),
        "share.png": lambda p: plot_share(s, p, plt),
        "events.png": lambda p: plot_events(s, p, plt),
        "cumulative.png": lambda p: plot_cumulative(s, p, plt),
        "exploration.png": lambda p: plot_exploration(s, report.explore_budget, p, plt),
        "telemetry.png": lambda p: plot_telemetry(s, p, plt),
    }
    written = []
    for i, (name, draw) in enumerate(drawers.items()):
        try:
            draw(out / name)
        finally:
            plt.close("all")
        written.append(out / name)
        if progress is not None:
            progress(i + 1, len(drawers) + 1)
    runs = ", ".join(str(r) for r in report.selected_runs) or "none"
    totals = counterfactual_totals(s)
    lines = [
        f"# Decision log report: {Path(report.source).name}",
        "",
        f"Run(s) {runs}: {len(s)} decisions, {sum(r.failed for r in report.summaries)} failed, "
        f"{sum(r.no_outcome for r in report.summaries)} without an outcome, "
        f"{'unknown (sampled log)' if report.dropped is None else report.dropped} missing from the log. "
        f"Time axis: {s.time_label}.",
        "",
        _md_table(report),
        "",
        "Cumulative latency at the end: "
        + "; ".join(f"{name} {total[-1]:.3f} s" for name, total in totals.items() if len(total))
        + ". Lines marked *estimated* come from the policy's logged predictions at each decision, not from "
        "measurements.",
        "",
    ]
    for name, caption in FIGURES.items():
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    written.append(md)
    if progress is not None:
        progress(len(drawers) + 1, len(drawers) + 1)
    return written


__all__ = [
    "COLOURS",
    "FIGURES",
    "FIGURE_PX",
    "counterfactual_totals",
    "exploration_share",
    "probe_costs",
    "write_report",
]
