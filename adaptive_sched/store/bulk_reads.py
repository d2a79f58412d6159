"""Reading the log in bulk: numeric rows for offline replay, plain rows for export.

Every function streams the successfully observed decisions (joined with their outcomes)
in chunks, in id order, with plain :mod:`sqlite3`, while other processes may be logging
to the same file (WAL). A source is a path (opened read-only), an open
:class:`sqlite3.Connection`, or an ``sqlite_utils.Database``
(:mod:`~adaptive_sched.store.sources`). Logs older than schema 3 give None for the
probability vector.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from ..types import Backend, Stage
from .schema import run_id_range
from .sources import Source, chunks, decision_columns, reading

#: what the codes in the ``code`` column of :func:`iter_logged_columns` index
STAGE_CODES: tuple[Stage, ...] = (Stage.QKV, Stage.ATTN)
BACKEND_CODES: tuple[Backend, ...] = (Backend.CPU, Backend.GPU, Backend.NPU)
PRECISION_CODES: tuple[str, ...] = ("fp16", "int8")
#: in the ``code`` column: bits 0-1 the stage, 2-3 the backend, 4-6 the previous backend (3: none),
#: 7-8 the precision, each an index into the tuples above; UNKNOWN_CODE in a field marks a value
#: this version does not know (or a NULL where one is needed)
CODE_FIELDS: dict[str, tuple[int, int]] = {"stage": (0, 3), "backend": (2, 3), "after": (4, 7), "precision": (7, 3)}
UNKNOWN_CODE = {"stage": 3, "backend": 3, "after": 7, "precision": 3}

#: the columns of each row :func:`iter_logged_columns` yields, in order
LOGGED_COLUMNS: tuple[str, ...] = (
    "run", "seq", "code", "n_kv", "d_heads_batch",
    "propensity", "sample_rate", "prob_cpu", "prob_gpu", "prob_npu", "latency_s",
)  # fmt: skip
#: how ``n_kv`` (``n << 26 | kv_len``) and ``d_heads_batch`` (``d << 26 | heads << 13 | batch``)
#: pack a shape, exactly within a float64's 53 bits; a row with a field out of range gives -1
SHAPE_PACKING: dict[str, tuple[tuple[str, int, int], ...]] = {
    "n_kv": (("n", 26, 1 << 26), ("kv_len", 0, 1 << 26)),
    "d_heads_batch": (("d", 26, 1 << 26), ("heads", 13, 1 << 13), ("batch", 0, 1 << 13)),
}


def _code(column: str, values: Sequence[str], null: int, unknown: int) -> str:
    # The simple CASE form: SQLite evaluates it several times faster than CASE WHEN col = ...
    cases = " ".join(f"WHEN '{v}' THEN {i}" for i, v in enumerate(values))
    return f"(CASE {column} {cases} ELSE (CASE WHEN {column} IS NULL THEN {null} ELSE {unknown} END) END)"


def _code_sql() -> str:
    parts = []
    for field, column, values in (
        ("stage", "d.stage", [s.value for s in STAGE_CODES]),
        ("backend", "d.backend", [b.value for b in BACKEND_CODES]),
        ("after", "d.after", [b.value for b in BACKEND_CODES]),
        ("precision", "d.precision", list(PRECISION_CODES)),
    ):
        shift = CODE_FIELDS[field][0]
        null = len(BACKEND_CODES) if field == "after" else UNKNOWN_CODE[field]
        parts.append(f"{_code(column, values, null, UNKNOWN_CODE[field])} * {1 << shift}")
    return " + ".join(parts)


def _packed_sql() -> str:
    # Fewer columns: each value a row returns costs more than the arithmetic that packs it.
    out = []
    for fields in SHAPE_PACKING.values():
        ok = " AND ".join(f"typeof(d.{f}) = 'integer' AND d.{f} >= 0 AND d.{f} < {limit}" for f, _, limit in fields)
        value = " + ".join(f"(d.{f} << {shift})" for f, shift, _ in fields)
        out.append(f"(CASE WHEN {ok} THEN {value} ELSE -1 END)")
    return ", ".join(out)


def iter_logged_columns(
    source: Source, *, run: int | None = None, chunk_rows: int = 65_536
) -> Iterator[list[tuple[Any, ...]]]:
    """Stream the successfully observed decisions as numeric rows, in chunks, in id order.

    For columnar readers (offline replay over millions of rows): every value is a
    number (or None for SQL NULL), in the order of :data:`LOGGED_COLUMNS`. Stage,
    backends and precision are packed into one small integer ``code`` (see
    :data:`CODE_FIELDS`), the shape into two (see :data:`SHAPE_PACKING`); the decision
    id is split into its run and sequence number so that every value fits a float64
    exactly. Logs older than schema 3 give None for the probability columns. Each chunk
    is a list of at most ``chunk_rows`` tuples.

    Raises
    ------
    StoreError
        The file is missing, not a log, or cannot be read (the message names it).
    """
    where, params = _observed_filter(run)
    with reading(source, "read the decision log") as conn:
        probs = _probability_columns(conn)
        sql = (
            f"SELECT d.id >> 32, d.id & 4294967295, {_code_sql()}, {_packed_sql()}, "
            f"d.propensity, d.sample_rate, {probs}, o.latency_s "
            f"FROM decisions d JOIN outcomes o ON o.decision_id = d.id WHERE {where} ORDER BY d.id"
        )
        cursor = conn.execute(sql, params)
        yield from chunks(cursor, chunk_rows)


def _observed_filter(run: int | None) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of the successfully observed decisions, of one run or all."""
    if run is None:
        return "o.ok = 1", []
    lo, hi = run_id_range(run)
    return "o.ok = 1 AND d.id BETWEEN ? AND ?", [lo, hi]


def _probability_columns(conn: sqlite3.Connection) -> str:
    """The select list of the logged probability vector (NULLs for logs older than schema 3)."""
    logged = "prob_gpu" in decision_columns(conn)
    return "d.prob_cpu, d.prob_gpu, d.prob_npu" if logged else "NULL, NULL, NULL"


def schema_of(source: Source) -> int:
    """The schema version a log was written with (``PRAGMA user_version``)."""
    with reading(source, "read the schema version") as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


#: the columns of each row :func:`iter_export_rows` yields, in order
EXPORT_COLUMNS: tuple[str, ...] = (
    "id", "run", "time", "stage", "n", "d", "kv_len", "batch", "heads", "precision", "after",
    "action", "cost_s", "probability", "explored", "sample_rate", "prob_cpu", "prob_gpu", "prob_npu",
)  # fmt: skip


def iter_export_rows(
    source: Source, *, run: int | None = None, chunk_rows: int = 16_384
) -> Iterator[list[tuple[Any, ...]]]:
    """Stream the successfully observed decisions as plain rows (:data:`EXPORT_COLUMNS`), in chunks, in id order.

    The logged bandit feedback as other tools read it: the context (stage, shape, previous
    backend), the action (the backend chosen), its cost (the observed latency in seconds)
    and its probability (the propensity); ``sample_rate`` below 1 marks a row kept by
    exploit sampling (weight it by ``1 / sample_rate``). Logs older than schema 3 give
    None for the probability vector.
    """
    where, params = _observed_filter(run)
    with reading(source, "read the decision log") as conn:
        probs = _probability_columns(conn)
        cursor = conn.execute(
            "SELECT d.id, d.id >> 32, d.time, d.stage, d.n, d.d, d.kv_len, d.batch, d.heads, d.precision, "
            "d.after, d.backend, o.latency_s, d.propensity, d.explored, coalesce(d.sample_rate, 1.0), "
            f"{probs} FROM decisions d JOIN outcomes o ON o.decision_id = d.id WHERE {where} ORDER BY d.id",
            params,
        )
        yield from chunks(cursor, chunk_rows)


def backends_seen(source: Source) -> set[str]:
    """The backends the log's decisions chose, or gave a probability above zero."""
    with reading(source, "read the decision log") as conn:
        seen = {r[0] for r in conn.execute("SELECT DISTINCT backend FROM decisions") if r[0] is not None}
        columns = decision_columns(conn)
        for b in ("cpu", "gpu", "npu"):
            if f"prob_{b}" in columns and conn.execute(f"SELECT max(prob_{b}) > 0 FROM decisions").fetchone()[0]:
                seen.add(b)
    return seen


def count_outcomes(source: Source, *, run: int | None = None) -> int:
    """Outcomes logged (of ``run``, if given): an upper bound on the observed decisions, found cheaply."""
    where, params = "", tuple[int, ...]()
    if run is not None:
        where, params = " WHERE decision_id BETWEEN ? AND ?", tuple(run_id_range(run))
    with reading(source, "count rows") as conn:
        return int(conn.execute(f"SELECT count(*) FROM outcomes{where}", params).fetchone()[0])
