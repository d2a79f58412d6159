"""A stand-in for rknn-toolkit-lite2's ``rknnlite.api.RKNNLite`` on a host without an NPU. Tests only.

It keeps the board runtime's Python surface and its habits (checked against the
toolkit's examples and its ``rknn_lite.py`` of versions 1.6 to 2.3):

* ``load_rknn(path)`` returns 0, or -1 when the file does not exist or cannot be read.
  Like the real one it only reads the bytes: a corrupt model, or one built for another
  platform, is found by ``init_runtime``.
* ``init_runtime(target=None, device_id=None, async_mode=False, core_mask=NPU_CORE_AUTO)``
  returns 0, or -1 before ``load_rknn``, for a corrupt or foreign model, for a core mask
  that is not one of the ``NPU_CORE_*`` values, when ``target`` names a remote device
  (this fake is the on-board runtime), or when the board has no NPU
  (``FAKE_NPU_PRESENT = False``: no ``librknnrt.so`` or no rknpu driver). Called again,
  it drops the previous runtime first.
* ``inference(inputs, data_type=None, data_format=None, inputs_pass_through=None,
  get_frame_id=False)`` returns a list of float32 arrays, one per model output, or None
  on any failure: before ``init_runtime`` or after ``release``, a wrong number of inputs,
  an input whose element count differs from the model's (the runtime sees flat buffers,
  so a same-sized array of another shape is silently reinterpreted), ``data_format``
  given as a list (lite2 takes one string; a list raises ``KeyError`` inside), or
  pass-through inputs (not modelled). 4-D inputs are taken as NHWC and permuted to the
  model's NCHW unless ``data_format="nchw"``.
* ``release()`` may be called any number of times.
* Errors are logged on the ``"rknnlite"`` logger, never raised, as the real one does.

Static shapes: a model takes exactly its inputs' element counts, as the real runtime
does, so a call at a smaller ``kv_len`` than the model's must be padded by the caller;
a bucket attention model has a fourth input, ``mask`` (1 where a query row may see a
key), applied after the exponential like the build script's graphs.

The numerics follow the NPU: FP16 models round inputs, intermediate tensors and the
output to float16 and accumulate in float32. INT8 models hold every tensor in int8 per
tensor with an asymmetric range (zero point), as rknn-toolkit2's ``w8a8`` does: the
inputs, the attention scores, ``exp(s - rowmax)`` (its product with V, row sum and the
output are float16, as in the build script's models); qkv's output; constant weights per
output channel (symmetric). The ranges are the static
ones the model was calibrated with (``quant`` in its header), clipping what falls
outside, or each tensor's own when the model has none. Products accumulate exactly.

Not modelled: timing (it runs numpy at host speed), async mode, zero-copy and
pass-through inputs, asymmetric zero points, dynamic-shape models, multiple outputs.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np

from . import _fake_model

log = logging.getLogger("rknnlite")

_VALID_MASKS = {0, 1, 2, 4, 3, 7, 0xFFFF}


class RKNNLite:
    """The board-side RKNN runtime (fake)."""

    NPU_CORE_AUTO = 0
    NPU_CORE_0 = 1
    NPU_CORE_1 = 2
    NPU_CORE_2 = 4
    NPU_CORE_0_1 = 3
    NPU_CORE_0_1_2 = 7
    NPU_CORE_ALL = 0xFFFF

    #: what the fake board is; subclass and override to model another board
    FAKE_PLATFORM = "rk3588"
    FAKE_NPU_PRESENT = True
    FAKE_SDK_VERSION = "2.3.2 (fake) driver 0.9.8"

    def __init__(self, verbose: bool = False, verbose_file: str | None = None) -> None:
        self.verbose = verbose
        self.verbose_file = verbose_file
        self.rknn_data: bytes | None = None
        self.rknn_runtime: _Graph | None = None
        self.core_mask: int | None = None
        #: the methods called on this object, in order (for tests)
        self._fake_calls: list[str] = []

    def load_rknn(self, path: str) -> int:
        """Read an RKNN model file. 0 on success, -1 on failure."""
        self._fake_calls.append("load_rknn")
        if path is None or path == "" or not os.path.exists(path):
            log.error("Invalid RKNN model path: %s", path or "None")
            return -1
        try:
            with open(path, "rb") as f:
                self.rknn_data = f.read()
        except OSError as exc:
            log.error("Catch exception when loading RKNN model [%s]: %s", path, exc)
            return -1
        return 0

    def init_runtime(
        self, target: str | None = None, device_id: str | None = None, async_mode: bool = False,
        core_mask: int = NPU_CORE_AUTO,
    ) -> int:  # fmt: skip
        """Build the loaded model on the NPU. 0 on success, -1 on failure."""
        self._fake_calls.append("init_runtime")
        if target is not None:
            log.error("Catch exception when init runtime: no adb/ntb device %r (this is the on-board runtime)", target)
            return -1
        if self.rknn_data is None:
            log.error("Model is not loaded yet, this interface should be called after load_rknn!")
            return -1
        self.rknn_runtime = None
        if not self.FAKE_NPU_PRESENT:
            log.error("Catch exception when init runtime: failed to open rknpu device (librknnrt.so or driver missing)")
            return -1
        try:
            header, consts = _fake_model.unpack(self.rknn_data)
        except ValueError as exc:
            log.error("Catch exception when init runtime: %s", exc)
            return -1
        if str(header["target_platform"]).lower() != self.FAKE_PLATFORM:
            log.error("The model was built for %s, but the platform is %s", header["target_platform"],
                      self.FAKE_PLATFORM)  # fmt: skip
            return -1
        if isinstance(core_mask, bool) or not isinstance(core_mask, int) or core_mask not in _VALID_MASKS:
            log.error("Catch exception when set npu core mode: invalid core mask %r", core_mask)
            return -1
        self.rknn_runtime = _Graph(header, consts)
        self.core_mask = core_mask
        return 0

    def inference(
        self, inputs: Any, data_type: Any = None, data_format: Any = None, inputs_pass_through: Any = None,
        get_frame_id: bool = False,
    ) -> list[np.ndarray] | None:  # fmt: skip
        """Run the model. A list of float32 outputs, or None on failure."""
        self._fake_calls.append("inference")
        if self.rknn_runtime is None:
            log.error("Runtime environment is not inited, please call init_runtime to init it first!")
            return None
        try:
            feeds = self.rknn_runtime.set_inputs(inputs, data_format, inputs_pass_through)
        except Exception as exc:
            log.error("Catch exception when setting inputs: %s: %s", type(exc).__name__, exc)
            return None
        try:
            outputs = [self.rknn_runtime.run(feeds)]
        except Exception as exc:
            log.error("Catch exception when running RKNN model: %s: %s", type(exc).__name__, exc)
            return None
        if get_frame_id:
            outputs.append(0)  # type: ignore[arg-type]
        return outputs

    def get_sdk_version(self) -> str | None:
        if self.rknn_runtime is None:
            log.error("Runtime environment is not inited, please call init_runtime to init it first!")
            return None
        return self.FAKE_SDK_VERSION

    def list_support_target_platform(self, rknn_model: str | None = None) -> dict[str, list[str]] | None:
        if rknn_model is not None and not os.path.exists(rknn_model):
            log.error("The model %s does not exist.", rknn_model)
            return None
        return {"support_target_platform": [self.FAKE_PLATFORM.upper()]}

    def release(self) -> None:
        """Free the runtime. Safe to call more than once."""
        self._fake_calls.append("release")
        self.rknn_runtime = None


def _f16(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


class _Quantiser:
    """Asymmetric per-tensor int8, with static ranges, or recording each tensor's range (calibration)."""

    def __init__(self, ranges: dict[str, list[float]] | None, record: dict[str, list[float]] | None = None) -> None:
        self.ranges = ranges or {}
        self.record = record

    def __call__(self, name: str, a: np.ndarray, fixed: tuple[float, float] | None = None) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        if self.record is not None:  # calibration: float math, ranges noted
            lo, hi = self.record.get(name, [0.0, 0.0])
            self.record[name] = [min(lo, float(a.min())), max(hi, float(a.max()))]
            return a
        if fixed is not None:
            lo, hi = fixed
        elif name in self.ranges:
            lo, hi = self.ranges[name]
        else:
            lo, hi = min(0.0, float(a.min())), max(0.0, float(a.max()))
        scale = (hi - lo) / 255.0 if hi > lo else 1.0
        zero = np.clip(np.rint(-128 - lo / scale), -128, 127)
        return (np.clip(np.rint(a / scale) + zero, -128, 127) - zero) * scale


def _per_channel(w: np.ndarray) -> np.ndarray:
    """A constant quantised symmetrically per output column (how RKNN quantises weights best)."""
    amax = np.max(np.abs(w), axis=0, keepdims=True)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    return np.clip(np.rint(w / scale), -127, 127) * scale


class _Graph:
    """A loaded fake model: checks and converts inputs, then computes the stage."""

    def __init__(self, header: dict[str, Any], consts: dict[str, np.ndarray]) -> None:
        self.op = header["op"]
        self.precision = header["precision"]
        if self.op not in ("qkv", "attn") or self.precision not in ("fp16", "int8"):
            raise ValueError(f"corrupt RKNN model (op {self.op!r}, precision {self.precision!r})")
        self.inputs = [(t["name"], tuple(t["shape"])) for t in header["inputs"]]
        self.output = tuple(header["output"])
        self.quant: dict[str, list[float]] = dict(header.get("quant") or {})
        self.consts = consts

    def set_inputs(self, inputs: Any, data_format: Any, pass_through: Any) -> dict[str, np.ndarray]:
        if not isinstance(inputs, (list, tuple)):
            raise TypeError(f"inputs must be a list of ndarray, got {type(inputs).__name__}")
        if len(inputs) != len(self.inputs):
            raise ValueError(f"the model has {len(self.inputs)} inputs, but {len(inputs)} were given")
        if data_format is not None and not isinstance(data_format, str):
            raise KeyError(str(data_format))
        if data_format is not None and data_format not in ("nchw", "nhwc"):
            raise ValueError(f"data_format {data_format!r} is not supported")
        if pass_through is not None and any(pass_through):
            raise NotImplementedError("pass-through inputs are not modelled by the fake runtime")
        feeds = {}
        for i, ((name, shape), a) in enumerate(zip(self.inputs, inputs, strict=True)):
            a = np.asarray(a)
            if a.dtype.kind not in "fiu":
                raise TypeError(f"input {i} ({name}) has dtype {a.dtype}")
            if a.size != math.prod(shape):
                raise ValueError(f"input {i} ({name}) has {a.size} elements, the model needs {list(shape)}")
            if len(shape) == 4 and data_format != "nchw":
                n, c, h, w = shape
                a = a.reshape(n, h, w, c).transpose(0, 3, 1, 2)
            feeds[name] = a.reshape(shape).astype(np.float32)
        return feeds

    def run(self, feeds: dict[str, np.ndarray], record: dict[str, list[float]] | None = None) -> np.ndarray:
        """The model's output; with ``record``, float math that notes every int8 tensor's range instead."""
        values = {**self.consts, **feeds}
        if self.precision == "fp16":
            out = _f16(self._qkv16(values) if self.op == "qkv" else self._attn16(values))
        else:
            quant = _Quantiser(self.quant, record)
            out = self._qkv8(values, quant) if self.op == "qkv" else self._attn8(values, quant)
        return np.asarray(out, dtype=np.float32).reshape(self.output)

    @staticmethod
    def _visible(v: dict[str, np.ndarray], n: int, keys: int) -> np.ndarray:
        if "mask" in v:
            return v["mask"].reshape(-1, n, keys) > 0.5
        return np.arange(keys)[None, :] <= np.arange(n)[:, None] + (keys - n)

    def _qkv16(self, v: dict[str, np.ndarray]) -> np.ndarray:
        w = v["w"]
        acc = _f16(v["x"].reshape(-1, w.shape[0])) @ _f16(w)
        return acc + _f16(v["b"]) if "b" in v else acc

    def _qkv8(self, v: dict[str, np.ndarray], quant: _Quantiser) -> np.ndarray:
        w = v["w"]
        x = quant("x", v["x"].reshape(-1, w.shape[0]))
        # a constant is quantised per output channel, an input per tensor like any activation
        wq = _per_channel(w) if "w" in self.consts else quant("w", w)
        acc = x @ wq
        if "b" in v:
            acc = acc + (v["b"] if "b" in self.consts else quant("b", v["b"]))
        return quant("out", acc)

    def _attn16(self, v: dict[str, np.ndarray]) -> np.ndarray:
        q, k, val = v["q"], v["k"], v["v"]
        n, keys, hd = q.shape[-2], k.shape[-2], q.shape[-1]
        scores = _f16(_f16(q) @ np.swapaxes(_f16(k), -1, -2)) * np.float32(1.0 / math.sqrt(hd))
        scores = np.where(self._visible(v, n, keys), scores, -np.inf)
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return _f16(e / e.sum(axis=-1, keepdims=True)) @ _f16(val)

    def _attn8(self, v: dict[str, np.ndarray], quant: _Quantiser) -> np.ndarray:
        q, k, val = quant("q", v["q"]), quant("k", v["k"]), quant("v", v["v"])
        n, keys, hd = q.shape[-2], k.shape[-2], q.shape[-1]
        visible = self._visible(v, n, keys)
        scores = quant("scores", (q @ np.swapaxes(k, -1, -2)) / math.sqrt(hd))
        row_max = quant("rowmax", np.where(visible, scores, -np.inf).max(axis=-1, keepdims=True))
        shifted = quant("shifted", np.where(visible, scores - row_max, 0.0))
        e = quant("exp", np.where(visible, np.exp(shifted), 0.0), fixed=(0.0, 1.0))
        # the division side is float16, as the build script's models keep it
        num = _f16(e @ val)
        den = _f16(e.sum(axis=-1, keepdims=True))
        return _f16(num / den)
