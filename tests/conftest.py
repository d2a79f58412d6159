"""Shared test helpers: scripted executors and priors with known latencies."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pytest

from adaptive_sched.executors.base import Executor, RunResult
from adaptive_sched.stages import reference
from adaptive_sched.types import Backend, Shape, Stage, parse_stage

LatencyFn = Callable[[Stage, Shape, Backend | None], float]


class ScriptedExecutor(Executor):
    """Computes the reference output and reports a scripted latency; can be told to fail."""

    kind = "scripted"
    latency_only = True

    def __init__(self, backend: Backend | str, latency: LatencyFn, **options):
        super().__init__(backend=backend, **options)
        self.latency = latency
        self.fail_with: BaseException | None = None
        self.calls = 0

    def _run(self, stage, shape, inputs, after):
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        out = reference(stage, shape, inputs) if inputs is not None else None
        return RunResult(output=out, latency_s=self.latency(stage, shape, after))


class TablePrior:
    """A prior with fixed latencies per (stage, backend); ``choose`` picks the fastest."""

    name = "table"
    device = "test"
    content_hash = "0"

    def __init__(self, table: Mapping[tuple[str, str], float]):
        self.table = {(Stage(s), Backend(b)): v for (s, b), v in table.items()}
        self.backends = tuple(sorted({b for _, b in self.table}, key=lambda b: b.value))

    def latency(self, stage, shape):
        stage = parse_stage(stage)
        return {b: v for (s, b), v in self.table.items() if s is stage}

    def choose(self, stage, shape):
        est = self.latency(stage, shape)
        return min(est, key=est.__getitem__)

    def extrapolating(self, stage, shape):
        return False


def base_config(**overrides) -> dict:
    cfg = {
        "device": "test",
        "backends": {"gpu": "cpu_numpy", "npu": "cpu_numpy"},
        "priors": "none",
        "policy": {"kind": "adaptive", "seed": 1},
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path_factory, monkeypatch):
    # `decide` caches snapshots in the user's cache directory: keep tests out of the real one.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
