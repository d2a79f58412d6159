"""Turning logged decisions and outcomes into SQL rows, in the writer thread.

The hot path only queues ``(decision, context)`` pairs and outcome tuples; this module
builds the rows later, in bulk. The parts of a row that depend only on the stage and
shape (shape columns, derived features) are built once per distinct shape and reused.

Exploit sampling keeps an exploit decision when :func:`keeps_exploit` says so: a pure
function of the decision id, so the writer keeps or leaves out a decision and its
outcome together without remembering anything, except the few explored decisions whose
id the hash would have left out (explored rows are always kept).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..features import feature_vector
from ..types import Backend, Decision, Shape, Stage, check_choice, parse_backend, parse_stage

_M64 = (1 << 64) - 1

#: decision columns bound per row, in row order (after them, one shape key)
HEAD_COLUMNS: tuple[str, ...] = (
    "id", "run", "time", "after", "backend", "propensity", "explored", "policy_version",
    "pred_cpu", "pred_gpu", "pred_npu", "sample_rate", "context", "prob_cpu", "prob_gpu", "prob_npu",
)  # fmt: skip
#: decision columns that depend only on the stage and shape: stored once per shape in a
#: temporary table of the writer's connection and joined in by SQLite
STATIC_COLUMNS: tuple[str, ...] = (
    "stage", "n", "d", "kv_len", "batch", "heads", "precision",
    "f_flops", "f_mem_bytes", "f_intensity", "f_ar", "f_score_size", "f_pad_n", "f_pad_d",
)  # fmt: skip
INSERT_DECISION_COLUMNS = HEAD_COLUMNS + STATIC_COLUMNS
#: values in one decision row: the head columns and the shape key
ROW_WIDTH = len(HEAD_COLUMNS) + 1

SHAPE_TABLE = "temp.adaptive_sched_shapes"
CREATE_SHAPE_TABLE = (
    f"CREATE TEMP TABLE IF NOT EXISTS adaptive_sched_shapes (k INTEGER PRIMARY KEY, {', '.join(STATIC_COLUMNS)})"
)
INSERT_SHAPE = (
    f"INSERT INTO {SHAPE_TABLE} (k, {', '.join(STATIC_COLUMNS)}) VALUES ({', '.join('?' * (1 + len(STATIC_COLUMNS)))})"
)

# Binding None or a bool costs sqlite3 a failed adapter lookup, about 0.4 us per value
# (several times a float's cost): rows carry '' for a missing text (NULLIF turns it back
# into NULL) and NaN for a missing number (SQLite stores NaN as NULL).
_NULLABLE_TEXT = ("after", "context")


def _head_select(value: str) -> str:
    cols = []
    for i, c in enumerate(HEAD_COLUMNS, start=1):
        v = value.format(i=i)
        cols.append(f"NULLIF({v}, '')" if c in _NULLABLE_TEXT else v)
    return ", ".join(cols + [f"s.{c}" for c in STATIC_COLUMNS])


def insert_decisions_sql(rows: int = 1) -> str:
    """The INSERT of ``rows`` decision rows (``ROW_WIDTH`` values each).

    Each row binds its head columns and a shape key; SQLite joins the shape's columns
    from the shape table, so the GIL-holding work of binding is halved.
    """
    target = f"INSERT OR IGNORE INTO decisions ({', '.join(INSERT_DECISION_COLUMNS)})"
    if rows == 1:
        return (
            f"{target} SELECT {_head_select('?')} FROM (SELECT ? AS k) AS v LEFT JOIN {SHAPE_TABLE} AS s ON s.k = v.k"
        )
    values = ", ".join(["(" + ", ".join("?" * ROW_WIDTH) + ")"] * rows)
    return (
        f"{target} SELECT {_head_select('v.column{i}')} "
        f"FROM (VALUES {values}) AS v LEFT JOIN {SHAPE_TABLE} AS s ON s.k = v.column{ROW_WIDTH}"
    )


INSERT_DECISIONS = insert_decisions_sql(1)
#: outcome rows as the hot path queues them: (decision_id, time, latency_s, ok as 0/1, error or '')
INSERT_OUTCOMES = (
    "INSERT OR IGNORE INTO outcomes (decision_id, time, latency_s, ok, error) VALUES (?, ?, ?, ?, NULLIF(?, ''))"
)
_NAN = math.nan


def multi_row_sql(single_row_sql: str, rows: int) -> str:
    """``single_row_sql`` (an ``INSERT ... VALUES (...)``) inserting ``rows`` rows at once.

    >>> multi_row_sql("INSERT INTO t (a) VALUES (?)", 3)
    'INSERT INTO t (a) VALUES (?), (?), (?)'
    """
    if single_row_sql == INSERT_DECISIONS:
        return insert_decisions_sql(rows)
    head, values = single_row_sql.split(" VALUES ", 1)
    return f"{head} VALUES {', '.join([values] * rows)}"


# positions of the derived features in adaptive_sched.features.FEATURE_NAMES
_FEATURE_SLICE = slice(3, 10)

_QKV, _ATTN = Stage.QKV, Stage.ATTN
_CPU, _GPU, _NPU = Backend.CPU, Backend.GPU, Backend.NPU

#: distinct shapes remembered per stage before the cache starts over
_CACHE_LIMIT = 65536


def unit_hash(decision_id: int) -> int:
    """A 64-bit hash of a decision id (splitmix64's finaliser): ids in a run are consecutive."""
    z = (decision_id + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def sample_threshold(rate: float) -> int:
    """The hash threshold below which an exploit decision is kept at ``rate``."""
    return min(_M64 + 1, int(rate * float(1 << 64)))


def keeps_exploit(decision_id: int, rate: float) -> bool:
    """Whether exploit sampling at ``rate`` keeps the decision ``decision_id`` (and its outcome).

    >>> keeps_exploit(12345, 1.0)
    True
    >>> sum(keeps_exploit(i, 0.25) for i in range(10_000)) / 10_000   # doctest: +ELLIPSIS
    0.2...
    """
    return unit_hash(decision_id) < sample_threshold(rate)


def _json(context: Mapping[str, Any]) -> str:
    return json.dumps(dict(context), separators=(",", ":"), default=str, allow_nan=True)


def static_part(stage: Stage, shape: Shape) -> tuple[Any, ...]:
    """The columns that depend only on the stage and shape, in insertion order."""
    f = feature_vector(stage, shape)[_FEATURE_SLICE]
    return (
        stage.value, shape.n, shape.d, shape.kv_len, shape.batch, shape.heads, shape.precision.value, *f,
    )  # fmt: skip


class RowBuilder:
    """Builds decision rows; owned by the writer thread (not thread-safe).

    Parameters
    ----------
    sample_rate : float
        Exploit sampling rate in (0, 1]; 1 keeps everything.
    """

    def __init__(self, sample_rate: float = 1.0) -> None:
        self.sample_rate = float(sample_rate)
        self._threshold = sample_threshold(self.sample_rate)
        # shape -> (key,) per stage; the key's row of static columns waits in new_shapes
        # until the writer puts it in the shape table (before the rows that use it)
        self._qkv: dict[Shape, tuple[int]] = {}
        self._attn: dict[Shape, tuple[int]] = {}
        self._next_key = 1
        self.new_shapes: list[tuple[Any, ...]] = []
        #: keys below this are no longer used by new rows (the cache started over)
        self.obsolete_below = 0
        # explored decisions the id hash would have left out: their outcomes must be kept
        self._rescued: dict[int, None] = {}
        self.rescue_limit = 1_000_000

    # -- decisions -------------------------------------------------------------------
    def decisions(
        self, items: list[tuple[Any, Any]], now: float
    ) -> tuple[list[tuple[Any, ...]], int, list[tuple[Any, str]]]:
        """Rows for ``items`` (``(decision, context)`` pairs).

        Returns ``(rows, sampled_out, rejected)`` where ``rejected`` lists
        ``(item, reason)`` for items that are not valid decisions.
        """
        try:
            if self.sample_rate >= 1.0:
                return self._all(items, now), 0, []
            rows = self._sampled(items, now)
            return rows, len(items) - len(rows), []
        except Exception:  # a malformed item: redo the batch one item at a time
            return self._one_by_one(items, now)

    def _all(self, items: list[tuple[Any, Any]], now: float) -> list[tuple[Any, ...]]:
        qkv, attn, static = self._qkv, self._attn, self._static
        rows: list[tuple[Any, ...]] = []
        append = rows.append
        for d, ctx in items:
            id_, stage, shape, choice, after, t, _usable = d
            backend, prop, explored, predicted, probs, pv, _entry = choice
            cache = qkv if stage is _QKV else attn if stage is _ATTN else None
            st = cache.get(shape) if cache is not None else None
            if st is None:
                st = static(stage, shape)
            head = (
                id_, id_ >> 32, t or now,
                "" if after is None else after._value_, backend._value_,
                prop, 1 if explored else 0, pv,
                predicted.get(_CPU, _NAN), predicted.get(_GPU, _NAN), predicted.get(_NPU, _NAN),
                1.0, "" if ctx is None else _json(ctx),
                probs.get(_CPU, _NAN), probs.get(_GPU, _NAN), probs.get(_NPU, _NAN),
            )  # fmt: skip
            # tuple + tuple: a starred display builds a list first (about 15% slower here)
            append(head + st)
        return rows

    def _sampled(self, items: list[tuple[Any, Any]], now: float) -> list[tuple[Any, ...]]:
        qkv, attn, static = self._qkv, self._attn, self._static
        threshold, rate, rescued = self._threshold, self.sample_rate, self._rescued
        rows: list[tuple[Any, ...]] = []
        append = rows.append
        for d, ctx in items:
            id_, stage, shape, choice, after, t, _usable = d
            backend, prop, explored, predicted, probs, pv, _entry = choice
            if unit_hash(id_) < threshold:
                keep_rate = 1.0 if explored else rate
            elif explored:
                keep_rate = 1.0
                rescued[id_] = None
            else:
                continue
            cache = qkv if stage is _QKV else attn if stage is _ATTN else None
            st = cache.get(shape) if cache is not None else None
            if st is None:
                st = static(stage, shape)
            head = (
                id_, id_ >> 32, t or now,
                "" if after is None else after._value_, backend._value_,
                prop, 1 if explored else 0, pv,
                predicted.get(_CPU, _NAN), predicted.get(_GPU, _NAN), predicted.get(_NPU, _NAN),
                keep_rate, "" if ctx is None else _json(ctx),
                probs.get(_CPU, _NAN), probs.get(_GPU, _NAN), probs.get(_NPU, _NAN),
            )  # fmt: skip
            # tuple + tuple: a starred display builds a list first (about 15% slower here)
            append(head + st)
        if len(rescued) > self.rescue_limit:
            # Outcomes follow their decision within a batch or two; forget the oldest half.
            for key in list(rescued)[: len(rescued) // 2]:
                del rescued[key]
        return rows

    def _static(self, stage: Any, shape: Any) -> tuple[int]:
        stage = parse_stage(stage)
        if not isinstance(shape, Shape):
            raise TypeError(f"shape must be a Shape, got {type(shape).__name__}")
        cache = self._qkv if stage is _QKV else self._attn
        if len(cache) >= _CACHE_LIMIT:
            self._qkv.clear()
            self._attn.clear()
            self.obsolete_below = self._next_key
            cache = self._qkv if stage is _QKV else self._attn
        key = self._next_key
        self._next_key += 1
        self.new_shapes.append((key, *static_part(stage, shape)))
        st = cache[shape] = (key,)
        return st

    def _one_by_one(
        self, items: list[tuple[Any, Any]], now: float
    ) -> tuple[list[tuple[Any, ...]], int, list[tuple[Any, str]]]:
        rows: list[tuple[Any, ...]] = []
        rejected: list[tuple[Any, str]] = []
        sampled_out = 0
        for item in items:
            try:
                row = self._checked(item, now)
            except Exception as exc:
                rejected.append((item, f"{type(exc).__name__}: {exc}"))
                continue
            if row is None:
                sampled_out += 1
            else:
                rows.append(row)
        return rows, sampled_out, rejected

    def _checked(self, item: Any, now: float) -> tuple[Any, ...] | None:
        """One row, validating every field (the slow path for batches holding a bad item)."""
        d, ctx = item
        if not isinstance(d, tuple) or len(d) != len(Decision._fields):
            raise TypeError(f"expected an adaptive_sched.types.Decision, got {type(d).__name__}")
        id_, stage, shape, choice, after, t, _usable = d
        if isinstance(id_, bool) or not isinstance(id_, int) or not 0 <= id_ < (1 << 63):
            raise ValueError(f"id must be an integer in [0, 2**63), got {id_!r}")
        backend, prop, explored, pred, probs, pv, _entry = check_choice(choice)
        stage = parse_stage(stage)
        after = None if after is None else parse_backend(after)
        t = float(t or now)
        if not math.isfinite(t):
            raise ValueError(f"time must be finite, got {t!r}")
        rate = 1.0
        if self.sample_rate < 1.0:
            if unit_hash(id_) < self._threshold:
                rate = 1.0 if explored else self.sample_rate
            elif explored:
                self._rescued[id_] = None
            else:
                return None
        cache = self._qkv if stage is _QKV else self._attn
        st = cache.get(shape) or self._static(stage, shape)
        return (
            id_, id_ >> 32, t, "" if after is None else after.value, backend.value,
            prop, 1 if explored else 0, int(pv),
            pred.get(_CPU, _NAN), pred.get(_GPU, _NAN), pred.get(_NPU, _NAN),
            rate, "" if ctx is None else _json(ctx),
            probs.get(_CPU, _NAN), probs.get(_GPU, _NAN), probs.get(_NPU, _NAN),
            *st,
        )  # fmt: skip

    def forget_shapes(self) -> None:
        """Start the shape cache over: the shape table it fed is gone (a new connection)."""
        self._qkv.clear()
        self._attn.clear()
        self.new_shapes = []
        self.obsolete_below = self._next_key

    def take_new_shapes(self) -> list[tuple[Any, ...]]:
        """Rows for the shape table created since the last call."""
        new, self.new_shapes = self.new_shapes, []
        return new

    # -- outcomes --------------------------------------------------------------------
    def outcomes(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The outcome rows to store: all of them, or those whose decision sampling kept."""
        if self.sample_rate >= 1.0:
            return rows
        threshold, rescued = self._threshold, self._rescued
        kept = []
        for row in rows:
            id_ = row[0]
            try:
                if unit_hash(id_) < threshold:
                    kept.append(row)
                elif id_ in rescued:
                    del rescued[id_]
                    kept.append(row)
            except TypeError:
                kept.append(row)  # not an integer id: let the insert reject it with its reason
        return kept


def describe_rejected(item: Any) -> str:
    """A short name for a rejected queue item, for log messages."""
    try:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], tuple):
            return f"decision {item[0][0]!r}"
        if isinstance(item, tuple) and item:
            return f"outcome of decision {item[0]!r}"
    except Exception:
        pass
    return repr(item)[:80]


def chunks(seq: list[Any], size: int) -> Iterable[list[Any]]:
    """``seq`` in consecutive slices of at most ``size`` items."""
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
