"""``adaptive-sched export``: the logged feedback as Parquet and as Vowpal Wabbit cb_adf text."""

import json

import pytest

from adaptive_sched.cli import main
from adaptive_sched.errors import AdaptiveSchedError, StoreError
from adaptive_sched.offline.export import export
from adaptive_sched.store.reads import iter_logged
from adaptive_sched.store.writer import DecisionLog

from .test_replay import write_log


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    return write_log(tmp_path_factory.mktemp("export") / "log.db", layers=40, p_gpu=0.7)


def logged_rows(path):
    return [(r.stage.value, r.backend.value, r.latency_s, r.propensity) for r in iter_logged(path, ok_only=True)]


def test_parquet_holds_context_action_cost_and_probability(tmp_path, log):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "log.parquet"
    summary = export([log], out, "parquet")
    table = pq.read_table(out).to_pylist()
    assert summary.rows == len(table) == 80
    assert [(r["stage"], r["action"], r["cost_s"], r["probability"]) for r in table] == logged_rows(log)
    first = table[1]
    assert first["after"] == table[0]["action"] and first["n"] == 1 and first["d"] == 1024
    assert first["prob_gpu"] == pytest.approx(0.7) and first["prob_cpu"] is None


def test_vw_text_is_one_cb_adf_example_per_decision(tmp_path, log):
    out = tmp_path / "log.vw"
    export([log], out, "vw")
    examples = out.read_text().rstrip("\n").split("\n\n")
    expected = logged_rows(log)
    assert len(examples) == len(expected)
    for text, (stage, backend, latency, prop) in zip(examples, expected, strict=True):
        shared, *actions = text.split("\n")
        assert shared.startswith(f"shared |s stage={stage} ")
        assert [a.split("|a backend=")[1] for a in actions] == ["gpu", "npu"]
        labelled = [a for a in actions if not a.startswith("|")]
        assert labelled == [f"0:{latency * 1e3:.6g}:{prop:.6g} |a backend={backend}"]


def test_vowpal_wabbit_reads_the_labels(tmp_path, log):
    vw = pytest.importorskip("vowpalwabbit", reason="vowpalwabbit is not a dependency; checked where it is installed")
    out = tmp_path / "log.vw"
    export([log], out, "vw")
    ws = vw.Workspace("--cb_adf --quiet")
    examples = out.read_text().rstrip("\n").split("\n\n")
    for text, (_, backend, latency, prop) in zip(examples, logged_rows(log), strict=True):
        parsed = ws.parse(text.split("\n"), labelType=vw.LabelType.CONTEXTUAL_BANDIT)
        labels = [[(c.cost, c.probability) for c in e.get_label(vw.LabelType.CONTEXTUAL_BANDIT).costs]
                  for e in parsed[1:]]  # fmt: skip
        chosen = ["gpu", "npu"].index(backend)
        assert labels[chosen][0] == pytest.approx((latency * 1e3, prop), rel=1e-5)
        assert labels[1 - chosen] == []
        ws.learn(parsed)
        ws.finish_example(parsed)
    ws.finish()


def test_several_logs_and_json_summary(capsys, tmp_path):
    a = write_log(tmp_path / "a.db", layers=5, seed=1)
    b = write_log(tmp_path / "b.db", layers=7, seed=2)
    out = tmp_path / "both.vw"
    code = main(["export", "--db", str(a), "--db", str(b), "--format", "vw", "--out", str(out), "-o", "json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["rows"] == 24 and data["logs"] == [str(a), str(b)]
    assert out.read_text().count("shared |s") == 24


def test_nothing_is_overwritten(capsys, tmp_path, log):
    out = tmp_path / "mine.vw"
    out.write_text("my notes\n")
    code = main(["export", "--db", str(log), "--format", "vw", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "not overwritten" in err and out.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.vw"]  # no temporary file left


def test_bad_targets_and_empty_logs(tmp_path, log):
    with pytest.raises(AdaptiveSchedError, match="does not exist"):
        export([log], tmp_path / "missing" / "x.vw", "vw")
    with pytest.raises(AdaptiveSchedError, match="unknown format"):
        export([log], tmp_path / "x.csv", "csv")
    empty = tmp_path / "empty.db"
    with DecisionLog(empty) as dl:
        dl.start_run(device_profile="rk3588")
    with pytest.raises(StoreError, match="no logged decisions"):
        export([empty], tmp_path / "x.vw", "vw")
    assert not (tmp_path / "x.vw").exists()
