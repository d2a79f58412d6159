import argparse
import io
import logging
import sys

from adaptive_sched.cli.output import Progress, progress_for, render_table


def test_table_aligns_numbers_right_and_text_left():
    lines = render_table(["stage", "mean ms"], [["qkv", 12.5], ["attn", 0.25], ["x", "-"]]).splitlines()
    assert lines[0].split() == ["stage", "mean", "ms"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].startswith("qkv ") and lines[2].endswith("12.500")
    assert lines[3].endswith("0.250") and lines[4].endswith("-")
    assert len({len(line) for line in lines[:4]}) == 1  # aligned


def test_table_without_rows_has_its_header():
    assert render_table(["a", "b"], []).splitlines()[0].split() == ["a", "b"]


def test_progress_is_off_when_stderr_is_not_a_terminal_or_quiet(capsys):
    bar = Progress("run")  # pytest's stderr is not a terminal
    bar(1, 2)
    bar(2, 2)
    quiet = progress_for(argparse.Namespace(quiet=True), "run")
    quiet(1, 1)
    assert not bar.enabled and not quiet.enabled and capsys.readouterr().err == ""


def test_a_warning_during_the_bar_prints_whole_and_the_handler_gets_its_stream_back(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        bar = Progress("profile", enabled=True)
        bar(1, 4)
        assert handler.stream is not err  # routed through the bar while it is drawn
        logging.getLogger("adaptive_sched.test").warning("max_cached_weights reached")
        bar(4, 4)
        assert handler.stream is err
    finally:
        root.removeHandler(handler)
    text = err.getvalue()
    assert "max_cached_weights reached\n" in text and "profile" in text and "4/4" in text
