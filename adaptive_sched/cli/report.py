"""``adaptive-sched report``: latency percentiles, failures and drops of a decision log; plots with ``--out``."""

from __future__ import annotations

import argparse
import time

from .output import add_quiet, emit, progress_for, render_table

HELP = "summarise a decision log: p50/p95/p99 per stage and backend, failures, windows; --out DIR for plots"
CONFIG = False
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .args import positive_int

    p.add_argument("--db", required=True, help="SQLite decision log")
    p.add_argument("--out", help="write PNG plots and report.md into this directory (needs the 'plots' extra)")
    p.add_argument("--overwrite", action="store_true", help="with --out: replace a report already there")
    p.add_argument("--run", type=positive_int, help="only this run (default: every run; --out: the last run)")
    p.add_argument("--since", help="only decisions from this time (Unix seconds or ISO 8601, UTC by default)")
    p.add_argument("--until", help="only decisions before this time")
    p.add_argument("--window", help="also a per-window view, e.g. 60s, 5m, 1h")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..offline.report import load_report, parse_duration, parse_time

    parsed = {}
    for name, parse in (("since", parse_time), ("until", parse_time), ("window", parse_duration)):
        value = getattr(args, name)
        try:
            parsed[name] = parse(value) if value is not None else None
        except ValueError as exc:
            raise ConfigError(f"--{name}: {exc}") from None
    since, until, window = parsed["since"], parsed["until"], parsed["window"]
    if args.run is not None and (since is not None or until is not None):
        raise ConfigError("--run and --since/--until select differently; give one of them")
    report = load_report(args.db, run=args.run, since=since, until=until, window_s=window, series=bool(args.out))
    data = report.as_dict()
    if args.out:
        from ..offline.plots import write_report

        written = write_report(report, args.out, overwrite=args.overwrite, progress=progress_for(args, "report"))
        data["files"] = [str(p) for p in written]

    def table() -> str:
        rows = [[s.stage, s.backend, s.decisions, s.explored, _n(s.p50_ms), _n(s.p95_ms), _n(s.p99_ms),
                 _n(s.mean_ms), s.failed, s.no_outcome] for s in report.summaries]  # fmt: skip
        headers = ["stage", "backend", "decisions", "explored", "p50 ms", "p95 ms", "p99 ms", "mean ms", "failed",
                   "no outcome"]  # fmt: skip
        picked = ", ".join(str(r) for r in report.selected_runs) or "none"
        dropped = "unknown (exploit rows sampled)" if report.dropped is None else str(report.dropped)
        out = [
            f"{len(report.runs)} run(s) in {report.source}; decisions of run(s) {picked}",
            render_table(headers, rows),
            f"failed: {data['failed']}, without an outcome: {data['no_outcome']}, missing from the log "
            f"(dropped): {dropped}",
        ]
        if report.windows:
            body = []
            for w in report.windows:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(w.start))
                for s in w.summaries:
                    body.append([when, s.stage, s.backend, s.decisions, s.explored, _n(s.p50_ms), _n(s.p95_ms),
                                 _n(s.p99_ms), s.failed])  # fmt: skip
            out += ["", f"per {args.window} window (UTC start):",
                    render_table(["window", "stage", "backend", "decisions", "explored", "p50 ms", "p95 ms", "p99 ms",
                                  "failed"], body)]  # fmt: skip
        if args.out:
            out += ["", *data["files"]]
        return "\n".join(out)

    emit(args, data, table)
    return 0


def _n(v: float | None) -> float | str:
    return "-" if v is None else v
