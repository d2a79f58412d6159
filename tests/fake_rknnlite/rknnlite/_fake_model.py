"""The file format of the fake ``.rknn`` models (not Rockchip's format, which is not public).

A fake model is ``MAGIC``, a little-endian uint32 header length, a JSON header that
describes the graph, then an ``.npz`` payload with the graph's constants (baked weights).
The header::

    {"target_platform": "rk3588",
     "op": "qkv" | "attn",
     "precision": "fp16" | "int8",
     "inputs": [{"name": "x", "shape": [7, 64], "dtype": "float32"}, ...],
     "output": [7, 192],
     "consts": ["w", "b"],                 # arrays in the payload
     "quant": {"x": [-3.9, 4.1], ...}}    # static int8 ranges from calibration; absent: dynamic
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np

MAGIC = b"FAKERKNN"


def pack(header: dict[str, Any], consts: dict[str, np.ndarray] | None = None) -> bytes:
    """The bytes of a fake model file."""
    consts = dict(consts or {})
    header = dict(header, consts=sorted(consts))
    head = json.dumps(header, sort_keys=True).encode()
    payload = io.BytesIO()
    np.savez(payload, **{k: np.asarray(v, dtype=np.float32) for k, v in consts.items()})
    return MAGIC + struct.pack("<I", len(head)) + head + payload.getvalue()


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and constants of a fake model; ``ValueError`` if ``data`` is not one."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise ValueError("not an RKNN model (bad magic)")
    (size,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(data[start : start + size])
        with np.load(io.BytesIO(data[start + size :]), allow_pickle=False) as npz:
            consts = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise ValueError(f"corrupt RKNN model ({type(exc).__name__}: {exc})") from None
    for key in ("target_platform", "op", "precision", "inputs", "output"):
        if key not in header:
            raise ValueError(f"corrupt RKNN model (header has no {key!r})")
    if sorted(consts) != sorted(header.get("consts", [])):
        raise ValueError("corrupt RKNN model (constants do not match the header)")
    return header, consts
