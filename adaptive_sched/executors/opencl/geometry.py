"""Launch geometry: the macros and work sizes of each kernel for a shape, and the kernels' limits.

Pure functions of a :class:`~.device.Tuning` and a shape, so what a run will launch can be
computed (and tested) without a device.
"""

from __future__ import annotations

from ...types import Precision, Shape, Stage
from .buffers import round_up
from .device import Tuning

#: largest head dimension the attention kernel keeps in registers
MAX_HEAD_DIM = 256
#: INT8 attention accumulates ``keys * 127 * 127`` in int32
MAX_INT8_KEYS = (2**31 - 1) // (127 * 127)
#: kernels index tensors with 32-bit ints
MAX_ELEMENTS = 2**31 - 1


def ceil_div(a: int, b: int) -> int:
    """``a / b`` rounded up."""
    return -(-a // b)


def pow2_at_most(limit: int) -> int:
    """The largest power of two <= ``limit`` (1 for anything below 2)."""
    return 1 << (max(1, limit).bit_length() - 1)


def tensor_sizes(stage: Stage, shape: Shape) -> dict[str, int]:
    b, n, d = shape.batch, shape.n, shape.d
    if stage is Stage.QKV:
        return {"x": b * n * d, "w": d * 3 * d, "out": b * n * 3 * d}
    bh, hd = b * shape.heads, shape.head_dim
    return {"q": bh * n * hd, "k": bh * shape.keys * hd, "v": bh * shape.keys * hd, "out": bh * n * hd}


def unsupported(stage: Stage, shape: Shape) -> str | None:
    """Why the kernels cannot run ``stage`` at ``shape`` on any device (None if they can)."""
    sizes = tensor_sizes(stage, shape)
    biggest = max(sizes.values())
    if biggest > MAX_ELEMENTS:
        name = max(sizes, key=lambda k: sizes[k])
        return f"tensor {name!r} has {biggest} elements, more than the kernels' 32-bit indexing allows"
    if stage is Stage.ATTN:
        if shape.head_dim > MAX_HEAD_DIM:
            return f"head_dim {shape.head_dim} > {MAX_HEAD_DIM} (a query row is kept in registers)"
        if shape.precision is Precision.INT8 and shape.keys > MAX_INT8_KEYS:
            return f"INT8 attention over {shape.keys} keys would overflow int32 (max {MAX_INT8_KEYS})"
    return None


def gemm_config(
    t: Tuning, shape: Shape, x_code: int, w_code: int, quant: bool
) -> tuple[dict[str, int], tuple[int, int], tuple[int, int] | None]:
    """Macros, global size and local size of the GEMM (or GEMV) for ``shape``."""
    m, n_cols = shape.batch * shape.n, 3 * shape.d
    if m <= t.gemv_max_rows:
        # one work-item per group on a CPU spreads the few work-items over the cores
        rows, col_vecs, local_rows = m, t.gemv_col_vecs, (None if t.gemm_local_rows is None else 1)
    else:
        rows, col_vecs, local_rows = t.gemm_rows, 1, t.gemm_local_rows
    macros = {
        "R": rows,
        "VW": t.gemm_vec,
        "CB": col_vecs,
        "KU": t.gemm_unroll,
        "X_STORE": x_code,
        "W_STORE": w_code,
        "QUANT": int(quant),
        "KCHUNK": 1024,
    }
    gx, gy = ceil_div(n_cols, t.gemm_vec * col_vecs), ceil_div(m, rows)
    if local_rows is None:
        return macros, (gx, gy), None
    ly = min(local_rows, gy)
    return macros, (gx, round_up(gy, ly)), (1, ly)


def attn_config(
    t: Tuning, shape: Shape, codes: tuple[int, int, int], quant: bool, parallel: int
) -> tuple[dict[str, int], tuple[int, int, int], int]:
    """Macros, global size ``(query blocks, batch * heads, splits)`` and keys per split."""
    hd = shape.head_dim
    vw = next(w for w in (16, 8, 4, 2, 1) if w <= t.attn_vec and hd % w == 0)
    rq = pow2_at_most(min(t.attn_rows, shape.n))
    macros = {
        "HD": hd,
        "VW": vw,
        "RQ": rq,
        "TK": t.attn_tile,
        "Q_STORE": codes[0],
        "K_STORE": codes[1],
        "V_STORE": codes[2],
        "QUANT": int(quant),
    }
    blocks, bh = ceil_div(shape.n, rq), shape.batch * shape.heads
    # split the keys only as far as it takes to reach the device's parallelism
    splits = max(1, min(ceil_div(parallel, blocks * bh), shape.keys // t.attn_split_min_keys))
    chunk = ceil_div(shape.keys, splits)
    return macros, (blocks, bh, ceil_div(shape.keys, chunk)), chunk
