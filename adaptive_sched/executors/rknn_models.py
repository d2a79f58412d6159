"""Prepared RKNN models: the manifest that maps a (stage, shape) to a ``.rknn`` file and its inputs.

The NPU runs static graphs: every shape needs its own model, converted ahead of time
on an x86 host with rknn-toolkit2 (see ``docs/rknn.md``). A model directory holds the
``.rknn`` files and one ``manifest.json`` that says, for each model, which stage and
shape it computes, which tensors it takes (names, order, shapes, dtypes) and whether
the ``qkv`` weights are inputs or baked into the model.

``manifest.json`` (format 1)::

    {
      "format": 1,
      "target_platform": "rk3588",
      "models": [
        {
          "stage": "qkv",
          "shape": {"n": 1, "d": 2048, "batch": 1, "precision": "int8"},
          "file": "qkv_n1_d2048_b1_int8.rknn",
          "inputs": [{"name": "x", "shape": [1, 2048], "dtype": "float32"},
                     {"name": "w", "shape": [2048, 6144], "dtype": "float32"},
                     {"name": "b", "shape": [6144], "dtype": "float32"}],
          "output": [1, 6144],
          "weights": {"mode": "input"}
        }
      ]
    }

Layouts are row-major reshapes of the reference layouts of :mod:`adaptive_sched.stages`
(``x [batch, n, d]`` fed as ``[batch * n, d]``, ``q [batch, heads, n, head_dim]`` as
``[batch * heads, n, head_dim]``, and so on): an input's element count must equal its
reference input's. The defaults avoid 4-D tensors on purpose, because the runtime
treats 4-D inputs as NHWC images unless told otherwise (``data_format``).

``weights`` (``qkv`` only):

* ``{"mode": "input"}``: ``w`` (and ``b`` if listed) are model inputs. Any weights work;
  every call copies them to the NPU, which dominates decode-sized calls at large ``d``.
* ``{"mode": "baked", "w": "sha256:...", "b": "sha256:..." | null}``: the weights were
  constants of the ONNX graph. The digests (:func:`weights_digest` at the model's
  precision) let the executor
  refuse weights other than the model's; ``"b": null`` means the model adds no bias.

Bucket models (``"bucket": true``): a static graph serves every smaller call. The entry's
shape is the largest it holds (``n`` query rows, ``keys = kv_len + n`` key rows); a call
with ``n' <= n`` (and, for ``attn``, ``keys' <= keys``) runs on it with the inputs padded
with zeros and, for ``attn``, a ``mask`` input (1 where query ``i`` may see key ``j``,
0 for the causal future and the padding) that the graph applies after the exponential;
the padded output rows are dropped. :func:`model_feed` builds the padded inputs and
:func:`take_output` the caller's output; an entry may also carry the build's
``"calibration"`` and ``"check"`` records (the error distribution of its simulator check).

>>> entry = ModelEntry.for_shape("qkv", Shape(n=1, d=64))
>>> entry.file, [t.name for t in entry.inputs], entry.output
('qkv_n1_d64_b1_fp16.rknn', ['x', 'w', 'b'], (1, 192))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..stages import input_shapes, output_shape
from ..types import Precision, Shape, Stage, parse_precision, parse_stage

MANIFEST = "manifest.json"
FORMAT = 1
DTYPES = ("float32", "float16", "int8")
DATA_FORMATS = ("nchw", "nhwc")
WEIGHT_MODES = ("input", "baked")
#: the extra input of a bucket attention model: 1 where a query row may see a key row
MASK = "mask"

#: the shape fields that select a model, per stage (the others do not change the graph)
KEY_FIELDS: dict[Stage, tuple[str, ...]] = {
    Stage.QKV: ("n", "d", "batch"),
    Stage.ATTN: ("n", "d", "kv_len", "batch", "heads"),
}

ModelKey = tuple[Any, ...]


def model_key(stage: Stage | str, shape: Shape) -> ModelKey:
    """What identifies the model for ``stage`` at ``shape``.

    ``qkv`` ignores ``kv_len`` and ``heads``: one projection model serves every step of a decode.

    >>> model_key("qkv", Shape(n=1, d=64, kv_len=9)) == model_key("qkv", Shape(n=1, d=64))
    True
    """
    stage = parse_stage(stage)
    return (stage, *(getattr(shape, f) for f in KEY_FIELDS[stage]), shape.precision)


def model_filename(stage: Stage | str, shape: Shape, suffix: str = "", bucket: bool = False) -> str:
    """The conventional file name of the model for ``stage`` at ``shape`` (a bucket model's largest shape).

    >>> model_filename("attn", Shape(n=1, d=128, kv_len=9, heads=2, precision="int8"))
    'attn_n1_kv9_d128_h2_b1_int8.rknn'
    >>> model_filename("attn", Shape(n=1, d=128, kv_len=511, heads=2), bucket=True)
    'attn_bucket_n1_keys512_d128_h2_b1_fp16.rknn'
    """
    stage = parse_stage(stage)
    p = shape.precision.value
    if stage is Stage.QKV:
        stem = f"qkv{'_bucket' if bucket else ''}_n{shape.n}_d{shape.d}_b{shape.batch}_{p}"
    elif bucket:
        stem = f"attn_bucket_n{shape.n}_keys{shape.keys}_d{shape.d}_h{shape.heads}_b{shape.batch}_{p}"
    else:
        stem = f"attn_n{shape.n}_kv{shape.kv_len}_d{shape.d}_h{shape.heads}_b{shape.batch}_{p}"
    return f"{stem}{suffix}.rknn"


def group_key(stage: Stage | str, shape: Shape) -> ModelKey:
    """What bucket models that may serve ``stage`` at ``shape`` share: everything but ``n`` and ``kv_len``."""
    stage = parse_stage(stage)
    fields = [f for f in KEY_FIELDS[stage] if f not in ("n", "kv_len")]
    return (stage, *(getattr(shape, f) for f in fields), shape.precision)


def weights_digest(a: np.ndarray, precision: Precision | str | None = None) -> str:
    """``"sha256:<hex>"`` of ``a``'s shape and values as the model sees them.

    An FP16 model holds its weights in float16, so for ``precision="fp16"`` the values are
    rounded to float16 first: the float32 weights a model was converted from and the
    caller's float16 copy of them are the same weights. Otherwise the float32 values count.

    >>> w = np.linspace(0, 1, 7, dtype=np.float32)
    >>> weights_digest(w, "fp16") == weights_digest(w.astype(np.float16), "fp16")
    True
    >>> weights_digest(w, "int8") == weights_digest(w.astype(np.float16), "int8")
    False
    """
    a = np.asarray(a)
    if precision is not None and parse_precision(precision) is Precision.FP16:
        a = a.astype(np.float16)
    h = hashlib.sha256(repr(tuple(a.shape)).encode())
    h.update(np.ascontiguousarray(a, dtype="<f4").data)
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """One model input: its name (a reference input's), shape and the dtype it is fed as."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def default_inputs(
    stage: Stage | str, shape: Shape, weights: str = "input", bias: bool = True, dtype: str = "float32"
) -> tuple[TensorSpec, ...]:
    """The input layout the build script gives its models: 2-D and 3-D reshapes, never 4-D."""
    stage = parse_stage(stage)
    b, n, d = shape.batch, shape.n, shape.d
    if stage is Stage.QKV:
        specs = [TensorSpec("x", (b * n, d), dtype)]
        if weights == "input":
            specs.append(TensorSpec("w", (d, 3 * d), dtype))
            if bias:
                specs.append(TensorSpec("b", (3 * d,), dtype))
        return tuple(specs)
    bh, hd = b * shape.heads, shape.head_dim
    return (
        TensorSpec("q", (bh, n, hd), dtype),
        TensorSpec("k", (bh, shape.keys, hd), dtype),
        TensorSpec("v", (bh, shape.keys, hd), dtype),
    )


def default_output(stage: Stage | str, shape: Shape) -> tuple[int, ...]:
    """The output shape the build script gives its models (a reshape of the reference output)."""
    out = output_shape(stage, shape)
    if parse_stage(stage) is Stage.QKV:
        return (out[0] * out[1], out[2])  # [batch * n, 3d]
    return (out[0] * out[1], out[2], out[3])  # [batch * heads, n, head_dim]


@dataclass(frozen=True)
class ModelEntry:
    """One prepared model: what it computes, where it is, and how to feed it.

    Parameters
    ----------
    stage, shape
        The stage and shape the model computes (for ``qkv``, ``kv_len`` and ``heads`` do not matter).
    file : str
        Path of the ``.rknn`` file, relative to the model directory.
    inputs : tuple of TensorSpec
        The model's inputs in order. Names are reference input names (``x``, ``w``, ``b``;
        ``q``, ``k``, ``v``); each shape is a reshape of that reference input.
    output : tuple of int
        The model's output shape, a reshape of the reference output.
    weights : {"input", "baked"}
        Whether ``qkv`` weights are inputs or constants of the model.
    w_digest, b_digest : str, optional
        :func:`weights_digest` of the baked ``w`` and ``b`` (``b_digest`` None: no bias in the model).
    data_format : {"nchw", "nhwc"}, optional
        Passed to ``RKNNLite.inference`` for models with 4-D inputs.
    """

    stage: Stage
    shape: Shape
    file: str
    inputs: tuple[TensorSpec, ...]
    output: tuple[int, ...]
    weights: str = "input"
    w_digest: str | None = None
    b_digest: str | None = None
    data_format: str | None = None
    bucket: bool = False
    calibration: Mapping[str, Any] | None = field(default=None, compare=False)
    check: Mapping[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage", parse_stage(self.stage))
        self.validate()

    @property
    def key(self) -> ModelKey:
        key = model_key(self.stage, self.shape)
        return (*key, "bucket") if self.bucket else key

    def holds(self, stage: Stage | str, shape: Shape) -> bool:
        """True if this model computes ``stage`` at ``shape``: exactly, or padded for a bucket model."""
        stage = parse_stage(stage)
        if not self.bucket:
            return stage is self.stage and model_key(stage, shape) == model_key(self.stage, self.shape)
        if stage is not self.stage or group_key(stage, shape) != group_key(self.stage, self.shape):
            return False
        if shape.n > self.shape.n:
            return False
        return stage is Stage.QKV or shape.keys <= self.shape.keys

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def adds_bias(self) -> bool:
        """True if the model itself adds a bias (as an input or a baked constant)."""
        return "b" in self.input_names or (self.weights == "baked" and self.b_digest is not None)

    def describe(self) -> str:
        if self.bucket:
            sizes = [f"n<={self.shape.n}"] + ([f"keys<={self.shape.keys}"] if self.stage is Stage.ATTN else [])
            rest = [f"{f}={getattr(self.shape, f)}" for f in KEY_FIELDS[self.stage] if f not in ("n", "kv_len")]
            return f"{self.stage.value} bucket ({', '.join(sizes + rest)}, {self.shape.precision.value})"
        fields = ", ".join(f"{f}={getattr(self.shape, f)}" for f in KEY_FIELDS[self.stage])
        return f"{self.stage.value} ({fields}, {self.shape.precision.value})"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that does not fit the stage and shape."""
        if not self.file or not isinstance(self.file, str):
            raise ValueError(f"file: expected a non-empty path, got {self.file!r}")
        if self.weights not in WEIGHT_MODES:
            raise ValueError(f"weights: unknown mode {self.weights!r} (expected 'input' or 'baked')")
        if self.stage is Stage.ATTN and self.weights != "input":
            raise ValueError("weights: only qkv models have weights")
        if self.weights == "baked" and not (isinstance(self.w_digest, str) and self.w_digest.startswith("sha256:")):
            raise ValueError(f"weights.w: a baked model needs the 'sha256:...' digest of its w, got {self.w_digest!r}")
        if self.data_format is not None and self.data_format not in DATA_FORMATS:
            raise ValueError(f"data_format: {self.data_format!r} is not one of {', '.join(DATA_FORMATS)}")
        reference = dict(input_shapes(self.stage, self.shape))
        if self.bucket and self.stage is Stage.ATTN:
            reference[MASK] = (self.shape.n, self.shape.keys)  # which keys each query row sees
        allowed = {"x"} if self.weights == "baked" else set(reference)
        required = {"x", "w"} & allowed if self.stage is Stage.QKV else set(reference)
        names = self.input_names
        for i, spec in enumerate(self.inputs):
            where = f"inputs[{i}] ({spec.name!r})"
            if spec.name not in allowed:
                kind = "bucket" if self.bucket else f"{self.weights}-weights"
                raise ValueError(f"{where}: not an input of a {kind} {self.stage.value} model "
                                 f"(expected {', '.join(sorted(allowed))})")  # fmt: skip
            if names.count(spec.name) > 1:
                raise ValueError(f"{where}: listed twice")
            if spec.dtype not in DTYPES:
                raise ValueError(f"{where}: dtype {spec.dtype!r} is not one of {', '.join(DTYPES)}")
            want = reference[spec.name]
            if spec.size != math.prod(want):
                raise ValueError(f"{where}: shape {list(spec.shape)} has {spec.size} elements; "
                                 f"the stage's {spec.name!r} {list(want)} has {math.prod(want)}")  # fmt: skip
        missing = sorted(required - set(names))
        if missing:
            raise ValueError(f"inputs: missing {', '.join(map(repr, missing))}")
        for name in ("calibration", "check"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"{name}: expected a mapping, got {value!r}")
        want_out = output_shape(self.stage, self.shape)
        if math.prod(self.output) != math.prod(want_out):
            raise ValueError(f"output: shape {list(self.output)} has {math.prod(self.output)} elements; "
                             f"the stage's output {list(want_out)} has {math.prod(want_out)}")  # fmt: skip

    @classmethod
    def for_shape(
        cls,
        stage: Stage | str,
        shape: Shape,
        *,
        weights: str = "input",
        w: np.ndarray | None = None,
        b: np.ndarray | None = None,
        bias: bool = True,
        dtype: str = "float32",
        file: str | None = None,
        bucket: bool = False,
    ) -> ModelEntry:
        """The entry of a model built with the default layout and file name.

        For ``weights="baked"`` pass the weights the model was converted with (``w``, and
        ``b`` or None): their digests go into the entry and a digest prefix into the name.
        ``bucket=True`` makes a bucket model whose largest call is ``shape``.
        """
        stage = parse_stage(stage)
        w_digest = b_digest = None
        suffix = ""
        if weights == "baked":
            if w is None:
                raise ValueError("w: a baked-weights model needs the weights it was converted with")
            w_digest = weights_digest(w, shape.precision)
            b_digest = None if b is None else weights_digest(b, shape.precision)
            suffix = "_w" + w_digest.split(":", 1)[1][:10]
        inputs = default_inputs(stage, shape, weights, bias, dtype)
        if bucket and stage is Stage.ATTN:
            inputs = (*inputs, TensorSpec(MASK, (1, shape.n, shape.keys), dtype))
        return cls(
            stage=stage,
            shape=shape,
            file=file or model_filename(stage, shape, suffix, bucket=bucket),
            inputs=inputs,
            output=default_output(stage, shape),
            weights=weights,
            w_digest=w_digest,
            b_digest=b_digest,
            bucket=bucket,
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest form of this entry."""
        shape = {f: getattr(self.shape, f) for f in KEY_FIELDS[self.stage]}
        shape["precision"] = self.shape.precision.value
        data: dict[str, Any] = {
            "stage": self.stage.value,
            "shape": shape,
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "output": list(self.output),
        }
        if self.stage is Stage.QKV:
            baked = {"mode": "baked", "w": self.w_digest, "b": self.b_digest}
            data["weights"] = {"mode": "input"} if self.weights == "input" else baked
        if self.data_format is not None:
            data["data_format"] = self.data_format
        if self.bucket:
            data["bucket"] = True
        for name in ("calibration", "check"):
            if getattr(self, name) is not None:
                data[name] = dict(getattr(self, name))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelEntry:
        """Parse a manifest entry; a ``ValueError`` names the field at fault."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a mapping, got {type(data).__name__}")
        unknown = set(data) - {"stage", "shape", "file", "inputs", "output", "weights", "data_format", "bucket",
                               "calibration", "check"}  # fmt: skip
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        for name in ("stage", "shape", "file", "inputs", "output"):
            if name not in data:
                raise ValueError(f"{name}: required")
        stage = parse_stage(data["stage"])
        shape_data = data["shape"]
        if not isinstance(shape_data, Mapping):
            raise ValueError(f"shape: expected a mapping, got {shape_data!r}")
        try:
            shape = Shape.from_dict(shape_data)
        except ValueError as exc:
            raise ValueError(f"shape: {exc}") from None
        inputs = []
        for i, spec in enumerate(_as_list(data["inputs"], "inputs")):
            if not isinstance(spec, Mapping) or "name" not in spec or "shape" not in spec:
                raise ValueError(f"inputs[{i}]: expected {{name, shape, dtype}}, got {spec!r}")
            inputs.append(TensorSpec(str(spec["name"]), _dims(spec["shape"], f"inputs[{i}].shape"),
                                     str(spec.get("dtype", "float32"))))  # fmt: skip
        weights = data.get("weights", {"mode": "input"})
        if isinstance(weights, str):
            weights = {"mode": weights}
        if not isinstance(weights, Mapping):
            raise ValueError(f"weights: expected a mapping, got {weights!r}")
        return cls(
            stage=stage,
            shape=shape,
            file=data["file"],
            inputs=tuple(inputs),
            output=_dims(data["output"], "output"),
            weights=str(weights.get("mode", "input")),
            w_digest=weights.get("w"),
            b_digest=weights.get("b"),
            data_format=data.get("data_format"),
            bucket=_flag(data.get("bucket", False), "bucket"),
            calibration=data.get("calibration"),
            check=data.get("check"),
        )


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    return value


def _as_list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name}: expected a list, got {value!r}")
    return list(value)


def _dims(value: Any, name: str) -> tuple[int, ...]:
    dims = _as_list(value, name)
    if not dims or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in dims):
        raise ValueError(f"{name}: expected a list of positive integers, got {value!r}")
    return tuple(dims)


def parse_buckets(value: Any, name: str) -> tuple[int, ...] | None:
    """A bucket option: None, a list of sizes, or ``{"pow2": [lo, hi]}`` (the powers of two from lo to hi).

    A :class:`~adaptive_sched.errors.ConfigError` names the option when the value is not one.

    >>> parse_buckets({"pow2": [128, 1024]}, "kv_buckets"), parse_buckets([512, 64], "kv_buckets")
    ((128, 256, 512, 1024), (64, 512))
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        if set(value) != {"pow2"}:
            raise ConfigError(f"{name}: expected a list of sizes or {{pow2: [lo, hi]}}, got {dict(value)!r}")
        bounds = value["pow2"]
        if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bounds)):  # fmt: skip
            raise ConfigError(f"{name}: pow2 takes [lo, hi], two positive integers, got {bounds!r}")
        lo, hi = bounds
        if lo > hi:
            raise ConfigError(f"{name}: pow2 [lo, hi] has lo {lo} > hi {hi}")
        sizes = [1 << e for e in range(max(0, (lo - 1).bit_length()), hi.bit_length()) if lo <= 1 << e <= hi]
        if not sizes:
            raise ConfigError(f"{name}: no power of two between {lo} and {hi}")
        return tuple(sizes)
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{name}: expected a non-empty list of sizes or {{pow2: [lo, hi]}}, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name}: sizes must be positive integers, got {v!r}")
    return tuple(sorted(set(value)))


@dataclass(frozen=True)
class Manifest:
    """The models of one directory, by :func:`model_key`."""

    directory: Path
    target_platform: str
    entries: tuple[ModelEntry, ...]

    def lookup(self) -> dict[ModelKey, ModelEntry]:
        return {e.key: e for e in self.entries}

    def path(self, entry: ModelEntry) -> Path:
        return self.directory / entry.file


def _entries(items: Iterable[ModelEntry | Mapping[str, Any]], where: str) -> tuple[ModelEntry, ...]:
    entries: list[ModelEntry] = []
    seen: dict[ModelKey, int] = {}
    for i, item in enumerate(items):
        try:
            entry = item if isinstance(item, ModelEntry) else ModelEntry.from_dict(item)
        except ValueError as exc:
            raise ConfigError(f"{where}: models[{i}]: {exc}") from None
        if entry.key in seen:
            raise ConfigError(f"{where}: models[{i}] is a second model for {entry.describe()} "
                              f"(models[{seen[entry.key]}] is the first)")  # fmt: skip
        seen[entry.key] = i
        entries.append(entry)
    return tuple(entries)


def write_manifest(
    model_dir: str | os.PathLike[str],
    entries: Iterable[ModelEntry | Mapping[str, Any]],
    *,
    target_platform: str = "rk3588",
) -> Path:
    """Write ``manifest.json`` for ``entries`` into ``model_dir`` (created if needed); return its path.

    Entries are :class:`ModelEntry` objects or their manifest mappings; they are validated
    first (a :class:`~adaptive_sched.errors.ConfigError` names the bad one) and the file is
    replaced atomically, so a running executor never reads half a manifest.
    The ``.rknn`` files themselves are not checked: they may be converted afterwards.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> path = write_manifest(d, [ModelEntry.for_shape("qkv", Shape(n=1, d=64))])
    >>> [e.file for e in read_manifest(d).entries]
    ['qkv_n1_d64_b1_fp16.rknn']
    """
    directory = Path(model_dir)
    checked = _entries(entries, str(directory / MANIFEST))
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "target_platform": target_platform, "models": [e.to_dict() for e in checked]}
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, directory / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return directory / MANIFEST


def read_manifest(model_dir: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``model_dir/manifest.json``.

    Raises :class:`~adaptive_sched.errors.ConfigError` naming the file (and the entry and
    field) when it is missing, not JSON, or does not describe valid models.
    """
    directory = Path(model_dir)
    path = directory / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a JSON object with 'models'")
    if doc.get("format", FORMAT) != FORMAT:
        raise ConfigError(f"{path}: format {doc.get('format')!r} is not supported (expected {FORMAT})")
    models = doc.get("models")
    if not isinstance(models, list):
        raise ConfigError(f"{path}: 'models' must be a list, got {models!r}")
    return Manifest(directory, str(doc.get("target_platform", "rk3588")), _entries(models, str(path)))


__all__ = [
    "MANIFEST",
    "MASK",
    "Manifest",
    "ModelEntry",
    "TensorSpec",
    "default_inputs",
    "default_output",
    "group_key",
    "model_filename",
    "model_key",
    "parse_buckets",
    "read_manifest",
    "weights_digest",
    "write_manifest",
]
