"""Crashes, clean exits and several processes sharing one log file."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

from adaptive_sched.store.reads import counts, runs
from adaptive_sched.store.writer import DecisionLog

from .test_store_support import CHILD_PRELUDE, make_decision, python

KILLED_CHILD = (
    CHILD_PRELUDE
    + """
log = DecisionLog(sys.argv[1], flush_rows=500, flush_interval_s=0.05)
run = log.start_run(device_profile="crash-test")
print("run", run, flush=True)
i = 0
while True:
    for _ in range(100):
        i += 1
        d = make(run, i)
        log.decision(d)
        log.outcome(d.id, 1e-3)
    time.sleep(0.001)
    s = log.stats
    print("progress", i, s.written, flush=True)
"""
)


def test_sigkill_mid_run_leaves_a_sound_log_missing_only_the_uncommitted_tail(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    child = python(KILLED_CHILD, str(path))
    assert child.stdout is not None
    run = None
    last_written = 0
    for line in child.stdout:
        fields = line.split()
        if fields[0] == "run":
            run = int(fields[1])
        elif fields[0] == "progress":
            last_written = int(fields[2])
            if last_written >= 20_000:  # many background commits, none asked for
                break
    child.send_signal(signal.SIGKILL)
    rest, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    for line in rest.splitlines():  # what it reported after we stopped reading
        if line.startswith("progress"):
            last_written = int(line.split()[2])
    assert run is not None

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n_dec, first, top = conn.execute("SELECT count(*), min(id), max(id) FROM decisions").fetchone()
    n_out = conn.execute("SELECT count(*) FROM outcomes").fetchone()[0]
    conn.close()
    # Every row the writer had reported committed survived the kill ...
    assert n_dec + n_out >= last_written
    # ... and what survived is a prefix of what was logged: only the tail is missing.
    assert first == (run << 32 | 1) and top - first + 1 == n_dec
    assert n_out <= n_dec
    # The log carries on after the crash.
    with DecisionLog(path) as log:
        again = log.start_run()
        log.decision(make_decision(again, 1))
    assert again > run and counts(path)["decisions"] == n_dec + 1


EXITING_CHILD = (
    CHILD_PRELUDE
    + """
log = DecisionLog(sys.argv[1], flush_interval_s=3600, flush_rows=1_000_000)
run = log.start_run()
for i in range(1, 5001):
    d = make(run, i)
    log.decision(d)
    log.outcome(d.id, 1e-3)
how = sys.argv[2]
if how == "with":
    with DecisionLog(sys.argv[1]) as other:
        other.start_run()
elif how == "exit":
    sys.exit(3)
# "return": fall off the end of the script without closing
"""
)


def test_a_normal_exit_flushes_everything(tmp_path: Path) -> None:
    for how, code in (("return", 0), ("exit", 3), ("with", 0)):
        path = tmp_path / f"{how}.db"
        child = python(EXITING_CHILD, str(path), how)
        _, err = child.communicate(timeout=120)
        assert child.returncode == code, err
        c = counts(path)
        assert (c["decisions"], c["outcomes"]) == (5000, 5000), how


WRITING_CHILD = (
    CHILD_PRELUDE
    + """
log = DecisionLog(sys.argv[1], flush_rows=50, flush_interval_s=0.01, on_full="block", queue_size=500)
run = log.start_run(device_profile="proc")
for i in range(1, int(sys.argv[2]) + 1):
    d = make(run, i)
    log.decision(d)
    log.outcome(d.id, 1e-3)
    if i % 100 == 0:
        time.sleep(0.001)  # interleave with the other processes
log.close()
s = log.stats
print(json.dumps({"run": run, "written": s.written, "dropped": s.dropped, "failed": s.failed,
                  "errors": s.errors, "rejected": s.rejected, "duplicates": s.duplicates}))
"""
)


def test_several_processes_log_to_one_file_without_errors_or_losses(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"  # created by whichever process gets there first
    n = 4000
    children = [python(WRITING_CHILD, str(path), str(n)) for _ in range(4)]
    results = []
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        assert r["written"] == 2 * n, r
        assert (r["dropped"], r["failed"], r["errors"], r["rejected"], r["duplicates"]) == (0, 0, 0, 0, 0), r
    assert len({r["run"] for r in results}) == 4
    c = counts(path)
    assert (c["runs"], c["decisions"], c["outcomes"]) == (4, 4 * n, 4 * n)
    for r in results:
        assert counts(path, run=r["run"])["decisions"] == n
    assert {run.device_profile for run in runs(path)} == {"proc"}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_opening_a_log_while_another_process_writes_to_it_in_rollback_mode_waits_for_it(tmp_path: Path) -> None:
    # Switching a file to WAL while another connection holds a write lock fails at once in
    # SQLite, without its busy wait (what several processes opening one new log race into).
    import threading
    import time

    from adaptive_sched.store.connection import connect

    path = tmp_path / "log.db"
    connect(path).close()  # a log of ours ...
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("PRAGMA journal_mode = DELETE")  # ... not (yet) in WAL mode
    other.execute("BEGIN IMMEDIATE")  # and another process about to write to it

    def commit_soon() -> None:
        time.sleep(0.2)
        other.execute("COMMIT")

    writer = threading.Thread(target=commit_soon)
    writer.start()
    try:
        conn = connect(path, timeout_s=5.0)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    finally:
        writer.join()
        other.close()
