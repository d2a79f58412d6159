"""What every verb prints: aligned tables, JSON, and progress on stderr.

Tables and progress bars are drawn by rich, imported only when a table or a bar is
drawn, so a verb that prints one line (``decide``) does not pay for it.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table: numbers right-aligned, a rule under the header, no colour.

    >>> lines = render_table(["backend", "ms"], [["gpu", 1.5], ["npu", 0.25]]).splitlines()
    >>> print("\\n".join(lines))
    backend      ms
    -------- ------
    gpu       1.500
    npu       0.250
    >>> print(render_table(["policy [file]"], [["a[b].yaml"]]).splitlines()[-1])
    a[b].yaml
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # "-" (nothing measured) may stand among numbers
    numeric = [
        all(_is_number(row[i]) or row[i] == "-" for row in rows) and any(_is_number(row[i]) for row in rows)
        for i in range(len(headers))
    ]
    # ASCII only, whatever the terminal's encoding: output that scripts grep stays plain.
    rule = box.Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)
    table = Table(box=rule, show_edge=False, pad_edge=False, highlight=False)
    for header, num in zip(headers, numeric, strict=True):
        # Text, not str: rich would read "[x]" in a name as markup and drop it
        table.add_column(Text(header), justify="right" if num else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(_fmt(c)) for c in row))
    buffer = io.StringIO()
    # A wide virtual console: the table takes the width it needs and never wraps a cell.
    Console(file=buffer, width=100_000, color_system=None, legacy_windows=False).print(table)
    return "\n".join(s.rstrip() for s in buffer.getvalue().splitlines() if s.strip())


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}"
    return str(v)


class Progress:
    """A progress bar with an ETA on stderr, drawn only when stderr is a terminal.

    Call it with ``(done, total)``; the bar starts at the first call and closes when
    ``done`` reaches ``total`` (or at :meth:`close`). While it is drawn, log records
    written to stderr appear above it instead of breaking it.

    Parameters
    ----------
    label : str
        Shown before the bar.
    enabled : bool, optional
        Force the bar on or off (default: on when stderr is a terminal).
    """

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._task: Any = None
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._start(total)
        self._bar.update(self._task, completed=done, total=total)
        if done >= total:
            self.close()

    def _start(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn())  # fmt: skip
        stderr = sys.stderr
        # Drawn because it was asked for (or stderr is a terminal): rich need not guess again.
        console = Console(stderr=True, force_terminal=True)
        self._bar = Bar(*columns, console=console, transient=False, redirect_stderr=True)
        self._task = self._bar.add_task(self.label, total=total)
        self._bar.start()
        # Handlers keep the stream they were given; point the ones on stderr at rich's proxy
        # (sys.stderr while the bar is live), which prints each line above the bar.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.__stderr__, stderr):
                self._handlers.append((handler, handler.setStream(sys.stderr)))

    def close(self) -> None:
        """Stop drawing (idempotent); log records go to stderr directly again."""
        if self._bar is None:
            return
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers.clear()
        self._bar.stop()
        self._bar = None


def progress_for(args: argparse.Namespace, label: str) -> Progress:
    """The progress bar of a verb: off with ``--quiet`` or when stderr is not a terminal."""
    return Progress(label, enabled=False if getattr(args, "quiet", False) else None)


def add_quiet(p: argparse.ArgumentParser) -> None:
    """The ``--quiet`` option of a verb that shows progress."""
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar on stderr")


_TICKS = "▁▂▃▄▅▆▇█"
_ASCII_TICKS = "_.-:=+*#"


def sparkline(values: Sequence[float], width: int = 40, lo: float | None = None, hi: float | None = None) -> str:
    """``values`` as a line of block characters, ``width`` wide (each the mean of its share of values).

    ``lo`` and ``hi`` fix the scale, so lines drawn for several series compare.

    >>> sparkline([1, 2, 3, 4, 5, 6, 7, 8], width=8) in ("▁▂▃▄▅▆▇█", "_.-:=+*#")  # ASCII unless stdout is UTF-8
    True
    >>> len(sparkline(list(range(1000)), width=40))
    40
    """
    if not values:
        return ""
    n = min(width, len(values))
    means = [sum(chunk) / len(chunk) for chunk in (values[i * len(values) // n : (i + 1) * len(values) // n]
                                                   for i in range(n))]  # fmt: skip
    lo = min(means) if lo is None else lo
    hi = max(means) if hi is None else hi
    span = hi - lo
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "").replace("_", "")
    ticks = _TICKS if encoding == "utf8" else _ASCII_TICKS
    top = len(ticks) - 1
    return "".join(ticks[min(top, max(0, round((m - lo) / span * top)))] if span > 0 else ticks[0] for m in means)


def emit(args: argparse.Namespace, data: Any, table: Callable[[], str]) -> None:
    """``data`` as JSON when ``--output json`` was asked for, else the text of ``table()``.

    A number that is not finite (a mean of nothing, a ratio over zero) is written as
    ``null``: bare ``NaN`` and ``Infinity`` are not JSON, and strict parsers reject them.
    """
    if getattr(args, "output", "table") == "json":
        json.dump(json_safe(data), sys.stdout, indent=2, sort_keys=True, default=str, allow_nan=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(table() + "\n")


def json_safe(data: Any) -> Any:
    """``data`` with every float that is not finite replaced by None (recursively).

    >>> json_safe({"mean": float("nan"), "runs": [1.5, float("inf")]})
    {'mean': None, 'runs': [1.5, None]}
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def socket_request(path: str, message: dict[str, Any], usage_codes: tuple[str, ...]) -> dict[str, Any] | int:
    """Send ``message`` to a served scheduler: its reply, or the exit status after saying what went wrong
    (2 for the error codes in ``usage_codes``, the caller's mistakes; 1 otherwise)."""
    from ..service import request

    reply = request(path, message)
    if reply.get("ok"):
        return reply
    error = reply.get("error") or {}
    print(f"adaptive-sched: error: {error.get('message', reply)}", file=sys.stderr)
    return 2 if error.get("code") in usage_codes else 1
