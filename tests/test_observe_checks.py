"""Observations are validated: each decision at most once, only this scheduler's, plausible latencies."""

from __future__ import annotations

import logging

import pytest

import adaptive_sched.counters as counters_module
from adaptive_sched import Scheduler, Shape
from adaptive_sched.errors import ObservationRefused
from adaptive_sched.observed import ObservedIds
from adaptive_sched.types import Backend

from .conftest import TablePrior, base_config

GPU, NPU = Backend.GPU, Backend.NPU
SHAPE = Shape(n=1, d=128, kv_len=6, heads=2)
TABLE = {("qkv", "gpu"): 1e-3, ("qkv", "npu"): 2e-3, ("attn", "gpu"): 1e-3, ("attn", "npu"): 2e-3}


def make(db=None, **cfg) -> Scheduler:
    return Scheduler.from_config(base_config(**cfg), db=db, prior=TablePrior(TABLE))


@pytest.mark.parametrize("logged", [False, True])
def test_a_decision_is_observed_at_most_once(tmp_path, logged):
    with make(db=tmp_path / "log.db" if logged else None) as sched:
        d = sched.decide("qkv", SHAPE)
        sched.observe(d, 1e-3)
        with pytest.raises(ObservationRefused, match=f"decision {d.id} was observed before"):
            sched.observe(d, 1e-3)
        with pytest.raises(ObservationRefused):
            sched.observe(d, None, ok=False, error="x")
        failed = sched.decide("qkv", SHAPE)
        sched.observe(failed, None, ok=False, error="device lost")
        with pytest.raises(ObservationRefused):
            sched.observe(failed, 1e-3)
        stats = sched.stats()
        assert stats["observations"] == 1 and stats["refused"] == {"duplicate": 3}
        if logged:
            sched.flush()
            assert sched.stats()["log"]["duplicates"] == 0  # the refused ones never reached the log


def test_only_decisions_of_this_scheduler_are_accepted(tmp_path):
    # Told apart by the upper bits of their ids: a random tag without a log, the run's id with one
    # (so two schedulers on one log file differ; on two files, both in their first run, they do not).
    with make() as a, make() as b, make(db=tmp_path / "a.db") as c, make(db=tmp_path / "a.db") as d:
        for mine, other in ((a, b), (c, d), (a, c)):
            theirs = other.decide("qkv", SHAPE)
            with pytest.raises(ObservationRefused, match="not a decision of this scheduler"):
                mine.observe(theirs, 1e-3)
            assert mine.stats()["refused"]["foreign"] >= 1
            other.observe(theirs, 1e-3)  # still good where it came from


def test_implausible_latencies_are_refused_counted_and_never_learned():
    with make(policy={"kind": "adaptive", "seed": 1, "max_latency_s": 10.0}) as sched:
        before = sched.online_choice("qkv", SHAPE)
        for _ in range(20):
            d = sched.decide("qkv", SHAPE)
            with pytest.raises(ObservationRefused, match=r"latency above policy.max_latency_s \(1e\+09 s > 10 s\)"):
                sched.observe(d, 1e9)
        stats = sched.stats()
        assert stats["refused"] == {"implausible": 20} and stats["observations"] == 0
        assert sched.online_choice("qkv", SHAPE) is before


def test_implausible_latencies_in_a_log_are_not_learned_at_warm_start(tmp_path):
    db = tmp_path / "log.db"
    with make(db=db, policy={"kind": "adaptive", "seed": 1, "max_latency_s": 1e301}) as sched:
        for _ in range(30):
            d = sched.decide("qkv", SHAPE)
            sched.observe(d, 1e300)
        assert sched.stats()["observations"] == 30  # this one was told such latencies are plausible
    with make(db=db) as sched:
        stats = sched.stats()
        assert stats["warm_start_refused"] == 30 and stats["observations"] == 0


def test_a_failure_observed_by_the_caller_is_counted_and_its_warnings_rate_limited(caplog, monkeypatch):
    monkeypatch.setattr(counters_module, "WARN_EVERY_S", 3600.0)  # one warning per backend in this test
    caplog.set_level(logging.WARNING)
    with make() as sched:
        for _ in range(1000):
            d = sched.decide("qkv", SHAPE)
            sched.observe(d, None, ok=False, error="driver reset")
        assert sched.stats()["failures"] == 1000
        quarantine_warnings = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
        assert len(quarantine_warnings) == len({m.split()[1] for m in quarantine_warnings}) <= 2  # per backend
        for _ in range(5):
            with pytest.raises(ObservationRefused):
                sched.observe(d, 1e-3)
        assert sum("observation refused" in r.getMessage() for r in caplog.records) == 1
        assert sched.stats()["refused"] == {"duplicate": 5}


def test_after_must_be_a_decision_of_the_other_stage():
    with make() as sched:
        dq = sched.decide("qkv", SHAPE)
        with pytest.raises(ValueError, match="after: a decision of the previous stage is expected, got one of qkv"):
            sched.decide("qkv", SHAPE, after=dq)
        da = sched.decide("attn", SHAPE, after=dq)
        with pytest.raises(ValueError, match="got one of attn"):
            sched.decide("attn", SHAPE, after=da)
        assert sched.decide("qkv", SHAPE, after=da).after is da.backend  # the next layer's qkv


def test_observed_ids_are_bounded_and_tell_stale_ids():
    ids = ObservedIds(base=(5 << 32) | 1, bits=3)  # 8 slots
    first = (5 << 32) | 1
    assert ids.mark(first) is None and ids.mark(first) == "duplicate"
    assert ids.mark(first + 8) is None  # the same slot, one lap later
    assert ids.mark(first) == "stale"  # cannot tell any more: refused, not learned twice
    assert ids.mark(first + 1) is None  # an id left unobserved for a lap is still accepted once
    assert ids.mark(first - 1) == "foreign" and ids.mark((6 << 32) | 1) == "foreign"
