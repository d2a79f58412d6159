import random

import pytest

from adaptive_sched.policies import AdaptivePolicy
from adaptive_sched.replay import (
    DM,
    DR,
    IPS,
    SNIPS,
    FixedCandidate,
    LoggedCandidate,
    LoggedRow,
    PolicyCandidate,
    evaluate,
)
from adaptive_sched.types import Backend, Shape, Stage

from .conftest import TablePrior

GPU, NPU = Backend.GPU, Backend.NPU
TRUE = {GPU: 2e-3, NPU: 1e-3}


def logged(n=4000, p_gpu=0.7, seed=0, sample_rate=1.0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        shape = Shape(n=1, d=1024, kv_len=rng.choice([128, 512]), precision="int8")
        backend = GPU if rng.random() < p_gpu else NPU
        p = p_gpu if backend is GPU else 1 - p_gpu
        latency = TRUE[backend] * rng.lognormvariate(0, 0.05)
        rows.append(LoggedRow(Stage.ATTN, shape, None, backend, p, latency, sample_rate=sample_rate, id=i))
    return rows


@pytest.mark.parametrize("estimator", ["IPS", "SNIPS", "DM", "DR"])
def test_estimators_recover_fixed_policies(estimator):
    est = evaluate(logged(), {"gpu": FixedCandidate(GPU), "npu": FixedCandidate(NPU)})
    assert est["gpu"][estimator].value == pytest.approx(2e-3, rel=0.05)
    assert est["npu"][estimator].value == pytest.approx(1e-3, rel=0.05)


def test_logged_candidate_matches_the_observed_mean():
    rows = logged()
    observed = sum(r.latency_s for r in rows) / len(rows)
    assert evaluate(rows, {"logged": LoggedCandidate()})["logged"]["SNIPS"].value == pytest.approx(observed)


def test_ips_interval_covers_the_truth_and_ess_reflects_overlap():
    est = evaluate(logged(p_gpu=0.9), {"npu": FixedCandidate(NPU)})["npu"]["IPS"]
    assert est.low <= 1e-3 <= est.high
    assert 0 < est.effective_n < 4000 * 0.2  # only ~10% of rows match the candidate


def test_sampling_rate_reweights_rows():
    # the same data logged at a sample rate gives the same estimate (weights cancel in a mean)
    a = evaluate(logged(sample_rate=1.0), {"npu": FixedCandidate(NPU)})["npu"]["SNIPS"].value
    b = evaluate(logged(sample_rate=0.25), {"npu": FixedCandidate(NPU)})["npu"]["SNIPS"].value
    assert a == pytest.approx(b)


def test_a_learning_candidate_is_evaluated_in_log_order():
    policy = AdaptivePolicy(seed=0)
    policy.bind((GPU, NPU), TablePrior({("attn", "gpu"): 1e-3, ("attn", "npu"): 1e-3}))
    est = evaluate(logged(), {"adaptive": PolicyCandidate(policy, "adaptive")})["adaptive"]
    # it learns from the log that the NPU is faster and is credited with close to its latency
    assert est["SNIPS"].value < 1.2e-3 and est["DM"].value < 1.2e-3


def test_estimators_have_names():
    assert [e.name for e in (IPS, SNIPS, DM, DR)] == ["IPS", "SNIPS", "DM", "DR"]
