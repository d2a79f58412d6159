"""Training priors from profiles: rows, grouped splits, the comparison table, bad inputs."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from adaptive_sched.errors import PriorError
from adaptive_sched.features import stage_flops, stage_mem_bytes
from adaptive_sched.learners.priors import TrainingRow
from adaptive_sched.offline.profiling import load_grid
from adaptive_sched.offline.training import (
    evaluate_models,
    format_table,
    group_key,
    grouped_split,
    load_training_rows,
    train_priors,
)
from adaptive_sched.store.connection import open_database
from adaptive_sched.store.prior_files import load_prior
from adaptive_sched.store.profiles import ProfileRow, write_profiles
from adaptive_sched.types import Backend, Shape, Stage

GRID = {
    "precision": ["fp16", "int8"],
    "grids": [
        {"n": 1, "d": [64, 128, 256, 512, 1024], "kv_len": [0, 128, 1024]},
        {"n": [16, 40, 64, 256], "d": [64, 256, 1024]},
    ],
}

# Small, fast models: these tests check behaviour, not accuracy.
FAST = {"rf": {"n_models": 3, "passes": 3}, "tree": {"passes": 3}, "logreg": {"passes": 5}}


def toy_latency(backend: str, stage: Stage, shape: Shape) -> float:
    """GPU: low overhead, slow on small INT8 work; NPU: high overhead, fast INT8 matmul."""
    flops, mem = stage_flops(stage, shape), stage_mem_bytes(stage, shape)
    if backend == "gpu":
        return 4e-5 + flops / 2e11 + mem / 2e10
    rate = 1.6e12 if shape.precision.value == "int8" else 4e11
    return 2e-4 + flops / rate + mem / 1.5e10


def make_db(
    path: Path,
    *,
    device: str = "toy",
    backends: tuple[str, ...] = ("gpu", "npu"),
    latency: Callable[[str, Stage, Shape], float] = toy_latency,
) -> Path:
    rows = []
    for stage, shape in load_grid(GRID).points():
        for b in backends:
            t = latency(b, stage, shape)
            rows.append(
                ProfileRow(
                    device=device, executor="fake", backend=b, stage=stage.value, shape=shape, warmup=0,
                    repetitions=3, median_s=t, p10_s=t, p90_s=t, min_s=t, max_s=t, ok=True,
                )
            )  # fmt: skip
    db = open_database(path)
    try:
        write_profiles(db, rows)
    finally:
        db.close()
    return path


def test_rows_and_labels(tmp_path: Path) -> None:
    db = make_db(tmp_path / "p.db")
    rows, stats, rejected = load_training_rows(db, device="toy")
    assert set(rows) == {Stage.QKV, Stage.ATTN}
    assert stats[Stage.ATTN].used == len(rows[Stage.ATTN]) == 2 * (15 + 12)
    assert set(stats[Stage.QKV].labels) == {"gpu", "npu"}  # both backends win somewhere
    assert rejected == [] and stats[Stage.QKV].rejected == 0
    for r in rows[Stage.QKV]:
        assert set(r.latency_s) == {Backend.GPU, Backend.NPU}


def test_train_priors_report_and_saved_prior(tmp_path: Path) -> None:
    db = make_db(tmp_path / "p.db")
    report = train_priors(db, device="toy", params=FAST, splits=2)
    table = report.comparison
    for stage in ("qkv", "attn"):
        names = {e["model"] for e in table if e["stage"] == stage}
        assert {"rf", "knn", "tree", "logreg", "latency-argmin", "always-gpu", "always-npu"} <= names
    for e in table:
        assert 0.0 <= e["accuracy"] <= 1.0
        assert e["regret_pct"] >= 0.0 and e["max_slowdown"] >= 1.0
        assert e["tested"] > 0 and e["splits"] == 2
    chosen = {(e["stage"], e["model"]) for e in table if e["chosen"]}
    assert chosen == {("qkv", "rf"), ("attn", "knn")}
    # A model that learned something beats always picking the worse backend.
    rf = next(e for e in table if e["stage"] == "qkv" and e["model"] == "rf")
    worst = max(e["regret_pct"] for e in table if e["stage"] == "qkv" and e["model"].startswith("always-"))
    assert rf["regret_pct"] < worst
    data = report.as_dict()
    json.dumps(data)  # plain data only
    assert data["prior"]["saved"] and data["prior"]["name"] == "toy"
    prior = load_prior(db, device="toy")
    assert prior.content_hash == report.content_hash
    assert prior.metrics("qkv")["regret_pct"] == rf["regret_pct"]
    assert "rf *" in format_table(report) and "logreg" in format_table(data)


def test_training_is_deterministic(tmp_path: Path) -> None:
    db = make_db(tmp_path / "p.db")

    def scores(seed: int) -> list[tuple]:
        report = train_priors(db, device="toy", params=FAST, splits=1, save=False, seed=seed)
        return [(e["stage"], e["model"], e["accuracy"], e["regret_pct"]) for e in report.comparison]

    assert scores(0) == scores(0)
    a = train_priors(db, device="toy", params=FAST, splits=1, save=False, seed=0)
    b = train_priors(db, device="toy", params=FAST, splits=1, save=False, seed=0)
    assert a.content_hash == b.content_hash
    c = train_priors(db, device="toy", params=FAST, splits=1, save=False, seed=1)
    assert c.content_hash != a.content_hash  # the seed is part of the prior


def test_grouped_split_keeps_groups_together_and_is_seeded(tmp_path: Path) -> None:
    rows, _, _ = load_training_rows(make_db(tmp_path / "p.db"), device="toy")
    attn = rows[Stage.ATTN]
    order = (Backend.GPU, Backend.NPU)
    train, test = grouped_split(Stage.ATTN, attn, order, holdout=0.25, seed=3)
    assert sorted(train + test) == list(range(len(attn)))
    train_groups = {group_key(Stage.ATTN, attn[i].shape) for i in train}
    test_groups = {group_key(Stage.ATTN, attn[i].shape) for i in test}
    assert not train_groups & test_groups
    assert 0.1 < len(test_groups) / (len(test_groups) + len(train_groups)) < 0.45
    assert {attn[i].best(order) for i in test} == {Backend.GPU, Backend.NPU}  # stratified
    assert grouped_split(Stage.ATTN, attn, order, holdout=0.25, seed=3) == (train, test)
    assert grouped_split(Stage.ATTN, attn, order, holdout=0.25, seed=4) != (train, test)


def test_regret_counts_the_cost_of_mistakes() -> None:
    # Two shapes; GPU is 2x slower on the first, NPU 10 % slower on the second.
    rows = [TrainingRow(Shape(n=1, d=64 * k), {Backend.GPU: 2.0, Backend.NPU: 1.0}) for k in (1, 2, 3, 4)] + [
        TrainingRow(Shape(n=16, d=64 * k), {Backend.GPU: 1.0, Backend.NPU: 1.1}) for k in (1, 2, 3, 4)
    ]
    table = evaluate_models({Stage.QKV: rows}, models=[], holdout=0.5, splits=1)
    always = {e["model"]: e for e in table}
    assert always["always-npu"]["regret_pct"] == pytest.approx(100 * 0.1 * 2 / 4)  # 2 of 4 rows held out, +0.1 each
    assert always["always-gpu"]["regret_pct"] == pytest.approx(100 * 1.0 * 2 / 4)
    assert always["always-gpu"]["max_slowdown"] == pytest.approx(2.0)


# -- bad inputs ----------------------------------------------------------------------------------


def test_empty_profile_set(tmp_path: Path) -> None:
    db = make_db(tmp_path / "p.db", device="other")
    with pytest.raises(PriorError, match=r"no profiles for device 'toy' \(devices with profiles: other\)"):
        train_priors(db, device="toy")
    empty = tmp_path / "empty.db"
    open_database(empty).close()
    with pytest.raises(PriorError, match="devices with profiles: none"):
        train_priors(empty, device="toy")
    with pytest.raises(PriorError, match="no such profile database"):
        train_priors(tmp_path / "missing.db", device="toy")


def test_one_backend_only(tmp_path: Path) -> None:
    db = make_db(tmp_path / "p.db", backends=("gpu",))
    with pytest.raises(PriorError, match=r"one backend only \(gpu\).*at least two backends"):
        train_priors(db, device="toy")
    two = make_db(tmp_path / "q.db")
    with pytest.raises(PriorError, match="at least two backends"):
        train_priors(two, device="toy", backends=["npu"])


def test_nan_and_non_positive_latencies_are_rejected(tmp_path: Path) -> None:
    def broken(backend: str, stage: Stage, shape: Shape) -> float:
        if backend == "npu" and shape.d == 128:
            return math.nan if stage is Stage.QKV else -1.0
        if backend == "gpu" and shape.d == 64 and shape.n == 16:
            return 0.0
        return toy_latency(backend, stage, shape)

    db = make_db(tmp_path / "p.db", latency=broken)
    report = train_priors(db, device="toy", params=FAST, splits=1)
    qkv, attn = report.rows["qkv"], report.rows["attn"]
    assert qkv["rejected"] == 2 + 2  # NaN at d=128 (2 precisions), 0.0 at n=16, d=64 (2 precisions)
    assert attn["rejected"] == 3 * 2 + 2  # -1.0 at d=128 (3 kv lengths x 2 precisions), 0.0 as above
    assert len(report.rejected) == 10  # listed; all are counted
    assert {(r["median_s"], r["problem"]) for r in report.rejected} == {
        (None, "missing or NaN"),
        (-1.0, "not finite and > 0"),
        (0.0, "not finite and > 0"),
    }
    json.dumps(report.as_dict(), allow_nan=False)
    prior = load_prior(db, device="toy")
    # The shape keeps the backend that was measured correctly.
    row = next(r for r in prior.data.stages[Stage.QKV].rows if r.shape == Shape(n=1, d=128))
    assert set(row.latency_s) == {Backend.GPU}


def test_failed_points_are_counted_not_fatal(tmp_path: Path) -> None:
    db = make_db(tmp_path / "p.db")
    conn = open_database(db)
    with conn.conn:
        conn.conn.execute(
            "UPDATE profiles SET ok = 0, median_s = NULL, error = 'unsupported: x' WHERE d = 1024 AND backend = 'npu'"
        )
    conn.close()
    report = train_priors(db, device="toy", params=FAST, splits=1, save=False)
    assert report.rows["qkv"]["failed"] > 0 and report.rows["qkv"]["rejected"] == 0


def test_bad_arguments(tmp_path: Path) -> None:
    db = make_db(tmp_path / "p.db")
    with pytest.raises(PriorError, match="unknown model 'svm'"):
        train_priors(db, device="toy", models={"qkv": "svm", "attn": "knn"})
    with pytest.raises(PriorError, match="holdout"):
        train_priors(db, device="toy", holdout=1.5)
    with pytest.raises(PriorError, match="unknown hyperparameter 'depth'"):
        train_priors(db, device="toy", params={"rf": {"depth": 3}})
    with pytest.raises(ValueError, match="stage: unknown value 'mlp'"):
        train_priors(db, device="toy", models={"mlp": "rf"})


def test_train_verb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adaptive_sched.cli import main

    db = make_db(tmp_path / "p.db")
    export = tmp_path / "prior.json"
    argv = ["train", "--db", str(db), "--device", "toy", "--qkv-model", "knn", "--attn-model", "knn"]
    assert main([*argv, "--export", str(export), "--output", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models"] == {"qkv": "knn", "attn": "knn"}
    assert load_prior(export, device="toy").content_hash == out["prior"]["content_hash"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "knn *" in text and "always-gpu" in text and f"saved to {db}" in text


@pytest.mark.parametrize(("flag", "value"), [("--qkv-model", "nope"), ("--attn-model", "svm"), ("--seed", "x")])
def test_train_verb_rejects_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    from adaptive_sched.cli import main

    db = make_db(tmp_path / "p.db")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--db", str(db), "--device", "toy", flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_the_train_verb_parser_imports_no_training_code() -> None:
    # every `adaptive-sched --help` builds this parser: it must stay as cheap as the others
    import subprocess
    import sys

    code = (
        "import sys; from adaptive_sched.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('numpy', 'river', 'sqlite_utils', 'adaptive_sched.offline.training') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
