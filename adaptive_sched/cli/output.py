"""What every verb prints: aligned tables, JSON, and progress on stderr."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


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
