"""The benchmarks' ``--seeds`` option: lists and ranges, and a clear error for anything else; their
``--scenarios``: an unknown name is refused, naming the known ones."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from worlds import parse_seeds


@pytest.mark.parametrize(
    ("text", "seeds"),
    [
        ("0", [0]),
        ("0,1,2", [0, 1, 2]),
        ("0-4", [0, 1, 2, 3, 4]),
        ("0-2,9", [0, 1, 2, 9]),
        (" 3 , 5-6 ", [3, 5, 6]),
        ("1-3,2-4", [1, 2, 3, 4]),  # each seed once
        ("7-7", [7]),
    ],
)
def test_lists_and_ranges(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "1,,2", "3-1", "1-", "-1", "1.5", "0-x"])
def test_anything_else_is_refused_naming_the_option(text):
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds(text)


def test_the_telemetry_benchmark_refuses_an_unknown_scenario_naming_the_known_ones(capsys, monkeypatch):
    import bench_telemetry

    monkeypatch.setattr(sys, "argv", ["bench_telemetry.py", "--scenarios", "sim-periodic,npu-melts"])
    with pytest.raises(SystemExit):
        bench_telemetry.main()
    err = capsys.readouterr().err
    assert "--scenarios: unknown npu-melts" in err
    assert "sim-periodic" in err and "gpu-contention" in err
