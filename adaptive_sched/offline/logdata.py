"""Decision logs as columns: numpy arrays over every observed decision of one or more logs.

Offline replay reads millions of rows; a Python object per row would cost seconds and
hundreds of megabytes, so :func:`read_logs` streams the rows from SQLite in chunks
(:func:`~adaptive_sched.store.reads.iter_logged_columns`) into a few typed arrays.
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from ..policies import bucket_key
from ..store.reads import (
    BACKEND_CODES,
    LOGGED_COLUMNS,
    PRECISION_CODES,
    STAGE_CODES,
    iter_logged_columns,
    runs,
    schema_of,
)
from ..types import Backend, Shape, Stage

logger = logging.getLogger(__name__)

#: index of each column in a chunk from :func:`iter_logged_columns`
_COL = {name: i for i, name in enumerate(LOGGED_COLUMNS)}
_SHAPE_COLS = [_COL[c] for c in ("stage", "n", "d", "kv_len", "batch", "heads", "precision")]
#: code of "no previous backend" in :attr:`LogData.after` (backends are 0, 1, 2)
NO_AFTER = 3
#: the backends, in the order of the columns of probability arrays
BACKENDS: tuple[Backend, ...] = BACKEND_CODES
AFTERS: tuple[Backend | None, ...] = (*BACKEND_CODES, None)


@dataclass(frozen=True)
class LogData:
    """Every successfully observed decision of some logs, as columns (one entry per row).

    ``stage`` indexes :data:`~adaptive_sched.store.reads.STAGE_CODES`, ``backend``
    :data:`BACKENDS`, ``after`` :data:`AFTERS` (:data:`NO_AFTER` when the decision had
    no previous stage). ``probs`` is the probability vector the logging policy gave
    (columns :data:`BACKENDS`; NaN rows for logs older than schema 3). ``cell`` is the
    row's shape bucket as the latency model and support checks see it (``qkv`` ignores
    the KV length); ``key`` the bucket candidates are asked about (``qkv`` sees the KV
    length, as policies that plan ``attn`` do), with ``key_shapes[key]`` a shape of it.
    """

    sources: tuple[str, ...]
    source: np.ndarray  # int16: index into sources
    run: np.ndarray  # int64
    seq: np.ndarray  # int64: the decision's sequence number in its run
    time: np.ndarray  # float64
    stage: np.ndarray  # int8
    backend: np.ndarray  # int8
    after: np.ndarray  # int8
    propensity: np.ndarray  # float64
    sample_rate: np.ndarray  # float64
    probs: np.ndarray  # float64 (rows, 3)
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
        return 1.0 / self.sample_rate


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


def read_logs(paths: Sequence[str | Path], *, run: int | None = None, chunk_rows: int = 65_536) -> LogData:
    """Read the successfully observed decisions of every log in ``paths`` (files or directories).

    Raises
    ------
    StoreError
        A file is not a readable log, holds nothing to replay, holds rows replay cannot
        use (no or zero propensities, unknown stages or backends), or the logs come
        from different device profiles. The message names the file and the column.
    """
    files = log_paths(paths)
    parts: list[dict[str, np.ndarray]] = []
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
            parts.append(part)
            rows_here += len(chunk)
        if rows_here == 0:
            where = f" in run {run}" if run is not None else ""
            raise StoreError(f"{name}: no logged decisions with a successful outcome{where}: nothing to replay")
    known = {d: f for d, f in devices.items() if d}
    if len(known) > 1:
        listed = "; ".join(f"{d!r} in {', '.join(sorted(set(f)))}" for d, f in sorted(known.items()))
        raise StoreError(f"the logs come from different device profiles ({listed}); replay one device at a time")
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    shapes, shape_stage = _shapes(shape_ids)
    cells, cell_shapes, cell_stage = _buckets(shapes, shape_stage, lookahead=False)
    keys, key_shapes, key_stage = _buckets(shapes, shape_stage, lookahead=True)
    shape_id = cols["shape_id"]
    probs = np.stack([cols["prob_cpu"], cols["prob_gpu"], cols["prob_npu"]], axis=1)
    logged_vector = ~np.isnan(probs).all(axis=1)
    probs[logged_vector] = np.nan_to_num(probs[logged_vector], nan=0.0)  # NULL: a backend it could not choose
    return LogData(
        sources=tuple(str(p) for p in files),
        source=cols["source"],
        run=cols["run"],
        seq=cols["seq"],
        time=cols["time"],
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
    seq = a[:, _COL["seq"]].astype(np.int64)
    run = a[:, _COL["run"]].astype(np.int64)

    def bad(mask: np.ndarray, column: str, what: str) -> None:
        if mask.any():
            i = int(np.argmax(mask))
            raise StoreError(
                f"{name}: {int(mask.sum())} logged decision(s) with {what} in column {column} "
                f"(the first: decision {int(run[i]) << 32 | int(seq[i])}, value {chunk[i][_COL[column]]!r})"
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
    for column in ("stage", "backend"):
        v = a[:, _COL[column]]
        bad(v < 0, column, "a missing or unknown value")
    bad(a[:, _COL["after"]] == -2, "after", "an unknown backend")
    bad(a[:, _COL["precision"]] < 0, "precision", "a missing or unknown precision")
    for column in ("n", "d", "kv_len", "batch", "heads"):
        bad(np.isnan(a[:, _COL[column]]), column, "a missing value")
    raw = a[:, _SHAPE_COLS].astype(np.int64)
    uniq, inverse = np.unique(raw, axis=0, return_inverse=True)
    local = np.empty(len(uniq), dtype=np.int32)
    for i, row in enumerate(map(tuple, uniq.tolist())):
        sid = shape_ids.get(row)
        if sid is None:
            _check_shape(name, row)
            sid = shape_ids[row] = len(shape_ids)
        local[i] = sid
    after = a[:, _COL["after"]]
    return {
        "run": run,
        "seq": seq,
        "time": a[:, _COL["time"]].copy(),
        "stage": a[:, _COL["stage"]].astype(np.int8),
        "backend": a[:, _COL["backend"]].astype(np.int8),
        "after": np.where(after < 0, NO_AFTER, after).astype(np.int8),
        "propensity": prop.copy(),
        "sample_rate": rate,
        "prob_cpu": a[:, _COL["prob_cpu"]].copy(),
        "prob_gpu": a[:, _COL["prob_gpu"]].copy(),
        "prob_npu": a[:, _COL["prob_npu"]].copy(),
        "latency_s": lat.copy(),
        "shape_id": local[inverse.reshape(-1)],
    }


def _shape_of(row: tuple[int, ...]) -> Shape:
    _, n, d, kv, batch, heads, prec = row
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
