"""The simulated RK3588 is bounded by physics over the whole shape grid, not only at the paper's points.

Every stage on every backend stays within its backend's documented envelope (the profile's
``bound``: a factor of the roofline, bytes over the backend's bandwidth and FLOPs over its
peak, plus launches, a small allowance and the saturating page-stride penalty), and grows
with kv_len no faster than the bytes it reads. The calibration against the paper is in
test_calibration.py.
"""

from __future__ import annotations

import itertools

import pytest

from adaptive_sched.sim import latency_bound, load_profile, roofline_s, stage_cost, why_unsupported
from adaptive_sched.types import Backend, Precision, Shape, Stage

PROFILE = load_profile("rk3588")
N = (1, 4, 16, 40, 64, 128, 512)
D = (256, 512, 1024, 1536, 2048, 3072, 4096)
KV = (0, 1, 16, 63, 64, 127, 128, 129, 256, 1000, 1024, 2048, 4095, 4096, 8191, 8192)
BATCH = (1, 4)


def grid(stage: Stage) -> list[Shape]:
    """The shapes checked: qkv does not depend on kv_len, so its shapes have kv_len=0."""
    kvs = (0,) if stage is Stage.QKV else KV
    return [
        Shape(n=n, d=d, kv_len=kv, batch=b, precision=p)
        for n, d, kv, b, p in itertools.product(N, D, kvs, BATCH, Precision)
    ]


def test_every_backend_declares_its_envelope() -> None:
    for backend, bp in PROFILE.backends.items():
        assert bp.bound is not None, backend
        assert bp.bound.roofline_factor <= 48 and bp.bound.extra_s <= 1e-3, backend


@pytest.mark.parametrize("backend", [b.value for b in Backend])
@pytest.mark.parametrize("stage", [s.value for s in Stage])
def test_every_stage_stays_within_its_documented_envelope(stage: str, backend: str) -> None:
    checked, over = 0, []
    for shape in grid(Stage(stage)):
        if why_unsupported(PROFILE, stage, shape, backend) is not None:
            continue
        latency = stage_cost(PROFILE, stage, shape, backend).latency()
        bound = latency_bound(PROFILE, stage, shape, backend)
        checked += 1
        if not latency <= bound:
            over.append(f"{shape}: {latency * 1e3:.3f} ms > bound {bound * 1e3:.3f} ms")
    assert checked > 100
    assert not over, f"{len(over)} of {checked} shapes over the envelope, e.g. {over[:3]}"


@pytest.mark.parametrize("backend", [b.value for b in Backend])
def test_decode_attention_grows_no_faster_than_its_bytes(backend: str) -> None:
    # Doubling a long cache adds at most roofline_factor times the added roofline: no
    # mechanism may charge per key more than the backend's documented factor over streaming it.
    bp = PROFILE.backends[Backend(backend)]
    assert bp.bound is not None
    for d, precision, kv in itertools.product(D, Precision, (1024, 2048)):
        short, long = (Shape(n=1, d=d, kv_len=k, precision=precision) for k in (kv - 1, 2 * kv - 1))
        if why_unsupported(PROFILE, "attn", long, backend) is not None:
            continue
        added = (
            stage_cost(PROFILE, "attn", long, backend).latency() - stage_cost(PROFILE, "attn", short, backend).latency()
        )
        # the NPU's buckets make the step one bucket's worth (keys 1024 -> 2048 exactly here)
        allowed = bp.bound.roofline_factor * (
            roofline_s(PROFILE, "attn", long, backend) - roofline_s(PROFILE, "attn", short, backend)
        )
        penalty = bp.page_stride.penalty_s[precision] if bp.page_stride is not None else 0.0
        assert 0 <= added <= allowed + penalty, (d, precision.value, kv, added, allowed)


@pytest.mark.parametrize("backend", [b.value for b in Backend])
def test_attention_never_gets_cheaper_with_a_longer_cache(backend: str) -> None:
    for d, precision, n in itertools.product(D, Precision, (1, 64)):
        previous = 0.0
        for kv in KV:
            shape = Shape(n=n, d=d, kv_len=kv, precision=precision)
            if why_unsupported(PROFILE, "attn", shape, backend) is not None:
                continue
            latency = stage_cost(PROFILE, "attn", shape, backend).latency()
            assert latency >= previous, (d, precision.value, n, kv)
            previous = latency


def test_gpu_decode_attention_at_long_caches_is_within_a_few_ms() -> None:
    # At kv_len 4096 the GPU reads 33.6 MB of INT8 K and V (1.2 ms at 27 GB/s). The saturating
    # page-stride penalty keeps it within 10x of that; a page walk per key and head cost 333 ms.
    shape = Shape(n=1, d=4096, kv_len=4096, precision="int8")
    latency = stage_cost(PROFILE, "attn", shape, "gpu").latency()
    assert latency < 10 * roofline_s(PROFILE, "attn", shape, "gpu")
    fp16 = Shape(n=1, d=4096, kv_len=4096, precision="fp16")
    assert stage_cost(PROFILE, "attn", fp16, "gpu").latency() < 5 * roofline_s(PROFILE, "attn", fp16, "gpu")


def test_a_per_key_mechanism_breaks_the_envelope() -> None:
    # The check has teeth: the previous model's page walk per key and head (0.63 us each, for K
    # and V, past the TLB's reach) instead of the saturating penalty leaves the envelope.
    shape = Shape(n=1, d=4096, kv_len=4096, precision="int8")
    gpu = PROFILE.backends[Backend.GPU]
    assert gpu.page_stride is not None
    without_penalty = stage_cost(PROFILE, "attn", shape, "gpu").latency() - gpu.page_stride.penalty_s[
        Precision.INT8
    ] * (1 - gpu.page_stride.tlb_entries / (2 * shape.keys))
    walks = 2 * 64 * shape.keys * (1 - gpu.page_stride.tlb_entries / (2 * shape.keys))
    assert without_penalty + walks * 0.63e-6 > latency_bound(PROFILE, "attn", shape, "gpu")
