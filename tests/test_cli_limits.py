"""Invalid argument values are usage errors (exit 2) naming the argument, for every verb."""

from __future__ import annotations

import pytest

from adaptive_sched.cli import main


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["stress", "--seconds", "-1"], "--seconds"),
        (["stress", "--seconds", "0"], "--seconds"),
        (["stress", "--seconds", "nan"], "--seconds"),
        (["stress", "--seconds", "inf"], "--seconds"),
        (["stress", "--workers", "0"], "--workers"),
        (["stress", "--workers", "-3"], "--workers"),
        (["stress", "--workers", "two"], "--workers"),
        (["stress", "--target", "gpu"], "--target"),
        (["executors", "--output", "xml"], "--output"),
        (["check", "--output", "xml"], "--output"),
        (["run", "--layers", "0"], "--layers"),
        (["run", "--tokens", "-1"], "--tokens"),
        (["run", "--prompt", "x"], "--prompt"),
        (["decide", "--stage", "qkv", "--n", "0", "--d", "64"], "--n"),
        (["train", "--db", "p.db", "--qkv-model", "nope"], "--qkv-model"),
        (["profile", "--db", "p.db", "--repetitions", "0"], "--repetitions"),
    ],
)
def test_bad_argument_values_exit_2_naming_the_argument(capsys, argv, named):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["executors", "check"])
def test_a_config_that_does_not_exist_or_is_invalid_exits_2_naming_it(capsys, tmp_path, verb):
    assert main([verb, "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: x\nbackends:\n  cpu:\n    executor: cpu_numpy\n    options: {thredas: 4}\npriors: none\n")
    assert main([verb, "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "backends.cpu.options.thredas" in err
