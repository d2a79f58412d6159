"""Offline replay on hand-made logs whose truth is known by construction."""

import json
import random
import sqlite3

import numpy as np
import pytest

from adaptive_sched.cli import main
from adaptive_sched.errors import StoreError
from adaptive_sched.offline.logdata import read_logs
from adaptive_sched.offline.replay import (
    DM,
    DR,
    ESTIMATORS,
    IPS,
    SNIPS,
    Candidate,
    Feedback,
    FixedCandidate,
    Settings,
    evaluate,
    find_pairs,
)
from adaptive_sched.store.writer import DecisionLog
from adaptive_sched.types import Backend, Decision, Shape

GPU, NPU = Backend.GPU, Backend.NPU
SHAPES = [Shape(n=1, d=1024, kv_len=kv, precision="int8") for kv in (128, 512)]
#: qkv and attn latency per backend (ms); attn pays CROSS after the other backend
QKV = {GPU: 2.0, NPU: 1.0}
ATTN = {GPU: 1.0, NPU: 1.5}
CROSS = 1.0


def attn_cost(after, backend):
    return ATTN[backend] + (CROSS if after is not backend else 0.0)


def write_log(path, layers=3000, p_gpu=0.5, seed=0, device="rk3588", attn_p_gpu=None, rate=1.0):
    """A log of ``layers`` layers (qkv then attn), each stage on the GPU with probability ``p_gpu``."""
    rng = random.Random(seed)
    attn_p = p_gpu if attn_p_gpu is None else attn_p_gpu
    with DecisionLog(path, exploit_sample_rate=rate) as log:
        run = log.start_run(device_profile=device)
        seq = 0
        for _ in range(layers):
            shape = rng.choice(SHAPES)
            after = None
            for stage, p, cost in (("qkv", p_gpu, lambda b, a: QKV[b]), ("attn", attn_p, lambda b, a: attn_cost(a, b))):
                b = GPU if rng.random() < p else NPU
                prop = p if b is GPU else 1 - p
                probs = {k: v for k, v in ((GPU, p), (NPU, 1 - p)) if v > 0}
                seq += 1
                d = Decision.of(run << 32 | seq, stage, shape, b, prop, after=after, probabilities=probs,
                                explored=prop < 0.5, time=1e9 + seq)  # fmt: skip
                log.decision(d)
                log.outcome(d.id, cost(b, after) * 1e-3 * rng.lognormvariate(0, 0.05))
                after = b
    return path


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    return write_log(tmp_path_factory.mktemp("replay") / "log.db")


def layer_truth(backend):
    return (QKV[backend] + attn_cost(backend, backend)) * 1e-3 * np.exp(0.05**2 / 2)


# -- estimators -----------------------------------------------------------------------------
def test_estimators_match_open_bandit_pipeline_definitions():
    # OBP: IPS = mean(w r); SNIPS = mean(w r) / mean(w); DM = mean(sum_a pi q); DR = DM + mean(w (r - q(a)))
    rng = np.random.default_rng(1)
    n = 500
    pi = rng.dirichlet([1, 1, 1], size=n)
    mu = rng.dirichlet([2, 2, 2], size=n)
    a = np.array([rng.choice(3, p=m) for m in mu])
    r = rng.gamma(2.0, size=n)
    q = rng.gamma(2.0, size=(n, 3))
    w = pi[np.arange(n), a] / mu[np.arange(n), a]
    fb = Feedback(r, w, (pi * q).sum(axis=1), q[np.arange(n), a], np.ones(n))
    expected = {
        "IPS": np.mean(w * r),
        "SNIPS": np.mean(w * r) / np.mean(w),
        "DM": np.mean((pi * q).sum(axis=1)),
        "DR": np.mean((pi * q).sum(axis=1) + w * (r - q[np.arange(n), a])),
    }
    for cls in ESTIMATORS:
        assert cls().estimate_policy_value(fb) == pytest.approx(expected[cls.name], rel=1e-9)
    assert [c.name for c in (IPS, SNIPS, DM, DR)] == ["IPS", "SNIPS", "DM", "DR"]


# -- the per-layer view and transitions -----------------------------------------------------
def test_every_layer_is_paired(log):
    data = read_logs([log])
    q, a = find_pairs(data)
    assert len(q) == 3000 and (data.stage[q] == 0).all() and (data.stage[a] == 1).all()


@pytest.mark.parametrize("backend", [GPU, NPU])
def test_per_layer_estimates_credit_the_candidates_own_transitions(log, backend):
    result = evaluate(read_logs([log]), [FixedCandidate(backend)])
    cand = result.candidates[0]
    truth = layer_truth(backend)
    pair = cand.views["pair"].estimates
    for name in ("IPS", "SNIPS", "DM", "DR"):
        assert pair[name].value == pytest.approx(truth, rel=0.03), name
    assert pair["DR"].row.low <= truth <= pair["DR"].row.high
    # the per-stage view charges attn with the crossings the logging policy made: biased upwards
    stage_sum = cand.views["qkv"].estimates["DR"].value + cand.views["attn"].estimates["DR"].value
    assert stage_sum > truth * 1.15


def test_the_verdict_answers_ship_or_not(log):
    data = read_logs([log])
    result = evaluate(data, [FixedCandidate(NPU), FixedCandidate(GPU), Mixed()])
    verdicts = {c.name: c.verdict for c in result.candidates}
    # logged: half the layers cross (+1 ms); NPU-only 2.5 ms per layer, GPU-only 3 ms, logged about 3.25 ms
    assert verdicts["npu-only"] == "better" and verdicts["gpu-only"] == "better"
    assert verdicts["mixed"] == "can't tell"
    npu = result.candidates[0].headline
    assert npu.diff == pytest.approx(npu.value - result.logged["pair"].value)
    assert npu.diff_row.high < 0 and npu.diff_block.high < 0


class Mixed(Candidate):
    """The logging policy itself: 50/50 on every stage."""

    def __init__(self):
        super().__init__("mixed")

    def probabilities(self, stage, shape, after):
        return {GPU: 0.5, NPU: 0.5}


class Broken(Candidate):
    def __init__(self, probs=None):
        super().__init__("broken")
        self.probs = probs

    def probabilities(self, stage, shape, after):
        if self.probs is None:
            raise KeyError("no table entry")
        return self.probs


@pytest.mark.parametrize(
    "probs, message", [(None, "KeyError"), ({GPU: 0.5}, "not a distribution"), ({GPU: 1.5, NPU: -0.5}, "not a")]
)
def test_a_candidate_that_fails_is_named_with_the_context(log, probs, message):
    with pytest.raises(ValueError, match=r"candidate broken: .*(qkv|attn) at Shape\(") as err:
        evaluate(read_logs([log]), [Broken(probs)])
    assert message in str(err.value)


def test_a_worse_candidate_is_worse(tmp_path):
    path = write_log(tmp_path / "npu-heavy.db", p_gpu=0.1)
    result = evaluate(read_logs([path]), [FixedCandidate(GPU)])
    assert result.candidates[0].verdict == "worse"


# -- support and honesty ----------------------------------------------------------------------
def test_a_backend_the_log_never_tried_is_flagged_not_estimated(tmp_path, caplog):
    path = write_log(tmp_path / "no-gpu-attn.db", layers=500, attn_p_gpu=0.0)
    with caplog.at_level("INFO"):
        result = evaluate(read_logs([path]), [FixedCandidate(GPU), FixedCandidate(NPU)])
    gpu, npu = result.candidates
    assert gpu.verdict == "unsupported" and not gpu.supported
    assert gpu.views["attn"].support.untried_share == pytest.approx(1.0)
    assert gpu.views["pair"].support.untried_share == pytest.approx(1.0)
    assert gpu.views["qkv"].support.supported  # qkv was explored: its own view is fine
    assert [b.unsupported_share for b in gpu.views["attn"].support.buckets] == [1.0, 1.0]
    assert "gpu-only" in caplog.text and "unsupported" in caplog.text
    assert npu.supported and npu.verdict == "better"


def test_ess_is_per_stage_and_the_largest_weight_is_reported(tmp_path):
    path = write_log(tmp_path / "rare.db", layers=2000, p_gpu=0.5, attn_p_gpu=0.01)
    gpu = evaluate(read_logs([path]), [FixedCandidate(GPU)]).candidates[0]
    attn, qkv = gpu.views["attn"].support, gpu.views["qkv"].support
    assert attn.max_weight == pytest.approx(100.0)
    assert attn.ess < 40 < 500 < qkv.ess  # a handful of GPU-attention rows, not 2000
    assert not gpu.supported


def test_sampling_rate_reweights_rows(tmp_path):
    full = evaluate(read_logs([write_log(tmp_path / "a.db")]), [FixedCandidate(NPU)]).candidates[0]
    sampled_path = write_log(tmp_path / "b.db", rate=0.5)
    data = read_logs([sampled_path])
    assert (data.sample_rate < 1).any()
    sampled = evaluate(data, [FixedCandidate(NPU)]).candidates[0]
    assert sampled.headline.value == pytest.approx(full.headline.value, rel=0.05)


# -- the logged policy's distribution ---------------------------------------------------------
def test_the_logged_policy_is_evaluated_from_its_probability_vector(log):
    result = evaluate(read_logs([log]), [])
    attn = result.logged["attn"]
    assert result.has_probabilities and attn.estimates["DR"].value == pytest.approx(attn.value, rel=0.02)


def test_without_the_vector_dm_and_dr_of_logged_are_unavailable(tmp_path):
    path = write_log(tmp_path / "novec.db", layers=200, p_gpu=0.7)
    _sql(path, "UPDATE decisions SET prob_cpu = NULL, prob_gpu = NULL, prob_npu = NULL")  # as before schema 3
    result = evaluate(read_logs([path]), [])
    assert not result.has_probabilities and result.logged["qkv"].estimates == {}
    assert any("DM and DR of the logged policy are unavailable" in n for n in result.notes)


def test_cli_json_says_why_the_logged_policy_has_no_dm_or_dr(capsys, tmp_path):
    path = write_log(tmp_path / "novec.db", layers=100, p_gpu=0.7)
    _sql(path, "UPDATE decisions SET prob_cpu = NULL, prob_gpu = NULL, prob_npu = NULL")
    code, out, _ = run(capsys, "replay", "--db", path, "--policies", "npu", "-o", "json", "--bootstrap", "20")
    logged = json.loads(out)["logged"]
    assert code in (0, 3) and logged["attn"]["estimates"] is None
    assert "probability vector" in logged["attn"]["estimates_unavailable"]
    assert any("unavailable" in n for n in json.loads(out)["notes"])


# -- bad logs -----------------------------------------------------------------------------------
def _sql(path, *statements):
    conn = sqlite3.connect(path)
    for s in statements:
        conn.execute(s)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "statement, message",
    [
        ("UPDATE decisions SET propensity = NULL WHERE id % 7 = 0", "no propensity"),
        ("UPDATE decisions SET propensity = 0 WHERE id % 7 = 0", "propensity outside (0, 1]"),
        ("UPDATE decisions SET backend = 'tpu' WHERE id % 7 = 0", "column backend"),
        ("UPDATE outcomes SET latency_s = -1 WHERE decision_id % 7 = 0", "column latency_s"),
        ("UPDATE outcomes SET ok = 0", "no logged decisions with a successful outcome"),
    ],
)
def test_bad_logs_are_refused_naming_the_file_and_column(tmp_path, statement, message):
    path = write_log(tmp_path / "bad.db", layers=20)
    _sql(path, statement)
    with pytest.raises(StoreError, match=r"bad\.db") as err:
        read_logs([path])
    assert message in str(err.value)


def test_an_empty_run_is_refused(tmp_path):
    path = tmp_path / "empty.db"
    with DecisionLog(path) as log:
        log.start_run(device_profile="rk3588")
    with pytest.raises(StoreError, match=r"empty\.db: no logged decisions"):
        read_logs([path])
    with pytest.raises(StoreError, match="in run 7"):
        read_logs([write_log(tmp_path / "other.db", layers=5)], run=7)


def test_logs_of_different_devices_are_not_mixed(tmp_path):
    a = write_log(tmp_path / "a.db", layers=10)
    b = write_log(tmp_path / "b.db", layers=10, device="snapdragon")
    with pytest.raises(StoreError, match=r"different device profiles.*'rk3588' in .*a\.db.*'snapdragon' in .*b\.db"):
        read_logs([a, b])


def test_several_logs_and_a_directory_read_as_one(tmp_path):
    write_log(tmp_path / "a.db", layers=10, seed=1)
    write_log(tmp_path / "b.db", layers=15, seed=2)
    data = read_logs([tmp_path])
    assert len(data) == 50 and len(data.sources) == 2
    assert len(find_pairs(data)[0]) == 25  # no layer straddles two logs


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_log_of_an_older_schema_is_read_and_says_what_it_lacks(tmp_path, version):
    from pathlib import Path

    path = tmp_path / f"v{version}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript((Path(__file__).parent / "data" / f"legacy-log-v{version}.sql").read_text())
    conn.close()
    data = read_logs([path])
    assert len(data) == 3 and data.schema == version
    result = evaluate(data, [FixedCandidate(GPU)])
    if version < 3:
        assert not result.has_probabilities
        assert any(f"schema {version}" in n and "unavailable" in n for n in result.notes)


# -- the command line -------------------------------------------------------------------------
def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_table_shows_intervals_and_verdicts(capsys, log):
    code, out, err = run(capsys, "replay", "--db", log, "--policies", "gpu,npu", "--bootstrap", "50")
    assert code == 0, err
    assert "npu-only" in out and "better" in out and "[" in out and "{" in out
    assert "per stage" in out


def test_cli_exits_3_and_warns_when_the_headline_is_unsupported(capsys, tmp_path):
    path = write_log(tmp_path / "no-gpu-attn.db", layers=300, attn_p_gpu=0.0)
    code, out, err = run(capsys, "replay", "--db", path, "--policies", "gpu,npu", "-o", "json", "--bootstrap", "20")
    data = json.loads(out)
    assert code == 3 and "gpu-only" in err and "unsupported" in err
    assert data["candidates"]["gpu-only"]["supported"] is False
    assert data["candidates"]["gpu-only"]["verdict"] == "unsupported"
    assert data["candidates"]["npu-only"]["supported"] is True


def test_cli_thresholds_decide_what_is_supported(capsys, tmp_path):
    path = write_log(tmp_path / "rare.db", layers=1000, attn_p_gpu=0.03)
    args = ["replay", "--db", path, "--policies", "gpu", "-o", "json", "--bootstrap", "20"]
    code, out, _ = run(capsys, *args)
    assert code == 3 and json.loads(out)["candidates"]["gpu-only"]["supported"] is False
    code, out, _ = run(capsys, *args, "--min-ess", "1", "--max-thin", "0.99", "--min-rows", "1")
    assert code == 0 and json.loads(out)["candidates"]["gpu-only"]["supported"] is True
    with pytest.raises(SystemExit) as exit_:
        run(capsys, *args, "--max-thin", "1.5")
    assert exit_.value.code == 2 and "--max-thin" in capsys.readouterr().err


def test_cli_candidate_files_and_device_checks(capsys, tmp_path, log):
    good = tmp_path / "npu.yaml"
    good.write_text("device: rk3588\nbackends: {gpu: {executor: sim}, npu: {executor: sim}}\n"
                    "simulator: {profile: rk3588}\npolicy: {kind: fixed, backend: npu}\n")  # fmt: skip
    other = tmp_path / "other.yaml"
    other.write_text(good.read_text().replace("device: rk3588", "device: snapdragon"))
    code, out, err = run(capsys, "replay", "--db", log, "--candidate", good, "-o", "json", "--bootstrap", "20")
    assert code == 0, err
    cand = json.loads(out)["candidates"]["npu"]
    assert cand["source"] == str(good) and cand["verdict"] == "better"
    code, _, err = run(capsys, "replay", "--db", log, "--candidate", other)
    assert code == 2 and str(other) in err and "'snapdragon'" in err and "'rk3588'" in err


def test_cli_plot_writes_a_png_and_never_overwrites(capsys, tmp_path, log):
    target = tmp_path / "replay.png"
    code, _, err = run(capsys, "replay", "--db", log, "--policies", "npu", "--plot", target, "--bootstrap", "20")
    assert code == 0, err and target.read_bytes()[:4] == b"\x89PNG"
    before = target.read_bytes()
    code, _, err = run(capsys, "replay", "--db", log, "--policies", "npu", "--plot", target)
    assert code == 1 and "not overwritten" in err and target.read_bytes() == before


# -- the bootstrap ------------------------------------------------------------------------------
def test_block_bootstrap_widens_the_interval_under_drift(tmp_path, log):
    # every latency doubles over the run (a device heating up): neighbouring rows are alike,
    # so resampling rows understates the uncertainty that resampling stretches of time shows
    path = write_log(tmp_path / "drift.db", layers=3000)
    _sql(path, "UPDATE outcomes SET latency_s = latency_s * (1.0 + (decision_id & 4294967295) / 6000.0)")
    obs = evaluate(read_logs([path]), []).logged["pair"]
    assert obs.row.low <= obs.value <= obs.row.high and obs.block.low <= obs.value <= obs.block.high
    assert (obs.block.high - obs.block.low) > 1.5 * (obs.row.high - obs.row.low)
    steady = evaluate(read_logs([log]), []).logged["pair"]  # the same traffic without drift
    assert (steady.block.high - steady.block.low) < 1.5 * (steady.row.high - steady.row.low)


def test_grouped_row_bootstrap_matches_resampling_rows(log):
    data = read_logs([log])
    rows = evaluate(data, [FixedCandidate(NPU)], Settings(max_groups=100_000, bootstrap=400)).candidates[0]
    grouped = evaluate(data, [FixedCandidate(NPU)], Settings(max_groups=300, bootstrap=400)).candidates[0]
    for a, b in ((rows.headline.row, grouped.headline.row), (rows.headline.diff_row, grouped.headline.diff_row)):
        assert (b.high - b.low) == pytest.approx(a.high - a.low, rel=0.25)


def test_a_backend_no_row_ever_ran_has_no_estimate(log):
    cpu = evaluate(read_logs([log]), [FixedCandidate(Backend.CPU)]).candidates[0]
    assert cpu.verdict == "unsupported" and cpu.views["pair"].support.untried_share == 1.0
    assert cpu.headline.unavailable and np.isnan(cpu.headline.value)
    assert cpu.headline.row.low != cpu.headline.row.low  # NaN: no interval is made up


def test_reading_reports_progress_up_to_every_row(log):
    calls = []
    data = read_logs([log], chunk_rows=1000, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) >= 6 and calls[-1] == (len(data), len(data))
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
