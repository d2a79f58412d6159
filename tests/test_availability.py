"""Honest availability: no decision names a backend that cannot run here, or a shape nothing runs."""

import json

import pytest

from adaptive_sched import Scheduler, Shape
from adaptive_sched.cli import main
from adaptive_sched.errors import ExecutorUnavailable
from adaptive_sched.types import Backend

from .conftest import ScriptedExecutor, TablePrior, base_config

GPU, NPU = Backend.GPU, Backend.NPU
SHAPE = Shape(n=1, d=128, kv_len=6, heads=2)
# The prior holds the GPU far faster: only availability keeps decisions off it.
TABLE = {("qkv", "gpu"): 1e-4, ("qkv", "npu"): 2e-3, ("attn", "gpu"): 1e-4, ("attn", "npu"): 2e-3}


class Missing(ScriptedExecutor):
    kind = "missing"

    def _probe(self):
        return "no such device on this host"


def test_decide_never_returns_an_unavailable_backend_and_says_what_was_usable():
    ex = {"gpu": Missing(GPU, lambda *a: 1e-4), "npu": ScriptedExecutor(NPU, lambda *a: 2e-3)}
    with Scheduler.from_config(base_config(), executors=ex, prior=TablePrior(TABLE)) as sched:
        assert sched.usable == (NPU,)
        assert "no such device" in sched.unavailable[GPU]
        decisions = [sched.decide(stage, SHAPE) for stage in ("qkv", "attn") for _ in range(500)]
        assert {d.backend for d in decisions} == {NPU}
        assert all(d.usable == (NPU,) for d in decisions)


def test_no_usable_backend_names_each_and_why():
    ex = {"gpu": Missing(GPU, lambda *a: 1e-4), "npu": Missing(NPU, lambda *a: 2e-3)}
    with pytest.raises(ExecutorUnavailable, match=r"gpu \(missing: no such device.*npu \(missing: no such"):
        Scheduler.from_config(base_config(), executors=ex, prior=TablePrior(TABLE))


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_decide_without_usable_backend_fails_with_each_reason(capsys, tmp_path):
    db = tmp_path / "log.db"
    argv = ["decide", "-c", "rk3588", "--db", str(db), "--stage", "qkv", "--n", "1", "--d", "4096"]
    code, out, err = _cli(capsys, *argv)
    assert code == 1 and not out
    assert "gpu (gpu_opencl:" in err and "npu (npu_rknn:" in err
    assert not db.exists()  # nothing was logged, nothing created


def test_cli_executors_and_check_exit_1_without_usable_backend(capsys):
    code, out, err = _cli(capsys, "executors", "-c", "rk3588", "-o", "json")
    assert code == 1 and "no candidate backend is usable" in err
    assert {e["backend"]: e["available"] for e in json.loads(out)}["gpu"] is False
    code, _, err = _cli(capsys, "check", "-c", "rk3588")
    assert code == 1 and "no candidate backend is usable" in err


def test_cli_decide_reports_usable_backends(capsys):
    code, out, _ = _cli(capsys, "decide", "--stage", "qkv", "--n", "1", "--d", "4096", "-o", "json")
    data = json.loads(out)
    assert code == 0 and data["usable"] == ["gpu", "npu"] and data["backend"] in data["usable"]
    assert data["unavailable"] == {}


def test_cli_decide_beyond_every_executor_is_unsupported(capsys):
    code, out, err = _cli(capsys, "decide", "--stage", "qkv", "--n", "1", "--d", "1000000000")
    assert code == 1 and not out
    assert "unsupported" in err and "gpu:" in err and "npu:" in err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--n", "0", "--d", "64"], "--n"),
        (["--n", "1", "--d", "-3"], "--d"),
        (["--n", "1", "--d", "64", "--kv-len", "-1"], "--kv-len"),
        (["--n", "1", "--d", "64", "--batch", "x"], "--batch"),
        (["--n", "1", "--d", "4096", "--heads", "3"], "--heads"),
    ],
)
def test_cli_decide_bad_shape_arguments_exit_2_naming_the_argument(capsys, argv, named):
    try:
        code = main(["decide", "--stage", "qkv", *argv])
    except SystemExit as exc:  # argparse's own exit, for a value its type refuses
        code = exc.code
    assert code == 2
    assert f"argument {named}" in capsys.readouterr().err
