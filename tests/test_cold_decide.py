"""A cold ``decide`` answers from a snapshot: the same draw, no heavy imports, one run per config."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import adaptive_sched.cli.decide as decide_module
from adaptive_sched.cli import main
from adaptive_sched.policies.base import entry_key as policy_entry_key
from adaptive_sched.store import snapshot
from adaptive_sched.types import Backend, Shape, Stage

ROOT = Path(__file__).resolve().parents[1]
ARGV = ["decide", "--stage", "attn", "--n", "1", "--d", "2048", "--kv-len", "700", "--precision", "int8",
        "--after", "gpu", "-o", "json"]  # fmt: skip


def _decide(capsys, *extra):
    code = main([*ARGV, *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("lookahead", [True, False])
def test_snapshot_keys_bucket_shapes_as_the_policies_do(lookahead):
    shapes = [Shape(n=n, d=d, kv_len=kv, batch=b, precision=p)
              for n in (1, 7, 40, 64, 65, 100, 512, 513, 4000) for d in (64, 2048)
              for kv in (0, 5, 16, 17, 300, 70000) for b in (1, 3) for p in ("fp16", "int8")]  # fmt: skip
    policy_to_text: dict = {}
    text_to_policy: dict = {}
    for stage in Stage:
        for shape in shapes:
            for after in (None, *Backend):
                k = policy_entry_key(stage, shape, after, lookahead)
                text = snapshot.entry_key(stage, shape, after.value if after else None, lookahead)
                # one text per policy key and one policy key per text: the same partition of shapes
                assert policy_to_text.setdefault(k, text) == text
                assert text_to_policy.setdefault(text, k) == k
    assert len(policy_to_text) > len(shapes)


def test_decide_with_a_log_logs_under_one_run_per_config(capsys, tmp_path):
    db = tmp_path / "log.db"
    replies = [_decide(capsys, "--db", str(db)) for _ in range(6)]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        rows = conn.execute("SELECT id, backend, propensity FROM decisions ORDER BY id").fetchall()
    assert [(r["id"], r["backend"], r["propensity"]) for r in replies] == rows
    assert len({r["id"] for r in replies}) == 6


def test_the_snapshot_draws_as_the_scheduler_published(capsys, tmp_path, monkeypatch):
    db = tmp_path / "log.db"
    _decide(capsys, "--db", str(db))  # builds the scheduler and saves its entry
    with sqlite3.connect(db) as conn:
        (text,) = conn.execute("SELECT value FROM meta WHERE key LIKE 'snapshot:%'").fetchone()
    snap = snapshot.Snapshot.from_json(text)
    key = snapshot.entry_key(Stage.ATTN, Shape(n=1, d=2048, kv_len=700, precision="int8"), "gpu", snap.lookahead)
    entry = snap.entries[key]
    assert entry[1], "the entry explores: some draws take an alternative"
    for u in (0.0, entry[1][0][0] - 1e-9, entry[1][-1][0], 0.999999):
        monkeypatch.setattr(decide_module, "_uniform", lambda u=u: u)
        reply = _decide(capsys, "--db", str(db))
        expected = snapshot.pick(entry, u)
        assert (reply["backend"], reply["propensity"], reply["explored"]) == tuple(expected[:3])


def test_a_new_outcome_makes_the_snapshot_stale(capsys, tmp_path):
    db = tmp_path / "log.db"
    first = _decide(capsys, "--db", str(db))
    before = snapshot.Snapshot.from_json(sqlite3.connect(db).execute("SELECT value FROM meta WHERE key LIKE "
                                                                     "'snapshot:%'").fetchone()[0])  # fmt: skip
    assert main(["observe", "--db", str(db), "--id", str(first["id"]), "--latency-ms", "90"]) == 0
    capsys.readouterr()
    second = _decide(capsys, "--db", str(db))
    after = snapshot.Snapshot.from_json(sqlite3.connect(db).execute("SELECT value FROM meta WHERE key LIKE "
                                                                    "'snapshot:%'").fetchone()[0])  # fmt: skip
    assert after.watermark == [1, first["id"]] != before.watermark
    assert after.run == before.run  # learning again does not start another run
    assert second["predicted_ms"][first["backend"]] > first["predicted_ms"][first["backend"]]


def test_without_a_log_the_snapshot_is_cached_per_config_outside_the_package(capsys, tmp_path, monkeypatch):
    first = _decide(capsys)
    assert first["id"] is None  # nothing logged, nothing to observe
    cached = list((Path(os.environ["XDG_CACHE_HOME"]) / "adaptive-sched").glob("decide-*.json"))
    assert len(cached) == 1 and snapshot.Snapshot.from_json(cached[0].read_bytes()).entries
    assert not list((ROOT / "adaptive_sched").rglob("decide-*.json"))
    # a cache directory that cannot be made: still answers
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert _decide(capsys)["backend"] in ("gpu", "npu")


def test_a_changed_dependency_or_another_boot_makes_a_snapshot_stale(tmp_path):
    dep = tmp_path / "prior.json"
    dep.write_text("{}")
    snap = snapshot.Snapshot(key="k", host=snapshot.host_stamp(), deps=[snapshot.file_stamp(dep)], store_path=None,
                             usable=["gpu"], unavailable={}, lookahead=True)  # fmt: skip
    assert snap.current()
    assert not snapshot.Snapshot(**{**snap.__dict__, "host": ["elsewhere", "boot"]}).current()
    dep.write_text('{"changed": 1}')
    assert not snap.current()
    assert snapshot.Snapshot.from_json(snap.to_json()) == snap
    assert snapshot.Snapshot.from_json("{not json") is None
    assert snapshot.Snapshot.from_json(json.dumps({"format": 999})) is None


def test_the_fast_path_imports_neither_numpy_nor_river_nor_sqlite_utils(tmp_path):
    db = tmp_path / "log.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-X", "importtime", "-m", "adaptive_sched", *ARGV]
    for extra in ([], ["--db", str(db)]):
        subprocess.run([*cmd, *extra], env=env, check=True, capture_output=True)  # builds the snapshot
        done = subprocess.run([*cmd, *extra], env=env, check=True, capture_output=True, text=True)
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
        assert "adaptive_sched.store.snapshot" in imported
        assert not {m for m in imported if m.split(".")[0] in ("numpy", "river", "sqlite_utils", "yaml")}
        assert json.loads(done.stdout)["backend"] in ("gpu", "npu")


def test_a_file_that_is_not_a_log_is_refused_untouched(capsys, tmp_path):
    notes = tmp_path / "notes.db"
    notes.write_text("my notes")
    assert main([*ARGV, "--db", str(notes)]) == 1
    assert "refusing to touch it" in capsys.readouterr().err and notes.read_text() == "my notes"


def test_a_log_that_cannot_be_written_is_an_error_naming_it(capsys, tmp_path, monkeypatch):
    db = tmp_path / "log.db"
    _decide(capsys, "--db", str(db))

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(snapshot, "log_decision", locked)
    assert main([*ARGV, "--db", str(db)]) == 1
    assert f"{db}: cannot read or write the log (database is locked)" in capsys.readouterr().err
