"""Replay checked against the truth on the simulated RK3588.

Each log is written by a scheduler with an exploring behaviour policy; each candidate's
true mean latency per layer is measured by running it on the same simulated workload
(a fresh device with the same seed). DR must cover the truth wherever the log supports
the candidate, and flag, not estimate, where it does not.
"""

import copy

import pytest
import yaml

from adaptive_sched.config import build_config
from adaptive_sched.offline.candidates import policy_candidate
from adaptive_sched.offline.logdata import read_logs
from adaptive_sched.offline.replay import FixedCandidate, evaluate
from adaptive_sched.paths import resolve_config
from adaptive_sched.runner import run_workload
from adaptive_sched.types import Backend

EXPLORING = {"kind": "epsilon", "epsilon": 0.3, "learner": "inline"}
#: (model, prompt, tokens, layers, thermal drift)
WORKLOADS = {
    "qwen2-0.5b": ("qwen2-0.5b", 64, 48, 6, False),
    "llama-2-7b-int8": ("llama-2-7b", 32, 48, 4, False),
    "qwen2.5-1.5b-thermal": ("qwen2.5-1.5b", 128, 64, 6, True),
    # a thousand tokens: the NPU throttles, and the default policy settles on it for good
    "qwen2.5-1.5b-1024-thermal": ("qwen2.5-1.5b", 128, 1024, 4, True),
}
TOLERANCE = 0.05


def simulate(tmp_path, workload, seed, behaviour):
    """The log of ``behaviour`` on ``workload``, and each candidate's true mean per layer."""
    model, prompt, tokens, layers, thermal = WORKLOADS[workload]
    raw = yaml.safe_load(resolve_config("rk3588-sim").read_text())
    raw["workload"].update(model=model, prompt=prompt, tokens=tokens, layers=layers)
    raw["simulator"].update(thermal=thermal, seed=seed)
    raw["policy"] = behaviour
    db = tmp_path / f"{workload}-{seed}.db"
    report = run_workload(build_config(raw), db=db)  # also runs GPU-only and NPU-only on a fresh device
    n_layers = (tokens + 1) * layers
    static = copy.deepcopy(raw)
    static["policy"] = {"kind": "static", "learner": "inline"}
    static_config = build_config(static)
    truth = {
        "gpu-only": report.totals_s["gpu-only"] / n_layers,
        "npu-only": report.totals_s["npu-only"] / n_layers,
        "static": run_workload(static_config, compare=()).totals_s["static"] / n_layers,
        "logged": report.totals_s[behaviour["kind"]] / n_layers,
    }
    candidates = [FixedCandidate(Backend.GPU), FixedCandidate(Backend.NPU), policy_candidate(static_config, "static")]
    return evaluate(read_logs([db]), candidates), truth


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("workload", ["qwen2-0.5b", "llama-2-7b-int8", "qwen2.5-1.5b-thermal"])
def test_dr_covers_the_truth_where_supported_and_flags_the_rest(tmp_path, workload, seed):
    result, truth = simulate(tmp_path, workload, seed, EXPLORING)
    assert result.logged["pair"].value == pytest.approx(truth["logged"], rel=1e-9)
    supported = 0
    for cand in result.candidates:
        dr, true = cand.headline, truth[cand.name]
        if not cand.supported:
            assert cand.verdict == "unsupported"
            continue
        supported += 1
        interval = dr.row.union(dr.block)
        assert dr.value == pytest.approx(true, rel=TOLERANCE), cand.name
        assert interval.low - TOLERANCE * true <= true <= interval.high + TOLERANCE * true, cand.name
        # the verdict never contradicts the truth
        if cand.verdict == "better":
            assert true < truth["logged"]
        if cand.verdict == "worse":
            assert true > truth["logged"]
    assert supported >= 1  # an exploring log supports some candidates (so the check above ran)


@pytest.mark.parametrize("workload", ["llama-2-7b-int8", "qwen2.5-1.5b-1024-thermal"])
def test_off_support_candidates_are_flagged_not_estimated(tmp_path, workload):
    # the default adaptive policy explores little: it never tries some (qkv, attn) pairs
    result, truth = simulate(tmp_path, workload, 0, {"kind": "adaptive", "learner": "inline"})
    flagged = {c.name: c for c in result.candidates if not c.supported}
    assert "gpu-only" in flagged
    assert flagged["gpu-only"].views["pair"].support.untried_share > 0
    for cand in result.candidates:
        error = abs(cand.headline.value / truth[cand.name] - 1)
        # any estimate off by more than the tolerance is one the replay refused to stand behind
        assert error <= TOLERANCE or not cand.supported, (cand.name, error)
