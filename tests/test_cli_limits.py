"""Every invalid argument value of ``stress``, ``executors`` and ``check`` is a usage error (exit 2) naming it."""

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
    ],
)
def test_bad_argument_values_exit_2_naming_the_argument(capsys, argv, named):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert named in capsys.readouterr().err
