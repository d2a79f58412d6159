#!/usr/bin/env python3
"""Build the RKNN models the ``npu_rknn`` executor runs: one ONNX graph per shape or bucket, converted to ``.rknn``.

Run it on an x86 host inside rknn-toolkit2's own virtual environment (the toolkit pins
numpy<=1.26.4, onnx<=1.18 and torch<=2.4, so it cannot share the runtime's environment;
``scripts/rknn-toolkit-env.sh`` creates it, see docs/rknn.md). It needs ``onnx``; it
converts when ``rknn.api`` is importable, and with ``--onnx-only`` (or without the
toolkit) writes the ONNX graphs and the calibration data alone. Copy the output
directory to the board and point the executor's ``model_dir`` at it.

Examples::

    # every model a config's NPU needs: its kv and n buckets for the workload's model, checked
    python scripts/build_rknn_models.py models/ --config rk3588 --check
    # the shapes of the conformance suite, so `adaptive-sched check` runs on the board
    python scripts/build_rknn_models.py models/ --conformance --check
    # decode attention buckets (keys = kv_len + 1) for one width
    python scripts/build_rknn_models.py models/ --stage attn --n 1 --d 2048 --kv-buckets 128 256 512 --precision int8
    # exact shapes: decode qkv for two widths, both precisions
    python scripts/build_rknn_models.py models/ --stage qkv --n 1 --d 2048 4096 --precision fp16 int8
    # one layer's real weights baked into the model (an .npz with w [d, 3d] and optionally b [3d])
    python scripts/build_rknn_models.py models/ --stage qkv --n 1 --d 2048 --precision int8 --weights layer0.npz

INT8 calibration: ``--calibration-samples`` input sets (64) per model, drawn at the call
shapes the model will serve (for a bucket, a quarter at its smallest call, a quarter at
its largest, the rest between) and fed padded and masked as the executor feeds them; with
``--activations DIR``, the ``.npz`` files there (one call's reference inputs each, at any
shape a model holds) are used instead for the models they fit. Every calibrated range is
then widened by ``--headroom`` (0.25) of itself, so inputs a little outside the samples'
range do not clip. ``--check`` runs each model in the toolkit's simulator on
``--check-seeds`` (30) fresh input sets spread over the calls it serves, compares with the
float64 math and writes the error distribution (median, p95, max) into the manifest; a
model whose worst error exceeds the conformance tolerance is left out.

Exit status: 0 when every model was built (and passed its check), 1 when a conversion or a
check failed or the toolkit is missing (without ``--onnx-only``), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    import adaptive_sched  # noqa: F401
except ImportError:  # run from a checkout inside the toolkit's venv, without installing the project
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaptive_sched.checks import BUCKETS, CASES, tolerance
from adaptive_sched.errors import AdaptiveSchedError, ConfigError
from adaptive_sched.executors.rknn_feed import calibration_shapes, model_feed, smallest_served, take_output
from adaptive_sched.executors.rknn_models import MASK, ModelEntry, parse_buckets, read_manifest, write_manifest
from adaptive_sched.stages import exact, input_shapes, make_inputs, relative_error
from adaptive_sched.types import Precision, Shape, Stage

log = logging.getLogger("build_rknn_models")

#: ONNX IR version of the graphs: old enough for the onnxruntime that rknn-toolkit2 folds constants with
IR_VERSION = 8
#: masked scores in FP16 graphs: far below any real score, still a finite float16
MASK_VALUE = -1.0e4
#: seeds of the synthetic calibration samples and of the check's input sets (kept apart)
CALIBRATION_SEED0, CHECK_SEED0 = 1000, 5000
#: INT8 attention: the subgraph kept in float16 (from exp(s - rowmax), as rknn-toolkit2 names it, to the
#: output): e @ V, the row sums and their quotient. Their ranges are heavy-tailed (attention on one key
#: makes the output a row of V), so one static int8 scale for them clips (see docs/rknn.md).
FLOAT_TAIL = ("e-rs", "out")


def float_tail(entry: ModelEntry, args: argparse.Namespace) -> bool:
    """Whether ``entry``'s model keeps :data:`FLOAT_TAIL` in float16."""
    return entry.stage is Stage.ATTN and entry.shape.precision is Precision.INT8 and not args.all_int8


# -- which models -----------------------------------------------------------------------------------
def _bucket_shapes(stage: Stage, d: int, heads: int | None, batch: int, precision: str,
                   kv_buckets: Sequence[int], n_buckets: Sequence[int]) -> list[tuple[Stage, Shape, bool]]:  # fmt: skip
    """Bucket models: decode attention per kv bucket; prefill rows (qkv, attn from an empty cache) per n bucket."""
    out = []
    if stage is Stage.ATTN:
        for keys in kv_buckets:
            out.append((stage, Shape(n=1, d=d, kv_len=keys - 1, batch=batch, heads=heads, precision=precision), True))
    for rows in n_buckets:
        if rows > 1:
            out.append((stage, Shape(n=rows, d=d, batch=batch, heads=heads, precision=precision), True))
    return out


def config_cases(name: str, precisions: Sequence[str] | None) -> list[tuple[Stage, Shape, bool]]:
    """The models a config's NPU backend needs for its workload: buckets, plus the decode projection."""
    from adaptive_sched.config import load_config
    from adaptive_sched.workload import model_shape

    config = load_config(name)
    npu = [bc for bc in config.backends.values() if bc.executor == "npu_rknn"]
    if not npu:
        raise ConfigError(f"--config {name}: no backend runs the npu_rknn executor")
    options = npu[0].options
    kv = parse_buckets(options.get("kv_buckets"), "kv_buckets") or ()
    rows = parse_buckets(options.get("n_buckets"), "n_buckets") or ()
    if not kv and not rows:
        raise ConfigError(f"--config {name}: the npu_rknn backend names no kv_buckets or n_buckets")
    if config.workload is None:
        raise ConfigError(f"--config {name}: no workload section says which model (d, heads) to build for")
    w = config.workload
    model = model_shape(w.model)
    cases: list[tuple[Stage, Shape, bool]] = []
    for p in precisions or [w.precision.value]:
        cases.append((Stage.QKV, Shape(n=1, d=model.d, batch=w.batch, heads=model.heads, precision=p), False))
        for stage in (Stage.QKV, Stage.ATTN):
            cases += _bucket_shapes(stage, model.d, model.heads, w.batch, p, kv, rows)
    return cases


def select_cases(args: argparse.Namespace) -> list[tuple[Stage, Shape, bool]]:
    """The ``(stage, shape, bucket)`` models the arguments ask for, one per distinct model."""
    cases: list[tuple[Stage, Shape, bool]] = []
    if args.conformance:
        cases += [(s, sh, False) for s, sh in CASES] + [(s, sh, True) for s, sh in BUCKETS]
    if args.grid:
        from adaptive_sched.offline.profiling import load_grid

        cases += [(s, sh, False) for s, sh in load_grid(args.grid).points()]
    if args.config:
        cases += config_cases(args.config, args.precision if args.precision_given else None)
    kv_buckets = parse_buckets(args.kv_buckets, "--kv-buckets")
    n_buckets = parse_buckets(args.n_buckets, "--n-buckets")
    if args.stage:
        if not args.d:
            raise ConfigError("--stage needs --d")
        if kv_buckets or n_buckets:
            for stage, d, batch, heads, p in itertools.product(
                args.stage, args.d, args.batch, args.heads or [None], args.precision
            ):
                cases += _bucket_shapes(Stage(stage), d, heads, batch, p, kv_buckets or (), n_buckets or ())
        else:
            if not args.n:
                raise ConfigError("--stage needs --n (or --kv-buckets / --n-buckets)")
            for stage, n, d, batch, kv, heads, p in itertools.product(
                args.stage, args.n, args.d, args.batch, args.kv_len, args.heads or [None], args.precision
            ):
                st = Stage(stage)
                if st is Stage.QKV:
                    shape = Shape(n=n, d=d, batch=batch, precision=p)
                else:
                    shape = Shape(n=n, d=d, kv_len=kv, batch=batch, heads=heads, precision=p)
                cases.append((st, shape, False))
    elif args.precision_given and not args.config:
        # --precision alone filters the grid or conformance shapes
        cases = [(s, sh, b) for s, sh, b in cases if sh.precision.value in args.precision]
    distinct: dict[Any, tuple[Stage, Shape, bool]] = {}
    for stage, shape, bucket in cases:
        distinct.setdefault(ModelEntry.for_shape(stage, shape, bucket=bucket).key, (stage, shape, bucket))
    return list(distinct.values())


# -- ONNX graphs ------------------------------------------------------------------------------------
def onnx_graph(
    entry: ModelEntry, opset: int, w: np.ndarray | None = None, b: np.ndarray | None = None, mask_scale: float = 16.0
) -> Any:
    """The ONNX model of ``entry`` (float32 throughout: the precision is chosen at conversion).

    ``mask_scale`` (INT8 masked attention): how far below the row's scores masked ones are
    pushed to find the row maximum; more than the scores' spread (see :func:`mask_scale`).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(t.name, f32, list(t.shape)) for t in entry.inputs]
    output = helper.make_tensor_value_info("out", f32, list(entry.output))
    nodes, consts = [], []

    def const(name: str, value: Any, dtype: Any = np.float32) -> str:
        consts.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    def reduce(op: str, x: str, y: str) -> str:
        # ReduceSum takes its axes as an input from opset 13, ReduceMax only from opset 18
        if op == "ReduceSum" or opset >= 18:
            return node(op, [x, const(f"{y}_axes", [-1], np.int64)], y, keepdims=1)
        return node(op, [x], y, keepdims=1, axes=[-1])

    shape = entry.shape
    if entry.stage is Stage.QKV:
        if entry.weights == "baked":
            const("w", w)
            if b is not None:
                const("b", b)
        has_bias = "b" in entry.input_names or (entry.weights == "baked" and b is not None)
        node("MatMul", ["x", "w"], "xw" if has_bias else "out")
        if has_bias:
            node("Add", ["xw", "b"], "out")
    else:
        n, keys = shape.n, shape.keys
        node("Transpose", ["k"], "kt", perm=[0, 2, 1])
        node("MatMul", ["q", "kt"], "qk")
        node("Mul", ["qk", const("scale", np.array(1.0 / math.sqrt(shape.head_dim)))], "s")
        visible = np.arange(keys)[None, :] <= np.arange(n)[:, None] + (keys - n)
        masked = entry.bucket or n > 1
        mask = MASK if entry.bucket else (const("mask01", visible[None]) if masked else None)
        if shape.precision is Precision.FP16:
            if mask is not None:
                node("Sub", [mask, const("one", 1.0)], "mask_m1")
                node("Mul", ["mask_m1", const("neg", -MASK_VALUE)], "mask_add")  # 0 or -1e4
                node("Add", ["s", "mask_add"], "sm")
            node("Softmax", ["sm" if mask is not None else "s"], "p", axis=-1)
            node("MatMul", ["p", "v"], "out")
        else:
            # INT8 holds every tensor with one scale: an additive -1e4 mask would leave the scores no
            # resolution, and probabilities spread over many keys would round to zero. So the graph masks
            # after the exponential, keeps exp(s - rowmax) in [0, 1], and divides after the product with V.
            if mask is not None:
                node("Sub", [mask, const("one", 1.0)], "mask_m1")
                node("Mul", ["mask_m1", const("mask_scale", mask_scale)], "mask_add")
                node("Add", ["s", "mask_add"], "smask")  # only its row maximum is used
                reduce("ReduceMax", "smask", "smax")
                node("Sub", ["smax", "s"], "gap")
                node("Relu", ["gap"], "gap0")  # a masked score above the maximum must not overflow exp
                node("Neg", ["gap0"], "sc")
                node("Exp", ["sc"], "e_all")
                node("Mul", ["e_all", mask], "e")
            else:
                reduce("ReduceMax", "s", "smax")
                node("Sub", ["s", "smax"], "sc")
                node("Exp", ["sc"], "e")
            node("MatMul", ["e", "v"], "num")
            reduce("ReduceSum", "e", "den")
            node("Div", ["num", "den"], "out")

    graph = helper.make_graph(nodes, entry.file.removesuffix(".rknn"), inputs, [output], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="adaptive_sched")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


# -- calibration ------------------------------------------------------------------------------------
def load_activations(directory: str | None) -> list[tuple[Stage, Shape, dict[str, np.ndarray]]]:
    """Real calls for calibration: each ``.npz`` in ``directory`` holds one call's reference inputs.

    A file with ``x`` (``[batch, n, d]``) is a ``qkv`` call, one with ``q``, ``k``, ``v``
    (``[batch, heads, n or keys, head_dim]``) an ``attn`` call; the shape is read from the arrays.
    """
    if directory is None:
        return []
    files = sorted(Path(directory).glob("*.npz"))
    if not files:
        raise ConfigError(f"--activations {directory}: no .npz files there")
    calls = []
    for path in files:
        try:
            with np.load(path) as npz:
                arrays = {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--activations {path}: not a readable .npz ({exc})") from None
        try:
            if "x" in arrays:
                batch, n, d = arrays["x"].shape
                stage, shape = Stage.QKV, Shape(n=n, d=d, batch=batch)
            elif {"q", "k", "v"} <= set(arrays):
                batch, heads, n, hd = arrays["q"].shape
                keys = arrays["k"].shape[2]
                stage, shape = Stage.ATTN, Shape(n=n, d=heads * hd, kv_len=keys - n, batch=batch, heads=heads)
            else:
                raise ValueError(f"has {sorted(arrays)}, expected x, or q, k and v")
            for name, dims in input_shapes(stage, shape).items():
                if name in arrays and arrays[name].shape != dims:
                    raise ValueError(f"{name} has shape {arrays[name].shape}, expected {dims}")
        except ValueError as exc:
            raise ConfigError(f"--activations {path}: {exc}") from None
        calls.append((stage, shape, arrays))
    return calls


def calibration_calls(
    entry: ModelEntry, samples: int, smallest: int, activations: Sequence[tuple[Stage, Shape, dict[str, np.ndarray]]]
) -> tuple[list[tuple[Shape, dict[str, np.ndarray]]], str]:
    """The calls a model is calibrated on, and where they come from (``activations`` or ``synthetic``)."""
    real = []
    for stage, shape, arrays in activations:
        call = Shape(n=shape.n, d=shape.d, kv_len=shape.kv_len, batch=shape.batch, heads=shape.heads,
                     precision=entry.shape.precision)  # fmt: skip
        if stage is entry.stage and entry.holds(stage, call):
            real.append((call, arrays))
    if real:
        return real, "activations"
    shapes = calibration_shapes(entry, samples, seed=CALIBRATION_SEED0, smallest=smallest)
    return [(s, make_inputs(entry.stage, s, seed=CALIBRATION_SEED0 + i)) for i, s in enumerate(shapes)], "synthetic"


def write_calibration(entry: ModelEntry, directory: Path, calls: Sequence[tuple[Shape, Mapping[str, np.ndarray]]],
                      w: np.ndarray | None) -> Path:  # fmt: skip
    """The calibration calls as .npy files in the model's layout (padded, masked), and the dataset.txt listing them."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (shape, inputs) in enumerate(calls):
        inputs = dict(inputs)
        if entry.weights == "baked":
            inputs["w"] = np.asarray(w, dtype=np.float32)
        files = []
        for spec, a in zip(entry.inputs, model_feed(entry, shape, inputs), strict=True):
            path = directory / f"{i:03d}_{spec.name}.npy"
            np.save(path, a.astype(np.float32))
            files.append(str(path.resolve()))
        lines.append(" ".join(files))
    dataset = directory / "dataset.txt"
    dataset.write_text("\n".join(lines) + "\n")
    return dataset


def mask_scale(entry: ModelEntry, calls: Sequence[tuple[Shape, Mapping[str, np.ndarray]]]) -> float:
    """Twice the largest |score| of the calibration calls (at least 8): masked scores sink below every real one."""
    if entry.stage is not Stage.ATTN:
        return 0.0
    worst = 0.0
    for _, inputs in calls:
        q, k = (np.asarray(inputs[n], np.float64) for n in ("q", "k"))
        worst = max(worst, float(np.max(np.abs(q @ np.swapaxes(k, -1, -2)))) / math.sqrt(q.shape[-1]))
    return float(max(8.0, math.ceil(2 * worst)))


def widen_ranges(cfg_path: Path, graph_tensors: set[str], headroom: float) -> int:
    """Widen the calibrated ranges in rknn-toolkit2's quantisation config by ``headroom``; return how many.

    Every range of a tensor of our graph (or one the toolkit derived from it: ``q_tp-rs``,
    ``num_mm``...) moves away from 0 by ``headroom`` times its size, except ranges fixed by
    construction ([0, 1]: the mask and exp(s - rowmax)) and constants.
    """
    import yaml

    doc = yaml.safe_load(cfg_path.read_text())
    params = doc.get("quantize_parameters") or {}
    changed = 0
    for name, p in params.items():
        base = name
        for sep in ("_", "-", "#"):
            base = base.split(sep)[0]
        if base not in graph_tensors or p.get("dtype") not in ("int8", "float32") or not p.get("min"):
            continue
        lo, hi = float(p["min"][0]), float(p["max"][0])
        if lo == 0.0 and hi == 1.0:
            continue
        p["min"], p["max"] = [lo * (1 + headroom)], [hi * (1 + headroom)]
        # scale and zero_point stay as written: step 2 refuses edits of them and derives them from min and max
        changed += 1
    cfg_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return changed


# -- conversion -------------------------------------------------------------------------------------
def rknn_convert(onnx_path: Path, rknn_path: Path, entry: ModelEntry, dataset: Path | None,
                 args: argparse.Namespace, graph_tensors: set[str]) -> Any:  # fmt: skip
    """Convert one ONNX graph with rknn-toolkit2 and return the RKNN object (initialised on the simulator
    with ``args.check``); ``RuntimeError`` naming the step that failed."""
    from rknn.api import RKNN

    rknn = RKNN(verbose=args.verbose)
    quant = entry.shape.precision is Precision.INT8
    options: dict[str, Any] = {"target_platform": args.target, "optimization_level": args.optimization_level}
    if quant:
        options.update(quantized_dtype=args.quantized_dtype, quantized_algorithm=args.quantized_algorithm,
                       quantized_method="channel")  # fmt: skip

    def ok(name: str, ret: Any) -> None:
        if ret not in (None, 0):
            raise RuntimeError(f"{onnx_path.name}: rknn.{name} failed with return code {ret}")

    try:
        ok("config", rknn.config(**options))
        ok("load_onnx", rknn.load_onnx(model=str(onnx_path)))
        if quant and (args.headroom > 0 or float_tail(entry, args)):
            # calibrate, widen the ranges, then quantise with them (the toolkit's hybrid quantisation steps)
            with tempfile.TemporaryDirectory(prefix="rknn-quant-") as tmp:
                cwd = os.getcwd()
                os.chdir(tmp)
                try:
                    data = str(Path(str(dataset)).resolve())
                    hybrid = {"custom_hybrid": [list(FLOAT_TAIL)]} if float_tail(entry, args) else {}
                    ok("hybrid_quantization_step1", rknn.hybrid_quantization_step1(dataset=data, **hybrid))
                    stem = onnx_path.stem
                    widened = widen_ranges(Path(tmp) / f"{stem}.quantization.cfg", graph_tensors, args.headroom)
                    log.debug("%s: %d ranges widened by %.0f%%", entry.describe(), widened, 100 * args.headroom)
                    rknn.release()
                    rknn = RKNN(verbose=args.verbose)
                    ok("config", rknn.config(**options))
                    ok("hybrid_quantization_step2", rknn.hybrid_quantization_step2(
                        model_input=f"{stem}.model", data_input=f"{stem}.data",
                        model_quantization_cfg=f"{stem}.quantization.cfg"))  # fmt: skip
                finally:
                    os.chdir(cwd)
        else:
            ok("build", rknn.build(do_quantization=quant, dataset=str(dataset) if quant else None))
        ok("export_rknn", rknn.export_rknn(str(rknn_path)))
        if args.check:
            ok("init_runtime", rknn.init_runtime())  # no target: the simulator
    except BaseException:
        rknn.release()
        raise
    return rknn


def check_calls(entry: ModelEntry, seeds: int, smallest: int) -> list[tuple[Shape, dict[str, np.ndarray]]]:
    """Fresh input sets (seeds apart from calibration's) at call shapes spread over what the model serves."""
    shapes = calibration_shapes(entry, seeds, seed=CHECK_SEED0, smallest=smallest)
    return [(s, make_inputs(entry.stage, s, seed=CHECK_SEED0 + i)) for i, s in enumerate(shapes)]


def simulate(rknn: Any, entry: ModelEntry, calls: Sequence[tuple[Shape, dict[str, np.ndarray]]],
             w: np.ndarray | None, b: np.ndarray | None) -> dict[str, Any]:  # fmt: skip
    """Run ``calls`` on the simulated model; the error distribution against the float64 math, and the verdict."""
    errors, ratios, sizes = [], [], []
    for shape, inputs in calls:
        inputs = dict(inputs)
        if entry.weights == "baked":
            inputs["w"] = np.asarray(w, dtype=np.float32)
            if b is None:
                inputs.pop("b", None)
            else:
                inputs["b"] = np.asarray(b, dtype=np.float32)
        elif entry.stage is Stage.QKV and "b" not in entry.input_names:
            inputs.pop("b", None)
        outputs = rknn.inference(inputs=model_feed(entry, shape, inputs))
        if outputs is None:
            raise RuntimeError(f"{entry.file}: rknn.inference on the simulator returned None")
        got = take_output(entry, shape, np.asarray(outputs[0]))
        err = relative_error(got, exact(entry.stage, shape, inputs))
        errors.append(err)
        ratios.append(err / tolerance(entry.stage, shape))
        sizes.append(shape.keys if entry.stage is Stage.ATTN and shape.n == 1 else shape.n)
    worst = int(np.argmax(ratios))
    return {
        "seeds": len(errors),
        "sizes": [min(sizes), max(sizes)],
        "median": round(float(np.median(errors)), 5),
        "p95": round(float(np.percentile(errors, 95)), 5),
        "max": round(float(np.max(errors)), 5),
        "tolerance": tolerance(entry.stage, calls[worst][0]),
        "worst_size": sizes[worst],
        "passed": bool(max(ratios) <= 1.0),
    }


def load_weights(path: str | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    if path is None:
        return None, None
    try:
        with np.load(path) as npz:
            w = npz["w"]
            b = npz["b"] if "b" in npz.files else None
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"--weights {path}: expected an .npz with 'w' [d, 3d] and optionally 'b' ({exc})") from None
    return w, b


def toolkit_version() -> str:
    try:
        from importlib.metadata import version

        return f"rknn-toolkit2 {version('rknn-toolkit2')}"
    except Exception:  # not installed as a distribution
        return "rknn-toolkit2"


def build(args: argparse.Namespace) -> int:
    out = Path(args.out)
    cases = select_cases(args)
    if not cases:
        raise ConfigError("no shapes selected: give --config, --conformance, --grid or --stage with --d")
    w, b = load_weights(args.weights)
    activations = load_activations(args.activations)
    try:
        import onnx
    except ImportError:
        log.error("the onnx package is needed to write the graphs (pip install 'onnx<=1.18')")
        return 1
    convert, missing_toolkit = not args.onnx_only, False
    if convert:
        try:
            import rknn.api as _toolkit  # noqa: F401
        except ImportError as exc:
            log.error("rknn.api is not importable (%s): writing ONNX graphs and calibration data only; run again "
                      "inside rknn-toolkit2's venv to convert them (see docs/rknn.md)", exc)  # fmt: skip
            convert, missing_toolkit = False, True

    entries = []
    for stage, shape, bucket in cases:
        if stage is Stage.QKV and w is not None:
            if w.shape != (shape.d, 3 * shape.d):
                want = (shape.d, 3 * shape.d)
                raise ConfigError(f"--weights: w has shape {w.shape}, qkv at d={shape.d} needs {want}")
            entries.append(ModelEntry.for_shape(stage, shape, weights="baked", w=w, b=b, bucket=bucket))
        else:
            entries.append(ModelEntry.for_shape(stage, shape, bucket=bucket))

    built: list[ModelEntry] = []
    dropped: set[Any] = set()  # models whose conversion or check failed: an older entry for them goes too
    failures = 0
    for entry in entries:
        shape = entry.shape
        baked = (w, b) if entry.weights == "baked" else (None, None)
        smallest = smallest_served(entry, entries) if entry.bucket else 1
        stem = entry.file.removesuffix(".rknn")
        calls, source = calibration_calls(entry, args.calibration_samples, smallest, activations)
        scale = mask_scale(entry, calls)
        model = onnx_graph(entry, args.opset, *baked, mask_scale=scale or 16.0)
        onnx_path = out / "onnx" / f"{stem}.onnx"
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(onnx_path))
        graph_tensors = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
        dataset, calibration = None, None
        if shape.precision is Precision.INT8:
            dataset = write_calibration(entry, out / "calibration" / stem, calls, w)
            sizes = [c.keys if entry.stage is Stage.ATTN and c.n == 1 else c.n for c, _ in calls]
            calibration = {"source": source, "samples": len(calls), "sizes": [min(sizes), max(sizes)],
                           "headroom": args.headroom, "algorithm": args.quantized_algorithm,
                           "float16": ["num", "den", "out"] if float_tail(entry, args) else []}  # fmt: skip
        log.info("%s: wrote %s", entry.describe(), onnx_path)
        if not convert:
            continue
        start = time.perf_counter()
        try:
            converted = rknn_convert(onnx_path, out / entry.file, entry, dataset, args, graph_tensors)
        except Exception as exc:
            failures += 1
            dropped.add(entry.key)
            log.error("%s: conversion failed: %s", entry.describe(), exc)
            continue
        build_s = time.perf_counter() - start
        check = None
        try:
            if args.check:
                check = simulate(converted, entry, check_calls(entry, args.check_seeds, smallest), *baked)
                check["simulator"] = toolkit_version()
                check["build_s"] = round(build_s, 2)
        except Exception as exc:
            failures += 1
            dropped.add(entry.key)
            log.error("%s: simulator check failed to run: %s", entry.describe(), exc)
            continue
        finally:
            converted.release()
            if dataset is not None and not args.keep_calibration:
                # 64 samples of a 4096-key bucket are 3 GB; the manifest records what they were
                shutil.rmtree(dataset.parent, ignore_errors=True)
        if check is not None:
            summary = (f"error over {check['seeds']} seeds (sizes {check['sizes'][0]}..{check['sizes'][1]}): "
                       f"median {check['median']:.3g}, p95 {check['p95']:.3g}, max {check['max']:.3g} "
                       f"(tolerance {check['tolerance']}); built in {build_s:.1f} s")  # fmt: skip
            if not check["passed"]:
                failures += 1
                dropped.add(entry.key)
                (out / entry.file).unlink(missing_ok=True)  # never leave a model that failed where one is looked for
                log.error("%s: %s; left out of the manifest", entry.describe(), summary)
                continue
            log.info("%s: %s", entry.describe(), summary)
        built.append(ModelEntry(**{**entry.__dict__, "calibration": calibration, "check": check}))
        log.info("%s: built %s", entry.describe(), out / entry.file)

    previous = []
    if convert and (out / "manifest.json").exists():
        replaced = {e.key for e in built} | dropped
        previous = [e for e in read_manifest(out).entries if e.key not in replaced]
    if built or (dropped and convert and (out / "manifest.json").exists()):
        write_manifest(out, [*previous, *built], target_platform=args.target)
    if built:
        print(f"{len(built)} model(s) built into {out}; manifest: {out / 'manifest.json'}")
    elif not convert:
        print(f"{len(entries)} ONNX graph(s) written to {out / 'onnx'}; no .rknn built")
    return 1 if failures or missing_toolkit else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", help="output directory (models, manifest.json, onnx/, calibration/)")
    sel = p.add_argument_group("models (any combination)")
    sel.add_argument("--config", help="a config (shipped name or YAML file): its NPU's kv and n buckets for its\n"
                                      "workload's model, and the decode projection")  # fmt: skip
    sel.add_argument("--conformance", action="store_true",
                     help="the shapes of the executor conformance suite and its bucket models")  # fmt: skip
    sel.add_argument("--grid", help="a profiling grid: a shipped name (smoke, paper) or a YAML file")
    sel.add_argument("--stage", nargs="+", choices=["qkv", "attn"], help="stages to build for --n/--d/...")
    sel.add_argument("--n", nargs="+", type=int, help="tokens per step (exact models)")
    sel.add_argument("--d", nargs="+", type=int, help="hidden dimensions")
    sel.add_argument("--batch", nargs="+", type=int, default=[1])
    sel.add_argument("--kv-len", nargs="+", type=int, default=[0], help="attn: tokens already cached (exact models)")
    sel.add_argument("--kv-buckets", nargs="+", type=int, help="attn: decode bucket models holding this many keys")
    sel.add_argument("--n-buckets", nargs="+", type=int, help="prefill bucket models holding this many rows")
    sel.add_argument("--heads", nargs="+", type=int, help="attn: heads (default d // 64)")
    sel.add_argument("--precision", nargs="+", choices=["fp16", "int8"], help="default: both (with --config: the\n"
                                                                              "workload's)")  # fmt: skip
    conv = p.add_argument_group("conversion")
    conv.add_argument("--weights", help="an .npz with w [d, 3d] (and b [3d]) to bake into the qkv models")
    conv.add_argument("--target", default="rk3588", help="rknn target_platform (default rk3588)")
    conv.add_argument("--quantized-dtype", default="w8a8", help="INT8 models: rknn quantized_dtype (default w8a8)")
    conv.add_argument("--quantized-algorithm", default="normal", choices=["normal", "mmse", "kl_divergence"])
    conv.add_argument("--optimization-level", type=int, default=3, choices=[0, 1, 2, 3])
    conv.add_argument("--calibration-samples", type=int, default=64, help="INT8 calibration inputs (default 64)")
    conv.add_argument("--activations", help="a directory of .npz files, one real call's inputs each, to calibrate\n"
                                            "the models they fit with instead of synthetic inputs")  # fmt: skip
    conv.add_argument("--keep-calibration", action="store_true",
                      help="keep calibration/<model>/ after converting (--onnx-only always keeps it)")  # fmt: skip
    conv.add_argument(
        "--headroom",
        type=float,
        default=0.25,
        help="INT8: widen every calibrated range by this fraction (default 0.25; 0: as calibrated)",
    )
    conv.add_argument("--all-int8", action="store_true",
                      help="INT8 attention: also hold e @ V, the row sums and the output in int8")  # fmt: skip
    conv.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..19 (default 17)")
    conv.add_argument("--onnx-only", action="store_true", help="write the ONNX graphs without converting")
    conv.add_argument("--check", action="store_true",
                      help="run each converted model in the toolkit's simulator against the float64 math;\n"
                           "a model outside the conformance tolerance is left out of the manifest")  # fmt: skip
    conv.add_argument("--check-seeds", type=int, default=30, help="input sets per model for --check (default 30)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.precision_given = args.precision is not None
    if args.precision is None:
        args.precision = ["fp16", "int8"]
    if not 13 <= args.opset <= 19:
        p.error(f"--opset {args.opset}: rknn-toolkit2 reads opsets 13 to 19 here")
    if args.calibration_samples < 1:
        p.error("--calibration-samples must be >= 1")
    if args.check_seeds < 1:
        p.error("--check-seeds must be >= 1")
    if not 0 <= args.headroom <= 4:
        p.error(f"--headroom {args.headroom}: expected a fraction between 0 and 4")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return build(args)
    except (AdaptiveSchedError, ValueError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
