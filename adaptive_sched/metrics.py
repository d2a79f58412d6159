"""Live metrics for services: a Prometheus text exposition of a scheduler.

Two kinds of series:

* from :meth:`Scheduler.stats` at each scrape: observations, failures, re-runs,
  learning errors, unlearned observations, what each backend was observed doing, which
  backends are quarantined, drift alarms, the share of latency spent exploring, and the
  decision log's counters (rows written, dropped, errors, queue depth);
* per outcome, through :meth:`Scheduler.add_observer` (O(1), on the thread that
  reports the outcome, never on ``decide``): decisions with an outcome, failures and a
  latency histogram per (stage, backend). These count from the moment the scheduler's
  metrics are first asked for (:func:`metrics_for`, :func:`exposition` or
  :func:`start_metrics_server`): ask right after building the scheduler.

Needs ``prometheus-client`` (the ``metrics`` extra).

Examples
--------
>>> from adaptive_sched import Scheduler, Shape
>>> sched = Scheduler.from_config("rk3588-sim")
>>> _ = metrics_for(sched)
>>> _ = sched.run_attention(Shape(n=1, d=4096, kv_len=512, precision="int8"))
>>> text = exposition(sched).decode()
>>> 'adaptive_sched_stage_latency_seconds_count{backend="npu",stage="attn"} 1.0' in text
True
>>> sched.close()
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scheduler import Scheduler
    from .types import Decision

#: upper bounds (seconds) of the latency histogram: 50 us to 5 s, about x2.5 apart
LATENCY_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: stats() counter -> (metric name without the prefix, help)
_COUNTERS = {
    "observations": ("observations", "outcomes the scheduler learned from or queued to learn"),
    "unlearned": ("unlearned_observations", "observations skipped because the learner thread was behind"),
    "failures": ("failures", "stage runs that failed or timed out (the backend is quarantined)"),
    "reruns": ("reruns", "stages re-run on another backend after a failure"),
    "learn_errors": ("learn_errors", "observations the policy failed to learn from"),
}
#: log stats key -> (metric name without the prefix, help, counter?)
_LOG = {
    "enqueued": ("log_rows_enqueued", "rows handed to the decision log", True),
    "written": ("log_rows_written", "rows committed to the decision log", True),
    "dropped": ("log_rows_dropped", "rows dropped because the log's queue was full", True),
    "sampled_out": ("log_rows_sampled_out", "exploit rows left out by store.exploit_sample_rate", True),
    "errors": ("log_errors", "failed writes of the decision log", True),
    "queue_depth": ("log_queue_depth", "rows waiting to be written", False),
}


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        from .errors import AdaptiveSchedError

        raise AdaptiveSchedError(
            "metrics need prometheus-client, which is not installed: pip install 'adaptive-sched[metrics]'"
        ) from exc
    return prometheus_client


class SchedulerMetrics:
    """The metrics of one scheduler, in a registry of their own (:attr:`registry`)."""

    def __init__(self, scheduler: Scheduler) -> None:
        client = _client()
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self._counter, self._gauge = CounterMetricFamily, GaugeMetricFamily
        self._scheduler = weakref.ref(scheduler)
        self.registry = client.CollectorRegistry(auto_describe=True)
        labels = ("stage", "backend")
        self.decisions = client.Counter("adaptive_sched_decisions", "decisions whose outcome was reported, by stage "
                                        "and the backend chosen", labels, registry=self.registry)  # fmt: skip
        self.stage_failures = client.Counter("adaptive_sched_stage_failures", "decisions whose stage run failed or "
                                             "timed out", labels, registry=self.registry)  # fmt: skip
        self.latency = client.Histogram("adaptive_sched_stage_latency_seconds", "observed stage latency (warm runs)",
                                        labels, buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self._children: dict[tuple[Any, Any], tuple[Any, Any, Any]] = {}
        self.registry.register(_StatsCollector(self))
        scheduler.add_observer(self.observe)

    def observe(self, decision: Decision, latency_s: float | None, ok: bool) -> None:
        """Count one outcome (the scheduler calls this; see :meth:`Scheduler.add_observer`)."""
        key = (decision.stage, decision.backend)
        children = self._children.get(key)
        if children is None:
            # labels() takes a lock and builds its key on every call: look each child up once
            stage, backend = decision.stage.value, decision.backend.value
            children = self._children[key] = (
                self.decisions.labels(stage, backend),
                self.stage_failures.labels(stage, backend),
                self.latency.labels(stage, backend),
            )
        decisions, failures, latency = children
        decisions.inc()
        if not ok:
            failures.inc()
        elif latency_s is not None:
            latency.observe(latency_s)

    def stats_families(self) -> Iterator[Any]:
        """The series read from ``Scheduler.stats()`` (nothing once the scheduler is gone)."""
        sched = self._scheduler()
        if sched is None:
            return
        stats = sched.stats()
        counter, gauge = self._counter, self._gauge
        for key, (name, text) in _COUNTERS.items():
            if isinstance(stats.get(key), (int, float)):
                yield counter(f"adaptive_sched_{name}", text, value=stats[key])
        observed = counter("adaptive_sched_observed", "observations by backend", labels=["backend"])
        for backend, n in sorted(stats.get("observed_by_backend", {}).items()):
            observed.add_metric([backend], n)
        yield observed
        quarantined = gauge("adaptive_sched_quarantined", "1 while a backend is quarantined after failures",
                            labels=["backend"])  # fmt: skip
        for backend in sorted(b.value for b in sched.config.candidates):
            quarantined.add_metric([backend], 1.0 if backend in stats.get("quarantined", ()) else 0.0)
        yield quarantined
        policy = stats.get("policy", {})
        alarms = policy.get("drift_alarms")
        if isinstance(alarms, dict):
            family = counter("adaptive_sched_drift_alarms", "drift alarms and change points by backend",
                             labels=["backend"])  # fmt: skip
            for backend, n in sorted(alarms.items()):
                family.add_metric([backend], n)
            yield family
        if isinstance(policy.get("explore_share"), (int, float)):
            yield gauge("adaptive_sched_explore_share", "share of total latency recently spent exploring (ratio)",
                        value=policy["explore_share"])  # fmt: skip
        log_stats = stats.get("log")
        if isinstance(log_stats, dict):
            for key, (name, text, is_counter) in _LOG.items():
                value = log_stats.get(key)
                if isinstance(value, (int, float)):
                    yield (counter if is_counter else gauge)(f"adaptive_sched_{name}", text, value=value)


class _StatsCollector:
    def __init__(self, metrics: SchedulerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self._metrics.stats_families()


_BY_SCHEDULER: weakref.WeakKeyDictionary[Any, SchedulerMetrics] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def metrics_for(scheduler: Scheduler) -> SchedulerMetrics:
    """The metrics of ``scheduler`` (created, and its outcome hook attached, on the first call)."""
    with _LOCK:
        metrics = _BY_SCHEDULER.get(scheduler)
        if metrics is None:
            metrics = _BY_SCHEDULER[scheduler] = SchedulerMetrics(scheduler)
        return metrics


def exposition(scheduler: Scheduler) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of ``scheduler``'s metrics."""
    from prometheus_client import generate_latest

    return bytes(generate_latest(metrics_for(scheduler).registry))


def start_metrics_server(scheduler: Scheduler, port: int, addr: str = "127.0.0.1") -> Any:
    """Serve ``scheduler``'s metrics at ``http://addr:port/metrics`` from a daemon thread.

    Binds to the loopback address unless told otherwise. ``port`` 0 picks a free port.
    Returns the server: ``server.server_address`` says where it listens,
    ``server.shutdown()`` stops it.
    """
    client = _client()
    registry = metrics_for(scheduler).registry
    server, _thread = client.start_http_server(port, addr=addr, registry=registry)
    return server


__all__ = ["LATENCY_BUCKETS", "SchedulerMetrics", "exposition", "metrics_for", "start_metrics_server"]
