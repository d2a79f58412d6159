import pytest

from adaptive_sched.features import FEATURE_NAMES, feature_vector, features, pad_fraction
from adaptive_sched.types import Shape


def test_qkv_features_by_hand():
    # X[1,128,1024] @ W[1024,3072] in FP16
    f = features("qkv", Shape(n=128, d=1024))
    assert f["flops"] == 2 * 128 * 1024 * 3072
    assert f["mem_bytes"] == 2 * (128 * 1024 + 1024 * 3072 + 128 * 3072)
    assert f["intensity"] == pytest.approx(f["flops"] / f["mem_bytes"])
    assert f["ar"] == 0.125 and f["score_size"] == 128**2 and f["P"] == 0
    assert f["pad_n"] == 0.0 and f["pad_d"] == 0.0
    assert f["kv_len"] == 0 and f["batch"] == 1


def test_attn_features_by_hand_decode_int8():
    # one query over 512 cached keys + itself, 16 heads of 64
    s = Shape(n=1, d=1024, kv_len=512, heads=16, precision="int8")
    f = features("attn", s)
    keys = 513
    assert f["flops"] == 4 * 1 * keys * 1024 + 5 * 16 * 1 * keys
    assert f["mem_bytes"] == 1 * (2 * 1024 + 2 * keys * 1024)
    assert f["P"] == 1 and f["kv_len"] == 512 and f["score_size"] == 1
    # n=1 int8: 64 elements per 64-byte line, 63 of 64 wasted
    assert f["pad_n"] == pytest.approx(63 / 64)


def test_pad_fraction_by_hand():
    assert pad_fraction(40, 2) == pytest.approx(24 / 64)  # fp16: 32 per line -> 64
    assert pad_fraction(40, 1) == pytest.approx(24 / 64)  # int8: 64 per line -> 64
    assert pad_fraction(96, 2) == 0.0
    assert pad_fraction(100, 1) == pytest.approx(28 / 128)


def test_batch_scales_activation_terms_only():
    one, four = features("qkv", Shape(n=1, d=256)), features("qkv", Shape(n=1, d=256, batch=4))
    assert four["flops"] == 4 * one["flops"]
    assert four["mem_bytes"] - one["mem_bytes"] == 2 * 3 * (256 + 768)


def test_vector_order_and_context():
    s = Shape(n=2, d=64)
    assert len(feature_vector("qkv", s)) == len(FEATURE_NAMES)
    f = features("qkv", s, context={"npu_temp_c": 71.5})
    assert f["npu_temp_c"] == 71.5
    with pytest.raises(ValueError, match="clashes"):
        features("qkv", s, context={"n": 3})
