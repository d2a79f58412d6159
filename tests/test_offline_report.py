import json
import subprocess
import sys

import numpy as np
import pytest

from adaptive_sched.cli import main
from adaptive_sched.config import load_config
from adaptive_sched.offline.report import load_report, parse_duration, parse_time
from adaptive_sched.scheduler import Scheduler
from adaptive_sched.types import Shape

PIL = pytest.importorskip("PIL.Image", reason="the plots extra (matplotlib brings pillow)")
pytest.importorskip("matplotlib", reason="the plots extra")

STEPS = 30
LAYERS = 3


@pytest.fixture(scope="module")
def log_db(tmp_path_factory):
    """A small simulated log: a prompt, decode steps, one failed decision and one never observed."""
    path = tmp_path_factory.mktemp("report") / "log.db"
    config = load_config("rk3588-sim")
    with Scheduler(config, db=path) as sched:
        sched.run_attention(Shape(n=64, d=1536, heads=12, precision="int8"))
        for i in range(STEPS):
            shape = Shape(n=1, d=1536, kv_len=64 + i, heads=12, precision="int8")
            for _ in range(LAYERS):
                sched.run_attention(shape)
            if i == STEPS // 2:
                failed = sched.decide("qkv", shape)
                sched.observe(failed, None, ok=False, error="timeout")
                sched.decide("attn", shape)  # no outcome
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def strict_json(text):
    def no_constant(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=no_constant)


def test_summary_counts_percentiles_failures_and_missing_outcomes(log_db):
    report = load_report(log_db)
    total = (1 + STEPS * LAYERS) * 2 + 2
    assert sum(s.decisions for s in report.summaries) == total
    assert sum(s.failed for s in report.summaries) == 1
    assert sum(s.no_outcome for s in report.summaries) == 1
    assert report.dropped == 0 and report.selected_runs == [1] and report.explore_budget == 0.005
    for s in report.summaries:
        assert s.p50_ms <= s.p95_ms <= s.p99_ms
        assert s.stage in ("qkv", "attn") and s.backend in ("gpu", "npu", "cpu")


def test_windows_partition_the_decisions(log_db):
    report = load_report(log_db, window_s=0.01)
    assert report.windows
    assert sum(s.decisions for w in report.windows for s in w.summaries) == sum(s.decisions for s in report.summaries)
    starts = [w.start for w in report.windows]
    assert starts == sorted(starts)


def test_json_output_is_strict_and_keeps_its_keys(log_db, capsys):
    code, out, _ = run(capsys, "report", "--db", log_db, "--output", "json", "--window", "60s")
    data = strict_json(out)
    assert code == 0 and data["runs"] == 1 and data["failed"] == 1 and data["no_outcome"] == 1
    assert all({"decisions", "p50_ms", "p95_ms", "p99_ms"} <= set(r) for r in data["by_stage_backend"])
    assert data["windows"] and data["windows"][0]["seconds"] == 60.0


def test_terminal_report_shows_percentiles_and_the_window_view(log_db, capsys):
    code, out, _ = run(capsys, "report", "--db", log_db, "--window", "1m")
    assert code == 0
    assert "p99 ms" in out and "failed: 1, without an outcome: 1" in out and "per 1m window" in out


def test_plots_open_have_the_size_are_not_blank_and_are_all_linked(log_db, tmp_path, capsys):
    from adaptive_sched.offline.plots import FIGURE_PX, FIGURES

    out_dir = tmp_path / "rep"
    code, out, _ = run(capsys, "report", "--db", log_db, "--out", out_dir, "--quiet")
    assert code == 0
    md = (out_dir / "report.md").read_text()
    for name in FIGURES:
        with PIL.open(out_dir / name) as image:
            assert image.size == FIGURE_PX
            pixels = np.asarray(image.convert("L"), dtype=float)
        assert pixels.var() > 100.0, f"{name} looks blank"
        assert f"]({name})" in md
        assert str(out_dir / name) in out
    assert "p99 ms" in md and "estimated from logged predictions" in (out_dir / "cumulative.png").name + md


def test_an_existing_report_is_not_overwritten_unless_asked(log_db, tmp_path, capsys):
    out_dir = tmp_path / "rep"
    out_dir.mkdir()
    mine = out_dir / "report.md"
    mine.write_text("my notes")
    code, _, err = run(capsys, "report", "--db", log_db, "--out", out_dir)
    assert code == 1 and "report.md" in err and mine.read_text() == "my notes"
    assert not (out_dir / "latency.png").exists()
    code, _, _ = run(capsys, "report", "--db", log_db, "--out", out_dir, "--overwrite", "-q")
    assert code == 0 and mine.read_text().startswith("# Decision log report")


def test_static_prior_and_single_backends_are_estimated_from_predictions(log_db):
    from adaptive_sched.offline.plots import counterfactual_totals

    report = load_report(log_db, series=True)
    totals = counterfactual_totals(report.series)
    observed = totals.pop("observed (this run)")
    assert set(totals) == {f"{b} (estimated from logged predictions)" for b in ("static prior", "gpu-only", "npu-only")}
    s = report.series
    assert observed[-1] == pytest.approx(np.nansum(s.latency_s))
    gpu = s.predicted["gpu"]
    assert np.isfinite(gpu).all()  # never quarantined here: the estimate is the plain sum
    assert totals["gpu-only (estimated from logged predictions)"][-1] == pytest.approx(gpu.sum())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--window", "soon"], "--window"),
        (["--since", "yesterday"], "--since"),
        (["--run", "1", "--since", "0"], "--run"),
    ],
)
def test_bad_selections_are_usage_errors_naming_the_option(log_db, capsys, argv, message):
    code, _, err = run(capsys, "report", "--db", log_db, *argv)
    assert code == 2 and message in err


def test_an_unknown_run_names_the_runs_there(log_db, capsys):
    code, _, err = run(capsys, "report", "--db", log_db, "--run", "7")
    assert code == 1 and "no run 7" in err and "runs: 1" in err


def test_durations_and_times_parse():
    assert parse_duration("2h") == 7200.0
    assert parse_time("1970-01-01T00:01:00") == 60.0
    with pytest.raises(ValueError, match="duration"):
        parse_duration("-5s")


def test_the_summary_does_not_import_matplotlib():
    code = "import sys, adaptive_sched.cli.report, adaptive_sched.offline.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_plots_take_the_last_run_unless_told(tmp_path):
    path = tmp_path / "two.db"
    config = load_config("rk3588-sim")
    for steps in (3, 5):
        with Scheduler(config, db=path) as sched:
            for i in range(steps):
                sched.run_attention(Shape(n=1, d=1536, kv_len=64 + i, heads=12, precision="int8"))
    assert load_report(path).selected_runs == [1, 2]
    last = load_report(path, series=True)
    assert last.selected_runs == [2] and len(last.series) == 5 * 2
    first = load_report(path, run=1, series=True)
    assert first.selected_runs == [1] and len(first.series) == 3 * 2


def test_a_log_without_a_single_latency_still_renders_without_warnings(tmp_path):
    import warnings

    from adaptive_sched.offline.plots import FIGURES, write_report

    path = tmp_path / "bare.db"
    shape = Shape(n=1, d=1536, kv_len=10, heads=12, precision="int8")
    with Scheduler(load_config("rk3588-sim"), db=path) as sched:
        sched.observe(sched.decide("qkv", shape), None, ok=False, error="boom")
        sched.decide("attn", shape)
    report = load_report(path, series=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = write_report(report, tmp_path / "rep")
    assert [p.name for p in written] == [*FIGURES, "report.md"]


def test_the_series_carries_the_telemetry_logged_with_the_decisions(log_db):
    s = load_report(log_db, series=True).series
    for backend in ("gpu", "npu"):
        temp, clock = s.telemetry[f"{backend}_temp_c"], s.telemetry[f"{backend}_clock"]
        assert len(temp) == len(s) and np.isfinite(temp).all() and (temp >= 20).all()
        assert ((clock > 0) & (clock <= 1)).all()
        load = s.telemetry[f"{backend}_load"]  # the simulated device's background load
        assert len(load) == len(s) and ((load >= 0) & (load <= 1)).all()
