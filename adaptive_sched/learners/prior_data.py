"""Offline priors as data: training rows + model spec, hashed and verified.

A prior is *not* a pickled model. Per stage it holds its training rows (each a shape
and the median latency of every profiled backend), the model's name and
hyperparameters, the seed, the device profile and the package and river versions.
A SHA-256 of a canonical JSON of that content (its *content hash*) travels with it, so a
prior that was edited or corrupted is refused. This module only turns plain data into
verified :class:`PriorData` and back; reading and writing files and the ``priors`` table
is :mod:`adaptive_sched.store.prior_files`' and :mod:`adaptive_sched.store.priors`' job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import PriorError
from ..types import Backend, Shape, Stage, parse_backend, parse_stage
from .models import FEATURE_SET, get_spec

logger = logging.getLogger(__name__)

#: the version of the prior format (JSON files and ``priors`` rows)
FORMAT = "adaptive-sched-prior/1"


def package_version() -> str:
    """The installed adaptive-sched version."""
    from .. import __version__

    return __version__


def river_version() -> str:
    """The installed river version ('' if river is missing), recorded in every prior."""
    try:
        from importlib.metadata import version

        return version("river")
    except Exception:  # metadata missing: only informative
        return ""


# -- data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRow:
    """One training shape and the median latency (seconds) of each backend measured there."""

    shape: Shape
    latency_s: Mapping[Backend, float]

    def best(self, order: Sequence[Backend]) -> Backend:
        """The fastest backend (ties go to the earlier one in ``order``)."""
        rank = {b: i for i, b in enumerate(order)}
        return min(self.latency_s, key=lambda b: (self.latency_s[b], rank.get(b, len(rank))))

    def as_dict(self) -> dict[str, Any]:
        """JSON form: the shape fields and ``latency_s`` by backend name."""
        return {**self.shape.as_dict(), "latency_s": {b.value: self.latency_s[b] for b in sorted(self.latency_s)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> TrainingRow:
        """Inverse of :meth:`as_dict`; bad fields raise PriorError naming ``where``."""
        if not isinstance(data, Mapping):
            raise PriorError(f"{where}: expected a mapping, got {type(data).__name__}")
        fields = dict(data)
        raw = fields.pop("latency_s", None)
        if not isinstance(raw, Mapping) or not raw:
            raise PriorError(f"{where}: latency_s: expected a non-empty mapping of backend -> seconds")
        try:
            shape = Shape.from_dict(fields)
            latencies = {parse_backend(k): float(v) for k, v in raw.items()}
        except (TypeError, ValueError) as exc:
            raise PriorError(f"{where}: {exc}") from None
        for backend, value in latencies.items():
            if not math.isfinite(value) or value <= 0:
                raise PriorError(f"{where}: latency_s.{backend.value}: must be finite and > 0, got {value!r}")
        return cls(shape, latencies)


def _row_sort_key(row: TrainingRow) -> tuple[Any, ...]:
    s = row.shape
    return (s.precision.value, s.n, s.d, s.kv_len, s.batch, s.heads)


@dataclass(frozen=True)
class StagePrior:
    """The offline data of one stage: rows, model spec, and (not hashed) evaluation metrics."""

    stage: Stage
    model: str
    params: Mapping[str, Any]
    rows: tuple[TrainingRow, ...]
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PriorData:
    """Everything a prior is, as plain data. :attr:`content_hash` is computed, not stored.

    The hash covers the device, backends, seed, feature set, versions and, per stage, the
    model, hyperparameters and rows; not the name, the metrics or the creation time
    (labels, which may change without changing what the prior predicts).
    """

    name: str
    device: str
    backends: tuple[Backend, ...]
    stages: Mapping[Stage, StagePrior]
    seed: int = 0
    feature_set: str = FEATURE_SET
    package_version: str = ""
    river_version: str = ""
    created_at: float = 0.0

    def stage_content(self, stage: Stage) -> dict[str, Any]:
        """The hashed content of one stage, as canonical plain data."""
        sp = self.stages[stage]
        return {
            "format": FORMAT,
            "device": self.device,
            "backends": [b.value for b in self.backends],
            "seed": self.seed,
            "feature_set": self.feature_set,
            "package_version": self.package_version,
            "river_version": self.river_version,
            "stage": stage.value,
            "model": sp.model,
            "params": dict(sp.params),
            "rows": [r.as_dict() for r in sp.rows],
        }

    def stage_hash(self, stage: Stage) -> str:
        """SHA-256 of the canonical JSON of :meth:`stage_content`."""
        return content_hash(self.stage_content(stage))

    @property
    def content_hash(self) -> str:
        """SHA-256 over the device and every stage's hash."""
        stages = {s.value: self.stage_hash(s) for s in sorted(self.stages)}
        return content_hash({"format": FORMAT, "device": self.device, "stages": stages})

    def as_dict(self) -> dict[str, Any]:
        """The JSON file form (with the hashes, so a reader can verify it)."""
        return {
            "format": FORMAT,
            "name": self.name,
            "device": self.device,
            "content_hash": self.content_hash,
            "backends": [b.value for b in self.backends],
            "seed": self.seed,
            "feature_set": self.feature_set,
            "package_version": self.package_version,
            "river_version": self.river_version,
            "created_at": self.created_at,
            "stages": {
                s.value: {
                    "model": sp.model,
                    "params": dict(sp.params),
                    "content_hash": self.stage_hash(s),
                    "training_rows": len(sp.rows),
                    "metrics": dict(sp.metrics),
                    "rows": [r.as_dict() for r in sp.rows],
                }
                for s, sp in sorted(self.stages.items())
            },
        }


def canonical_json(data: Any) -> str:
    """Sorted keys, no spaces, ASCII, no NaN: one text per value (floats round-trip exactly)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def content_hash(data: Any) -> str:
    """``sha256`` hex digest of :func:`canonical_json` of ``data``.

    >>> content_hash({"b": 1, "a": [1.5]}) == content_hash({"a": [1.5], "b": 1})
    True
    """
    return hashlib.sha256(canonical_json(data).encode("ascii")).hexdigest()


def make_prior_data(
    rows: Mapping[Any, Iterable[TrainingRow]],
    *,
    name: str,
    device: str,
    models: Mapping[Any, str],
    params: Mapping[Any, Mapping[str, Any]] | None = None,
    seed: int = 0,
    metrics: Mapping[Any, Mapping[str, Any]] | None = None,
) -> PriorData:
    """Assemble (and validate) a :class:`PriorData` from training rows and model names.

    ``rows``, ``models``, ``params`` and ``metrics`` are keyed by stage (``Stage`` or name).

    Rows are sorted canonically, so the hash does not depend on the order they came in.
    A stage with fewer than two backends in its rows is a PriorError: a classifier has
    nothing to choose between.
    """
    params = {parse_stage(k): v for k, v in (params or {}).items()}
    metrics = {parse_stage(k): v for k, v in (metrics or {}).items()}
    model_names = {parse_stage(k): v for k, v in models.items()}
    stages: dict[Stage, StagePrior] = {}
    backends: set[Backend] = set()
    for key, stage_rows in rows.items():
        stage = parse_stage(key)
        if stage not in model_names:
            raise PriorError(f"prior {name!r}: no model named for stage {stage.value!r}")
        ordered = tuple(sorted(stage_rows, key=_row_sort_key))
        if not ordered:
            raise PriorError(f"prior {name!r}: stage {stage.value!r} has no training rows")
        stage_backends = {b for r in ordered for b in r.latency_s}
        if len(stage_backends) < 2:
            only = ", ".join(sorted(b.value for b in stage_backends))
            raise PriorError(
                f"prior {name!r}: stage {stage.value!r} has latencies for one backend only ({only}); "
                "a classifier needs at least two backends to choose between"
            )
        backends |= stage_backends
        spec = get_spec(model_names[stage])
        stages[stage] = StagePrior(
            stage=stage,
            model=spec.name,
            params=spec.params(params.get(stage)),
            rows=ordered,
            metrics=dict(metrics.get(stage, {})),
        )
    if not stages:
        raise PriorError(f"prior {name!r}: no stages")
    return PriorData(
        name=name,
        device=device,
        backends=tuple(sorted(backends)),
        stages=stages,
        seed=int(seed),
        package_version=package_version(),
        river_version=river_version(),
        created_at=time.time(),
    )


def prior_from_dict(data: Any, where: str) -> PriorData:
    """Parse the JSON form (:meth:`PriorData.as_dict`) and verify its hashes.

    Raises PriorError naming ``where`` on a missing or malformed field, an unknown model,
    or a hash that does not match the content.
    """
    if not isinstance(data, Mapping):
        raise PriorError(f"{where}: a prior must be a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise PriorError(f"{where}: unknown prior format {data.get('format')!r} (expected {FORMAT!r})")
    name = _required(data, "name", str, where)
    stages_raw = _required(data, "stages", Mapping, where)
    stored_stage_hashes: dict[Stage, str] = {}
    stages: dict[Stage, StagePrior] = {}
    for key, raw in stages_raw.items():
        try:
            stage = parse_stage(key)
        except ValueError as exc:
            raise PriorError(f"{where}: stages: {exc}") from None
        swhere = f"{where}: stages.{stage.value}"
        if not isinstance(raw, Mapping):
            raise PriorError(f"{swhere}: expected a mapping")
        rows_raw = _required(raw, "rows", list, swhere)
        rows = tuple(TrainingRow.from_dict(r, f"{swhere}.rows[{i}]") for i, r in enumerate(rows_raw))
        stages[stage] = StagePrior(
            stage=stage,
            model=_required(raw, "model", str, swhere),
            params=dict(_required(raw, "params", Mapping, swhere)),
            rows=rows,
            metrics=dict(raw.get("metrics") or {}),
        )
        stored_stage_hashes[stage] = str(raw.get("content_hash", ""))
    try:
        backends = tuple(parse_backend(b) for b in _required(data, "backends", list, where))
    except ValueError as exc:
        raise PriorError(f"{where}: backends: {exc}") from None
    prior = PriorData(
        name=name,
        device=_required(data, "device", str, where),
        backends=backends,
        stages=stages,
        seed=int(_required(data, "seed", int, where)),
        feature_set=_required(data, "feature_set", str, where),
        package_version=str(data.get("package_version", "")),
        river_version=str(data.get("river_version", "")),
        created_at=float(data.get("created_at") or 0.0),
    )
    for stage, stored in stored_stage_hashes.items():
        _check_hash(prior.stage_hash(stage), stored, f"prior {name!r} ({where}), stage {stage.value}")
    _check_hash(prior.content_hash, str(data.get("content_hash", "")), f"prior {name!r} ({where})")
    _check_usable(prior, where)
    return prior


def _required(data: Mapping[str, Any], key: str, kind: Any, where: str) -> Any:
    if key not in data:
        raise PriorError(f"{where}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PriorError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _check_hash(computed: str, stored: str, what: str) -> None:
    if computed != stored:
        raise PriorError(
            f"{what}: content hash mismatch (stored {stored[:16] or 'none'}..., computed {computed[:16]}...): "
            "the prior was modified or corrupted; rebuild it with `adaptive-sched train`"
        )


def _check_usable(prior: PriorData, where: str) -> None:
    if prior.feature_set != FEATURE_SET:
        raise PriorError(
            f"prior {prior.name!r} ({where}): built with features {prior.feature_set!r}, "
            f"this version uses {FEATURE_SET!r}; rebuild it"
        )
    for stage, sp in prior.stages.items():
        try:
            get_spec(sp.model).params(sp.params)  # unknown or out-of-range hyperparameters
        except PriorError as exc:
            raise PriorError(f"prior {prior.name!r} ({where}): stage {stage.value}: {exc}") from None
        if not sp.rows:
            raise PriorError(f"prior {prior.name!r} ({where}): stage {stage.value!r} has no rows")
    if prior.river_version and prior.river_version != river_version():
        logger.warning(
            "prior %r was built with river %s, this is river %s: its classifiers may differ slightly",
            prior.name, prior.river_version, river_version(),
        )  # fmt: skip
