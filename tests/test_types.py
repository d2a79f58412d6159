import dataclasses
import math
import pickle

import pytest

from adaptive_sched.types import (
    Backend,
    Decision,
    Precision,
    Shape,
    Stage,
    check_latency,
    length_bucket,
    parse_stage,
)


def test_shape_defaults_and_derived_fields():
    s = Shape(n=1, d=4096, kv_len=512, precision="int8")
    assert s.heads == 64 and s.head_dim == 64
    assert s.precision is Precision.INT8
    assert s.keys == 513 and s.phase == "decode"
    assert Shape(n=40, d=1024).phase == "prefill"


def test_shape_is_hashable_and_equal_by_value():
    a, b = Shape(n=3, d=128, kv_len=2), Shape(n=3, d=128, kv_len=2)
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert Shape(n=3, d=128, kv_len=3) != a


def test_length_buckets_are_quarter_octaves_that_never_meet_an_exact_length():
    exact = 64
    buckets: dict[int, list[int]] = {}
    for length in range(1, 1 << 14):
        buckets.setdefault(length_bucket(length, exact), []).append(length)
    for first, members in buckets.items():
        # a bucket is a run of consecutive lengths starting at its name
        assert members == list(range(first, first + len(members)))
        if first <= exact and first != exact:
            assert members == [first]  # exact below the limit: a prompt of 40 tokens is not one of 512
        else:
            assert 2 * len(members) <= first // 2  # at most a quarter of an octave wide (64..79: 16)
    assert length_bucket(40, exact) == 40 and length_bucket(512, exact) == 512 and length_bucket(639, exact) == 512


def test_a_shape_buckets_its_lengths_as_length_bucket_does():
    for n in (1, 2, 40, 64, 65, 100, 700):
        for kv_len in (0, 1, 15, 16, 17, 300, 1000, 70_000):
            bucket = Shape(n=n, d=64, kv_len=kv_len).bucket
            assert (bucket[0], bucket[-1]) == (length_bucket(n, 64), length_bucket(kv_len + n, 16))


def test_a_shape_carries_its_bucket_through_copies():
    s = Shape(n=100, d=2048, kv_len=300, batch=2, precision="int8")
    assert s.bucket == (96, 2048, 32, 2, Precision.INT8, 384)
    for copy in (pickle.loads(pickle.dumps(s)), dataclasses.replace(s, batch=2), Shape.from_dict(s.as_dict())):
        assert copy == s and copy.bucket == s.bucket
    assert dataclasses.replace(s, kv_len=600).bucket[-1] == 640  # 700 keys


def test_shape_roundtrips_through_dict():
    s = Shape(n=7, d=96, kv_len=4, batch=2, heads=3, precision="int8")
    assert Shape.from_dict(s.as_dict()) == s


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0, "d": 64}, "n must be >= 1"),
        ({"n": 1, "d": 0}, "d must be >= 1"),
        ({"n": 1, "d": 64, "kv_len": -1}, "kv_len must be >= 0"),
        ({"n": 1, "d": 64, "batch": 0}, "batch must be >= 1"),
        ({"n": 1, "d": 100, "heads": 3}, "d (100) must be divisible by heads (3)"),
        ({"n": 1, "d": 64, "precision": "fp8"}, "precision: unknown value 'fp8'"),
        ({"n": float("nan"), "d": 64}, "n must be an integer"),
        ({"n": 1.5, "d": 64}, "n must be an integer"),
        ({"n": True, "d": 64}, "n must be an integer"),
        ({"n": "4", "d": 64}, "n must be an integer"),
    ],
)
def test_shape_rejects_bad_fields_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Shape(**kwargs)


def test_shape_accepts_integral_floats_from_yaml():
    assert Shape(n=4.0, d=64).n == 4


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown shape field"):
        Shape.from_dict({"n": 1, "d": 64, "seq": 3})


def test_enums_parse_names_and_reject_others():
    assert parse_stage("qkv") is Stage.QKV and parse_stage(Stage.ATTN) is Stage.ATTN
    assert str(Backend.NPU) == "npu"
    with pytest.raises(ValueError, match="stage: unknown value 'ffn'"):
        parse_stage("ffn")


def test_decision_validates_when_built_by_hand():
    d = Decision.of(1, "qkv", Shape(n=1, d=64), "gpu", 0.25, predicted={"npu": 2},
                    probabilities={"gpu": 0.25, "npu": 0.75})  # fmt: skip
    assert d.stage is Stage.QKV and d.backend is Backend.GPU and d.predicted[Backend.NPU] == 2.0
    assert dict(d.probabilities) == {Backend.GPU: 0.25, Backend.NPU: 0.75}
    with pytest.raises(ValueError, match="propensity"):
        Decision.of(1, "qkv", Shape(n=1, d=64), "gpu", 0.0)
    with pytest.raises(ValueError, match="backend: unknown value 'tpu'"):
        Decision.of(1, "qkv", Shape(n=1, d=64), "tpu", 1.0)
    with pytest.raises(ValueError, match="probabilities must sum to 1"):
        Decision.of(1, "qkv", Shape(n=1, d=64), "gpu", 0.5, probabilities={"gpu": 0.5, "npu": 0.4})


@pytest.mark.parametrize("bad", [0, -1e-3, math.nan, math.inf, "fast", None])
def test_check_latency_rejects_non_positive_and_non_finite(bad):
    with pytest.raises(ValueError, match="latency_s"):
        check_latency(bad)


def test_check_latency_accepts_positive():
    assert check_latency(1e-6) == 1e-6
