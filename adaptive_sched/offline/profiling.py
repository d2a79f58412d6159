"""Profiling sweeps: time every stage of every grid point on every executor, into ``profiles``.

A *grid* is a YAML file (or a mapping) listing the values of each shape field; its
points are the cartesian products of those values. :func:`profile_grid` runs each
point on each executor with a few warm-up runs and timed repetitions, and writes one
row per device, backend, stage and shape (median, p10, p90, min, max) to the
``profiles`` table of an SQLite database. A sweep is resumable: points already in the
table are skipped. A point that fails (the executor raises, or does not support the
shape) is recorded with ``ok = 0`` and its error, and the sweep goes on.

Grid files
----------
Keys: ``name``, ``description``, ``stages`` (default both), the shape fields ``n``, ``d``,
``kv_len``, ``batch``, ``heads``, ``precision``, and ``grids``: a list of sub-grids. Shape
fields at the top level apply to every sub-grid that does not set them; a file without
``grids`` is a single grid. Each field takes a value, a list, or a range:
``{start: 16, stop: 512, step: 16}`` (inclusive) or ``{start: 256, stop: 4096, factor: 2}``.

.. code-block:: yaml

    name: tiny
    precision: [fp16, int8]
    grids:
      - {n: 1, d: [64, 128], kv_len: {start: 0, stop: 64, step: 32}}
      - {n: [16, 32], d: 64}

The QKV projection does not depend on the KV cache or on the head count, so a ``qkv``
point is measured once per ``(n, d, batch, precision)``: :func:`stage_shape` sets its
``kv_len`` to 0 and its heads to the default before it is measured or looked up.

>>> grid = load_grid({"name": "t", "n": [1, 16], "d": 64, "kv_len": [0, 32]})
>>> len(grid.shapes), len(grid.points())   # qkv ignores kv_len: 2 + 4 points
(4, 6)
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ExecutorUnavailable, StoreError
from ..executors.base import Executor
from ..features import stage_shape
from ..paths import resolve_config
from ..stages import serving_inputs
from ..types import Backend, Shape, Stage, parse_backend, parse_precision, parse_stage
from ..validation import Problems, expect_int, join, read_yaml

if TYPE_CHECKING:
    from ..store.profiles import ProfileRow

logger = logging.getLogger(__name__)

SHAPE_FIELDS: tuple[str, ...] = ("n", "d", "kv_len", "batch", "heads", "precision")
_FIELD_MIN = {"n": 1, "d": 1, "kv_len": 0, "batch": 1, "heads": 1}
_DEFAULTS: dict[str, list[Any]] = {"kv_len": [0], "batch": [1], "heads": [None], "precision": ["fp16"]}
_TOP_KEYS = frozenset({"name", "description", "stages", "grids", *SHAPE_FIELDS})
_SUB_KEYS = frozenset({"name", "description", *SHAPE_FIELDS})
_RANGE_KEYS = frozenset({"start", "stop", "step", "factor"})
#: a grid may not expand to more points than this (a typo in a range should not run for days)
MAX_POINTS = 200_000


# -- grids ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """The shapes and stages of a sweep.

    ``shapes`` are distinct, in file order; :meth:`points` gives the measured
    ``(stage, shape)`` pairs after :func:`stage_shape` (so qkv points are shared).
    """

    name: str
    shapes: tuple[Shape, ...]
    stages: tuple[Stage, ...] = (Stage.QKV, Stage.ATTN)
    source: str = "<mapping>"
    description: str = ""

    def points(self) -> list[tuple[Stage, Shape]]:
        """Distinct ``(stage, stage_shape)`` pairs, stage by stage, in grid order."""
        seen: set[tuple[Stage, Shape]] = set()
        out: list[tuple[Stage, Shape]] = []
        for stage in self.stages:
            for shape in self.shapes:
                key = (stage, stage_shape(stage, shape))
                if key not in seen:
                    seen.add(key)
                    out.append(key)
        return out


def load_grid(source: Grid | str | Path | Mapping[str, Any]) -> Grid:
    """Load a grid from a :class:`Grid`, a mapping, a YAML path, or a shipped grid's name.

    Errors are one :class:`~adaptive_sched.errors.ConfigError` listing every problem, one
    line each naming the file and the key (``grids[1].n`` for a sub-grid's field).

    >>> load_grid("smoke").name
    'smoke'
    >>> load_grid({"n": 0, "d": 64, "size": 3})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    adaptive_sched.errors.ConfigError: <mapping>: size: unknown key (allowed: batch, d, ...)
    <mapping>: n: must be >= 1, got 0
    """
    if isinstance(source, Grid):
        return source
    if isinstance(source, Mapping):
        return _parse_grid(source, "<mapping>", default_name="grid")
    path = resolve_config(source, "grids")
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a grid file must be a mapping of keys, got {type(data).__name__}")
    return _parse_grid(data, str(path), default_name=path.stem)


def _parse_grid(data: Mapping[str, Any], origin: str, default_name: str) -> Grid:
    """Every problem of the grid is collected, then raised at once; a sub-grid with a wrong
    field is not expanded (its points would only repeat the mistake)."""
    problems = Problems()
    _check_keys(data, _TOP_KEYS, "", problems)
    stages_raw = data.get("stages", ["qkv", "attn"])
    stages: tuple[Stage, ...] = ()
    try:
        listed = stages_raw if isinstance(stages_raw, list) else [stages_raw]
        stages = tuple(dict.fromkeys(parse_stage(s) for s in listed))
        if not stages:
            problems.add("stages: must name at least one stage")
    except ValueError as exc:
        problems.add(f"stages: {exc}")
    before = len(problems)
    top = _parsed_fields(data, "", problems)
    top_ok = len(problems) == before  # else every sub-grid would lack the field found wrong
    subs = data.get("grids")
    if subs is None:
        subs = [{}]
    elif not isinstance(subs, list) or not subs:
        problems.add("grids: must be a non-empty list of sub-grids")
        subs = []
    shapes: dict[Shape, None] = {}
    for i, sub in enumerate(subs):
        key = f"grids[{i}]" if "grids" in data else ""
        if not isinstance(sub, Mapping):
            problems.add(f"{key}: must be a mapping of shape fields, got {type(sub).__name__}")
            continue
        _check_keys(sub, _SUB_KEYS, key, problems)
        before = len(problems)
        fields = {**top, **_parsed_fields(sub, key, problems)}
        if len(problems) == before and top_ok:
            with problems.catch():
                shapes.update(dict.fromkeys(_expand(fields, key)))
    problems.raise_if_any(origin)
    return Grid(
        name=str(data.get("name", default_name)),
        shapes=tuple(shapes),
        stages=stages,
        source=origin,
        description=str(data.get("description", "")),
    )


def _check_keys(data: Mapping[str, Any], allowed: frozenset[str], where: str, problems: Problems) -> None:
    for key in data:
        if key not in allowed:
            problems.add(f"{join(where, str(key))}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _parsed_fields(data: Mapping[str, Any], where: str, problems: Problems) -> dict[str, list[Any]]:
    """The values of each shape field ``data`` sets, its problems recorded."""
    out: dict[str, list[Any]] = {}
    for name in SHAPE_FIELDS:
        if name in data:
            with problems.catch():
                out[name] = _field_values(name, data[name], join(where, name))
    return out


def _expand(fields: Mapping[str, list[Any]], where: str) -> Iterable[Shape]:
    missing = [f"{join(where, name)}: required key is missing" for name in ("n", "d") if name not in fields]
    if missing:
        raise ConfigError(*missing)
    values = {f: fields.get(f, _DEFAULTS.get(f, [])) for f in SHAPE_FIELDS}
    total = math.prod(len(v) for v in values.values())
    if total > MAX_POINTS:
        raise ConfigError(f"{where or 'grid'}: expands to {total} points (more than {MAX_POINTS}); check the ranges")
    shapes = []
    for combo in itertools.product(*(values[f] for f in SHAPE_FIELDS)):
        kwargs = dict(zip(SHAPE_FIELDS, combo, strict=True))
        try:
            shapes.append(Shape(**kwargs))
        except ValueError as exc:  # the first wrong point stands for the others
            raise ConfigError(f"{where or 'grid'}: invalid point {kwargs}: {exc}") from None
    return shapes


def _field_values(name: str, raw: Any, key: str) -> list[Any]:
    """The values of field ``name``; errors name ``key`` (the field's path in the file)."""
    if name == "heads" and raw is None:
        return [None]
    if isinstance(raw, Mapping):
        items = _range_values(name, raw, key)
    elif isinstance(raw, list):
        items = raw
    else:
        items = [raw]
    if not items:
        raise ConfigError(f"{key}: empty list")
    out: list[Any] = []
    for item in items:
        if name == "heads" and item is None:
            out.append(None)  # the default: head_dim 64
        elif name == "precision":
            try:
                out.append(parse_precision(str(item)))
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        else:
            out.append(_int_value(name, item, key))
    return list(dict.fromkeys(out))


def _int_value(name: str, item: Any, key: str) -> int:
    integral = isinstance(item, float) and item.is_integer()  # 1e3 in YAML is a float
    value = expect_int(int(item) if integral else item, key)
    if value < _FIELD_MIN[name]:
        raise ConfigError(f"{key}: must be >= {_FIELD_MIN[name]}, got {value}")
    return value


def _range_values(name: str, spec: Mapping[str, Any], key: str) -> list[int]:
    if name == "precision":
        raise ConfigError(f"{key}: a range is not allowed, list the precisions")
    unknown = [
        f"{key}: unknown range key {k!r} (allowed: factor, start, step, stop)" for k in spec if k not in _RANGE_KEYS
    ]
    if unknown:
        raise ConfigError(*unknown)
    if "start" not in spec or "stop" not in spec:
        raise ConfigError(f"{key}: a range needs 'start' and 'stop'")
    if ("step" in spec) == ("factor" in spec):
        raise ConfigError(f"{key}: a range needs exactly one of 'step' or 'factor'")
    start = _int_value(name, spec["start"], f"{key}.start")
    stop = _int_value(name, spec["stop"], f"{key}.stop")
    if stop < start:
        raise ConfigError(f"{key}: stop ({stop}) is below start ({start})")
    if "step" in spec:
        step = spec["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ConfigError(f"{key}: step must be an integer >= 1, got {step!r}")
        return list(range(start, stop + 1, step))
    factor = spec["factor"]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
        raise ConfigError(f"{key}: factor must be a number > 1, got {factor!r}")
    if start < 1:
        raise ConfigError(f"{key}: a geometric range needs start >= 1, got {start}")
    out, value = [], float(start)
    while round(value) <= stop:
        out.append(round(value))
        value *= factor
    return out


# -- the sweep -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """Reported after each (stage, shape, backend) point: ``status`` is measured, skipped or failed."""

    done: int
    total: int
    stage: Stage
    backend: Backend
    shape: Shape
    status: str
    median_s: float | None = None


@dataclass
class ProfileSummary:
    """What a sweep did; :meth:`as_dict` is its JSON form."""

    device: str
    grid: str
    db_path: str
    total: int = 0
    measured: int = 0
    skipped: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def all_failed(self) -> bool:
        """True when points were measured in this sweep and every one of them failed."""
        return bool(self.failed) and self.failed == self.total - self.skipped

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for ``--output json``)."""
        return {
            "device": self.device,
            "grid": self.grid,
            "db": self.db_path,
            "total": self.total,
            "measured": self.measured,
            "skipped": self.skipped,
            "failed": self.failed,
            "elapsed_s": round(self.elapsed_s, 3),
            "failures": list(self.failures),
        }


#: failures listed in a summary; the rest are only counted (they are all in the table)
MAX_LISTED_FAILURES = 20


def profile_grid(
    executors: Mapping[Backend, Executor] | Mapping[str, Executor],
    grid: Grid | str | Path | Mapping[str, Any],
    db_path: str | Path,
    *,
    device: str,
    warmup: int = 2,
    repetitions: int = 10,
    progress: Callable[[ProgressEvent], None] | None = None,
    retry_failed: bool = False,
) -> ProfileSummary:
    """Measure every point of ``grid`` on every executor and store the statistics in ``db_path``.

    Parameters
    ----------
    executors
        Backend name -> executor; each executor's own ``backend`` must match its key.
    grid
        A :class:`Grid`, a grid mapping, a YAML path, or a shipped grid's name (``"paper"``).
    db_path
        The SQLite database (created if missing; its directory must exist).
    device
        The device profile name the rows are stored under (``"rk3588"``); priors are
        trained per device.
    warmup, repetitions
        Untimed runs, then timed runs, per point.
    progress
        Called with a :class:`ProgressEvent` after every point (also skipped ones).
    retry_failed
        Measure again the points stored with ``ok = 0`` (by default they count as done).

    Returns
    -------
    ProfileSummary

    Examples
    --------
    >>> import os, tempfile
    >>> from adaptive_sched.executors import create_executor
    >>> db = os.path.join(tempfile.mkdtemp(), "p.db")
    >>> grid = {"n": 1, "d": 64, "kv_len": [0, 16]}
    >>> s = profile_grid({"cpu": create_executor("cpu_numpy")}, grid, db, device="host",
    ...                  warmup=0, repetitions=2)
    >>> s.measured, s.failed
    (3, 0)
    >>> profile_grid({"cpu": create_executor("cpu_numpy")}, grid, db, device="host").skipped
    3
    """
    if not device or not isinstance(device, str):
        raise ConfigError(f"device: must be a non-empty name, got {device!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup: must be an integer >= 0, got {warmup!r}")
    if isinstance(repetitions, bool) or not isinstance(repetitions, int) or repetitions < 1:
        raise ConfigError(f"repetitions: must be an integer >= 1, got {repetitions!r}")
    execs = _check_executors(executors)
    the_grid = load_grid(grid)

    from ..store.connection import open_database
    from ..store.profiles import measured_keys, profile_key, write_profile

    points = the_grid.points()
    summary = ProfileSummary(device=device, grid=the_grid.name, db_path=str(db_path))
    summary.total = len(points) * len(execs)
    start = time.perf_counter()
    db = open_database(db_path)
    try:
        done_keys = measured_keys(db, device, include_failed=not retry_failed)
        done = 0
        for stage, shape in points:
            for backend, executor in execs.items():
                done += 1
                if profile_key(device, backend, stage, shape) in done_keys:
                    summary.skipped += 1
                    _report(progress, done, summary.total, stage, backend, shape, "skipped", None)
                    continue
                row = _measure(executor, backend, stage, shape, device, warmup, repetitions)
                write_profile(db, row)
                if row.ok:
                    summary.measured += 1
                    status = "measured"
                else:
                    summary.failed += 1
                    status = "failed"
                    if len(summary.failures) < MAX_LISTED_FAILURES:
                        summary.failures.append(
                            {"stage": stage.value, "backend": backend.value, **shape.as_dict(), "error": row.error}
                        )
                _report(progress, done, summary.total, stage, backend, shape, status, row.median_s)
    finally:
        summary.elapsed_s = time.perf_counter() - start
        db.close()
    logger.info(
        "profiled %s on %s: %d measured, %d skipped, %d failed in %.1f s",
        the_grid.name, device, summary.measured, summary.skipped, summary.failed, summary.elapsed_s,
    )  # fmt: skip
    return summary


def _check_executors(executors: Mapping[Backend, Executor] | Mapping[str, Executor]) -> dict[Backend, Executor]:
    if not isinstance(executors, Mapping) or not executors:
        raise ConfigError("executors: need at least one backend -> executor")
    out: dict[Backend, Executor] = {}
    for key, executor in executors.items():
        try:
            backend = parse_backend(key)
        except ValueError as exc:
            raise ConfigError(f"executors: {exc}") from None
        if not isinstance(executor, Executor):
            raise ConfigError(f"executors[{backend.value}]: not an Executor ({type(executor).__name__})")
        if executor.backend is not backend:
            raise ConfigError(
                f"executors[{backend.value}]: the executor runs on {executor.backend.value!r}, not {backend.value!r}"
            )
        if not executor.is_available():
            raise ExecutorUnavailable(
                f"executors[{backend.value}]: {executor.kind} is not available: {executor.unavailable_reason}"
            )
        out[backend] = executor
    return out


def _measure(
    executor: Executor, backend: Backend, stage: Stage, shape: Shape, device: str, warmup: int, repetitions: int
) -> ProfileRow:
    from ..store.profiles import ProfileRow

    failed = ProfileRow(
        device=device,
        executor=executor.kind,
        backend=backend.value,
        stage=stage.value,
        shape=shape,
        warmup=warmup,
        repetitions=repetitions,
        median_s=None,
        ok=False,
    )
    reason = executor.why_unsupported(stage, shape)
    if reason is not None:
        return replace(failed, error=f"unsupported: {reason}", measured_at=time.time())
    try:
        executor.prepare(stage, shape)
        inputs = None if executor.latency_only else serving_inputs(stage, shape)
        for _ in range(warmup):
            executor.run(stage, shape, inputs)
        samples = [_checked_latency(executor.run(stage, shape, inputs).latency_s) for _ in range(repetitions)]
    except (KeyboardInterrupt, SystemExit, StoreError):
        raise
    except Exception as exc:  # one failing point must not end a sweep of thousands
        logger.debug("%s %s on %s failed", stage.value, shape, backend.value, exc_info=True)
        return replace(failed, error=f"{type(exc).__name__}: {exc}", measured_at=time.time())
    stats = latency_stats(samples)
    return replace(
        failed,
        median_s=stats["median_s"],
        p10_s=stats["p10_s"],
        p90_s=stats["p90_s"],
        min_s=stats["min_s"],
        max_s=stats["max_s"],
        ok=True,
        measured_at=time.time(),
    )


def _checked_latency(value: Any) -> float:
    try:
        latency = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"executor returned a non-numeric latency {value!r}") from None
    if not math.isfinite(latency) or latency <= 0.0:
        raise ValueError(f"executor returned an invalid latency {value!r} (must be finite and > 0)")
    return latency


def latency_stats(samples: Sequence[float]) -> dict[str, float]:
    """Median, p10, p90, min and max of ``samples`` (seconds), as profile columns.

    >>> latency_stats([1.0, 2.0, 3.0, 4.0, 5.0])["median_s"]
    3.0
    """
    if not samples:
        raise ValueError("no latency samples")
    import numpy as np

    arr = np.asarray(samples, dtype=float)
    p10, median, p90 = np.percentile(arr, [10, 50, 90])
    return {
        "median_s": float(median),
        "p10_s": float(p10),
        "p90_s": float(p90),
        "min_s": float(arr.min()),
        "max_s": float(arr.max()),
    }


def _report(
    progress: Callable[[ProgressEvent], None] | None,
    done: int,
    total: int,
    stage: Stage,
    backend: Backend,
    shape: Shape,
    status: str,
    median_s: float | None,
) -> None:
    if progress is not None:
        progress(ProgressEvent(done, total, stage, backend, shape, status, median_s))


# -- a sweep of a config's backends -----------------------------------------------------


def profile_config(
    config: Any,
    grid: Grid | str | Path | Mapping[str, Any],
    db_path: str | Path,
    *,
    warmup: int = 1,
    repetitions: int = 5,
    include_fallback: bool = False,
    retry_failed: bool = False,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> ProfileSummary:
    """Sweep ``grid`` over the candidate backends of ``config`` into ``db_path``.

    Parameters
    ----------
    config
        A loaded :class:`~adaptive_sched.config.Config`, or what
        :func:`~adaptive_sched.config.load_config` takes (a path, a shipped name, a mapping).
    grid, db_path, warmup, repetitions, retry_failed, progress
        As for :func:`profile_grid`.
    include_fallback
        Also measure the fallback backends (the CPU in the RK3588 configs); a prior
        chooses between the candidates, so they are left out by default.

    Returns
    -------
    ProfileSummary
        Counts of measured, skipped and failed points (failed points are in the table too).
    """
    from ..build import build_executors
    from ..config import Config, load_config

    if not isinstance(config, Config):
        config = load_config(config)
    built = build_executors(config).executors
    execs = {b: ex for b, ex in built.items() if include_fallback or config.backends[b].role == "candidate"}
    try:
        return profile_grid(
            execs,
            grid,
            db_path,
            device=config.device,
            warmup=warmup,
            repetitions=repetitions,
            progress=progress,
            retry_failed=retry_failed,
        )
    finally:
        for ex in built.values():
            ex.close()
