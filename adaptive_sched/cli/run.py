"""``adaptive-sched run``: the config's decode workload against single backends."""

from __future__ import annotations

import argparse

from .output import add_quiet, emit, progress_for, render_table

HELP = "run the config's decode workload through the scheduler and compare with single backends"
CONFIG = True
OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="log decisions to this SQLite file")
    p.add_argument("--model", help="model geometry (e.g. qwen2.5-1.5b, llama-2-7b)")
    p.add_argument("--tokens", type=int, help="generated tokens")
    p.add_argument("--prompt", type=int, help="prompt length")
    p.add_argument("--layers", type=int, help="layers per token (default: the model's)")
    p.add_argument("--precision", choices=("fp16", "int8"))
    p.add_argument("--policy", choices=("adaptive", "static", "epsilon", "oracle"), help="override the policy")
    p.add_argument("--no-compare", action="store_true", help="skip the single-backend baselines")
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
    compare = () if args.no_compare else tuple(b.value for b in config.candidates)
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
        totals = [[name, t * 1e3, report.totals_s[name] / report.totals_s[report.policy]]
                  for name, t in report.totals_s.items()]  # fmt: skip
        foot = render_table(["policy", "total ms", f"{report.policy} speedup"], totals)
        return f"{head}\n\n{body}\n\n{foot}"

    emit(args, report.as_dict(), table)
    return 0
