"""The ``adaptive-sched`` command line: one small module per verb.

Results go to stdout (``--output json`` for scripts), diagnostics to stderr.
Exit codes: 0 success, 1 failure, 2 usage or configuration error.

Each verb module declares ``HELP``, whether it takes ``--config`` (``CONFIG``) and
``--output`` (``OUTPUT``), ``add_arguments(parser)`` and ``run(args) -> int``; this
module only assembles them. Verb modules import nothing heavy at import time, so
``adaptive-sched --help`` and a decision stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from ..errors import AdaptiveSchedError, ConfigError
from ..paths import DEFAULT_CONFIG

#: verb name -> module of this package, in the order ``--help`` lists them
VERBS: dict[str, str] = {
    "run": "run",
    "decide": "decide",
    "observe": "observe",
    "serve": "serve",
    "profile": "profile",
    "train": "train",
    "replay": "replay",
    "export": "export",
    "report": "report",
    "executors": "executors",
    "check": "check",
    "telemetry": "telemetry",
    "config": "config",
    "stress": "stress",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``only`` the parser of that one verb (a cold
    ``decide`` should not import and assemble eleven other verbs)."""
    parser = argparse.ArgumentParser(
        prog="adaptive-sched",
        description="Choose, stage by stage, which processor runs an LLM's attention.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # --version's two lines as written
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more diagnostics on stderr")
    from .. import __version__
    from ..learners import native

    parser.add_argument("--version", action="version",
                        version=f"adaptive-sched {__version__}\nlatency model: {native.describe()}")  # fmt: skip
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, module_name in VERBS.items():
        if only is not None and name != only:
            continue
        module = importlib.import_module(f".{module_name}", __name__)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        if module.CONFIG:
            p.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                           help=f"YAML config path or shipped name (default: {DEFAULT_CONFIG})")  # fmt: skip
        if module.OUTPUT:
            p.add_argument("--output", "-o", choices=("table", "json"), default="table")
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)  # global options take no value
    parser = build_parser(verb if verb in VERBS else None)
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
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"adaptive-sched: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as a tool killed by SIGPIPE does, and
        # keep the interpreter's last flush of stdout from failing again on its way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (AdaptiveSchedError, ValueError, OSError) as exc:
        print(f"adaptive-sched: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("adaptive-sched: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
