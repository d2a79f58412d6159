"""``adaptive-sched config``: the config's JSON Schema, and a check of YAML files that lists every problem.

``config schema`` prints the schema (``--out FILE`` writes it, never over an existing
file unless ``--force``); ``config check FILE...`` validates configs (or, with ``--kind``,
device profiles or profiling grids) and prints every problem, one per line
(``file: key: message``): exit 2 if there is any, else 0 and ``ok``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from ..paths import DEFAULT_CONFIG

HELP = "print the config's JSON Schema, or check YAML files and list every problem"
CONFIG = False
OUTPUT = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    schema = actions.add_parser("schema", help="print the JSON Schema (draft 2020-12) of a config file")
    schema.add_argument("--out", type=Path, help="write the schema to this file instead of stdout")
    schema.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    check = actions.add_parser("check", help="validate files and print every problem (exit 2 if any)")
    check.add_argument("files", nargs="*", default=[DEFAULT_CONFIG],
                       help=f"YAML paths or shipped names (default: {DEFAULT_CONFIG})")  # fmt: skip
    check.add_argument("--kind", choices=("config", "profile", "grid"), default="config",
                       help="what the files are (default: config)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    return _schema(args) if args.action == "schema" else _check(args)


def _schema(args: argparse.Namespace) -> int:
    from ..config_schema import config_schema

    text = json.dumps(config_schema(), indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.out, "w" if args.force else "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        print(f"adaptive-sched: error: {args.out} exists (--force overwrites it)", file=sys.stderr)
        return 2
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    load = _loader(args.kind)
    problems = []
    for name in args.files:
        try:
            load(name)
        except ConfigError as exc:
            problems.extend(exc.errors)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} problem{'s' * (len(problems) != 1)}", file=sys.stderr)
        return 2
    print("ok")
    return 0


def _loader(kind: str) -> Callable[[str], object]:
    if kind == "profile":
        from ..sim.loading import load_profile

        return load_profile
    if kind == "grid":
        from ..offline.profiling import load_grid

        return load_grid
    from ..config import load_config

    return load_config
