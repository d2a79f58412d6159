"""A backend of one's own plugs in as documented: ``executors=`` in code, or an entry point by name."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from adaptive_sched import Scheduler, Shape
from adaptive_sched.cli import main
from adaptive_sched.config import load_config
from adaptive_sched.errors import ConfigError
from adaptive_sched.executors import ENTRY_POINT_GROUP, executor_class, installed_executors
from adaptive_sched.stages import make_inputs, reference

README = Path(__file__).resolve().parents[1] / "README.md"

PLUGIN = textwrap.dedent("""
    import time

    from adaptive_sched.executors import Executor, RunResult
    from adaptive_sched.stages import reference


    class PluggedExecutor(Executor):
        kind = "plugged"
        OPTIONS = {"scale": "a number it checks"}

        def __init__(self, backend="npu", scale=1):
            super().__init__(backend, scale=scale)
            if not isinstance(scale, int) or scale < 1:
                raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
            self.runs = 0

        def _run(self, stage, shape, inputs, after):
            self.runs += 1
            start = time.perf_counter()
            out = reference(stage, shape, inputs)
            return RunResult(output=out, latency_s=max(time.perf_counter() - start, 1e-9))


    class NotAnExecutor:
        pass
""")


def test_the_readme_example_runs(capsys):
    text = README.read_text()
    block = text.split("### A backend of your own", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})
    assert capsys.readouterr().out.strip() == "(1, 1, 768) 0"


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An installed package registering two executor kinds in the entry point group."""
    (tmp_path / "plugged_pkg.py").write_text(PLUGIN)
    info = tmp_path / "plugged_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugged-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nplugged = plugged_pkg:PluggedExecutor\nbroken = plugged_pkg:NotAnExecutor\n"
        "missing = plugged_pkg_gone:Nothing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("plugged_pkg", None)


def plugged_config(tmp_path, options: str = "{scale: 2}") -> Path:
    path = tmp_path / "plugged.yaml"
    path.write_text(
        "device: my-board\npriors: none\n"
        f"backends:\n  npu: {{executor: plugged, options: {options}}}\n"
        "  cpu: {executor: cpu_numpy, role: fallback}\n"
    )
    return path


def test_an_installed_executor_is_named_in_yaml_and_runs(plugin):
    assert installed_executors()["plugged"] == "plugged_pkg:PluggedExecutor"
    config = load_config(plugged_config(plugin))
    shape = Shape(n=2, d=64, kv_len=3, heads=2)
    inputs = make_inputs("attn", shape)
    with Scheduler.from_config(config) as sched:
        run = sched.run_stage("attn", shape, inputs)
        assert run.backend.value == "npu" and sched.executors[run.backend].runs == 1
        np.testing.assert_array_equal(run.output, reference("attn", shape, inputs))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("{sclae: 2}", "backends.npu.options.sclae: not an option of executor 'plugged' (its options: scale)"),
        ("{scale: 0}", "backends.npu.options: scale must be an integer >= 1, got 0"),
    ],
)
def test_an_installed_executors_options_are_checked_at_load(plugin, options, message):
    path = plugged_config(plugin, options)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"


def test_a_broken_entry_point_is_a_config_error(plugin):
    with pytest.raises(ConfigError, match="'plugged_pkg:NotAnExecutor' is not an Executor subclass"):
        executor_class("broken")
    with pytest.raises(ConfigError, match="executor 'missing': cannot load"):
        executor_class("missing")
    with pytest.raises(ConfigError, match=r"unknown executor 'nope' \(known: broken, cpu_numpy, .*plugged"):
        executor_class("nope")


def test_the_cli_lists_and_checks_an_installed_executor(plugin, capsys):
    path = str(plugged_config(plugin))
    assert main(["executors", "--config", path, "--output", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["backend"], r["executor"], r["available"]) for r in rows} == {("npu", "plugged", True),
                                                                              ("cpu", "cpu_numpy", True)}  # fmt: skip
    assert main(["check", "--config", path, "--output", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert any(r["executor"] == "plugged" and r["status"] == "passed" for r in results)
    assert not any(r["status"] == "failed" for r in results)
