"""``adaptive-sched run``: the config's decode workload against single backends."""

from __future__ import annotations

import argparse

from .args import positive_int
from .output import add_quiet, emit, progress_for, render_table, sparkline

HELP = "run the config's decode workload through the scheduler and compare with single backends"
CONFIG = True
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="log decisions to this SQLite file")
    p.add_argument("--model", help="model geometry (e.g. qwen2.5-1.5b, llama-2-7b)")
    p.add_argument("--tokens", type=positive_int, help="generated tokens")
    p.add_argument("--prompt", type=positive_int, help="prompt length")
    p.add_argument("--layers", type=positive_int, help="layers per token (default: the model's)")
    p.add_argument("--precision", choices=("fp16", "int8"))
    p.add_argument("--policy", choices=("adaptive", "static", "epsilon", "oracle"), help="override the policy")
    p.add_argument("--no-compare", action="store_true", help="skip the static-prior and single-backend passes")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..config import load_config
    from ..runner import run_workload

    config = load_config(args.config)
    w = config.workload
    changes = {k: v for k, v in (("model", args.model), ("tokens", args.tokens), ("prompt", args.prompt),
                                 ("precision", args.precision), ("layers", args.layers)) if v is not None}  # fmt: skip
    if changes:
        if "precision" in changes:
            from ..types import parse_precision

            changes["precision"] = parse_precision(changes["precision"])
        config = dataclasses.replace(config, workload=dataclasses.replace(w, **changes))
    if args.policy:
        config = dataclasses.replace(config, policy=dataclasses.replace(config.policy, kind=args.policy))
        config._validate("")
    compare = () if args.no_compare else ("static", *(b.value for b in config.candidates))
    report = run_workload(config, db=args.db, compare=compare, progress=progress_for(args, "run"))

    def table() -> str:
        # per candidate: the mean of the warm runs it made in the bucket, what the scheduler learned from
        measured = [b.value for b in config.candidates]
        rows = []
        for b in report.buckets:
            total = sum(b.backends.values())
            share = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in b.backends.most_common())
            warm = [b.warm_mean_s(name) * 1e3 if b.warm_runs[name] else "-" for name in measured]
            rows.append([b.stage, b.bucket, b.backends.most_common(1)[0][0], share, b.runs, b.mean_s * 1e3, *warm])
        head = (f"{report.model} ({report.precision}), {report.layers} layers, prompt + {report.tokens} tokens, "
                f"policy {report.policy} on {config.device}")  # fmt: skip
        headers = ["stage", "bucket", "backend", "choices", "runs", "mean ms", *(f"{name} ms" for name in measured)]
        body = render_table(headers, rows)
        # ms per token over the run, one scale for every pass (the prefill left out: it would flatten the rest)
        per_token = {name: [t * 1e3 for t in steps[1:]] for name, steps in report.steps_s.items()}
        values = [v for series in per_token.values() for v in series]
        lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
        totals = [[name, t * 1e3, report.totals_s[name] / report.totals_s[report.policy],
                   sparkline(per_token.get(name, []), lo=lo, hi=hi)]
                  for name, t in report.totals_s.items()]  # fmt: skip
        foot = render_table(["pass", "total ms", f"{report.policy} speedup", f"ms per token ({lo:.1f} to {hi:.1f})"],
                            totals)  # fmt: skip
        where = args.db or config.store.path
        hint = (f"\nplots of this run: adaptive-sched report --db {where} --out DIR" if where else
                "\nlog it with --db FILE, then plot it: adaptive-sched report --db FILE --out DIR")  # fmt: skip
        return f"{head}\n\n{body}\n\n{foot}\n{hint}"

    emit(args, report.as_dict(), table)
    return 0
