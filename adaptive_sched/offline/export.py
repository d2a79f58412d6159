"""Export logged bandit feedback for other tools: Parquet (DuckDB, pandas) and Vowpal Wabbit ``cb_adf`` text.

Each successfully observed decision becomes one (context, action, cost, probability)
row: the context is the stage, the shape and the backend the previous stage ran on; the
action the backend chosen; the cost its observed latency; the probability the
propensity the logging policy gave it. Rows kept by exploit sampling carry
``sample_rate`` < 1 (weight them by ``1 / sample_rate``).

Parquet columns are :data:`~adaptive_sched.store.bulk_reads.EXPORT_COLUMNS` (``cost_s`` in
seconds; ``prob_*`` the logging policy's whole probability vector, null in logs older
than schema 3). The VW text has one multi-line example per decision::

    shared |s stage=attn precision=int8 after=gpu n:1 d:4096 kv_len:512 batch:1 heads:32
    0:0.71:0.95 |a backend=gpu
    |a backend=npu

with the chosen backend's line labelled ``0:cost:probability`` (cost in milliseconds),
one line per backend of the logs, and a blank line after each example: what
``vw --cb_adf`` (and ``--cb_explore_adf``) and VW's offline evaluation read. VW text has
no per-example importance weight for ``cb_adf``, so rows kept by exploit sampling are
written once each, and :func:`export` reports how many there were.

Nothing is overwritten: the output is written to a temporary file beside it and linked
into place only if the name is still free. pyarrow (the ``export`` extra) is imported
only for Parquet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdaptiveSchedError, StoreError
from ..store.bulk_reads import EXPORT_COLUMNS, backends_seen, iter_export_rows
from ..store.reads import runs
from .logdata import log_paths

logger = logging.getLogger(__name__)

FORMATS = ("parquet", "vw")
_BACKEND_ORDER = ("cpu", "gpu", "npu")


@dataclass(frozen=True)
class ExportSummary:
    path: str
    format: str
    rows: int
    #: rows kept by exploit sampling (``sample_rate`` < 1): weight them by ``1 / sample_rate``
    sampled: int
    logs: tuple[str, ...]


def export(
    paths: Sequence[str | Path], out: str | Path, fmt: str, *, run: int | None = None, chunk_rows: int = 16_384
) -> ExportSummary:
    """Write the observed decisions of the logs in ``paths`` (files or directories) to ``out`` as ``fmt``.

    Raises
    ------
    AdaptiveSchedError
        ``out`` exists, or its directory does not; an unknown format; pyarrow missing.
    StoreError
        A log cannot be read, or holds nothing to export (the message names it).
    """
    if fmt not in FORMATS:
        raise AdaptiveSchedError(f"--format: unknown format {fmt!r} (use {' or '.join(FORMATS)})")
    target = Path(out)
    if target.exists() or target.is_symlink():
        raise AdaptiveSchedError(f"{target}: the file exists; it is not overwritten (give a new name)")
    if not target.parent.is_dir():
        raise AdaptiveSchedError(f"{target}: directory {target.parent} does not exist")
    files = log_paths(paths)
    devices = {r.device_profile for p in files for r in runs(p) if r.device_profile}
    if len(devices) > 1:
        logger.warning("the logs come from several device profiles (%s)", ", ".join(sorted(devices)))
    backends = _backends(files)

    def chunks() -> Iterator[list[tuple[Any, ...]]]:
        for path in files:
            yield from iter_export_rows(path, run=run, chunk_rows=chunk_rows)

    with _new_file(target) as tmp:
        if fmt == "parquet":
            rows, sampled = _write_parquet(tmp, chunks())
        else:
            rows, sampled = _write_vw(tmp, chunks(), backends)
        if rows == 0:
            raise StoreError(f"{', '.join(map(str, files))}: no logged decisions with a successful outcome to export")
    if sampled and fmt == "vw":
        logger.warning(
            "%d rows were kept by exploit sampling; VW cb_adf text has no importance weights, so each is written once",
            sampled,
        )
    return ExportSummary(str(target), fmt, rows, sampled, tuple(map(str, files)))


def _backends(files: Sequence[Path]) -> tuple[str, ...]:
    """The backends the logs chose or gave probability to, in a fixed order (VW's action set)."""
    seen: set[str] = set()
    for path in files:
        seen |= backends_seen(path)
    return tuple(b for b in _BACKEND_ORDER if b in seen) + tuple(sorted(seen - set(_BACKEND_ORDER)))


@contextlib.contextmanager
def _new_file(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target``, linked to ``target`` when the block succeeds (never replacing a file)."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise AdaptiveSchedError(f"{target}: the file appeared while exporting; it is not overwritten") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _write_parquet(path: Path, chunks: Iterator[list[tuple[Any, ...]]]) -> tuple[int, int]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise AdaptiveSchedError("--format parquet needs pyarrow: pip install 'adaptive-sched[export]'") from None
    schema = pa.schema(
        [
            ("id", pa.int64()), ("run", pa.int64()), ("time", pa.float64()), ("stage", pa.string()),
            ("n", pa.int64()), ("d", pa.int64()), ("kv_len", pa.int64()), ("batch", pa.int64()),
            ("heads", pa.int64()), ("precision", pa.string()), ("after", pa.string()), ("action", pa.string()),
            ("cost_s", pa.float64()), ("probability", pa.float64()), ("explored", pa.bool_()),
            ("sample_rate", pa.float64()), ("prob_cpu", pa.float64()), ("prob_gpu", pa.float64()),
            ("prob_npu", pa.float64()),
        ]
    )  # fmt: skip
    assert tuple(schema.names) == EXPORT_COLUMNS
    rows = sampled = 0
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in chunks:
            columns = list(zip(*chunk, strict=True))
            columns[14] = tuple(bool(v) for v in columns[14])
            writer.write_batch(pa.record_batch([pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)],
                                               schema=schema))  # fmt: skip
            rows += len(chunk)
            sampled += sum(1 for r in chunk if r[15] < 1.0)
    return rows, sampled


def _write_vw(path: Path, chunks: Iterator[list[tuple[Any, ...]]], backends: Sequence[str]) -> tuple[int, int]:
    rows = sampled = 0
    with open(path, "w", encoding="utf-8") as f:
        for chunk in chunks:
            lines = []
            for r in chunk:
                (_, _, _, stage, n, d, kv, batch, heads, precision, after, action, cost, prob, _, rate) = r[:16]
                lines.append(
                    f"shared |s stage={stage} precision={precision} after={after or 'none'} "
                    f"n:{n} d:{d} kv_len:{kv} batch:{batch} heads:{heads}\n"
                )
                for b in backends:
                    label = f"0:{cost * 1e3:.6g}:{prob:.6g} " if b == action else ""
                    lines.append(f"{label}|a backend={b}\n")
                lines.append("\n")
                sampled += rate < 1.0
            f.write("".join(lines))
            rows += len(chunk)
    return rows, sampled
