import urllib.request

import pytest

from adaptive_sched import Scheduler, Shape

pytest.importorskip("prometheus_client", reason="the metrics extra")
from prometheus_client.parser import text_string_to_metric_families

from adaptive_sched.metrics import exposition, metrics_for, start_metrics_server

SHAPE = Shape(n=1, d=4096, kv_len=512, heads=32, precision="int8")


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def sched(tmp_path):
    with Scheduler.from_config("rk3588-sim", db=tmp_path / "log.db") as s:
        metrics_for(s)
        yield s


def test_scraped_over_http_the_counters_match_the_scheduler(sched):
    runs = [sched.run_attention(SHAPE) for _ in range(20)]
    failed = sched.decide("qkv", SHAPE)
    sched.observe(failed, None, ok=False, error="timeout")
    server = start_metrics_server(sched, 0)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.status == 200
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    got = samples(text)
    chosen = {}
    for run in runs:
        for stage_run in (run.qkv, run.attn):
            key = (stage_run.decision.stage.value, stage_run.backend.value)
            chosen[key] = chosen.get(key, 0) + 1
    for (stage, backend), n in chosen.items():
        labels = (("backend", backend), ("stage", stage))
        failed_here = int((stage, backend) == ("qkv", failed.backend.value))
        assert got[("adaptive_sched_decisions_total", labels)] == n + failed_here
        assert got[("adaptive_sched_stage_latency_seconds_count", labels)] == n
        assert got[("adaptive_sched_stage_latency_seconds_bucket", (*labels[:1], ("le", "+Inf"), *labels[1:]))] == n
    assert got[("adaptive_sched_stage_failures_total", (("backend", failed.backend.value), ("stage", "qkv")))] == 1
    stats = sched.stats()
    assert got[("adaptive_sched_observations_total", ())] == stats["observations"]
    assert got[("adaptive_sched_quarantined", (("backend", failed.backend.value),))] == 1.0
    assert ("adaptive_sched_log_rows_dropped_total", ()) in got
    assert ("adaptive_sched_drift_alarms_total", (("backend", "gpu"),)) in got


def test_the_latency_histogram_sums_the_observed_latencies(sched):
    runs = [sched.run_attention(SHAPE) for _ in range(5)]
    got = samples(exposition(sched).decode())
    total = sum(r.latency_s for r in runs)
    summed = sum(v for (name, _), v in got.items() if name == "adaptive_sched_stage_latency_seconds_sum")
    assert summed == pytest.approx(total)


def test_one_registry_per_scheduler_and_asking_twice_counts_once(sched):
    assert metrics_for(sched) is metrics_for(sched)
    sched.run_attention(SHAPE)
    got = samples(exposition(sched).decode())
    assert sum(v for (name, _), v in got.items() if name == "adaptive_sched_decisions_total") == 2


def test_a_failing_observer_never_reaches_the_caller(sched):
    def broken(decision, latency_s, ok):
        raise RuntimeError("observer bug")

    sched.add_observer(broken)
    sched.run_attention(SHAPE)  # does not raise
    d = sched.decide("qkv", SHAPE)
    sched.observe(d, 0.001)
    assert sched.stats()["observations"] == 3
