"""The ``adaptive-sched`` command line.

Results go to stdout (``--output json`` for scripts), diagnostics to stderr.
Exit codes: 0 success, 1 failure, 2 usage or configuration error.

Verbs: ``run`` (the main job), ``decide`` (one decision, fast, for firmware scripts),
``profile`` and ``train`` (the offline priors), ``replay`` (evaluate policies on a
log), ``report`` (summarise a log), ``executors`` and ``check`` (what runs here),
``stress`` (load this host to watch the scheduler adapt).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .errors import AdaptiveSchedError, ConfigError
from .paths import DEFAULT_CONFIG

log = logging.getLogger("adaptive_sched.cli")


# -- output helpers ---------------------------------------------------------------------
def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    # "-" (nothing measured) may stand among numbers
    numeric = [
        all(_is_number(row[i]) or row[i] == "-" for row in rows) and any(_is_number(row[i]) for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(s.rstrip() for s in out)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}"
    return str(v)


class Progress:
    """A progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _emit(args: argparse.Namespace, data: Any, table: Callable[[], str]) -> None:
    if getattr(args, "output", "table") == "json":
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(table() + "\n")


# -- verbs -----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from .config import load_config
    from .runner import run_workload

    config = load_config(args.config)
    w = config.workload
    changes = {k: v for k, v in (("model", args.model), ("tokens", args.tokens), ("prompt", args.prompt),
                                 ("precision", args.precision), ("layers", args.layers)) if v is not None}  # fmt: skip
    if changes:
        if "precision" in changes:
            from .types import parse_precision

            changes["precision"] = parse_precision(changes["precision"])
        config = dataclasses.replace(config, workload=dataclasses.replace(w, **changes))
    if args.policy:
        config = dataclasses.replace(config, policy=dataclasses.replace(config.policy, kind=args.policy))
        config._validate("")
    compare = () if args.no_compare else tuple(b.value for b in config.candidates)
    report = run_workload(config, db=args.db, compare=compare, progress=Progress("run"))

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

    _emit(args, report.as_dict(), table)
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    from .config import load_config
    from .scheduler import Scheduler
    from .types import Shape

    config = load_config(args.config)
    shape = Shape(n=args.n, d=args.d, kv_len=args.kv_len, batch=args.batch, heads=args.heads,
                  precision=args.precision)  # fmt: skip
    with Scheduler(config, db=args.db) as sched:
        dq = sched.decide(args.stage, shape, after=args.after)
        data = {
            "stage": dq.stage.value,
            "backend": dq.backend.value,
            "propensity": dq.propensity,
            "explored": dq.explored,
            "predicted_ms": {b.value: v * 1e3 for b, v in dq.predicted.items()},
            "id": dq.id,
        }
    _emit(args, data, lambda: dq.backend.value)
    return 0


def cmd_executors(args: argparse.Namespace) -> int:
    from .config import load_config
    from .executors import create_executor

    config = load_config(args.config)
    rows, data = [], []
    for backend, bc in config.backends.items():
        options = dict(bc.options)
        if bc.executor == "sim":
            assert config.simulator is not None
            options["device"] = config.simulator.make_device()
        ex = create_executor(bc.executor, backend=backend, **options)
        ok = ex.is_available()
        device = getattr(ex, "device_name", None) or ""  # which OpenCL device a name substring matched
        buckets = getattr(ex, "bucket_summary", None) or ""  # a static-graph backend's kv and n buckets
        rows.append([backend.value, bc.executor, bc.role, "yes" if ok else "no", device, buckets,
                     ex.unavailable_reason])  # fmt: skip
        data.append({"backend": backend.value, "executor": bc.executor, "role": bc.role, "available": ok,
                     "device": device, "buckets": buckets, "reason": ex.unavailable_reason})  # fmt: skip
        ex.close()
    headers = ["backend", "executor", "role", "available", "device", "buckets", "reason"]
    _emit(args, data, lambda: render_table(headers, rows))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .checks import iter_checks
    from .config import load_config
    from .executors import create_executor

    config = load_config(args.config)
    results = []
    for backend, bc in config.backends.items():

        def factory(backend: Any = backend, bc: Any = bc) -> Any:
            options = dict(bc.options)
            if bc.executor == "sim":
                assert config.simulator is not None
                options["device"] = config.simulator.make_device()
            return create_executor(bc.executor, backend=backend, **options)

        for r in iter_checks(factory):
            results.append({"backend": backend.value, "executor": bc.executor, "check": r.check,
                            "status": r.status, "message": r.message})  # fmt: skip
    rows = [[r["backend"], r["executor"], r["check"], r["status"], r["message"]] for r in results]
    _emit(args, results, lambda: render_table(["backend", "executor", "check", "status", "message"], rows))
    failed = sum(r["status"] == "failed" for r in results)
    passed = sum(r["status"] == "passed" for r in results)
    skipped = sum(r["status"] == "skipped" for r in results)
    print(f"{passed} passed, {failed} failed, {skipped} skipped", file=sys.stderr)
    return 1 if failed else 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .profiling import profile_command

    return int(profile_command(args, progress=Progress("profile")) or 0)


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train_command

    return int(train_command(args, render_table=render_table) or 0)


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import replay_command

    return int(replay_command(args, render_table=render_table, emit=_emit) or 0)


def cmd_report(args: argparse.Namespace) -> int:
    from .replay import report_command

    return int(report_command(args, render_table=render_table, emit=_emit) or 0)


def cmd_stress(args: argparse.Namespace) -> int:
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
    from .executors import create_executor
    from .stages import make_inputs
    from .types import Shape

    ex = create_executor("gpu_opencl", backend="gpu", platform=platform)
    if not ex.is_available():
        raise SystemExit(f"adaptive-sched stress: no OpenCL device: {ex.unavailable_reason}")
    shape = Shape(n=256, d=1024)
    inputs = make_inputs("qkv", shape)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ex.run("qkv", shape, inputs)


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptive-sched",
        description="Choose, stage by stage, which processor runs an LLM's attention.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more diagnostics on stderr")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"adaptive-sched {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, func: Callable[[argparse.Namespace], int], help: str, *, config: bool = True,
             output: bool = True) -> argparse.ArgumentParser:  # fmt: skip
        p = sub.add_parser(name, help=help, description=help)
        if config:
            p.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                           help=f"YAML config path or shipped name (default: {DEFAULT_CONFIG})")  # fmt: skip
        if output:
            p.add_argument("--output", "-o", choices=("table", "json"), default="table")
        p.set_defaults(func=func)
        return p

    p = verb("run", cmd_run, "run the config's decode workload through the scheduler and compare with single backends")
    p.add_argument("--db", help="log decisions to this SQLite file")
    p.add_argument("--model", help="model geometry (e.g. qwen2.5-1.5b, llama-2-7b)")
    p.add_argument("--tokens", type=int, help="generated tokens")
    p.add_argument("--prompt", type=int, help="prompt length")
    p.add_argument("--layers", type=int, help="layers per token (default: the model's)")
    p.add_argument("--precision", choices=("fp16", "int8"))
    p.add_argument("--policy", choices=("adaptive", "static", "epsilon", "oracle"), help="override the policy")
    p.add_argument("--no-compare", action="store_true", help="skip the single-backend baselines")

    p = verb("decide", cmd_decide, "print the backend for one stage and shape")
    p.add_argument("--stage", required=True, choices=("qkv", "attn"))
    p.add_argument("--n", type=int, required=True, help="tokens in this step (1 in decode)")
    p.add_argument("--d", type=int, required=True, help="hidden dimension")
    p.add_argument("--kv-len", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int)
    p.add_argument("--precision", choices=("fp16", "int8"), default="fp16")
    p.add_argument("--after", choices=("cpu", "gpu", "npu"), help="backend the previous stage ran on")
    p.add_argument("--db", help="resume from (and log to) this SQLite file")

    p = verb("profile", cmd_profile, "sweep a grid of shapes over the config's executors into the profiles table")
    p.add_argument("--grid", "-g", default="paper", help="grid YAML path or shipped name (default: paper)")
    p.add_argument("--db", required=True, help="SQLite file for the profiles")
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)

    p = verb("train", cmd_train, "train the per-stage priors from profiles and compare classifiers", config=False)
    p.add_argument("--db", required=True, help="SQLite file holding profiles")
    p.add_argument("--device", default="rk3588", help="device profile the profiles were measured on")
    p.add_argument("--qkv-model", default="rf")
    p.add_argument("--attn-model", default="knn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", help="also write the prior to this JSON file")

    p = verb("replay", cmd_replay, "evaluate policies offline on logged decisions (IPS, SNIPS, DM, DR)")
    p.add_argument("--db", required=True, help="SQLite decision log")
    p.add_argument("--policies", default="logged,static,gpu,npu",
                   help="comma-separated: logged, static, adaptive, gpu, npu, cpu")  # fmt: skip
    p.add_argument("--run", type=int, help="only this run id")

    p = verb("report", cmd_report, "summarise a decision log", config=False)
    p.add_argument("--db", required=True, help="SQLite decision log")

    verb("executors", cmd_executors, "list the config's executors and whether they run here")
    verb("check", cmd_check, "run the executor conformance suite on the config's executors")

    p = verb("stress", cmd_stress, "load this host's CPU cores or OpenCL device (to watch the scheduler adapt)",
             config=False, output=False)  # fmt: skip
    p.add_argument("--target", choices=("cpu", "opencl"), default="opencl")
    p.add_argument("--platform", default="Portable Computing Language", help="OpenCL platform name substring")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--workers", type=int, default=2)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="adaptive-sched: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"adaptive-sched: error: {exc}", file=sys.stderr)
        return 2
    except (AdaptiveSchedError, ValueError, OSError) as exc:
        print(f"adaptive-sched: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("adaptive-sched: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
