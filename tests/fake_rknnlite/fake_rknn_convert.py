"""The fake counterpart of rknn-toolkit2's conversion: a fake ``.rknn`` file for a manifest entry.

Like ``rknn.build(do_quantization=True, dataset=...)``, INT8 models get static ranges
calibrated on sample inputs: the fake graph runs in float on each sample (the inputs
:func:`adaptive_sched.stages.make_inputs` gives, at the call shapes
:func:`~adaptive_sched.executors.rknn_feed.calibration_shapes` spreads over a bucket,
fed as the executor feeds them) and every int8 tensor's range over the samples is kept.
Pass ``calibrate=False`` for a model that takes every tensor's own range at run time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from rknnlite import _fake_model
from rknnlite.api import _Graph

from adaptive_sched.executors.rknn_feed import calibration_shapes, model_feed, smallest_served
from adaptive_sched.executors.rknn_models import ModelEntry, write_manifest
from adaptive_sched.stages import make_inputs
from adaptive_sched.types import Precision, Shape, Stage

#: calibration samples: with only a few, a small tensor's range is underestimated and clips (try 3)
CALIBRATION_SEEDS = tuple(range(1, 65))
#: each calibrated range is widened by this fraction of its width, like the build script's default
HEADROOM = 0.25


def _header(entry: ModelEntry, target_platform: str) -> dict:
    return {
        "target_platform": target_platform,
        "op": entry.stage.value,
        "precision": entry.shape.precision.value,
        "inputs": [t.to_dict() for t in entry.inputs],
        "output": list(entry.output),
    }


def _consts(entry: ModelEntry, w: np.ndarray | None, b: np.ndarray | None) -> dict[str, np.ndarray]:
    consts = {}
    if entry.weights == "baked":
        if w is None:
            raise ValueError("a baked-weights model needs w")
        consts["w"] = np.asarray(w, dtype=np.float32)
        if b is not None:
            consts["b"] = np.asarray(b, dtype=np.float32)
    return consts


def calibration_ranges(
    entry: ModelEntry,
    seeds: Sequence[int],
    w: np.ndarray | None = None,
    b: np.ndarray | None = None,
    smallest: int | None = None,
    headroom: float = HEADROOM,
) -> dict[str, list[float]]:
    """Static int8 ranges ``[lo, hi]`` of every tensor the model holds in int8, with ``headroom``."""
    graph = _Graph(_header(entry, "rk3588"), _consts(entry, w, b))
    ranges: dict[str, list[float]] = {}
    shapes = calibration_shapes(entry, len(seeds), seed=seeds[0], smallest=smallest)
    for seed, shape in zip(seeds, shapes, strict=True):
        inputs = make_inputs(entry.stage, shape, seed=seed)
        if entry.stage is Stage.QKV and "b" not in entry.input_names:
            inputs.pop("b", None)
        feeds = {spec.name: a for spec, a in zip(entry.inputs, model_feed(entry, shape, inputs), strict=True)}
        graph.run(feeds, record=ranges)
    return {name: widen(lo, hi, headroom) for name, (lo, hi) in ranges.items()}


def widen(lo: float, hi: float, headroom: float) -> list[float]:
    """``[lo, hi]`` with each bound moved away from 0 by ``headroom`` times its size (0 stays exact)."""
    return [lo * (1 + headroom), hi * (1 + headroom)]


def convert(
    entry: ModelEntry,
    model_dir: str | Path,
    *,
    w: np.ndarray | None = None,
    b: np.ndarray | None = None,
    target_platform: str = "rk3588",
    calibrate: bool = True,
    seeds: Sequence[int] = CALIBRATION_SEEDS,
    smallest: int | None = None,
) -> Path:
    """Write the fake model of ``entry`` into ``model_dir``; ``w``/``b`` are the baked weights.

    ``smallest`` is the smallest call a bucket model serves (calibration covers it).
    """
    header = _header(entry, target_platform)
    consts = _consts(entry, w, b)
    if entry.shape.precision is Precision.INT8 and calibrate:
        header["quant"] = calibration_ranges(entry, seeds, w, b, smallest)
    path = Path(model_dir) / entry.file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_fake_model.pack(header, consts))
    return path


def build_model_dir(
    model_dir: str | Path,
    cases: Iterable[tuple[Stage, Shape]],
    *,
    calibrate: bool = True,
    buckets: Iterable[tuple[Stage, Shape]] = (),
    seeds: Sequence[int] = CALIBRATION_SEEDS,
    **entry_options: object,
) -> list[ModelEntry]:
    """Convert a model for each ``(stage, shape)`` (and a bucket model for each of ``buckets``); write the manifest."""
    entries = [ModelEntry.for_shape(stage, shape, **entry_options) for stage, shape in cases]  # type: ignore[arg-type]
    entries += [ModelEntry.for_shape(stage, shape, bucket=True) for stage, shape in buckets]
    for entry in entries:
        smallest = smallest_served(entry, entries) if entry.bucket else None
        convert(entry, model_dir, calibrate=calibrate, seeds=seeds, smallest=smallest)
    write_manifest(model_dir, entries)
    return entries
