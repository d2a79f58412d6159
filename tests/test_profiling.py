"""Profiling sweeps: grid files, the profiles table, resuming, failures, progress."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from adaptive_sched.errors import ConfigError, ExecutorUnavailable
from adaptive_sched.executors import create_executor
from adaptive_sched.executors.base import Executor, RunResult
from adaptive_sched.features import stage_flops, stage_mem_bytes
from adaptive_sched.offline.profiling import Grid, ProgressEvent, latency_stats, load_grid, profile_grid, stage_shape
from adaptive_sched.store.connection import open_database
from adaptive_sched.store.profiles import read_profiles
from adaptive_sched.types import Backend, Precision, Shape, Stage


class FakeExecutor(Executor):
    """Latency-only executor with a roofline latency, a deterministic jitter, and optional faults."""

    kind = "fake"
    latency_only = True

    def __init__(
        self,
        backend: str = "gpu",
        *,
        fail_d: int | None = None,
        max_d: int | None = None,
        bad_latency: bool = False,
        available: bool = True,
    ) -> None:
        super().__init__(backend)
        self.fail_d, self.max_d, self.bad_latency, self.available = fail_d, max_d, bad_latency, available
        self.calls = 0

    def _probe(self) -> str | None:
        return None if self.available else "no such device"

    def _supports(self, stage: Stage, shape: Shape) -> str | None:
        if self.max_d is not None and shape.d > self.max_d:
            return f"d > {self.max_d}"
        return None

    def _run(
        self, stage: Stage, shape: Shape, inputs: Mapping[str, np.ndarray] | None, after: Backend | None
    ) -> RunResult:
        self.calls += 1
        if self.fail_d is not None and shape.d == self.fail_d:
            raise RuntimeError("kernel crashed")
        if self.bad_latency:
            return RunResult(None, math.nan)
        base = 5e-5 if self.backend is Backend.GPU else 1e-4
        t = base + stage_flops(stage, shape) / 1e11 + stage_mem_bytes(stage, shape) / 1e10
        return RunResult(None, t * (1.0 + 0.01 * (self.calls % 5)))


def executors(**kw: object) -> dict[str, Executor]:
    return {"gpu": FakeExecutor("gpu", **kw), "npu": FakeExecutor("npu")}  # type: ignore[arg-type]


def rows(db_path: Path, device: str = "toy") -> list:
    db = open_database(db_path)
    try:
        return read_profiles(db, device=device)
    finally:
        db.close()


# -- grids ---------------------------------------------------------------------------------------


def test_smoke_grid_points_and_qkv_dedup() -> None:
    grid = load_grid("smoke")
    assert grid.name == "smoke"
    # decode: 2 d x 2 kv x 2 precisions, prefill: 2 n x 2 d x 2 precisions
    assert len(grid.shapes) == 16
    points = grid.points()
    qkv = [s for st, s in points if st is Stage.QKV]
    attn = [s for st, s in points if st is Stage.ATTN]
    assert len(attn) == 16
    assert len(qkv) == 12  # kv_len does not matter to qkv
    assert all(s.kv_len == 0 for s in qkv)


def test_paper_grid_has_the_papers_points() -> None:
    grid = load_grid("paper")
    decode = {(s.d, s.precision.value) for s in grid.shapes if s.n == 1}
    assert {(d, p) for d in (512, 1024, 2048, 4096) for p in ("fp16", "int8")} <= decode
    prefill_n = {s.n for s in grid.shapes if s.n > 1}
    assert {16, 32, 40, 64, 128, 256, 512} <= prefill_n


def test_stage_shape_only_reduces_qkv() -> None:
    s = Shape(n=4, d=256, kv_len=100, heads=2)
    assert stage_shape("attn", s) is s
    assert stage_shape("qkv", s) == Shape(n=4, d=256)


def test_ranges_lists_and_scalars() -> None:
    grid = load_grid(
        {
            "precision": "int8",
            "grids": [
                {"n": 1, "d": {"start": 64, "stop": 512, "factor": 2}, "kv_len": {"start": 0, "stop": 64, "step": 32}},
                {"n": [16, 32], "d": 64, "batch": [1, 2]},
            ],
        }
    )
    decode = [s for s in grid.shapes if s.n == 1]
    assert sorted({s.d for s in decode}) == [64, 128, 256, 512]
    assert sorted({s.kv_len for s in decode}) == [0, 32, 64]
    assert len(grid.shapes) == 4 * 3 + 2 * 2
    assert {s.precision.value for s in grid.shapes} == {"int8"}


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"n": 1, "d": 64, "size": 2}, "size: unknown key"),
        ({"grids": [{"n": 1, "d": 64, "seq": 3}]}, "grids[0].seq: unknown key"),
        ({"n": 0, "d": 64}, "n: must be >= 1, got 0"),
        ({"n": "many", "d": 64}, "n: expected an integer, got 'many'"),
        ({"n": 1.5, "d": 64}, "n: expected an integer"),
        ({"n": True, "d": 64}, "n: expected an integer"),
        ({"n": 1, "d": 64, "precision": "fp8"}, "unknown value 'fp8'"),
        ({"n": 1}, "d: required key is missing"),
        ({"n": 1, "d": 96, "heads": 5}, "must be divisible by heads"),
        ({"n": {"start": 1, "stop": 8}, "d": 64}, "exactly one of 'step' or 'factor'"),
        ({"n": {"start": 8, "stop": 1, "step": 1}, "d": 64}, "stop (1) is below start (8)"),
        ({"n": {"start": 1, "stop": 8, "factor": 1}, "d": 64}, "factor must be a number > 1"),
        ({"n": {"from": 1, "stop": 8, "step": 1}, "d": 64}, "unknown range key 'from'"),
        ({"n": [], "d": 64}, "n: empty list"),
        ({"n": 1, "d": 64, "stages": ["mlp"]}, "stages: stage: unknown value 'mlp'"),
        ({"n": 1, "d": 64, "grids": []}, "grids: must be a non-empty list"),
    ],
)
def test_bad_grid_values_name_the_key(grid: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_grid(grid)
    assert message in str(info.value)


def test_bad_grid_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ngrids:\n  - {n: 1, d: 64, kvlen: 8}\n")
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    assert str(path) in str(info.value) and "grids[0].kvlen: unknown key" in str(info.value)
    path.write_text("n: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_grid(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_grid(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_grid(tmp_path / "missing.yaml")


# -- sweeps --------------------------------------------------------------------------------------


def test_sweep_writes_one_row_per_point(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    summary = profile_grid(executors(), "smoke", db, device="toy", warmup=1, repetitions=5)
    assert summary.total == 2 * 28
    assert (summary.measured, summary.skipped, summary.failed) == (56, 0, 0)
    stored = rows(db)
    assert len(stored) == 56
    for r in stored:
        assert r.ok and r.error is None
        assert r.min_s <= r.p10_s <= r.median_s <= r.p90_s <= r.max_s
        assert r.warmup == 1 and r.repetitions == 5 and r.executor == "fake"
    assert summary.as_dict()["measured"] == 56


def test_sweep_is_resumable(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    profile_grid(executors(), "smoke", db, device="toy", warmup=0, repetitions=2)
    again = profile_grid(executors(), "smoke", db, device="toy", warmup=0, repetitions=2)
    assert (again.measured, again.skipped) == (0, 56)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM profiles WHERE backend = 'npu' AND stage = 'attn'")
    conn.close()
    third = profile_grid(executors(), "smoke", db, device="toy", warmup=0, repetitions=2)
    assert (third.measured, third.skipped) == (16, 40)
    # Another device is another set of points.
    other = profile_grid(executors(), "smoke", db, device="other", warmup=0, repetitions=2)
    assert other.measured == 56
    assert len(rows(db)) == 56 and len(rows(db, "other")) == 56


def test_failures_are_recorded_not_fatal(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    ex = {"gpu": FakeExecutor("gpu", fail_d=128), "npu": FakeExecutor("npu", max_d=64)}
    summary = profile_grid(ex, "smoke", db, device="toy", warmup=0, repetitions=2)
    stored = rows(db)
    failed = [r for r in stored if not r.ok]
    assert summary.failed == len(failed) > 0
    assert summary.measured + summary.failed == summary.total
    crashed = [r for r in failed if r.backend == "gpu"]
    unsupported = [r for r in failed if r.backend == "npu"]
    assert crashed and all(r.shape.d == 128 and "RuntimeError: kernel crashed" in r.error for r in crashed)
    assert unsupported and all(r.error.startswith("unsupported: d > 64") for r in unsupported)
    assert all(r.median_s is None for r in failed)
    assert summary.failures and "error" in summary.failures[0]
    # Failed points count as done, unless asked to retry them.
    assert profile_grid(ex, "smoke", db, device="toy", warmup=0, repetitions=2).failed == 0
    fixed = {"gpu": FakeExecutor("gpu"), "npu": FakeExecutor("npu")}
    retried = profile_grid(fixed, "smoke", db, device="toy", warmup=0, repetitions=2, retry_failed=True)
    assert retried.measured == len(failed)
    assert all(r.ok for r in rows(db))


def test_invalid_latency_is_a_failed_point(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    summary = profile_grid(executors(bad_latency=True), {"n": 1, "d": 64}, db, device="toy", repetitions=2)
    gpu = [r for r in rows(db) if r.backend == "gpu"]
    assert summary.failed == 2 and all("invalid latency" in r.error for r in gpu)


def test_progress_reports_every_point(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    db = tmp_path / "p.db"
    profile_grid(executors(), {"n": 1, "d": [64, 128]}, db, device="toy", repetitions=1, progress=events.append)
    assert [e.done for e in events] == list(range(1, 9))
    assert {e.total for e in events} == {8}
    assert {e.status for e in events} == {"measured"}
    assert all(e.median_s and e.median_s > 0 for e in events)
    events.clear()
    profile_grid(executors(), {"n": 1, "d": [64, 128]}, db, device="toy", repetitions=1, progress=events.append)
    assert {e.status for e in events} == {"skipped"}


def test_cpu_numpy_executor_sweeps(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    grid = Grid(name="tiny", shapes=(Shape(n=1, d=64, kv_len=8), Shape(n=8, d=64, precision=Precision.INT8)))
    summary = profile_grid({"cpu": create_executor("cpu_numpy")}, grid, db, device="host", warmup=1, repetitions=3)
    assert summary.measured == 4 and summary.failed == 0
    assert all(r.ok and r.median_s > 0 and r.executor == "cpu_numpy" for r in rows(db, "host"))


class InputsRecorder(FakeExecutor):
    """Computes real outputs, so the sweep hands it inputs; remembers what it was given."""

    latency_only = False

    def __init__(self) -> None:
        super().__init__("cpu")
        self.seen: list[Mapping[str, np.ndarray]] = []

    def _run(self, stage, shape, inputs, after):  # type: ignore[no-untyped-def]
        self.seen.append(inputs)
        return super()._run(stage, shape, inputs, after)


def test_real_executors_are_timed_on_one_set_of_read_only_weights_per_point(tmp_path: Path) -> None:
    # As a served model runs: weights resident, so a warm-up pays their conversion or upload
    # and the repetitions time the stage itself.
    recorder = InputsRecorder()
    profile_grid({"cpu": recorder}, {"n": 1, "d": 64, "kv_len": 8}, tmp_path / "p.db", device="host",
                 warmup=2, repetitions=3)  # fmt: skip
    assert len(recorder.seen) == 2 * (2 + 3)  # qkv and attn, each warm-up and repetition
    by_point = [recorder.seen[:5], recorder.seen[5:]]
    for runs in by_point:
        assert all(inputs is runs[0] for inputs in runs)
    qkv = by_point[0][0]
    assert set(qkv) >= {"x", "w"}
    assert not qkv["w"].flags.writeable and not qkv["b"].flags.writeable
    assert qkv["x"].flags.writeable  # activations are not weights


def test_bad_arguments(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with pytest.raises(ConfigError, match="runs on 'gpu', not 'npu'"):
        profile_grid({"npu": FakeExecutor("gpu")}, "smoke", db, device="toy")
    with pytest.raises(ExecutorUnavailable, match="no such device"):
        profile_grid({"gpu": FakeExecutor("gpu", available=False)}, "smoke", db, device="toy")
    with pytest.raises(ConfigError, match="repetitions"):
        profile_grid(executors(), "smoke", db, device="toy", repetitions=0)
    with pytest.raises(ConfigError, match="warmup"):
        profile_grid(executors(), "smoke", db, device="toy", warmup=-1)
    with pytest.raises(ConfigError, match="device"):
        profile_grid(executors(), "smoke", db, device="")
    with pytest.raises(ConfigError, match="backend: unknown value 'tpu'"):
        profile_grid({"tpu": FakeExecutor("gpu")}, "smoke", db, device="toy")
    with pytest.raises(ConfigError, match="at least one"):
        profile_grid({}, "smoke", db, device="toy")


def test_latency_stats() -> None:
    stats = latency_stats([4.0, 1.0, 3.0, 2.0, 5.0])
    assert stats == pytest.approx({"median_s": 3.0, "p10_s": 1.4, "p90_s": 4.6, "min_s": 1.0, "max_s": 5.0})
    with pytest.raises(ValueError):
        latency_stats([])


def test_profile_config(tmp_path: Path) -> None:
    from adaptive_sched.offline.profiling import profile_config

    config = {"device": "host", "backends": {"cpu": {"executor": "cpu_numpy"}}, "priors": "none"}
    events: list[ProgressEvent] = []
    summary = profile_config(config, {"n": 1, "d": 64}, tmp_path / "p.db", warmup=0, repetitions=2,
                             progress=events.append)  # fmt: skip
    assert (summary.device, summary.measured, summary.failed, summary.all_failed) == ("host", 2, 0, False)
    assert [(e.done, e.total) for e in events] == [(1, 2), (2, 2)]
    assert profile_config(config, {"n": 1, "d": 64}, tmp_path / "p.db").skipped == 2


def _profile_cli_files(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "host.yaml"
    config.write_text("device: host\nbackends:\n  cpu: {executor: cpu_numpy}\npriors: none\n")
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: t\nn: 1\nd: 64\n")
    return config, grid


def test_profile_verb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from adaptive_sched.cli import main

    config, grid = _profile_cli_files(tmp_path)
    db = tmp_path / "p.db"
    argv = ["profile", "-c", str(config), "-g", str(grid), "--db", str(db), "--warmup", "0", "--repetitions", "2"]
    assert main([*argv, "--output", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "host" and out["measured"] == 2 and out["grid"] == "t"
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "skipped   2" in text and "measured  0" in text


@pytest.mark.parametrize(("flag", "value"), [("--repetitions", "0"), ("--repetitions", "two"), ("--warmup", "-1")])
def test_profile_verb_rejects_bad_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    from adaptive_sched.cli import main

    config, grid = _profile_cli_files(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["profile", "-c", str(config), "-g", str(grid), "--db", str(tmp_path / "p.db"), flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "p.db").exists()
