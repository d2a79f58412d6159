"""Decision logs as columns: numpy arrays over every observed decision of one or more logs.

Offline replay reads millions of rows; a Python object per row would cost seconds and
hundreds of megabytes, so :func:`read_logs` streams the rows from SQLite in chunks
(:func:`~adaptive_sched.store.bulk_reads.iter_logged_columns`) into a few typed arrays.
Shapes are not kept per row: each row holds the index of its distinct shape, and of
its shape bucket (the key learned corrections and published choices share, see
:func:`~adaptive_sched.policies.bucket_key`), so anything that depends on the shape is
computed once per distinct value.

Rows keep the logs' order (each log's runs oldest first, each run in decision order),
which is time order within a device: block bootstraps resample contiguous rows.

>>> import os, tempfile
>>> from adaptive_sched.store.writer import DecisionLog
>>> from adaptive_sched.types import Backend, Decision, Shape, Stage
>>> path = os.path.join(tempfile.mkdtemp(), "log.db")
>>> with DecisionLog(path) as log:
...     run = log.start_run(device_profile="rk3588")
...     d = Decision.of(run << 32 | 1, Stage.QKV, Shape(n=1, d=4096), Backend.GPU, propensity=0.9)
...     log.decision(d)
...     log.outcome(d.id, 0.002)
>>> data = read_logs([path])
>>> len(data), data.device, float(data.latency_s[0])
(1, 'rk3588', 0.002)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from ..policies import bucket_key
from ..store.bulk_reads import (
    BACKEND_CODES,
    CODE_FIELDS,
    LOGGED_COLUMNS,
    PRECISION_CODES,
    SHAPE_PACKING,
    STAGE_CODES,
    UNKNOWN_CODE,
    count_outcomes,
    iter_logged_columns,
    schema_of,
)
from ..store.reads import runs
from ..types import Backend, Shape, Stage

logger = logging.getLogger(__name__)

#: index of each column in a chunk from :func:`iter_logged_columns`
_COL = {name: i for i, name in enumerate(LOGGED_COLUMNS)}
#: code of "no previous backend" in :attr:`LogData.after` (backends are 0, 1, 2)
NO_AFTER = 3
#: the backends, in the order of the columns of probability arrays
BACKENDS: tuple[Backend, ...] = BACKEND_CODES
AFTERS: tuple[Backend | None, ...] = (*BACKEND_CODES, None)


@dataclass(frozen=True)
class LogData:
    """Every successfully observed decision of some logs, as columns (one entry per row).

    ``stage`` indexes :data:`~adaptive_sched.store.bulk_reads.STAGE_CODES`, ``backend``
    :data:`BACKENDS`, ``after`` :data:`AFTERS` (:data:`NO_AFTER` when the decision had
    no previous stage). ``probs`` is the probability vector the logging policy gave
    (columns :data:`BACKENDS`; NaN rows for logs older than schema 3). ``cell`` is the
    row's shape bucket as the latency model and support checks see it (``qkv`` ignores
    the KV length); ``key`` the bucket candidates are asked about (``qkv`` sees the KV
    length, as policies that plan ``attn`` do), with ``key_shapes[key]`` a shape of it.
    """

    sources: tuple[str, ...]
    source: np.ndarray  # int16: index into sources
    run: np.ndarray  # int32
    seq: np.ndarray  # uint32: the decision's sequence number in its run
    stage: np.ndarray  # int8
    backend: np.ndarray  # int8
    after: np.ndarray  # int8
    propensity: np.ndarray  # float64
    sample_rate: np.ndarray  # float32
    probs: np.ndarray  # float32 (rows, 3)
    latency_s: np.ndarray  # float64
    shape_id: np.ndarray  # int32: index into shapes
    cell: np.ndarray  # int32: index into cell_shapes
    key: np.ndarray  # int32: index into key_shapes
    shapes: tuple[Shape, ...]
    cell_shapes: tuple[Shape, ...]
    key_shapes: tuple[Shape, ...]
    cell_stage: np.ndarray  # int8: the stage of each cell
    key_stage: np.ndarray  # int8: the stage of each key
    #: the device profile every run was logged on (None when the logs do not say)
    device: str | None
    #: whether every row carries the logging policy's probability vector (schema 3 and later)
    has_probabilities: bool
    #: the oldest schema version among the logs
    schema: int

    def __len__(self) -> int:
        return int(self.stage.shape[0])

    @property
    def weight(self) -> np.ndarray:
        """Each row's sampling weight: ``1 / sample_rate`` undoes exploit sampling."""
        return 1.0 / self.sample_rate.astype(np.float64)


def log_paths(paths: Iterable[str | Path]) -> list[Path]:
    """The log files named: files as given, directories by the ``*.db`` files in them (sorted).

    >>> log_paths([])
    Traceback (most recent call last):
    ...
    adaptive_sched.errors.StoreError: no decision log given
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.glob("*.db") if q.is_file())
            if not found:
                raise StoreError(f"{p}: a directory with no decision logs (*.db files) in it")
            out += found
        else:
            out.append(p)
    if not out:
        raise StoreError("no decision log given")
    return out


def read_logs(
    paths: Sequence[str | Path],
    *,
    run: int | None = None,
    chunk_rows: int = 16_384,
    progress: Callable[[int, int], None] | None = None,
) -> LogData:
    """Read the successfully observed decisions of every log in ``paths`` (files or directories).

    ``progress(rows_read, rows_expected)`` is called after each chunk.

    Raises
    ------
    StoreError
        A file is not a readable log, holds nothing to replay, holds rows replay cannot
        use (no or zero propensities, unknown stages or backends), or the logs come
        from different device profiles. The message names the file and the column.
    """
    files = log_paths(paths)
    # Arrays sized once from the outcome counts (an upper bound) and filled chunk by chunk:
    # concatenating chunks would hold the log twice, and leave the heap fragmented.
    capacity = sum(count_outcomes(p, run=run) for p in files)
    cols: dict[str, np.ndarray] = {}
    filled = 0
    shape_ids: dict[tuple[int, ...], int] = {}
    devices: dict[str, list[str]] = {}
    schemas: list[int] = []
    for index, path in enumerate(files):
        name = str(path)
        schemas.append(schema_of(path))
        for r in runs(path):
            if run is None or r.id == run:
                devices.setdefault(r.device_profile or "", []).append(name)
        rows_here = 0
        for chunk in iter_logged_columns(path, run=run, chunk_rows=chunk_rows):
            part = _columns(name, chunk, shape_ids)
            part["source"] = np.full(len(chunk), index, dtype=np.int16)
            if not cols:
                cols = {k: np.empty((capacity, *v.shape[1:]), dtype=v.dtype) for k, v in part.items()}
            if filled + len(chunk) > capacity:  # outcomes were added while reading: grow
                capacity = 2 * (filled + len(chunk))
                cols = {k: np.resize(v, (capacity, *v.shape[1:])) for k, v in cols.items()}
            for k, v in part.items():
                cols[k][filled : filled + len(chunk)] = v
            filled += len(chunk)
            rows_here += len(chunk)
            if progress is not None:
                progress(filled, max(capacity, filled))
        if rows_here == 0:
            where = f" in run {run}" if run is not None else ""
            raise StoreError(f"{name}: no logged decisions with a successful outcome{where}: nothing to replay")
    known = {d: f for d, f in devices.items() if d}
    if len(known) > 1:
        listed = "; ".join(f"{d!r} in {', '.join(sorted(set(f)))}" for d, f in sorted(known.items()))
        raise StoreError(f"the logs come from different device profiles ({listed}); replay one device at a time")
    if progress is not None:
        progress(filled, filled)
    cols = {k: v[:filled] for k, v in cols.items()}
    shapes, shape_stage = _shapes(shape_ids)
    cells, cell_shapes, cell_stage = _buckets(shapes, shape_stage, lookahead=False)
    keys, key_shapes, key_stage = _buckets(shapes, shape_stage, lookahead=True)
    shape_id = cols["shape_id"]
    probs = cols["probs"]
    logged_vector = ~np.isnan(probs).all(axis=1)
    probs[logged_vector] = np.nan_to_num(probs[logged_vector], nan=0.0)  # NULL: a backend it could not choose
    return LogData(
        sources=tuple(str(p) for p in files),
        source=cols["source"],
        run=cols["run"],
        seq=cols["seq"],
        stage=cols["stage"],
        backend=cols["backend"],
        after=cols["after"],
        propensity=cols["propensity"],
        sample_rate=cols["sample_rate"],
        probs=probs,
        latency_s=cols["latency_s"],
        shape_id=shape_id,
        cell=cells[shape_id],
        key=keys[shape_id],
        shapes=shapes,
        cell_shapes=cell_shapes,
        key_shapes=key_shapes,
        cell_stage=cell_stage,
        key_stage=key_stage,
        device=next(iter(known), None),
        has_probabilities=bool(logged_vector.all()),
        schema=min(schemas),
    )


def _columns(name: str, chunk: list[tuple[Any, ...]], shape_ids: dict[tuple[int, ...], int]) -> dict[str, np.ndarray]:
    """One chunk of rows as typed columns, checked; shapes mapped to global ids."""
    a = np.array(chunk, dtype=np.float64)
    seq = a[:, _COL["seq"]].astype(np.uint32)  # ids are run << 32 | seq, and runs fit 31 bits
    run = a[:, _COL["run"]].astype(np.int32)

    def bad(mask: np.ndarray, column: str, what: str, value: Any = None) -> None:
        if mask.any():
            i = int(np.argmax(mask))
            shown = chunk[i][_COL[column]] if value is None else value
            where = f"column {column}" if "," not in column else f"columns {column}"
            raise StoreError(
                f"{name}: {int(mask.sum())} logged decision(s) with {what} in {where} "
                f"(the first: decision {int(run[i]) << 32 | int(seq[i])}, value {shown!r})"
            )

    prop = a[:, _COL["propensity"]]
    bad(np.isnan(prop), "propensity", "no propensity (replay needs the probability the logging policy gave its choice)")
    bad(
        ~((prop > 0) & (prop <= 1)),
        "propensity",
        "a propensity outside (0, 1] (a zero propensity cannot be reweighted)",
    )
    rate = a[:, _COL["sample_rate"]]
    rate = np.where(np.isnan(rate), 1.0, rate)
    bad(~((rate > 0) & (rate <= 1)), "sample_rate", "a sample rate outside (0, 1]")
    lat = a[:, _COL["latency_s"]]
    bad(~(np.isfinite(lat) & (lat >= 0)), "latency_s", "a latency that is not a finite number >= 0")
    code = a[:, _COL["code"]].astype(np.int64)
    fields = {}
    for field, (shift, mask) in CODE_FIELDS.items():
        fields[field] = ((code >> shift) & mask).astype(np.int8)
        bad(fields[field] == UNKNOWN_CODE[field], field, "a missing or unknown value", "not one of the known names")
    packed = []
    for column, parts in SHAPE_PACKING.items():
        v = a[:, _COL[column]]
        names = ", ".join(f for f, _, _ in parts)
        bad(~(v >= 0), names, "a missing, negative or too large value", "out of range")
        packed.append(v.astype(np.int64))
    n_kv, d_hb = packed
    raw = np.stack([fields["stage"], fields["precision"], n_kv, d_hb], axis=1).astype(np.int64)
    uniq, inverse = _unique_rows(raw)
    local = np.empty(len(uniq), dtype=np.int32)
    for i, row in enumerate(map(tuple, uniq.tolist())):
        sid = shape_ids.get(row)
        if sid is None:
            _check_shape(name, row)
            sid = shape_ids[row] = len(shape_ids)
        local[i] = sid
    probs = a[:, [_COL["prob_cpu"], _COL["prob_gpu"], _COL["prob_npu"]]]
    return {
        "run": run,
        "seq": seq,
        "stage": fields["stage"],
        "backend": fields["backend"],
        "after": fields["after"],
        "propensity": prop.copy(),
        "sample_rate": rate.astype(np.float32),
        "probs": probs.astype(np.float32),
        "latency_s": lat.copy(),
        "shape_id": local[inverse.reshape(-1)],
    }


def _unique_rows(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(raw, axis=0, return_inverse=True)``, through one integer per row when the values allow it."""
    low = raw.min(axis=0)
    span = raw.max(axis=0) - low + 1
    if (low >= 0).all() and float(np.prod(span.astype(np.float64))) < 2.0**62:
        key = np.zeros(len(raw), dtype=np.int64)
        for j in range(raw.shape[1]):  # mixed radix: exact, and sorting one column is many times faster
            key = key * span[j] + (raw[:, j] - low[j])
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        return raw[first], inverse
    uniq, inverse = np.unique(raw, axis=0, return_inverse=True)
    return uniq, inverse


def _shape_of(row: tuple[int, ...]) -> Shape:
    _, prec, n_kv, d_hb = row
    n, kv = n_kv >> 26, n_kv & ((1 << 26) - 1)
    d, heads, batch = d_hb >> 26, (d_hb >> 13) & ((1 << 13) - 1), d_hb & ((1 << 13) - 1)
    return Shape(n=n, d=d, kv_len=kv, batch=batch, heads=heads, precision=PRECISION_CODES[prec])


def _check_shape(name: str, row: tuple[int, ...]) -> None:
    try:
        _shape_of(row)
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{name}: a logged decision has a shape that is not valid ({exc})") from None


def _shapes(shape_ids: dict[tuple[int, ...], int]) -> tuple[tuple[Shape, ...], list[int]]:
    """The distinct shapes by id, and the stage each was logged for."""
    shapes: list[Shape] = [Shape(n=1, d=1)] * len(shape_ids)
    stages = [0] * len(shape_ids)
    for row, sid in shape_ids.items():
        shapes[sid] = _shape_of(row)
        stages[sid] = row[0]
    return tuple(shapes), stages


def _buckets(
    shapes: Sequence[Shape], shape_stage: Sequence[int], *, lookahead: bool
) -> tuple[np.ndarray, tuple[Shape, ...], np.ndarray]:
    """Each shape's bucket index, a representative shape per bucket, and each bucket's stage."""
    index: dict[tuple[Any, ...], int] = {}
    of_shape = np.empty(len(shapes), dtype=np.int32)
    reps: list[Shape] = []
    stages: list[int] = []
    for sid, (shape, stage_code) in enumerate(zip(shapes, shape_stage, strict=True)):
        k = (stage_code, *bucket_key(STAGE_CODES[stage_code], shape, lookahead=lookahead))
        b = index.get(k)
        if b is None:
            b = index[k] = len(reps)
            reps.append(shape)
            stages.append(stage_code)
        of_shape[sid] = b
    return of_shape, tuple(reps), np.array(stages, dtype=np.int8)


def stage_of(code: int) -> Stage:
    """The stage of a stage code."""
    return STAGE_CODES[code]


def describe_shape(shape: Shape) -> str:
    """A short label of a bucket's representative shape."""
    kv = f" kv={shape.kv_len}" if shape.kv_len else ""
    return f"n={shape.n} d={shape.d}{kv} {shape.precision.value}"


def finite_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """The weighted mean of ``values`` (NaN when there is no weight)."""
    total = float(weights.sum())
    return float((values * weights).sum() / total) if total > 0 else math.nan
