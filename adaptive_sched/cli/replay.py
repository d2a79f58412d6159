"""``adaptive-sched replay``: would a candidate policy have been faster than the one that wrote the logs?

Exit 0 with an answer, 1 on a failure (a bad log, a bad candidate), 2 on a usage error,
3 when the headline estimate of a candidate is unsupported by the logs (the table and
the JSON still hold everything that was estimated).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from .args import positive_float, positive_int
from .output import add_quiet, emit, progress_for, render_table

HELP = "evaluate candidate policies offline on logged decisions: should we ship X?"
CONFIG = True
OUTPUT = True

#: exit status when a headline estimate is unsupported by the logs
EXIT_UNSUPPORTED = 3


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", action="append", required=True, metavar="PATH",
                   help="decision log, or a directory of them (*.db); repeat for several")  # fmt: skip
    p.add_argument("--candidate", action="append", default=[], metavar="YAML",
                   help="a config file, evaluated as the policy it would build; repeat for several")  # fmt: skip
    p.add_argument("--policies", default=None,
                   help="named baselines, comma-separated: static, adaptive, gpu, npu, cpu "
                        "(default: static,gpu,npu without --candidate, none with it); "
                        "static and adaptive are built from --config")  # fmt: skip
    p.add_argument("--run", type=int, help="only this run id")
    p.add_argument("--bootstrap", type=positive_int, default=200, help="bootstrap replicates (default 200)")
    p.add_argument("--blocks", type=positive_int, default=100,
                   help="contiguous blocks of the log for the block bootstrap (default 100)")  # fmt: skip
    p.add_argument("--min-rows", type=positive_int, default=5,
                   help="a backend tried fewer times in a bucket is thinly supported there (default 5)")  # fmt: skip
    p.add_argument("--max-thin", type=_fraction, default=0.05,
                   help="largest share of a candidate's probability on thinly logged backends (0.05)")  # fmt: skip
    p.add_argument("--max-untried", type=_fraction, default=0.01,
                   help="largest share of it on backends the logs never tried there (default 0.01)")  # fmt: skip
    p.add_argument("--min-ess", type=positive_float, default=30.0,
                   help="smallest effective sample size of a supported estimate (default 30)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--plot", metavar="FILE.png", help="draw each candidate's estimate and interval (needs matplotlib)")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..offline.candidates import check_device, config_candidate, named_candidates
    from ..offline.logdata import read_logs
    from ..offline.replay import Candidate, Settings, evaluate

    if args.plot:
        from ..offline.replay_plot import check_target

        check_target(args.plot)
    data = read_logs(args.db, run=args.run, progress=progress_for(args, "reading"))
    cands: list[Candidate] = []
    for path in args.candidate:
        cands.append(config_candidate(path, data.device, data.sources))
    policies = args.policies if args.policies is not None else ("" if args.candidate else "static,gpu,npu")
    names = [n.strip() for n in policies.split(",") if n.strip() and n.strip() != "logged"]
    if names:
        base = load_config(args.config)
        if any(n in ("static", "adaptive") for n in names):
            check_device(base, f"--config {args.config}", data.device, data.sources)
        cands += named_candidates(names, base)
    settings = Settings(min_rows=args.min_rows, max_unsupported=args.max_thin, max_untried=args.max_untried,
                        min_ess=args.min_ess, bootstrap=args.bootstrap, blocks=args.blocks, seed=args.seed)  # fmt: skip
    result = evaluate(data, cands, settings)
    for c in result.candidates:
        if not c.supported:
            reasons = "; ".join(c.views[c.headline_view].support.reasons)
            print(f"adaptive-sched: warning: {c.name}: its estimate is unsupported by the logs ({reasons}); "
                  "left out of the verdict", file=sys.stderr)  # fmt: skip
    emit(args, as_json(result), lambda: as_table(result))
    if args.plot:
        from ..offline.replay_plot import plot_replay

        plot_replay(result, args.plot)
    return EXIT_UNSUPPORTED if any(not c.supported for c in result.candidates) else 0


def _ms(x: float) -> float | None:
    return None if not math.isfinite(x) else x * 1e3


def _interval(iv: Any) -> list[float | None]:
    return [_ms(iv.low), _ms(iv.high)]


def _estimate(e: Any) -> dict[str, Any]:
    return {
        "mean_ms": _ms(e.value),
        "row_interval_ms": _interval(e.row),
        "block_interval_ms": _interval(e.block),
        "diff_ms": _ms(e.diff),
        "diff_row_interval_ms": _interval(e.diff_row),
        "diff_block_interval_ms": _interval(e.diff_block),
        "unavailable": e.unavailable or None,
    }


def as_json(result: Any) -> dict[str, Any]:
    """The replay result as plain data (milliseconds; null where there is no number)."""
    logged = {
        view: {
            "mean_ms": _ms(o.value),
            "row_interval_ms": _interval(o.row),
            "block_interval_ms": _interval(o.block),
            "rows": o.rows,
            "estimates": {k: _estimate(e) for k, e in o.estimates.items()} or None,
            "estimates_unavailable": None if o.estimates else _why_no_estimates(view),
        }
        for view, o in result.logged.items()
    }
    candidates = {}
    for c in result.candidates:
        views = {}
        for name, v in c.views.items():
            s = v.support
            views[name] = {
                "estimates": {k: _estimate(e) for k, e in v.estimates.items()},
                "support": {
                    "rows": s.rows,
                    "ess": s.ess,
                    "max_weight": s.max_weight,
                    "unsupported_share": s.unsupported_share,
                    "untried_share": s.untried_share,
                    "supported": s.supported,
                    "reasons": list(s.reasons),
                    "buckets": [b.__dict__ for b in s.buckets],
                },
            }
        candidates[c.name] = {
            "source": c.source or None,
            "verdict": c.verdict,
            "supported": c.supported,
            "headline": {"view": c.headline_view, "estimator": "DR", **_estimate(c.headline)},
            "views": views,
        }
    return {
        "logs": list(result.sources),
        "device": result.device,
        "rows": result.rows,
        "layers": result.pairs,
        "unpaired": result.unpaired,
        "has_probabilities": result.has_probabilities,
        "logged": logged,
        "candidates": candidates,
        "notes": list(result.notes),
        "settings": result.settings.__dict__,
    }


def _num(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _why_no_estimates(view: str) -> str:
    if view == "pair":
        return "per layer, only the observed mean: the log holds attn's probabilities after the logged qkv choice only"
    return "the logs do not record the logging policy's probability vector (schema older than 3)"


def _cell(value: float, iv: Any) -> str:
    if not math.isfinite(value):
        return "-"
    lo, hi = ("?" if not math.isfinite(x) else f"{x * 1e3:.4g}" for x in (iv.low, iv.high))
    return f"{value * 1e3:.4g} [{lo}, {hi}]"


def as_table(result: Any) -> str:
    """The headline table (one row per candidate), then the per-stage view with support."""
    unit = "layer" if result.pairs else "decision"
    lines = [
        f"{result.rows} logged decisions ({result.pairs} layers) from {len(result.sources)} log(s), "
        f"device {result.device or 'unknown'}; latencies in ms per {unit}; 95% intervals: [a, b] from "
        "resampling rows, {a, b} from resampling blocks of the log"
    ]
    # (no square brackets in headers: the table renderer reads them as markup)
    head = ["policy", "DR", "DR - logged", "DR - logged, blocks", "SNIPS", "ESS", "max w", "thin %",
            "verdict"]  # fmt: skip
    body: list[list[Any]] = []
    ref = result.logged.get("pair") or next(iter(result.logged.values()))
    body.append(["logged (observed)", _cell(ref.value, ref.row), "-", "-", "-", "-", "-", "-", "-"])
    for c in result.candidates:
        v = c.views[c.headline_view]
        dr, snips = v.estimates["DR"], v.estimates["SNIPS"]
        mark = "" if c.supported else " *"
        body.append([
            c.name + mark, _cell(dr.value, dr.row), _cell(dr.diff, dr.diff_row),
            "-" if not math.isfinite(dr.diff) else f"{{{dr.diff_block.low * 1e3:.4g}, {dr.diff_block.high * 1e3:.4g}}}",
            _cell(snips.value, snips.row), _num(v.support.ess), _num(v.support.max_weight),
            round(100 * v.support.unsupported_share, 2), c.verdict,
        ])  # fmt: skip
    lines.append(render_table(head, body))
    if any(not c.supported for c in result.candidates):
        lines.append("* unsupported by the logs: see the per-stage table and --output json for the buckets")
    stage_head = ["policy", "stage", "IPS", "SNIPS", "DM", "DR", "ESS", "max w",
                  "thin %", "never %", "thinnest bucket"]  # fmt: skip
    rows: list[list[Any]] = []
    for view in ("qkv", "attn"):
        o = result.logged.get(view)
        if o is None:
            continue
        dm = o.estimates.get("DM")
        dr = o.estimates.get("DR")
        rows.append(["logged", view, _cell(o.value, o.row), _cell(o.value, o.row),
                     "n/a" if dm is None else f"{dm.value * 1e3:.4g}",
                     "n/a" if dr is None else _cell(dr.value, dr.row), "-", "-", "-", "-", "-"])  # fmt: skip
    for c in result.candidates:
        for view in ("qkv", "attn"):
            v = c.views.get(view)
            if v is None:
                continue
            e, s = v.estimates, v.support
            worst = s.buckets[0] if s.buckets and s.buckets[0].unsupported_share > 0 else None
            rows.append([
                c.name + ("" if s.supported else " *"), view, _cell(e["IPS"].value, e["IPS"].row),
                _cell(e["SNIPS"].value, e["SNIPS"].row), "-" if not math.isfinite(e["DM"].value)
                else f"{e['DM'].value * 1e3:.4g}", _cell(e["DR"].value, e["DR"].row), _num(s.ess),
                _num(s.max_weight), round(100 * s.unsupported_share, 2), round(100 * s.untried_share, 2),
                "-" if worst is None else f"{worst.bucket} ({worst.unsupported_share:.0%} of {worst.rows})",
            ])  # fmt: skip
    lines += ["", "per stage (ms per decision; attn given the logged qkv backend):", render_table(stage_head, rows)]
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)
