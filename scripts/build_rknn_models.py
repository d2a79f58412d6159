#!/usr/bin/env python3
"""Build the RKNN models the ``npu_rknn`` executor runs: one ONNX graph per shape, converted to ``.rknn``.

Run it on an x86 host inside rknn-toolkit2's own virtual environment (the toolkit pins
numpy<=1.26.4, onnx<=1.18 and torch<=2.4, so it cannot share the runtime's environment;
see docs/rknn.md). It needs ``onnx``; it converts when ``rknn.api`` is importable, and
with ``--onnx-only`` (or without the toolkit) writes the ONNX graphs and the calibration
data alone. Copy the output directory to the board and point the executor's ``model_dir``
at it.

Examples::

    # the shapes of the conformance suite, so `adaptive-sched check` runs on the board
    python scripts/build_rknn_models.py models/ --conformance
    # every point of a profiling grid
    python scripts/build_rknn_models.py models/ --grid smoke
    # decode qkv for two widths, both precisions
    python scripts/build_rknn_models.py models/ --stage qkv --n 1 --d 2048 4096 --precision fp16 int8
    # ... and prove each model against the reference in rknn-toolkit2's x86 simulator first
    python scripts/build_rknn_models.py models/ --conformance --check
    # one layer's real weights baked into the model (an .npz with w [d, 3d] and optionally b [3d])
    python scripts/build_rknn_models.py models/ --stage qkv --n 1 --d 2048 --precision int8 --weights layer0.npz

Exit status: 0 when every model was built, 1 when a conversion failed or the toolkit is
missing (without ``--onnx-only``), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

try:
    import adaptive_sched  # noqa: F401
except ImportError:  # run from a checkout inside the toolkit's venv, without installing the project
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaptive_sched.checks import CASES, TOLERANCE
from adaptive_sched.errors import AdaptiveSchedError, ConfigError
from adaptive_sched.executors.rknn_models import ModelEntry, read_manifest, write_manifest
from adaptive_sched.stages import make_inputs, reference
from adaptive_sched.types import Precision, Shape, Stage

log = logging.getLogger("build_rknn_models")

#: ONNX IR version of the graphs: old enough for the onnxruntime that rknn-toolkit2 folds constants with
IR_VERSION = 8
#: masked scores in FP16 graphs: far below any real score, still a finite float16
MASK_VALUE = -1.0e4


# -- which shapes -----------------------------------------------------------------------------------
def select_cases(args: argparse.Namespace) -> list[tuple[Stage, Shape]]:
    """The ``(stage, shape)`` pairs the arguments ask for, one per distinct model."""
    cases: list[tuple[Stage, Shape]] = []
    if args.conformance:
        cases += list(CASES)
    if args.grid:
        from adaptive_sched.profiling import load_grid

        cases += load_grid(args.grid).points()
    if args.stage:
        if not args.n or not args.d:
            raise ConfigError("--stage needs --n and --d")
        for stage, n, d, batch, kv, heads, p in itertools.product(
            args.stage, args.n, args.d, args.batch, args.kv_len, args.heads or [None], args.precision
        ):
            st = Stage(stage)
            if st is Stage.QKV:
                shape = Shape(n=n, d=d, batch=batch, precision=p)
            else:
                shape = Shape(n=n, d=d, kv_len=kv, batch=batch, heads=heads, precision=p)
            cases.append((st, shape))
    elif args.precision_given:
        # --precision alone filters the grid or conformance shapes
        cases = [(s, sh) for s, sh in cases if sh.precision.value in args.precision]
    distinct: dict[Any, tuple[Stage, Shape]] = {}
    for stage, shape in cases:
        distinct.setdefault(ModelEntry.for_shape(stage, shape).key, (stage, shape))
    return list(distinct.values())


# -- ONNX graphs ------------------------------------------------------------------------------------
def onnx_graph(entry: ModelEntry, opset: int, w: np.ndarray | None = None, b: np.ndarray | None = None) -> Any:
    """The ONNX model of ``entry`` (float32 throughout: the precision is chosen at conversion)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(t.name, f32, list(t.shape)) for t in entry.inputs]
    output = helper.make_tensor_value_info("out", f32, list(entry.output))
    nodes, consts = [], []

    def const(name: str, value: Any, dtype: Any = np.float32) -> str:
        consts.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def reduce(op: str, x: str, y: str) -> Any:
        # ReduceSum takes its axes as an input from opset 13, ReduceMax only from opset 18
        if op == "ReduceSum" or opset >= 18:
            return helper.make_node(op, [x, const(f"{y}_axes", [-1], np.int64)], [y], keepdims=1)
        return helper.make_node(op, [x], [y], keepdims=1, axes=[-1])

    shape = entry.shape
    if entry.stage is Stage.QKV:
        if entry.weights == "baked":
            const("w", w)  # type: ignore[arg-type]
            if b is not None:
                const("b", b)
        has_bias = "b" in entry.input_names or (entry.weights == "baked" and b is not None)
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["xw" if has_bias else "out"]))
        if has_bias:
            nodes.append(helper.make_node("Add", ["xw", "b"], ["out"]))
    else:
        n, keys = shape.n, shape.keys
        nodes += [
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["q", "kt"], ["qk"]),
            helper.make_node("Mul", ["qk", const("scale", np.array(1.0 / math.sqrt(shape.head_dim)))], ["s"]),
        ]
        visible = np.arange(keys)[None, :] <= np.arange(n)[:, None] + (keys - n)
        if n == 1:  # a single query sees every key: no mask
            nodes.append(helper.make_node("Softmax", ["s"], ["p"], axis=-1))
        elif shape.precision is Precision.FP16:
            nodes += [
                helper.make_node("Add", ["s", const("mask", np.where(visible, 0.0, MASK_VALUE))], ["sm"]),
                helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
            ]
        else:
            # An INT8 graph quantises every tensor per tensor: an additive -1e4 mask would stretch the
            # scores' range and leave them no resolution. Masking after exp keeps every tensor's range small.
            nodes += [
                reduce("ReduceMax", "s", "smax"),
                helper.make_node("Sub", ["s", "smax"], ["sc"]),
                helper.make_node("Exp", ["sc"], ["e"]),
                helper.make_node("Mul", ["e", const("mask01", visible)], ["em"]),
                reduce("ReduceSum", "em", "den"),
                helper.make_node("Div", ["em", "den"], ["p"]),
            ]
        nodes.append(helper.make_node("MatMul", ["p", "v"], ["out"]))

    graph = helper.make_graph(nodes, entry.file.removesuffix(".rknn"), inputs, [output], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="adaptive_sched")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


# -- calibration ------------------------------------------------------------------------------------
def write_calibration(
    entry: ModelEntry, directory: Path, samples: int, w: np.ndarray | None, b: np.ndarray | None
) -> Path:
    """``samples`` input sets in the model's layout as .npy files, and the toolkit's dataset.txt listing them.

    The samples come from :func:`adaptive_sched.stages.make_inputs` (the distribution the
    profiler and the conformance suite use). INT8 scales are fixed from them: inputs of
    another range clip on the NPU, so calibrate with data like the real activations.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(samples):
        inputs = make_inputs(entry.stage, entry.shape, seed=1000 + i)
        if entry.weights == "baked":
            inputs["w"] = np.asarray(w, dtype=np.float32)
        files = []
        for spec in entry.inputs:
            path = directory / f"{i:03d}_{spec.name}.npy"
            np.save(path, inputs[spec.name].reshape(spec.shape).astype(np.float32))
            files.append(str(path.resolve()))
        lines.append(" ".join(files))
    dataset = directory / "dataset.txt"
    dataset.write_text("\n".join(lines) + "\n")
    return dataset


# -- conversion -------------------------------------------------------------------------------------
def rknn_convert(onnx_path: Path, rknn_path: Path, entry: ModelEntry, dataset: Path | None,
                 args: argparse.Namespace, w: np.ndarray | None = None,
                 b: np.ndarray | None = None) -> float | None:  # fmt: skip
    """Convert one ONNX graph with rknn-toolkit2; ``RuntimeError`` naming the step that failed.

    With ``args.check``, the model then runs in the toolkit's x86 simulator on two input
    sets and the largest error relative to max|reference| is returned (else None).
    """
    from rknn.api import RKNN

    rknn = RKNN(verbose=args.verbose)
    try:
        quant = entry.shape.precision is Precision.INT8
        options: dict[str, Any] = {"target_platform": args.target, "optimization_level": args.optimization_level}
        if quant:
            options.update(quantized_dtype=args.quantized_dtype, quantized_algorithm=args.quantized_algorithm,
                           quantized_method="channel")  # fmt: skip
        steps = [
            ("config", lambda: rknn.config(**options)),
            ("load_onnx", lambda: rknn.load_onnx(model=str(onnx_path))),
            ("build", lambda: rknn.build(do_quantization=quant, dataset=str(dataset) if quant else None)),
            ("export_rknn", lambda: rknn.export_rknn(str(rknn_path))),
        ]
        if args.check:
            steps.append(("init_runtime", lambda: rknn.init_runtime()))  # no target: the simulator
        for name, step in steps:
            ret = step()
            if ret not in (None, 0):
                raise RuntimeError(f"{onnx_path.name}: rknn.{name} failed with return code {ret}")
        return simulate(rknn, entry, w, b) if args.check else None
    finally:
        rknn.release()


def simulate(rknn: Any, entry: ModelEntry, w: np.ndarray | None, b: np.ndarray | None) -> float:
    """Largest error of the simulated model relative to max|reference| over the conformance suite's seeds."""
    worst = 0.0
    for seed in (7, 0):
        inputs = make_inputs(entry.stage, entry.shape, seed=seed)
        if entry.weights == "baked":
            inputs["w"] = np.asarray(w, dtype=np.float32)
            if b is None:
                inputs.pop("b", None)
            else:
                inputs["b"] = np.asarray(b, dtype=np.float32)
        elif "b" not in entry.input_names:
            inputs.pop("b", None)
        outputs = rknn.inference(inputs=[inputs[t.name].reshape(t.shape).astype(np.float32) for t in entry.inputs])
        if outputs is None:
            raise RuntimeError(f"{entry.file}: rknn.inference on the simulator returned None")
        want = reference(entry.stage, entry.shape, inputs)
        got = np.asarray(outputs[0], dtype=np.float64).reshape(want.shape)
        worst = max(worst, float(np.max(np.abs(got - want))) / (float(np.max(np.abs(want))) or 1.0))
    return worst


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


def build(args: argparse.Namespace) -> int:
    out = Path(args.out)
    cases = select_cases(args)
    if not cases:
        raise ConfigError("no shapes selected: give --conformance, --grid or --stage with --n and --d")
    w, b = load_weights(args.weights)
    try:
        import onnx
    except ImportError:
        log.error("the onnx package is needed to write the graphs (pip install 'onnx<=1.18')")
        return 1
    convert, missing_toolkit = not args.onnx_only, False
    if convert:
        try:
            import rknn.api  # noqa: F401
        except ImportError as exc:
            log.error("rknn.api is not importable (%s): writing ONNX graphs and calibration data only; run again "
                      "inside rknn-toolkit2's venv to convert them (see docs/rknn.md)", exc)  # fmt: skip
            convert, missing_toolkit = False, True

    built: list[ModelEntry] = []
    failures = 0
    for stage, shape in cases:
        if stage is Stage.QKV and w is not None:
            if w.shape != (shape.d, 3 * shape.d):
                want = (shape.d, 3 * shape.d)
                raise ConfigError(f"--weights: w has shape {w.shape}, qkv at d={shape.d} needs {want}")
            entry = ModelEntry.for_shape(stage, shape, weights="baked", w=w, b=b)
        else:
            entry = ModelEntry.for_shape(stage, shape)
        stem = entry.file.removesuffix(".rknn")
        onnx_path = out / "onnx" / f"{stem}.onnx"
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(onnx_graph(entry, args.opset, w if entry.weights == "baked" else None,
                             b if entry.weights == "baked" else None), str(onnx_path))  # fmt: skip
        dataset = None
        if shape.precision is Precision.INT8:
            dataset = write_calibration(entry, out / "calibration" / stem, args.calibration_samples, w, b)
        log.info("%s: wrote %s", entry.describe(), onnx_path)
        if not convert:
            continue
        baked = (w, b) if entry.weights == "baked" else (None, None)
        try:
            err = rknn_convert(onnx_path, out / entry.file, entry, dataset, args, *baked)
        except Exception as exc:
            failures += 1
            log.error("%s: conversion failed: %s", entry.describe(), exc)
            continue
        if err is not None:
            tolerance = TOLERANCE[shape.precision]
            summary = f"simulator error {err:.3g} of max|reference| (tolerance {tolerance})"
            if not err <= tolerance:
                failures += 1
                log.error("%s: %s; left out of the manifest", entry.describe(), summary)
                continue
            log.info("%s: %s", entry.describe(), summary)
        built.append(entry)
        log.info("%s: built %s", entry.describe(), out / entry.file)

    if built:
        previous = []
        if (out / "manifest.json").exists():
            keys = {e.key for e in built}
            previous = [e for e in read_manifest(out).entries if e.key not in keys]
        write_manifest(out, [*previous, *built], target_platform=args.target)
        print(f"{len(built)} model(s) built into {out}; manifest: {out / 'manifest.json'}")
    elif not convert:
        print(f"{len(cases)} ONNX graph(s) written to {out / 'onnx'}; no .rknn built")
    return 1 if failures or missing_toolkit else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", help="output directory (models, manifest.json, onnx/, calibration/)")
    sel = p.add_argument_group("shapes (any combination)")
    sel.add_argument("--conformance", action="store_true", help="the shapes of the executor conformance suite")
    sel.add_argument("--grid", help="a profiling grid: a shipped name (smoke, paper) or a YAML file")
    sel.add_argument("--stage", nargs="+", choices=["qkv", "attn"], help="stages to build for --n/--d/...")
    sel.add_argument("--n", nargs="+", type=int, help="tokens per step")
    sel.add_argument("--d", nargs="+", type=int, help="hidden dimensions")
    sel.add_argument("--batch", nargs="+", type=int, default=[1])
    sel.add_argument("--kv-len", nargs="+", type=int, default=[0], help="attn: tokens already cached")
    sel.add_argument("--heads", nargs="+", type=int, help="attn: heads (default d // 64)")
    sel.add_argument("--precision", nargs="+", choices=["fp16", "int8"], help="default: both")
    conv = p.add_argument_group("conversion")
    conv.add_argument("--weights", help="an .npz with w [d, 3d] (and b [3d]) to bake into the qkv models")
    conv.add_argument("--target", default="rk3588", help="rknn target_platform (default rk3588)")
    conv.add_argument("--quantized-dtype", default="w8a8", help="INT8 models: rknn quantized_dtype (default w8a8)")
    conv.add_argument("--quantized-algorithm", default="normal", choices=["normal", "mmse", "kl_divergence"])
    conv.add_argument("--optimization-level", type=int, default=3, choices=[0, 1, 2, 3])
    conv.add_argument("--calibration-samples", type=int, default=32, help="INT8 calibration inputs (default 32)")
    conv.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..19 (default 17)")
    conv.add_argument("--onnx-only", action="store_true", help="write the ONNX graphs without converting")
    conv.add_argument("--check", action="store_true",
                      help="run each converted model in the toolkit's simulator against the reference;\n"
                           "a model outside the conformance tolerance is left out of the manifest")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.precision_given = args.precision is not None
    if args.precision is None:
        args.precision = ["fp16", "int8"]
    if not 13 <= args.opset <= 19:
        p.error(f"--opset {args.opset}: rknn-toolkit2 reads opsets 13 to 19 here")
    if args.calibration_samples < 1:
        p.error("--calibration-samples must be >= 1")
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
