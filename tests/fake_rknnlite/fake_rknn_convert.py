"""The fake counterpart of rknn-toolkit2's conversion: a fake ``.rknn`` file for a manifest entry.

Like ``rknn.build(do_quantization=True, dataset=...)``, INT8 models get static scales
calibrated on sample inputs (here :func:`adaptive_sched.stages.make_inputs` with a few
seeds): each input tensor's and the output's max magnitude over the samples, / 127.
Pass ``calibrate=False`` for a model that takes every tensor's own max at run time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from rknnlite import _fake_model

from adaptive_sched.executors.rknn_models import ModelEntry, write_manifest
from adaptive_sched.stages import make_inputs, reference
from adaptive_sched.types import Precision, Stage

#: calibration samples: with only a few, a small tensor's range is underestimated and clips (try 3)
CALIBRATION_SEEDS = tuple(range(1, 33))


def calibration_scales(
    entry: ModelEntry, seeds: Sequence[int], w: np.ndarray | None = None, b: np.ndarray | None = None
) -> dict[str, float]:
    """Static int8 scales of the model's input tensors and its output."""
    amax: dict[str, float] = {}
    for seed in seeds:
        inputs = make_inputs(entry.stage, entry.shape, seed=seed)
        if entry.weights == "baked":
            inputs["w"] = np.asarray(w, dtype=np.float32)
            if b is None:
                inputs.pop("b", None)
            else:
                inputs["b"] = np.asarray(b, dtype=np.float32)
        elif entry.stage is Stage.QKV and "b" not in entry.input_names:
            inputs.pop("b", None)
        tensors = {name: inputs[name] for name in entry.input_names}
        tensors["out"] = reference(entry.stage, entry.shape, inputs)
        for name, a in tensors.items():
            amax[name] = max(amax.get(name, 0.0), float(np.max(np.abs(a))))
    return {name: (m / 127.0 if m > 0 else 1.0) for name, m in amax.items()}


def convert(
    entry: ModelEntry,
    model_dir: str | Path,
    *,
    w: np.ndarray | None = None,
    b: np.ndarray | None = None,
    target_platform: str = "rk3588",
    calibrate: bool = True,
    seeds: Sequence[int] = CALIBRATION_SEEDS,
) -> Path:
    """Write the fake model of ``entry`` into ``model_dir``; ``w``/``b`` are the baked weights."""
    header = {
        "target_platform": target_platform,
        "op": entry.stage.value,
        "precision": entry.shape.precision.value,
        "inputs": [t.to_dict() for t in entry.inputs],
        "output": list(entry.output),
    }
    consts = {}
    if entry.weights == "baked":
        if w is None:
            raise ValueError("a baked-weights model needs w")
        consts["w"] = np.asarray(w, dtype=np.float32)
        if b is not None:
            consts["b"] = np.asarray(b, dtype=np.float32)
    if entry.shape.precision is Precision.INT8 and calibrate:
        header["quant"] = calibration_scales(entry, seeds, w, b)
    path = Path(model_dir) / entry.file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_fake_model.pack(header, consts))
    return path


def build_model_dir(
    model_dir: str | Path, cases: Iterable[tuple[Stage, object]], *, calibrate: bool = True, **entry_options: object
) -> list[ModelEntry]:
    """Convert a model for each ``(stage, shape)`` and write the manifest; return the entries."""
    entries = [ModelEntry.for_shape(stage, shape, **entry_options) for stage, shape in cases]  # type: ignore[arg-type]
    for entry in entries:
        convert(entry, model_dir, calibrate=calibrate)
    write_manifest(model_dir, entries)
    return entries
