import math

import pytest

from adaptive_sched.policy import AdaptivePolicy, EpsilonGreedyPolicy, FixedPolicy, StaticPriorPolicy, shape_bucket
from adaptive_sched.types import Backend, Decision, Shape, Stage

from .conftest import TablePrior

GPU, NPU = Backend.GPU, Backend.NPU
SHAPE = Shape(n=1, d=1024, kv_len=256, precision="int8")


def bound(policy, table, candidates=(GPU, NPU)):
    policy.bind(candidates, TablePrior(table))
    return policy


def feed(policy, stage, shape, latency_of, n, after=None):
    """Decide n times and feed back latency_of(backend); return the backends chosen."""
    chosen = []
    for _ in range(n):
        backend, p, explored, predicted, _, _ = policy.decide(stage, shape, after)
        assert 0.0 < p <= 1.0
        chosen.append(backend)
        policy.learn(Decision(0, stage, shape, backend, p, explored, predicted, after), latency_of(backend))
    return chosen


def test_starts_from_the_prior_not_at_random():
    p = bound(AdaptivePolicy(seed=0), {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 3e-3})
    backend, prop, explored, predicted, _, _ = p.decide(Stage.QKV, SHAPE, None)
    assert backend is GPU and not explored and prop > 0.9
    assert predicted[GPU] == pytest.approx(1e-3) and predicted[NPU] == pytest.approx(3e-3)


def test_probabilities_sum_to_one_and_match_decisions():
    p = bound(AdaptivePolicy(seed=0), {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 1.1e-3})
    probs = p.probabilities(Stage.QKV, SHAPE, None)
    assert sum(probs.values()) == pytest.approx(1.0)
    counts = {GPU: 0, NPU: 0}
    for _ in range(4000):
        counts[p.decide(Stage.QKV, SHAPE, None)[0]] += 1
    assert counts[NPU] / 4000 == pytest.approx(probs[NPU], abs=0.03)


def test_far_slower_backend_is_not_explored_while_its_estimate_is_fresh():
    p = bound(AdaptivePolicy(seed=0), {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 4e-3})
    feed(p, Stage.QKV, SHAPE, {GPU: 1e-3, NPU: 4e-3}.__getitem__, 300)
    assert p.probabilities(Stage.QKV, SHAPE, None).get(NPU, 0.0) < 1e-3


def test_exploration_grows_with_staleness():
    p = bound(AdaptivePolicy(seed=0, staleness_per_decision=1e-3), {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 1.5e-3})
    latency = {GPU: 1e-3, NPU: 1.5e-3}.__getitem__
    feed(p, Stage.QKV, SHAPE, latency, 50)
    early = p.probabilities(Stage.QKV, SHAPE, None).get(NPU, 0.0)
    # only the GPU is observed from here on: the NPU's estimate goes stale
    for _ in range(400):
        p.learn(Decision(0, Stage.QKV, SHAPE, GPU, 1.0), 1e-3)
    late = p.probabilities(Stage.QKV, SHAPE, None).get(NPU, 0.0)
    assert late > early


def test_follows_a_step_change_within_50_decisions():
    p = bound(AdaptivePolicy(seed=3), {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 1.6e-3})
    truth = {GPU: 1e-3, NPU: 1.6e-3}
    feed(p, Stage.QKV, SHAPE, truth.__getitem__, 500)
    truth[GPU] = 3e-3  # the GPU is throttled
    chosen = feed(p, Stage.QKV, SHAPE, truth.__getitem__, 200)
    first_npu_run = next(i for i in range(len(chosen)) if chosen[i : i + 10] == [NPU] * 10)
    assert first_npu_run < 50
    assert chosen[-50:].count(NPU) >= 45


def test_one_observation_moves_every_shape_of_a_backend():
    p = bound(AdaptivePolicy(seed=0), {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 1.3e-3})
    other = Shape(n=1, d=2048, precision="int8")
    before = p.decide(Stage.QKV, other, None)[3][GPU]
    feed(p, Stage.QKV, SHAPE, {GPU: 2e-3, NPU: 1.3e-3}.__getitem__, 30)
    after = p.decide(Stage.QKV, other, None)[3][GPU]
    assert after > 1.5 * before


def test_pair_choice_accounts_for_the_transition_cost():
    # alone, qkv is fastest on the GPU and attn on the NPU, but moving between them costs 2 ms
    table = {("qkv", "gpu"): 1.0e-3, ("qkv", "npu"): 1.2e-3, ("attn", "gpu"): 1.0e-3, ("attn", "npu"): 0.8e-3}
    p = bound(AdaptivePolicy(seed=0, transition_sync_s=2e-3), table)
    q = p.decide(Stage.QKV, SHAPE, None)[0]
    a = p.decide(Stage.ATTN, SHAPE, q)[0]
    assert q == a  # a hybrid would pay 2 ms to save 0.2 ms
    cheap = bound(AdaptivePolicy(seed=0, transition_sync_s=1e-6, transition_bytes_per_s=1e15), table)
    q = cheap.decide(Stage.QKV, SHAPE, None)[0]
    assert (q, cheap.decide(Stage.ATTN, SHAPE, q)[0]) == (GPU, NPU)


def test_lookahead_picks_the_best_pair_not_the_greedy_first_stage():
    # greedy qkv would take the GPU (1.0 < 1.1), then attn stays on the GPU (2.0); but NPU->NPU is 1.1+1.0
    table = {("qkv", "gpu"): 1.0e-3, ("qkv", "npu"): 1.1e-3, ("attn", "gpu"): 2.0e-3, ("attn", "npu"): 1.0e-3}
    p = bound(AdaptivePolicy(seed=0, transition_sync_s=5e-3), table)
    assert p.decide(Stage.QKV, SHAPE, None)[0] is NPU
    greedy = bound(AdaptivePolicy(seed=0, transition_sync_s=5e-3, lookahead=False), table)
    assert greedy.decide(Stage.QKV, SHAPE, None)[0] is GPU


def test_exploration_spend_stays_near_the_budget():
    p = bound(AdaptivePolicy(seed=0, explore_budget=0.01), {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 1.05e-3})
    truth = {GPU: 1e-3, NPU: 1.4e-3}
    chosen = feed(p, Stage.QKV, SHAPE, truth.__getitem__, 5000)
    extra = sum(truth[b] - truth[GPU] for b in chosen[1000:])
    assert extra / (len(chosen[1000:]) * 1e-3) < 0.02


def test_same_seed_same_decisions():
    table = {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 1.05e-3}
    runs = [
        feed(bound(AdaptivePolicy(seed=7), table), Stage.QKV, SHAPE, {GPU: 1e-3, NPU: 1.1e-3}.__getitem__, 300)
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_excluded_and_unsupported_backends_are_not_chosen():
    p = bound(AdaptivePolicy(seed=0), {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 1.01e-3})
    p.exclude([GPU])
    assert {p.decide(Stage.QKV, SHAPE, None)[0] for _ in range(200)} == {NPU}
    p.exclude([])
    p.mark_unsupported(Stage.QKV, SHAPE, NPU)
    assert {p.decide(Stage.QKV, SHAPE, None)[0] for _ in range(200)} == {GPU}


def test_without_prior_starts_from_the_roofline_rule():
    p = AdaptivePolicy(seed=0)
    p.bind((GPU, NPU), None)
    backend, *_ = p.decide(Stage.QKV, Shape(n=512, d=2048), None)
    assert backend is GPU  # the rule: GPU's FP16 peak is far above the NPU's


def test_buckets_share_kv_neighbours_and_separate_stages():
    a, b = Shape(n=1, d=1024, kv_len=300), Shape(n=1, d=1024, kv_len=310)
    assert shape_bucket(Stage.ATTN, a) == shape_bucket(Stage.ATTN, b)
    assert shape_bucket(Stage.ATTN, a) != shape_bucket(Stage.ATTN, Shape(n=1, d=1024, kv_len=600))


def test_epsilon_greedy_tries_each_then_exploits():
    p = EpsilonGreedyPolicy(epsilon=0.1, seed=0)
    p.bind((GPU, NPU), None)
    chosen = feed(p, Stage.QKV, SHAPE, {GPU: 2e-3, NPU: 1e-3}.__getitem__, 1000)
    assert set(chosen[:2]) == {GPU, NPU}
    assert chosen[2:].count(NPU) / 998 == pytest.approx(0.95, abs=0.03)
    assert sum(p.probabilities(Stage.QKV, SHAPE, None).values()) == pytest.approx(1.0)


def test_fixed_and_static_baselines():
    f = FixedPolicy("npu")
    f.bind((GPU, NPU), None)
    assert f.decide(Stage.QKV, SHAPE, None)[:3] == (NPU, 1.0, False)
    s = StaticPriorPolicy()
    s.bind((GPU, NPU), TablePrior({("attn", "gpu"): 2e-3, ("attn", "npu"): 1e-3}))
    assert s.decide(Stage.ATTN, SHAPE, GPU)[0] is NPU
    with pytest.raises(ValueError, match="needs an offline prior"):
        StaticPriorPolicy().bind((GPU, NPU), None)


def test_state_reports_offsets():
    p = bound(AdaptivePolicy(seed=0), {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 2e-3})
    feed(p, Stage.QKV, SHAPE, {GPU: 2e-3, NPU: 2e-3}.__getitem__, 100)
    state = p.state()
    assert state["observations"] == 100 and state["offsets"]["gpu"] > 1.6
    assert math.isclose(p.decide(Stage.QKV, SHAPE, None)[3][GPU], 2e-3, rel_tol=0.1)


def test_returns_to_a_backend_that_recovers_while_unobserved():
    # contention on the GPU comes and goes: after it ends, the GPU is no longer chosen, so only
    # re-probing (driven by its volatility) can find out that it is fast again
    p = bound(AdaptivePolicy(seed=5), {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 1.5e-3})
    truth = {GPU: 1e-3, NPU: 1.5e-3}
    feed(p, Stage.QKV, SHAPE, truth.__getitem__, 300)
    truth[GPU] = 3e-3
    assert feed(p, Stage.QKV, SHAPE, truth.__getitem__, 300)[-50:].count(NPU) >= 45
    truth[GPU] = 1e-3
    back = feed(p, Stage.QKV, SHAPE, truth.__getitem__, 600)
    assert back[-100:].count(GPU) >= 95


def test_a_changed_handoff_cost_is_learned_for_every_shape():
    # attn on the NPU after qkv on the GPU costs 0.5 ms more than the prior's guess; seen at one
    # shape, the learned crossing cost applies to another shape at once
    table = {("attn", "gpu"): 2e-3, ("attn", "npu"): 1e-3}
    p = bound(AdaptivePolicy(seed=0, transition_sync_s=1e-4), table)
    feed(p, Stage.ATTN, SHAPE, {GPU: 2e-3, NPU: 1.6e-3}.__getitem__, 200, after=GPU)
    other = Shape(n=1, d=2048, kv_len=64, precision="int8")
    predicted = p.decide(Stage.ATTN, other, GPU)[3]
    assert predicted[NPU] == pytest.approx(1e-3 + 6e-4, rel=0.15)


def noisy(truth, sd, rng):
    return lambda backend: truth[backend] * rng.lognormvariate(0.0, sd)


def test_drift_alarms_follow_the_observation_noise_by_default():
    import random

    table = {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 1.6e-3}
    truth = {GPU: 1e-3, NPU: 1.6e-3}
    scaled = bound(AdaptivePolicy(seed=1, obs_variance=0.09), table)
    assert (scaled.drift_delta, scaled.drift_threshold) == pytest.approx((0.15, 4.5))
    fixed = bound(AdaptivePolicy(seed=1, obs_variance=0.09, drift_delta=0.05, drift_threshold=1.5), table)
    for policy in (scaled, fixed):
        feed(policy, Stage.QKV, SHAPE, noisy(truth, 0.3, random.Random(7)), 2000)  # a noisy, steady device
    false_alarms = scaled.state()["drift_alarms"]["gpu"], fixed.state()["drift_alarms"]["gpu"]
    assert false_alarms[0] <= 2 < 10 <= false_alarms[1]

    truth[GPU] = 3e-3  # a real change still raises an alarm and moves the choice
    chosen = feed(scaled, Stage.QKV, SHAPE, noisy(truth, 0.3, random.Random(8)), 200)
    assert scaled.state()["drift_alarms"]["gpu"] > false_alarms[0]
    assert chosen[-50:].count(NPU) >= 45
