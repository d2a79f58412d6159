"""Config -> executors, prior, policy, log: the one place things are wired.

The scheduler, the offline tools, the command line and the benchmarks all build what a
config describes through these functions, so a config means the same thing everywhere.

>>> from adaptive_sched.config import load_config
>>> config = load_config("rk3588-sim")
>>> built = build_executors(config)
>>> sorted(b.value for b in built.executors), built.sim_device is not None
(['cpu', 'gpu', 'npu'], True)
>>> build_policy(config, built).name
'adaptive'
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .executors import Executor, create_executor
from .policies import Policy, policy_class
from .types import Backend, parse_backend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Executors:
    """The executors a config describes, and the simulated device they share (if any)."""

    executors: dict[Backend, Executor]
    #: the simulated device behind every ``executor: sim`` backend (None on real hardware)
    sim_device: Any = None


def build_executors(config: Config, given: Mapping[Backend | str, Executor] | None = None) -> Executors:
    """One executor per configured backend (or ``given`` ones), with a shared simulated device.

    Executors that are not available here are kept (the scheduler knows not to choose them)
    and a warning names each with its reason.
    """
    if given is not None:
        executors = {parse_backend(b): ex for b, ex in given.items()}
        # given simulated executors share one device: it is the one their telemetry comes from
        devices = {id(d): d for d in (ex.device for ex in executors.values() if ex.kind == "sim")}  # type: ignore[attr-defined]
        return Executors(executors, next(iter(devices.values())) if len(devices) == 1 else None)
    device = None
    executors = {}
    for backend, bc in config.backends.items():
        options = dict(bc.options)
        if bc.executor == "sim":
            if device is None:
                assert config.simulator is not None
                device = config.simulator.make_device()
            options["device"] = device
        executors[backend] = create_executor(bc.executor, backend=backend, **options)
    for backend, ex in executors.items():
        if not ex.is_available():
            log.warning("backend %s (%s) is not available: %s", backend.value, ex.kind, ex.unavailable_reason)
    return Executors(executors, device)


def load_prior(config: Config) -> Any:
    """The offline prior the config names (None for ``priors: none``)."""
    if config.priors in ("none", ""):
        return None
    from .store.prior_files import load_prior as _load

    source = config.priors if config.priors == "builtin" else config.resolve_path(config.priors)
    return _load(source, device=config.device)


def config_dependencies(config: Config) -> list[Path]:
    """The files besides the config itself that what it builds depends on: its prior and device profile.

    A decision cached for a config is stale once one of these changed.
    """
    out: list[Path] = []
    if config.priors == "builtin":
        from .store.prior_files import builtin_path

        out.append(builtin_path(config.device))
    elif config.priors not in ("none", ""):
        out.append(Path(config.resolve_path(config.priors)))
    if config.simulator is not None:
        from .errors import ConfigError
        from .paths import resolve_config

        with contextlib.suppress(ConfigError):  # building the simulator says what is wrong with it
            out.append(resolve_config(config.simulator.profile, "devices"))
    return out


def build_policy(config: Config, executors: Executors | None = None, **overrides: Any) -> Policy:
    """The policy of the config's ``policy`` section (unbound), with ``overrides`` of its parameters.

    The oracle takes its true latencies from the simulated device of ``executors``.
    """
    cls = policy_class(config.policy.kind)
    params = config.policy.resolved_params()
    if cls.name == "oracle":
        device = executors.sim_device if executors is not None else None
        if device is None:
            raise ValueError("the oracle policy needs a simulated device (executor: sim)")
        return cls(params, expected_latency=device.expected_latency, **overrides)
    return cls(params, **overrides)


def open_log(config: Config, path: str) -> Any:
    """The decision log at ``path`` with the config's ``store`` settings (queue, flushing, retention, sampling).

    Raises :class:`~adaptive_sched.errors.StoreError` for a file that is not ours or cannot be
    opened (nothing is written to it then).
    """
    from .store.retention import RetentionPolicy
    from .store.writer import DecisionLog

    s = config.store
    retention = None
    if s.retention.max_rows is not None or s.retention.max_age_days is not None:
        max_age = s.retention.max_age_days * 86400.0 if s.retention.max_age_days is not None else None
        retention = RetentionPolicy(max_rows=s.retention.max_rows, max_age_s=max_age,
                                    check_every_s=s.retention.check_every_s)  # fmt: skip
    return DecisionLog(
        path,
        queue_size=s.queue_size,
        flush_rows=s.flush_rows,
        flush_interval_s=s.flush_interval_s,
        on_full=s.on_full,
        retention=retention,
        exploit_sample_rate=s.exploit_sample_rate,
    )


def warm_start_rows(config: Config, path: str, limit: int) -> Any:
    """The ``limit`` most recent observed decisions of the config's device in the log at ``path``,
    with their latencies, oldest first: what a restarted scheduler learns from."""
    from .store.reads import recent_for_warm_start

    return recent_for_warm_start(path, device=config.device, limit=limit)


def build_telemetry(config: Config, sim_device: Any = None) -> Any:
    """The telemetry sampler the config describes (a ``telemetry.Sampler``), or None when disabled.

    A simulated device is sampled in its own virtual time, by whoever polls; a board's sysfs
    on a thread of its own (started here) in wall-clock time, unless nothing under its root
    is readable, when there is nothing to sample.
    """
    t = config.telemetry
    if not t.enabled:
        return None
    from .telemetry import Sampler, SimTelemetry, SysfsTelemetry

    if sim_device is not None:
        sampler = Sampler(SimTelemetry(sim_device), t.interval_s, t.max_age_s, clock=lambda: sim_device.now,
                          clock_interval_s=t.clock_interval_s)  # fmt: skip
        sampler.poll()  # the first decision is logged with a reading too
        return sampler
    source = SysfsTelemetry(config.resolve_path(t.root), t.zones, t.devfreq)
    source.discover()
    if not source.found_anything():
        log.debug("telemetry: nothing readable under %s", source.root)
        return None
    sampler = Sampler(source, t.interval_s, t.max_age_s, clock_interval_s=t.clock_interval_s)
    sampler.poll()
    sampler.start()
    return sampler
