"""Candidates for offline replay: named baselines, and configs evaluated as the policy they would build.

A config file is a candidate exactly as a scheduler would run it on day one: the policy
of its ``policy`` section (:func:`~adaptive_sched.build.build_policy`), bound to its
backends and its offline prior (:func:`~adaptive_sched.build.load_prior`). A candidate
for another device than the log's is refused: its prior and backends describe other
hardware.

>>> cands = named_candidates(["gpu", "npu"])
>>> [c.name for c in cands]
['gpu-only', 'npu-only']
>>> named_candidates(["fastest"])
Traceback (most recent call last):
...
adaptive_sched.errors.ConfigError: --policies: unknown policy 'fastest' (known: static, adaptive, cpu, gpu, npu)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import Config, load_config
from ..errors import ConfigError
from ..paths import DEFAULT_CONFIG
from ..types import Backend
from .replay import Candidate, FixedCandidate, PolicyCandidate

#: names a replay accepts besides config files
NAMED = ("static", "adaptive", "cpu", "gpu", "npu")


def policy_candidate(config: Config, name: str, source: str = "", kind: str | None = None) -> PolicyCandidate:
    """The policy ``config`` would build (or the ``kind`` named), bound to its backends and prior.

    A ``kind`` other than the config's own policy kind is built with its default parameters.
    """
    from ..build import build_policy, load_prior
    from ..policies import policy_class

    if (kind or config.policy.kind) == "oracle":
        raise ConfigError(
            f"{source or name}: the oracle policy reads the simulator's true latencies; it cannot be replayed"
        )
    policy = build_policy(config) if kind in (None, config.policy.kind) else policy_class(kind)()
    policy.bind(config.candidates, load_prior(config))
    return PolicyCandidate(policy, name, source)


def config_candidate(path: str | Path, log_device: str | None = None, logs: Sequence[str] = ()) -> PolicyCandidate:
    """The candidate a config file describes, named after the file.

    A config for another device than ``log_device`` (the logs') is refused before its
    prior is loaded.
    """
    config = load_config(Path(path))
    check_device(config, str(path), log_device, logs)
    return policy_candidate(config, Path(path).stem, source=str(path))


def named_candidates(names: Sequence[str], config: Config | None = None) -> list[Candidate]:
    """The named baselines: ``static`` and ``adaptive`` as ``config`` (default: the embedded one) builds them."""
    out: list[Candidate] = []
    for name in names:
        if name in ("cpu", "gpu", "npu"):
            out.append(FixedCandidate(Backend(name)))
        elif name in ("static", "adaptive"):
            config = config or load_config(DEFAULT_CONFIG)
            out.append(policy_candidate(config, name, kind=name))
        else:
            raise ConfigError(f"--policies: unknown policy {name!r} (known: {', '.join(NAMED)})")
    return out


def check_device(config: Config, source: str, log_device: str | None, logs: Sequence[str]) -> None:
    """Refuse a candidate configured for another device than the one the logs were written on."""
    if log_device is not None and config.device != log_device:
        raise ConfigError(
            f"{source}: configured for device {config.device!r}, but {', '.join(logs)} "
            f"{'was' if len(logs) == 1 else 'were'} logged on {log_device!r}; "
            "replay a candidate on logs of its own device"
        )
