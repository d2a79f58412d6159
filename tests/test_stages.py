import numpy as np
import pytest

from adaptive_sched.errors import UnsupportedShape
from adaptive_sched.stages import (
    ATTN_INT8_TENSORS,
    QuantRange,
    attention_core,
    attention_int8_fixed_grid,
    causal_mask,
    exact,
    fake_quantize,
    make_inputs,
    output_shape,
    quantize_asymmetric,
    quantize_symmetric,
    reference,
    relative_error,
    softmax,
    split_heads,
)
from adaptive_sched.types import Precision, Shape


def naive_attention(q, k, v):
    """Loop-by-loop float64 attention, to check the vectorised reference against."""
    b, h, n, hd = q.shape
    keys = k.shape[2]
    out = np.zeros_like(q, dtype=np.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                visible = keys - n + i + 1
                s = np.array([q[bi, hi, i] @ k[bi, hi, j] for j in range(visible)]) / np.sqrt(hd)
                p = np.exp(s - s.max())
                p /= p.sum()
                out[bi, hi, i] = p @ v[bi, hi, :visible]
    return out


@pytest.mark.parametrize(
    "shape",
    [Shape(n=5, d=64, heads=2), Shape(n=1, d=64, kv_len=7, heads=2), Shape(n=3, d=32, kv_len=4, batch=2, heads=1)],
)
def test_attention_matches_naive_loops(shape):
    inp = make_inputs("attn", shape, seed=1)
    got = reference("attn", shape, inp)
    want = naive_attention(*(inp[k].astype(np.float16).astype(np.float64) for k in ("q", "k", "v")))
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_causal_mask_for_prefill_and_decode():
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(1, 4).tolist() == [[True, True, True, True]]


def test_softmax_is_stable_for_large_scores():
    p = softmax(np.array([[1000.0, 1001.0, -np.inf]]))
    assert np.isfinite(p).all() and p[0, 2] == 0.0
    assert p.sum() == pytest.approx(1.0)


def test_qkv_fp16_and_int8_close_to_float64():
    shape = Shape(n=9, d=128)
    inp = make_inputs("qkv", shape, seed=3)
    exact = inp["x"].astype(np.float64) @ inp["w"] + inp["b"]
    fp16 = reference("qkv", shape, inp)
    int8 = reference("qkv", Shape(n=9, d=128, precision="int8"), inp)
    scale = np.abs(exact).max()
    assert np.abs(fp16 - exact).max() / scale < 5e-3
    assert np.abs(int8 - exact).max() / scale < 5e-2
    assert fp16.dtype == np.float32 and fp16.shape == output_shape("qkv", shape)


def test_int8_accumulates_in_int32_without_overflow():
    # 4096 products of 127*127 overflow int16 and float16 but not int32
    shape = Shape(n=1, d=4096, heads=64, precision="int8")
    x = np.ones((1, 1, 4096), np.float32)
    w = np.ones((4096, 3 * 4096), np.float32)
    out = reference("qkv", shape, {"x": x, "w": w})
    np.testing.assert_allclose(out, 4096.0, rtol=1e-6)


def test_quantize_symmetric_per_axis():
    w = np.array([[1.0, -4.0], [0.5, 2.0]])
    q, s = quantize_symmetric(w, axis=0)
    assert s.shape == (1, 2) and q[:, 1].tolist() == [-127, 64]
    q0, s0 = quantize_symmetric(np.zeros(3))
    assert q0.tolist() == [0, 0, 0] and s0 == 1.0


def test_int8_attention_close_to_fp16():
    shape = Shape(n=4, d=128, kv_len=12, heads=2)
    inp = make_inputs("attn", shape, seed=5)
    a = attention_core(inp["q"], inp["k"], inp["v"], Precision.FP16)
    b = attention_core(inp["q"], inp["k"], inp["v"], Precision.INT8)
    assert np.abs(a - b).max() < 0.05


def test_split_heads_layout():
    shape = Shape(n=2, d=8, heads=2)
    qkv = np.arange(2 * 24, dtype=np.float32).reshape(1, 2, 24)
    q, k, v = split_heads(qkv, shape)
    assert q.shape == (1, 2, 2, 4)
    assert q[0, 1, 0].tolist() == [4, 5, 6, 7] and k[0, 0, 1].tolist() == [32, 33, 34, 35]
    assert v[0, 1, 1].tolist() == [44, 45, 46, 47]


def test_bad_inputs_name_the_input():
    shape = Shape(n=2, d=64)
    with pytest.raises(UnsupportedShape, match="missing input 'w'"):
        reference("qkv", shape, {"x": np.zeros((1, 2, 64))})
    with pytest.raises(UnsupportedShape, match="input 'x' has shape"):
        reference("qkv", shape, {"x": np.zeros((2, 64)), "w": np.zeros((64, 192))})


def test_exact_matches_naive_loops_in_float64():
    shape = Shape(n=3, d=32, kv_len=4, batch=2, heads=1)
    inp = make_inputs("attn", shape, seed=2)
    want = naive_attention(*(inp[k].astype(np.float64) for k in ("q", "k", "v")))
    np.testing.assert_allclose(exact("attn", shape, inp), want, rtol=1e-10)
    qkv = Shape(n=4, d=64)
    x = make_inputs("qkv", qkv, seed=2)
    np.testing.assert_allclose(exact("qkv", qkv, x), x["x"].astype(np.float64) @ x["w"] + x["b"], rtol=1e-12)


def test_asymmetric_quantisation_matches_rknn_parameters():
    # rknn-toolkit2 2.5.0 quantised a v tensor with range [-5.6127, 5.2321] to scale 0.0425288, zero point 4
    rng = QuantRange(-5.612707138061523, 5.232148170471191)
    assert rng.scale == pytest.approx(0.042528844347187116, rel=1e-12) and rng.zero_point == 4
    # and the softmax output [0, 0.2607] to zero point -128: all 256 levels on the positive side
    assert QuantRange(0.0, 0.2607351541519165).zero_point == -128
    a = np.linspace(-6, 6, 101)
    q, scale, _ = quantize_asymmetric(a, rng)
    assert q.min() == -128 and q.max() == 127  # outside the range clips
    inside = (a >= rng.lo) & (a <= rng.hi)
    assert np.abs(fake_quantize(a, rng) - a)[inside].max() <= scale / 2 + 1e-12
    assert QuantRange.of(np.array([2.0, 3.0])) == QuantRange(0.0, 3.0)  # 0 is always representable


@pytest.mark.parametrize("kv_len", [127, 511])
def test_int8_attention_stays_accurate_over_long_caches(kv_len):
    # the probabilities are never quantised on their own: 30 seeds stay within 0.06 of float64
    shape = Shape(n=1, d=256, kv_len=kv_len, heads=4, precision="int8")
    errors = []
    for seed in range(30):
        inp = make_inputs("attn", shape, seed=seed)
        errors.append(relative_error(reference("attn", shape, inp), exact("attn", shape, inp)))
    assert max(errors) < 0.06, max(errors)
    # the fixed 1/127 grid rounds the probabilities away at these lengths
    inp = make_inputs("attn", shape, seed=0)
    assert relative_error(attention_int8_fixed_grid(inp["q"], inp["k"], inp["v"]), exact("attn", shape, inp)) > 0.15


def test_int8_attention_static_ranges_clip_like_a_calibrated_model():
    shape = Shape(n=1, d=128, kv_len=31, heads=2, precision="int8")
    inp = make_inputs("attn", shape, seed=3)
    own = {name: QuantRange(-1.0, 1.0) for name in ("q", "k", "v")}
    clipped = attention_core(inp["q"], inp["k"], inp["v"], Precision.INT8, ranges=own)
    assert relative_error(clipped, exact("attn", shape, inp)) > 0.1  # N(0, 1) inputs clip at +-1
    wide = {name: QuantRange(-4 * 5.0, 4 * 5.0) for name in ("q", "k", "v")}
    coarse = attention_core(inp["q"], inp["k"], inp["v"], Precision.INT8, ranges=wide)
    fine = attention_core(inp["q"], inp["k"], inp["v"], Precision.INT8)
    assert relative_error(coarse, exact("attn", shape, inp)) > relative_error(fine, exact("attn", shape, inp))
    with pytest.raises(ValueError, match="ranges: unknown tensor"):
        attention_core(inp["q"], inp["k"], inp["v"], Precision.INT8, ranges={"probs": QuantRange(0.0, 1.0)})
    assert "exp" in ATTN_INT8_TENSORS


def test_relative_error_scale_and_non_finite():
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.array([np.nan]), np.array([1.0])) == float("inf")
