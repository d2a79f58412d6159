import dataclasses
import math
import threading

import numpy as np
import pytest

from adaptive_sched import Scheduler, Shape
from adaptive_sched.config import load_config
from adaptive_sched.errors import ConfigError, ExecutorError, UnsupportedShape
from adaptive_sched.policies import AdaptiveParams, AdaptivePolicy
from adaptive_sched.policies.base import Entry
from adaptive_sched.stages import make_inputs, reference
from adaptive_sched.types import Backend, Choice, Stage

from .conftest import ScriptedExecutor, TablePrior, base_config

GPU, NPU, CPU = Backend.GPU, Backend.NPU, Backend.CPU
SHAPE = Shape(n=1, d=128, kv_len=6, heads=2)
TABLE = {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 2e-3, ("attn", "gpu"): 1e-3, ("attn", "npu"): 2e-3}


def scripted(**latency):
    return {b: ScriptedExecutor(b, lambda s, sh, a, v=v: v) for b, v in latency.items()}


def make(executors=None, prior=None, **cfg):
    return Scheduler.from_config(base_config(**cfg), executors=executors, prior=prior)


def test_decide_observe_roundtrip():
    with make(prior=TablePrior(TABLE)) as sched:
        dq = sched.decide("qkv", SHAPE)
        assert dq.stage is Stage.QKV and dq.backend in (GPU, NPU) and 0 < dq.propensity <= 1
        assert set(dq.predicted) == {GPU, NPU}
        sched.observe(dq, latency_s=1.1e-3)
        da = sched.decide("attn", SHAPE, after=dq)
        assert da.after is dq.backend and da.id != dq.id
        sched.observe(da, 0.9e-3)
        assert sched.stats()["observations"] == 2


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_observe_rejects_bad_latency_and_learns_nothing(bad):
    with make() as sched:
        d = sched.decide("qkv", SHAPE)
        with pytest.raises(ValueError, match="latency_s"):
            sched.observe(d, bad)
        assert sched.stats()["observations"] == 0


def test_decide_rejects_unknown_stage_and_non_shape():
    with make() as sched:
        with pytest.raises(ValueError, match="stage: unknown value 'ffn'"):
            sched.decide("ffn", SHAPE)
        with pytest.raises(TypeError, match="shape must be a Shape"):
            sched.decide("qkv", (1, 128))


def test_run_returns_reference_outputs():
    with make() as sched:
        inputs = make_inputs("qkv", SHAPE, seed=2)
        np.testing.assert_array_equal(sched.run("qkv", SHAPE, inputs), reference("qkv", SHAPE, inputs))


def test_run_attention_appends_to_the_cache_and_matches_reference():
    shape = Shape(n=1, d=128, kv_len=4, heads=2)
    rng = np.random.default_rng(0)
    w = make_inputs("qkv", shape, seed=1)
    x = rng.standard_normal((1, 1, 128)).astype(np.float32)
    k_cache = rng.standard_normal((1, 2, 4, 64)).astype(np.float32)
    v_cache = rng.standard_normal((1, 2, 4, 64)).astype(np.float32)
    with make() as sched:
        layer = sched.run_attention(shape, {"x": x, "w": w["w"], "b": w["b"], "k_cache": k_cache, "v_cache": v_cache})
    qkv = reference("qkv", shape, {"x": x, "w": w["w"], "b": w["b"]}).reshape(1, 1, 3, 2, 64).transpose(2, 0, 3, 1, 4)
    k = np.concatenate([k_cache, qkv[1]], axis=2)
    v = np.concatenate([v_cache, qkv[2]], axis=2)
    np.testing.assert_allclose(layer.output, reference("attn", shape, {"q": qkv[0], "k": k, "v": v}), atol=1e-6)
    assert layer.k_cache.shape == (1, 2, 5, 64) and layer.attn.decision.after is layer.qkv.decision.backend


def test_run_attention_names_a_missing_cache():
    with make() as sched, pytest.raises(UnsupportedShape, match="k_cache"):
        w = make_inputs("qkv", SHAPE)
        sched.run_attention(SHAPE, {"x": np.zeros((1, 1, 128), np.float32), "w": w["w"]})


def test_failing_backend_reruns_elsewhere_and_is_quarantined_then_probed_again():
    ex = scripted(gpu=1e-3, npu=2e-3)
    with make(executors=ex, prior=TablePrior(TABLE)) as sched:
        ex[GPU].fail_with = RuntimeError("device lost")
        run = next(r for r in (sched.run_stage("qkv", SHAPE) for _ in range(50)) if r.failed)
        assert run.backend is NPU and run.failed[0].backend is GPU
        assert sched.stats()["quarantined"] == ["gpu"]
        assert all(sched.decide("qkv", SHAPE).backend is NPU for _ in range(50))
        ex[GPU].fail_with = None
        backends = [sched.run_stage("qkv", SHAPE).backend for _ in range(300)]
        assert sched.stats()["quarantined"] == []
        assert backends[-20:].count(GPU) >= 18  # probed after the back-off, found healthy, preferred again


def test_failure_everywhere_raises_a_clear_error():
    ex = scripted(gpu=1e-3, npu=2e-3)
    for e in ex.values():
        e.fail_with = RuntimeError("broken")
    with make(executors=ex) as sched, pytest.raises(ExecutorError, match="failed on every backend"):
        sched.run_stage("qkv", SHAPE)


def test_fallback_backend_runs_only_when_candidates_fail():
    ex = scripted(gpu=1e-3, npu=2e-3, cpu=5e-3)
    cfg = {"backends": {"gpu": "cpu_numpy", "npu": "cpu_numpy", "cpu": {"executor": "cpu_numpy", "role": "fallback"}}}
    with make(executors=ex, **cfg) as sched:
        assert {sched.run_stage("qkv", SHAPE).backend for _ in range(100)} <= {GPU, NPU}
        ex[GPU].fail_with = ex[NPU].fail_with = RuntimeError("x")
        assert sched.run_stage("qkv", SHAPE).backend is CPU


def test_a_run_reported_past_the_timeout_is_rerun_elsewhere_and_the_backend_quarantined():
    ex = scripted(gpu=5.0, npu=2e-3)
    with make(executors=ex, prior=TablePrior(TABLE), policy={"kind": "adaptive", "timeout_s": 1.0}) as sched:
        run = sched.run_stage("qkv", SHAPE)
        assert run.backend is NPU and run.latency_s == 2e-3 and [d.backend for d in run.failed] == [GPU]
        assert sched.stats()["quarantined"] == ["gpu"] and sched.stats()["failures"] == 1


def test_unsupported_shape_goes_elsewhere_and_is_remembered():
    ex = scripted(gpu=1e-3, npu=2e-3)
    ex[GPU]._supports = lambda stage, shape: "too big" if shape.d > 64 else None
    with make(executors=ex, prior=TablePrior(TABLE)) as sched:
        assert all(sched.run_stage("qkv", SHAPE).backend is NPU for _ in range(100))
        assert ex[GPU].calls == 0  # known unsupported before it was ever tried
        assert sched.stats()["quarantined"] == []


def test_concurrent_threads_get_unique_ids_and_learn_everything():
    ex = scripted(gpu=1e-3, npu=2e-3)
    ids, errors = [], []
    with make(executors=ex, policy={"kind": "adaptive", "learner": "thread"}) as sched:

        def worker():
            try:
                for _ in range(500):
                    d = sched.decide("qkv", SHAPE)
                    ids.append(d.id)
                    sched.observe(d, 1e-3)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sched.flush()
        assert sched.stats()["observations"] == 2000
    assert not errors and len(set(ids)) == 2000


def test_close_is_idempotent():
    sched = make()
    sched.close()
    sched.close()


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"policy\.kind"):
        make(policy={"kind": "clairvoyant"})


def test_cold_runs_are_returned_but_not_learned_from():
    ex = scripted(gpu=1e-3, npu=2e-3)
    cold_once = {"left": 1}
    original = ex[GPU]._run

    def first_run_cold(stage, shape, inputs, after):
        result = original(stage, shape, inputs, after)
        if cold_once["left"]:
            cold_once["left"] -= 1
            return dataclasses.replace(result, latency_s=0.5, cold=True)  # a kernel build
        return result

    ex[GPU]._run = first_run_cold
    with make(executors=ex, prior=TablePrior(TABLE)) as sched:
        runs = [sched.run_stage("qkv", SHAPE) for _ in range(20)]
        first_gpu = next(r for r in runs if r.backend is GPU)
        assert first_gpu.latency_s == 0.5
        assert sched.stats()["observations"] == 19
        # the 0.5 s build did not scare it off: every exploit choice is still the GPU (the NPU
        # is only checked, a few times, as any backend not yet observed here is)
        assert all(r.backend is GPU for r in runs[-10:] if not r.decision.explored)


def test_every_decision_takes_one_draw_so_runs_that_learned_differently_stay_aligned():
    # Decision k uses the policy's k-th draw, whether its entry explores or not: two runs of
    # one seed whose learning differs (a learner thread's lag) differ only where it matters.
    draws = []

    class Counted(AdaptivePolicy):
        def bind(self, *args, **kwargs):
            super().bind(*args, **kwargs)
            draw = self.draw
            self.draw = lambda: draws.append(1) or draw()

    policy = Counted(AdaptiveParams(seed=3))
    config = load_config(base_config(backends={"gpu": "cpu_numpy"}))  # one backend: nothing to explore
    with Scheduler(config, policy=policy, prior=TablePrior(TABLE)) as sched:
        for i in range(50):
            d = sched.decide("qkv", Shape(n=1, d=128, kv_len=6 + i, heads=2))
            assert d.backend is GPU and d.propensity == 1.0
            sched.observe(d, 1e-3)
    assert len(draws) == 50


def test_decisions_from_the_published_table_are_drawn_with_its_probabilities():
    # decide() reads the entry the policy published and draws from it without asking the
    # policy: what it draws must be what the entry (and the logged propensities) state.
    policy = AdaptivePolicy(AdaptiveParams(seed=5))
    config = load_config(base_config(backends={"gpu": "cpu_numpy", "npu": "cpu_numpy"}))
    with Scheduler(config, policy=policy, prior=TablePrior(TABLE)) as sched:
        key = sched.decide("qkv", SHAPE).choice.entry
        probs = {GPU: 0.7, NPU: 0.3}
        exploit = Choice(GPU, 0.7, False, {}, probs, 0, key)
        alternative = Choice(NPU, 0.3, True, {}, probs, 0, key)
        policy.table.publish(key, Entry(exploit, ((0.3, alternative),)))
        assert policy.table.get(key).explore == 0.3
        n = 4000
        drawn = [sched.decide("qkv", SHAPE) for _ in range(n)]
    share = sum(d.backend is NPU for d in drawn) / n
    assert abs(share - 0.3) <= 4 * math.sqrt(0.3 * 0.7 / n)
    assert all(d.propensity == probs[d.backend] and d.explored == (d.backend is NPU) for d in drawn)
    assert Entry(exploit).explore == 0.0


def test_a_policy_whose_report_fails_costs_the_stats_only_that_report(caplog):
    # a service's stats (and every metrics scrape) read the policy's report: a custom policy
    # whose report raises, or learned state gone bad, must not take the rest with it
    class Unreportable(AdaptivePolicy):
        def state(self):
            raise ValueError("math domain error")

    with Scheduler(load_config(base_config()), policy=Unreportable(), prior=TablePrior(TABLE)) as sched:
        d = sched.decide("qkv", SHAPE)
        sched.observe(d, 1e-3)
        for _ in range(4):
            stats = sched.stats()
    assert stats["observations"] == 1
    assert stats["policy"] == {"kind": "adaptive", "state_error": "ValueError: math domain error"}
    # said, not on every scrape: the 1st, 2nd and 4th
    assert [r.getMessage() for r in caplog.records if "report its state" in r.getMessage()] == [
        f"the policy failed to report its state ({n} so far)" for n in (1, 2, 4)
    ]
