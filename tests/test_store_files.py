"""Files: atomic whole-file writes, and a log file deleted or replaced while it is written."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from adaptive_sched.errors import StoreError
from adaptive_sched.store import files
from adaptive_sched.store.files import write_atomic
from adaptive_sched.store.ownership import inspect_file
from adaptive_sched.store.reads import counts, runs
from adaptive_sched.store.writer import DecisionLog

from .test_store_support import CHILD_PRELUDE, digest, make_decision, python, wait_until


# -- write_atomic -----------------------------------------------------------------------------------
def test_write_atomic_writes_a_new_file_and_replaces_an_old_one(tmp_path: Path) -> None:
    path = tmp_path / "prior.json"
    assert write_atomic(path, "one\n") == path
    assert path.read_text() == "one\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    path.chmod(0o600)
    inode = path.stat().st_ino
    write_atomic(path, b"two\n")
    assert path.read_bytes() == b"two\n"
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # ... keeping its permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior.json"]


@pytest.mark.parametrize("temp_name", ["prior.json.tmp", ".prior.json.tmp"])
def test_a_symlink_planted_at_a_predictable_temp_name_is_not_followed(tmp_path: Path, temp_name: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / temp_name).symlink_to(victim)
    path = tmp_path / "prior.json"
    write_atomic(path, "prior\n")
    assert victim.read_text() == "precious\n"
    assert path.read_text() == "prior\n" and not path.is_symlink()
    assert (tmp_path / temp_name).is_symlink()  # left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["prior.json", "victim.txt", temp_name])


def test_every_random_temp_name_taken_by_a_symlink_still_writes_nothing_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The random names themselves: the first two tries find a symlink there (O_EXCL refuses it).
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    names = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(files.tempfile, "_get_candidate_names", lambda: names)
    (tmp_path / ".prior.json.aaaaaaaa.tmp").symlink_to(victim)
    write_atomic(tmp_path / "prior.json", "prior\n")
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "prior.json").read_text() == "prior\n"


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    path = tmp_path / "prior.json"
    path.symlink_to(victim)
    write_atomic(path, "prior\n")
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and path.read_text() == "prior\n"


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prior.json"
    path.write_text("old\n")
    before = digest(path)

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(StoreError, match="No space left on device") as info:
        write_atomic(path, "new\n")
    assert str(path) in str(info.value)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior.json"]


def test_write_atomic_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "prior.json", "x")
    with pytest.raises(StoreError, match="is a directory"):
        write_atomic(tmp_path, "x")


# -- the log file deleted or replaced while the writer runs -------------------------------------------
def _log_rows(log: DecisionLog, run: int, seqs: range) -> None:
    for seq in seqs:
        d = make_decision(run, seq)
        log.decision(d)
        log.outcome(d.id, 1e-3)


def test_a_deleted_log_is_reported_and_a_new_one_started_in_its_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "log.db"
    with (
        caplog.at_level(logging.WARNING, logger="adaptive_sched.store.writer"),
        DecisionLog(path, flush_rows=500) as log,
    ):
        run = log.start_run(device_profile="rk3588")
        _log_rows(log, run, range(1, 1001))
        assert log.flush()
        path.unlink()  # SQLite itself would go on writing into the deleted file
        _log_rows(log, run, range(1001, 3001))
        assert log.flush()
        stats = log.stats
        assert (stats.file_replaced, stats.failed, stats.dropped) == (1, 0, 0)
        assert stats.written == 6000
        assert stats.lost_with_file <= 1000  # at most the last batch before the deletion
        # Another deletion, noticed while idle.
        path.unlink()
        assert wait_until(lambda: log.stats.file_replaced == 2 and path.exists())
        _log_rows(log, run, range(3001, 3101))
    assert "deleted" in caplog.text and str(path) in caplog.text
    assert inspect_file(path).kind == "ours"
    c = counts(path)
    assert (c["decisions"], c["outcomes"]) == (100, 100)
    # The run is recorded in the new file too, under the same id.
    assert [(r.id, r.device_profile) for r in runs(path)] == [(run, "rk3588")]
    with DecisionLog(path) as later:
        assert later.start_run() == run + 1


def test_the_first_replacement_is_counted_before_any_row_goes_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with DecisionLog(path, flush_rows=500) as log:
        run = log.start_run()
        _log_rows(log, run, range(1, 501))
        assert log.flush()
        path.unlink()
        _log_rows(log, run, range(501, 1001))
        assert log.flush()
    conn = sqlite3.connect(path)
    ids = [r[0] for r in conn.execute("SELECT id & 0xffffffff FROM decisions ORDER BY id")]
    conn.close()
    assert ids == list(range(501, 1001))  # every row logged after the deletion, none before


def test_a_log_replaced_by_another_applications_file_is_not_written_until_it_is_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "log.db"
    with DecisionLog(path, flush_rows=100) as log:
        run = log.start_run()
        _log_rows(log, run, range(1, 101))
        assert log.flush()
        os.unlink(path)
        other = sqlite3.connect(path)
        other.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        other.commit()
        other.close()
        before = digest(path)
        with caplog.at_level(logging.ERROR, logger="adaptive_sched.store.writer"):
            _log_rows(log, run, range(101, 201))
            assert log.flush() is False  # those rows could not be written
        stats = log.stats
        assert stats.file_replaced == 1 and stats.failed == 200
        assert digest(path) == before
        assert "another application" in caplog.text
        # Once it is gone, the log starts again there.
        os.unlink(path)
        assert wait_until(lambda: path.exists() and inspect_file(path).kind == "ours")
        _log_rows(log, run, range(201, 301))
        assert log.flush()
        stats = log.stats
        # every row is accounted for: written, lost with a file, or failed
        assert stats.written == 400 and stats.failed == 200 and stats.enqueued == 600
    assert counts(path)["decisions"] == 100


SHARING_CHILD = (
    CHILD_PRELUDE
    + """
log = DecisionLog(sys.argv[1], flush_rows=100, flush_interval_s=0.02)
run = log.start_run(device_profile="child")
print("run", run, flush=True)
seq = 0
for line in sys.stdin:  # one batch of 100 rows per line, until told to stop
    if line.strip() == "stop":
        break
    for _ in range(100):
        seq += 1
        d = make(run, seq)
        log.decision(d)
        log.outcome(d.id, 1e-3)
    log.flush()
    print("done", flush=True)
log.close()
s = log.stats
print(json.dumps({"written": s.written, "failed": s.failed, "dropped": s.dropped, "replaced": s.file_replaced,
                  "lost": s.lost_with_file, "enqueued": s.enqueued}), flush=True)
"""
)


def test_a_log_deleted_under_two_processes_ends_up_one_sound_new_file(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    child = python(SHARING_CHILD, str(path), stdin=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None

    def child_batch() -> None:
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"

    assert child.stdout.readline().split()[0] == "run"
    with DecisionLog(path, flush_rows=100, flush_interval_s=0.02) as log:
        run = log.start_run(device_profile="parent")
        _log_rows(log, run, range(1, 101))
        child_batch()
        assert log.flush()
        path.unlink()
        # While the other process still has the deleted file (and its WAL) open, no new
        # file may take that WAL; each notices the deletion and both move to one new file.
        for k in range(20):
            _log_rows(log, run, range(101 + 100 * k, 201 + 100 * k))
            child_batch()
            log.flush()
        assert wait_until(lambda: path.exists())
        _log_rows(log, run, range(5001, 5101))
        child_batch()
        assert log.flush()
        mine = log.stats
    child.stdin.write("stop\n")
    child.stdin.flush()
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    theirs = json.loads(out.strip().splitlines()[-1])
    assert mine.file_replaced == 1 and theirs["replaced"] == 1
    # every row accounted for: written (to the old file or the new one) or failed
    assert mine.written + mine.failed == mine.enqueued == 2 * 2200
    assert theirs["written"] + theirs["failed"] == theirs["enqueued"] == 2 * 2200
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    devices = {r[0] for r in conn.execute("SELECT device_profile FROM runs")}
    last = conn.execute("SELECT count(*) FROM decisions WHERE id & 0xffffffff > 5000").fetchone()[0]
    conn.close()
    assert devices == {"parent", "child"}
    assert last >= 100  # the parent's last batch, at least, is in the new file
    assert inspect_file(path).kind == "ours"
