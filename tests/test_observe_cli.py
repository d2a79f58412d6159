"""``adaptive-sched observe --db``: an outcome reported from a shell reaches the next decision."""

import json
import math
import sqlite3

import pytest

from adaptive_sched.cli import main
from adaptive_sched.store.outcomes import AlreadyObserved, UnknownDecision, record_outcome


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _decide(capsys, db, *extra):
    code, out, err = _cli(capsys, "decide", "--stage", "qkv", "--n", "1", "--d", "4096", "--precision", "int8",
                          "--db", str(db), "-o", "json", *extra)  # fmt: skip
    assert code == 0, err
    return json.loads(out)


def test_observed_outcome_is_written_and_learned_by_the_next_decide(capsys, tmp_path):
    db = tmp_path / "log.db"
    first = _decide(capsys, db)
    code, _, err = _cli(capsys, "observe", "--db", str(db), "--id", str(first["id"]), "--latency-ms", "250")
    assert code == 0, err
    row = sqlite3.connect(db).execute("SELECT latency_s, ok, error FROM outcomes WHERE decision_id = ?",
                                      (first["id"],)).fetchone()  # fmt: skip
    assert row == (0.25, 1, None)
    # 250 ms is far slower than anything predicted: the next decision's estimate for that backend moved
    second = _decide(capsys, db)
    assert second["predicted_ms"][first["backend"]] > first["predicted_ms"][first["backend"]]


def test_failed_outcome_is_recorded_without_latency(capsys, tmp_path):
    db = tmp_path / "log.db"
    d = _decide(capsys, db)
    code, _, _ = _cli(capsys, "observe", "--db", str(db), "--id", str(d["id"]), "--failed", "--error", "oom")
    assert code == 0
    assert sqlite3.connect(db).execute("SELECT latency_s, ok, error FROM outcomes").fetchone() == (None, 0, "oom")


def test_observed_twice_or_unknown_id_exit_2(capsys, tmp_path):
    db = tmp_path / "log.db"
    d = _decide(capsys, db)
    assert _cli(capsys, "observe", "--db", str(db), "--id", str(d["id"]), "--latency-ms", "2")[0] == 0
    code, _, err = _cli(capsys, "observe", "--db", str(db), "--id", str(d["id"]), "--latency-ms", "2")
    assert code == 2 and "already observed" in err
    code, _, err = _cli(capsys, "observe", "--db", str(db), "--id", "12345", "--latency-ms", "2")
    assert code == 2 and "no decision with id 12345" in err
    assert sqlite3.connect(db).execute("SELECT count(*) FROM outcomes").fetchone()[0] == 1


@pytest.mark.parametrize("latency", ["0", "-1", "nan", "inf", "fast"])
def test_latency_not_finite_and_positive_exits_2(capsys, tmp_path, latency):
    with pytest.raises(SystemExit) as exc:
        main(["observe", "--db", str(tmp_path / "x.db"), "--id", "1", "--latency-ms", latency])
    assert exc.value.code == 2 and "--latency-ms" in capsys.readouterr().err


def test_latency_required_unless_failed(capsys, tmp_path):
    code, _, err = _cli(capsys, "observe", "--db", str(tmp_path / "x.db"), "--id", "1")
    assert code == 2 and "--latency-ms" in err


def test_a_file_that_is_not_a_log_is_refused_untouched(capsys, tmp_path):
    notes = tmp_path / "notes.db"
    notes.write_text("my notes")
    code, _, err = _cli(capsys, "observe", "--db", str(notes), "--id", "1", "--latency-ms", "1")
    assert code == 1 and "refusing to touch it" in err
    assert notes.read_text() == "my notes"
    code, _, err = _cli(capsys, "observe", "--db", str(tmp_path / "missing.db"), "--id", "1", "--latency-ms", "1")
    assert code == 1 and "no such log" in err and not (tmp_path / "missing.db").exists()


def test_record_outcome_api(tmp_path, capsys):
    db = tmp_path / "log.db"
    d = _decide(capsys, db)
    with pytest.raises(ValueError, match="latency_s"):
        record_outcome(db, d["id"], math.nan)
    with pytest.raises(UnknownDecision):
        record_outcome(db, d["id"] + 1, 0.001)
    record_outcome(db, d["id"], 0.001)
    with pytest.raises(AlreadyObserved):
        record_outcome(db, d["id"], 0.001)
