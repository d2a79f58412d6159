"""Priors as data: hashing, JSON and database round trips, refusal of bad priors, predictions."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from pathlib import Path

import pytest

from adaptive_sched.errors import PriorError
from adaptive_sched.features import stage_flops
from adaptive_sched.learners.models import MODELS, build_model, fit, model_features
from adaptive_sched.learners.priors import (
    Prior,
    PriorData,
    PriorLatencyModel,
    TrainingRow,
    content_hash,
    make_prior_data,
)
from adaptive_sched.offline.profiling import load_grid
from adaptive_sched.store.prior_files import export_prior, import_prior, load_prior, read_prior_json, write_prior_json
from adaptive_sched.store.priors import save_prior
from adaptive_sched.types import Backend, Shape, Stage

GRID = {
    "precision": ["fp16", "int8"],
    "grids": [
        {"n": 1, "d": [128, 256, 512, 1024], "kv_len": [0, 256, 1024]},
        {"n": [16, 40, 64, 256], "d": [128, 512, 1024]},
    ],
}
FAST = {"n_models": 3, "passes": 3}


def toy(backend: Backend, stage: Stage, shape: Shape) -> float:
    flops = stage_flops(stage, shape)
    if backend is Backend.GPU:
        return 4e-5 + flops / 2e11 * (2.0 if shape.n == 40 else 1.0)
    return 1.5e-4 + flops / (1.6e12 if shape.precision.value == "int8" else 4e11)


def rows_for(stage: Stage) -> list[TrainingRow]:
    shapes = [s for st, s in load_grid(GRID).points() if st is stage]
    return [TrainingRow(s, {b: toy(b, stage, s) for b in (Backend.GPU, Backend.NPU)}) for s in shapes]


def make_data(device: str = "toy", seed: int = 0) -> PriorData:
    return make_prior_data(
        {Stage.QKV: rows_for(Stage.QKV), Stage.ATTN: rows_for(Stage.ATTN)},
        name="toy-prior",
        device=device,
        models={"qkv": "rf", "attn": "knn"},
        params={"qkv": FAST},
        seed=seed,
        metrics={"qkv": {"accuracy": 1.0}},
    )


@pytest.fixture(scope="module")
def data() -> PriorData:
    return make_data()


@pytest.fixture(scope="module")
def prior(data: PriorData) -> Prior:
    return Prior(data)


OFF_GRID = [
    Shape(n=1, d=768, kv_len=300, precision="int8"),
    Shape(n=1, d=4096, kv_len=4096),
    Shape(n=100, d=640, precision="int8"),
    Shape(n=3, d=256, kv_len=50),
]


# -- hashing and round trips ---------------------------------------------------------------------


def test_hash_is_canonical_and_covers_content(data: PriorData) -> None:
    again = make_data()
    assert again.content_hash == data.content_hash  # created_at and metrics are not content
    assert make_data(seed=1).content_hash != data.content_hash
    assert make_data(device="other").content_hash != data.content_hash
    assert content_hash({"a": 1.0, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1.0})
    assert len(data.content_hash) == 64


def test_json_round_trip(tmp_path: Path, data: PriorData) -> None:
    path = write_prior_json(data, tmp_path / "p.json")
    back = read_prior_json(path)
    assert back.content_hash == data.content_hash
    assert back.stages[Stage.QKV].rows == data.stages[Stage.QKV].rows
    assert back.stages[Stage.QKV].metrics == {"accuracy": 1.0}
    raw = json.loads(path.read_text())
    assert raw["stages"]["qkv"]["model"] == "rf" and raw["stages"]["attn"]["model"] == "knn"
    assert raw["device"] == "toy" and raw["package_version"] and "rows" in raw["stages"]["qkv"]


def test_database_round_trip_export_import(tmp_path: Path, data: PriorData) -> None:
    db = tmp_path / "log.db"
    save_prior(db, data)
    save_prior(db, data)  # same name again replaces, never duplicates
    loaded = load_prior(db, device="toy")
    assert loaded.content_hash == data.content_hash and loaded.name == "toy-prior"
    out = export_prior(db, tmp_path / "out.json", device="toy")
    imported = import_prior(out, tmp_path / "other.db", rename="copy")
    assert imported.content_hash == data.content_hash
    assert load_prior(tmp_path / "other.db", device="toy", name="copy").content_hash == data.content_hash
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM priors").fetchone()[0] == 2  # one row per stage
    conn.close()


def test_rebuild_is_deterministic(tmp_path: Path, data: PriorData) -> None:
    path = write_prior_json(data, tmp_path / "p.json")
    a, b = load_prior(path, device="toy"), load_prior(path, device="toy")
    shapes = [s for _, s in load_grid(GRID).points()] + OFF_GRID
    for stage in ("qkv", "attn"):
        assert [a.choose(stage, s) for s in shapes] == [b.choose(stage, s) for s in shapes]
        assert [a.latency(stage, s) for s in shapes] == [b.latency(stage, s) for s in shapes]


# -- refusals ------------------------------------------------------------------------------------


def test_tampered_json_is_refused(tmp_path: Path, data: PriorData) -> None:
    path = write_prior_json(data, tmp_path / "p.json")
    raw = json.loads(path.read_text())
    raw["stages"]["qkv"]["rows"][0]["latency_s"]["gpu"] *= 0.5
    path.write_text(json.dumps(raw))
    with pytest.raises(PriorError, match=r"prior 'toy-prior' .*stage qkv: content hash mismatch"):
        load_prior(path, device="toy")
    raw = json.loads(write_prior_json(data, tmp_path / "q.json").read_text())
    raw["stages"]["attn"]["params"]["n_neighbors"] = 1
    raw["stages"]["attn"]["content_hash"] = "0" * 64
    (tmp_path / "q.json").write_text(json.dumps(raw))
    with pytest.raises(PriorError, match="content hash mismatch"):
        load_prior(tmp_path / "q.json", device="toy")
    raw = json.loads(write_prior_json(data, tmp_path / "r.json").read_text())
    raw["device"] = "rk3588"  # relabelling the device is tampering too
    (tmp_path / "r.json").write_text(json.dumps(raw))
    with pytest.raises(PriorError, match="content hash mismatch"):
        load_prior(tmp_path / "r.json", device="rk3588")


def test_tampered_database_row_is_refused(tmp_path: Path, data: PriorData) -> None:
    db = tmp_path / "log.db"
    save_prior(db, data)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE priors SET model = 'tree' WHERE stage = 'attn'")
    conn.close()
    with pytest.raises(PriorError, match="stage attn: content hash mismatch"):
        load_prior(db, device="toy")


def test_prior_for_another_device_is_refused(tmp_path: Path, data: PriorData) -> None:
    path = write_prior_json(data, tmp_path / "p.json")
    with pytest.raises(PriorError, match=r"prior 'toy-prior' .* trained for device 'toy', not 'rk3588'"):
        load_prior(path, device="rk3588")
    db = tmp_path / "log.db"
    save_prior(db, data)
    with pytest.raises(PriorError, match=r"no prior for device 'rk3588'; it has: toy-prior \(toy\)"):
        load_prior(db, device="rk3588")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"format": "something/9"}', "unknown prior format"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(PriorError, match=message):
        load_prior(path, device="toy")


def _with_params(data: PriorData, stage: Stage, params: dict[str, object]) -> PriorData:
    """``data`` with ``stage``'s hyperparameters replaced and every hash recomputed."""
    from dataclasses import replace

    return replace(data, stages={**data.stages, stage: replace(data.stages[stage], params=params)})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"passes": 10**7}, r"stage qkv: model 'rf': hyperparameter 'passes' must be in \[1, 200\], got 10000000"),
        ({"n_models": 10**6}, "hyperparameter 'n_models' must be in"),
        ({"n_models": 2.5}, "hyperparameter 'n_models' must be like 10, got 2.5"),
        ({"delta": 5.0}, r"hyperparameter 'delta' must be in \[1e-12, 1\], got 5.0"),
        ({"leaf_prediction": "oracle"}, "hyperparameter 'leaf_prediction' must be one of mc, nb, nba"),
    ],
)
def test_out_of_range_hyperparameters_are_refused_at_load(
    tmp_path: Path, data: PriorData, params: dict[str, object], message: str
) -> None:
    bad = _with_params(data, Stage.QKV, params)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(bad.as_dict()))  # hashes recomputed: only the bound refuses it
    with pytest.raises(PriorError, match=message) as err:
        load_prior(path, device="toy")
    assert str(path) in str(err.value)
    db = tmp_path / "log.db"
    save_prior(db, bad)
    with pytest.raises(PriorError, match=message):
        load_prior(db, device="toy")


def test_oversized_file_is_refused_naming_it(tmp_path: Path) -> None:
    from adaptive_sched.store.prior_files import MAX_PRIOR_BYTES

    path = tmp_path / "huge.json"
    path.write_bytes(b" " * (MAX_PRIOR_BYTES + 1))
    with pytest.raises(PriorError, match=f"{path}: over 16 MB"):
        load_prior(path, device="toy")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"name": "caf\xe9"}', "not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"[" * 40 + b"]" * 40, "nested over 32 levels"),
    ],
)
def test_undecodable_or_deep_files_are_prior_errors(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(raw)
    with pytest.raises(PriorError, match=message) as err:
        load_prior(path, device="toy")
    assert str(err.value).startswith(str(path))


def test_deep_database_column_is_a_prior_error(tmp_path: Path, data: PriorData) -> None:
    db = tmp_path / "log.db"
    save_prior(db, data)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE priors SET metrics = ? WHERE stage = 'attn'", ("[" * 100_000 + "]" * 100_000,))
    conn.close()
    with pytest.raises(PriorError, match="column 'metrics' is not valid JSON"):
        load_prior(db, device="toy")


def test_cli_reports_a_deep_prior_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adaptive_sched.cli import main

    prior = tmp_path / "deep.json"
    prior.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    config = tmp_path / "host.yaml"
    config.write_text("device: host\nbackends:\n  cpu: {executor: cpu_numpy}\npriors: deep.json\n")
    code = main(["decide", "-c", str(config), "--stage", "qkv", "--n", "1", "--d", "64"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err and f"{prior}: JSON nested too deeply" in err


def test_missing_sources(tmp_path: Path) -> None:
    with pytest.raises(PriorError, match="no such prior file"):
        load_prior(tmp_path / "nope.json", device="toy")
    with pytest.raises(PriorError, match="no builtin prior for device 'toy'"):
        load_prior("builtin", device="toy")
    empty = tmp_path / "empty.db"
    from adaptive_sched.store.connection import open_database

    open_database(empty).close()
    with pytest.raises(PriorError, match="no priors stored"):
        load_prior(empty, device="toy")


def test_bad_rows_are_named(tmp_path: Path, data: PriorData) -> None:
    raw = data.as_dict()
    raw["stages"]["qkv"]["rows"][2]["latency_s"]["npu"] = -1.0
    path = tmp_path / "p.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(PriorError, match=r"stages.qkv.rows\[2\]: latency_s.npu: must be finite and > 0"):
        load_prior(path, device="toy")


def test_one_backend_is_not_a_prior() -> None:
    rows = [TrainingRow(Shape(n=1, d=64 * k), {Backend.GPU: 1e-4 * k}) for k in (1, 2, 3)]
    with pytest.raises(PriorError, match=r"one backend only \(gpu\); a classifier needs at least two"):
        make_prior_data({"qkv": rows}, name="p", device="toy", models={"qkv": "rf"})


# -- what the scheduler asks ---------------------------------------------------------------------


def test_scheduler_api(prior: Prior, data: PriorData) -> None:
    assert prior.backends == (Backend.GPU, Backend.NPU)
    assert prior.device == "toy" and prior.name == "toy-prior"
    assert prior.content_hash == data.content_hash
    for s in OFF_GRID:
        for stage in ("qkv", "attn"):
            assert prior.choose(stage, s) in prior.backends
            est = prior.latency(stage, s)
            assert set(est) == set(prior.backends)
            assert all(math.isfinite(v) and v > 0 for v in est.values())
    with pytest.raises(PriorError, match="prior 'toy-prior': stage: unknown value 'mlp'"):
        prior.latency("mlp", OFF_GRID[0])


def test_choose_follows_the_training_labels(prior: Prior) -> None:
    rows = prior.data.stages[Stage.ATTN].rows
    hits = sum(prior.choose("attn", r.shape) is r.best(prior.backends) for r in rows)
    assert hits == len(rows)  # KNN reproduces its own training set exactly


def test_latency_reproduces_medians_and_interpolates(prior: Prior) -> None:
    for stage in (Stage.QKV, Stage.ATTN):
        for r in prior.data.stages[stage].rows:
            est = prior.latency(stage, r.shape)
            for b, t in r.latency_s.items():
                assert est[b] == pytest.approx(t, rel=1e-9)
    # Between two measured widths the estimate lies between their medians.
    lo, mid, hi = (prior.latency("qkv", Shape(n=1, d=d))[Backend.GPU] for d in (512, 768, 1024))
    assert lo < mid < hi


def test_latency_extrapolates_along_flops(prior: Prior) -> None:
    # Beyond the largest width the roofline extrapolates rather than copying the edge.
    edge = prior.latency("qkv", Shape(n=256, d=1024))[Backend.GPU]
    beyond = prior.latency("qkv", Shape(n=256, d=4096))[Backend.GPU]
    assert beyond > 8 * edge  # flops grow 16x; overheads keep it below that
    truth = toy(Backend.GPU, Stage.QKV, Shape(n=256, d=4096))
    assert beyond == pytest.approx(truth, rel=0.25)
    small = prior.latency("attn", Shape(n=1, d=128, kv_len=8192))[Backend.NPU]
    assert small > prior.latency("attn", Shape(n=1, d=128, kv_len=1024))[Backend.NPU]


def test_extrapolating_flags_and_warns_once(prior: Prior, caplog: pytest.LogCaptureFixture) -> None:
    fresh = Prior(prior.data)
    for s in [r.shape for r in fresh.data.stages[Stage.ATTN].rows][:10]:
        assert not fresh.extrapolating("attn", s)
    assert not fresh.extrapolating("attn", Shape(n=1, d=768, kv_len=300))
    with caplog.at_level(logging.WARNING, logger="adaptive_sched.learners.priors"):
        assert fresh.extrapolating("attn", Shape(n=1, d=4096))  # d beyond 1024
        assert fresh.extrapolating("attn", Shape(n=1, d=256, kv_len=8192))
        assert fresh.extrapolating("attn", Shape(n=256, d=512, kv_len=1024))  # no prefill with a cache
        fresh.latency("attn", Shape(n=1, d=8192))
    warnings = [r for r in caplog.records if "outside the training range" in r.getMessage()]
    assert len(warnings) == 1 and "d outside [128, 1024]" in warnings[0].getMessage()
    assert fresh.extrapolating("qkv", Shape(n=1, d=512, kv_len=99999)) is False  # qkv ignores kv_len
    assert fresh.extrapolating("qkv", Shape(n=2048, d=512))


def test_caches_return_copies_and_classifier_is_independent(prior: Prior) -> None:
    s = Shape(n=1, d=512, kv_len=256, precision="int8")
    est = prior.latency("attn", s)
    est[Backend.GPU] = -1.0
    assert prior.latency("attn", s)[Backend.GPU] > 0
    before = prior.choose("qkv", s)
    clf = prior.classifier("qkv")
    x = model_features("qkv", s)
    other = next(b for b in prior.backends if b is not before)
    for _ in range(50):
        clf.learn_one(x, other.value)
    assert prior.choose("qkv", s) is before  # learning the copy does not move the prior
    assert prior.classifier("qkv") is not clf


def test_caches_stay_bounded_and_forget_the_oldest_answers_first(prior: Prior, monkeypatch) -> None:
    import adaptive_sched.learners.priors as priors_module

    monkeypatch.setattr(priors_module, "_CACHE_LIMIT", 8)
    small = Prior(prior.data)
    shapes = [Shape(n=1, d=512, kv_len=k) for k in range(100, 120)]
    answers = [small.latency("attn", s) for s in shapes]
    for s in shapes:
        small.choose("attn", s)
    cached = list(small._latency_cache)
    assert len(cached) == 8 == len(small._choice_cache) == len(small._extrapolating_cache)
    assert cached == [(Stage.ATTN, s) for s in shapes[-8:]]  # the newest, never a cleared cache
    assert small.latency("attn", shapes[0]) == answers[0]  # a forgotten answer is computed again alike


def test_latency_model_fallback_precision() -> None:
    rows = [TrainingRow(Shape(n=1, d=d), {Backend.GPU: 1e-6 * d, Backend.NPU: 2e-4}) for d in (64, 128, 256)]
    lm = PriorLatencyModel(Stage.QKV, rows)
    est = lm.predict(Shape(n=1, d=128, precision="int8"))  # no INT8 rows: uses the pooled fit
    assert 0.5 * 1.28e-4 < est[Backend.GPU] <= 1.28e-4  # INT8 moves fewer bytes than the FP16 row
    assert lm.extrapolation_reason(Shape(n=1, d=128, precision="int8")) == "no int8 rows for gpu"


def test_quirks_are_where_the_rows_leave_their_smooth_trend() -> None:
    # Latency linear in d (the trend fits it exactly) but for one width 4x slower than that (a
    # slow path of the profiled device): the prediction keeps the quirk, and says it is one.
    ds = (256, 512, 768, 1024, 1280, 1536, 2048, 3072, 4096)
    rows = [TrainingRow(Shape(n=1, d=d), {Backend.GPU: 1e-6 * d * (4.0 if d == 1280 else 1.0), Backend.NPU: 2e-4})
            for d in ds]  # fmt: skip
    lm = PriorLatencyModel(Stage.QKV, rows)
    quirky = lm.predict_with_quirks(Shape(n=1, d=1280))[1][Backend.GPU]
    plain = lm.predict_with_quirks(Shape(n=1, d=3072))[1][Backend.GPU]
    assert quirky > 1.0 > 0.2 > abs(plain)
    assert lm.predict(Shape(n=1, d=1280))[Backend.GPU] == pytest.approx(4 * 1.28e-3)  # the quirk kept


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_spec_builds_and_learns(name: str) -> None:
    rows = rows_for(Stage.QKV)
    order = (Backend.GPU, Backend.NPU)
    xs = [model_features("qkv", r.shape) for r in rows]
    ys = [r.best(order).value for r in rows]
    params = {"passes": 2}
    a = fit(build_model(name, params, seed=1), xs, ys, passes=2, seed=1)
    b = fit(build_model(name, params, seed=1), xs, ys, passes=2, seed=1)
    preds = [a.predict_one(x) for x in xs]
    assert preds == [b.predict_one(x) for x in xs]
    assert set(preds) <= {"gpu", "npu"}


def test_builtin_prior_ships_for_the_simulated_rk3588() -> None:
    prior = load_prior("builtin", device="rk3588")
    assert prior.device == "rk3588"
    assert set(prior.backends) >= {Backend.GPU, Backend.NPU}
    assert prior.data.stages[Stage.QKV].model == "rf" and prior.data.stages[Stage.ATTN].model == "knn"
    est = prior.latency("attn", Shape(n=1, d=4096, kv_len=512, precision="int8"))
    assert all(v > 0 for v in est.values())


def test_builtin_prior_matches_the_current_simulator() -> None:
    # The shipped rows are noisy medians of the simulated RK3588. If the simulator's
    # calibration changes, this fails: run scripts/build_priors.sh to regenerate the prior.
    from adaptive_sched.sim import SimulatedDevice

    prior = load_prior("builtin", device="rk3588")
    device = SimulatedDevice("rk3588", noise=False, thermal=False, contention=False)
    for stage in (Stage.QKV, Stage.ATTN):
        for row in prior.data.stages[stage].rows[::7]:
            for backend, median in row.latency_s.items():
                expected = device.stage_cost(stage, row.shape, backend).latency()
                assert median == pytest.approx(expected, rel=0.1), (
                    f"{stage.value} {row.shape} on {backend.value}: shipped {median:.3g} s, "
                    f"simulator {expected:.3g} s; the simulator changed: run scripts/build_priors.sh"
                )
