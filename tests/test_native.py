"""The compiled latency model: it learns exactly what its source learns, and is never used stale."""

from __future__ import annotations

import doctest
import importlib.machinery
import math
import os
import random
import subprocess
import sys
import textwrap

import pytest

from adaptive_sched.learners import latency as current
from adaptive_sched.learners import native
from adaptive_sched.types import Backend, Shape, Stage

COMPILED = native.status()["build"] == "compiled"


def _drive(module, steps: int = 6000, seed: int = 3) -> list[tuple[float, ...]]:
    """Feed one model a stream with noise, 8x spikes, a slowdown and a clock step; record what it says."""
    rng = random.Random(seed)
    model = module.LatencyModel(module.ModelParams())
    shapes = [Shape(n=n, d=d, kv_len=kv, precision=p) for n in (1, 64) for d in (1024, 4096)
              for kv in (100, 1500) for p in ("fp16", "int8")]  # fmt: skip
    out: list[tuple[float, ...]] = []
    for clock in range(1, steps + 1):
        stage = Stage.QKV if clock % 2 else Stage.ATTN
        backend = Backend.GPU if rng.random() < 0.6 else Backend.NPU
        shape = rng.choice(shapes)
        group, phi = module.stage_features(stage, shape)
        bucket = (shape.d, shape.n, shape.kv_len.bit_length())
        slow = 0.9 if backend is Backend.NPU and clock > steps // 2 else 0.0
        log_t = -7.0 + 0.3 * phi[1] + slow + rng.gauss(0.0, 0.1) + (math.log(8) if rng.random() < 0.02 else 0.0)
        if clock == steps // 3:
            model.set_clocks({Backend.GPU: 0.6, Backend.NPU: None})
        learned = model.observe(stage, backend, group, phi, bucket, -7.0, log_t, clock)
        est = model.estimate(stage, backend, group, phi, bucket)
        out.append((*learned, est.mean, est.var(clock), float(model.volatile(backend, clock)),
                    *model.reversion(backend, clock)))  # fmt: skip
    out.append(tuple(sorted(model.alarms.values())) + tuple(sorted(model.changes.values())))
    return out


@pytest.mark.skipif(not COMPILED, reason="the latency model is not compiled here (see setup.py)")
def test_the_compiled_model_learns_exactly_what_its_source_learns():
    source = native.load_sources(register=False)
    assert current.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert source["latency"].__file__.endswith("latency.py")
    assert _drive(current) == _drive(source["latency"])


def test_the_sources_doctests_pass():
    # the compiled modules' doctests are not collected (conftest.py): they run here, from the source
    for name, module in native.load_sources(register=False).items():
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, name
        assert result.attempted > 0 or name == "latency_terms"


def test_loading_the_sources_to_compare_leaves_the_running_build_alone():
    before = {name: sys.modules[f"adaptive_sched.learners.{name}"] for name in native.NATIVE}
    native.load_sources(register=False)
    assert {name: sys.modules[f"adaptive_sched.learners.{name}"] for name in native.NATIVE} == before


def _select_in_a_fresh_process(patch: str) -> str:
    """Run ``native.select()`` again in a new interpreter after ``patch``; return what it printed."""
    script = textwrap.dedent(
        """
        import warnings
        from pathlib import Path
        from adaptive_sched.learners import native
        {patch}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build = native.select()
        import adaptive_sched.learners.latency as latency
        from adaptive_sched import Scheduler, Shape
        from adaptive_sched.config import load_config
        with Scheduler(load_config("rk3588-sim")) as sched:
            d = sched.decide("qkv", Shape(n=1, d=2048, kv_len=128))
            sched.observe(d, 1e-3)
        print(build, native.status()["reason"], Path(latency.__file__).suffix, sep="|")
        print(*[str(w.message) for w in caught], sep="|")
        """
    ).format(patch=patch)
    env = {k: v for k, v in os.environ.items() if k != native.PURE_PYTHON}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          check=True)  # fmt: skip
    return done.stdout


def test_a_compiled_build_whose_source_changed_is_not_used(tmp_path):
    digests = tmp_path / "digests.json"
    digests.write_text('{"latency_terms": "0", "latency": "0"}')
    out = _select_in_a_fresh_process(
        f"native._DIGESTS = Path({str(digests)!r})\n"
        "native._compiled_file = lambda name: Path('compiled.so')  # as if built"
    )
    first, warning = out.splitlines()
    assert first == "source|latency_terms.py, latency.py changed since the build|.py"
    assert "not used" in warning and "pip install -e ." in warning


def test_a_build_that_compiled_one_module_of_two_is_not_used():
    out = _select_in_a_fresh_process(
        "native._compiled_file = lambda name: Path('compiled.so') if name == 'latency' else None"
    )
    assert out.splitlines()[0] == "source|only latency compiled|.py"


def test_without_a_compiled_build_the_source_runs_quietly():
    out = _select_in_a_fresh_process("native._compiled_file = lambda name: None")
    first, warning = out.splitlines()
    assert first.startswith("source|not compiled|")
    assert warning == ""


def test_the_environment_can_ask_for_the_source():
    out = _select_in_a_fresh_process(
        "import os\n"
        "os.environ[native.PURE_PYTHON] = '1'\n"
        "native._compiled_file = lambda name: Path('compiled.so')  # as if built"
    )
    first, warning = out.splitlines()
    assert first == "source|ADAPTIVE_SCHED_PURE_PYTHON is set|.py"
    assert warning == ""


def test_the_version_says_which_build_runs():
    done = subprocess.run([sys.executable, "-m", "adaptive_sched", "--version"], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    name, build = done.stdout.splitlines()
    assert name.startswith("adaptive-sched ")
    here = native.status()  # the same environment: the same build
    expected = "compiled by mypyc" if COMPILED else f"Python source ({here['reason']})"
    assert build == f"latency model: {expected}"
