"""Policies: who picks the backend of each stage.

=================  ==================================================================
``adaptive``       the contextual bandit over the offline priors (:mod:`.adaptive`)
``static``         the paper's selector: the offline classifier per stage
``fixed``          one backend for everything (GPU-only, NPU-only)
``epsilon``        epsilon-greedy on observed means, no priors
``oracle``         knows the true current latencies (simulator and benchmarks only)
=================  ==================================================================

Every policy keeps the contract of :class:`~.base.Policy`, declares its parameters as a
``Params`` dataclass beside its class, and passes the conformance suite in :mod:`.checks`.

>>> make_policy("epsilon", epsilon=0.1).params.epsilon
0.1
>>> make_policy("bogus")
Traceback (most recent call last):
...
ValueError: unknown policy 'bogus' (known: adaptive, epsilon, fixed, oracle, static)
"""

from __future__ import annotations

from typing import Any

from ..buckets import bucket_key
from .adaptive import AdaptiveParams, AdaptivePolicy
from .base import Entry, Observation, Policy, Prior, PublishedTable
from .baselines import EpsilonGreedyPolicy, FixedPolicy, OraclePolicy, StaticPriorPolicy

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (AdaptivePolicy, StaticPriorPolicy, FixedPolicy, EpsilonGreedyPolicy, OraclePolicy)
}


def policy_class(kind: str) -> type[Policy]:
    """The class registered under ``kind``; an unknown kind is a ``ValueError`` listing the known ones."""
    try:
        return POLICIES[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown policy {kind!r} (known: {', '.join(sorted(POLICIES))})") from None


def make_policy(kind: str, /, **params: Any) -> Policy:
    """A policy by kind name with its parameters (the oracle also takes ``expected_latency``)."""
    cls = policy_class(kind)
    extra = {k: params.pop(k) for k in ("expected_latency",) if k in params}
    return cls(cls.Params(**params), **extra) if extra else cls(cls.Params(**params))


__all__ = [
    "POLICIES",
    "AdaptiveParams",
    "AdaptivePolicy",
    "Entry",
    "EpsilonGreedyPolicy",
    "FixedPolicy",
    "Observation",
    "OraclePolicy",
    "Policy",
    "Prior",
    "PublishedTable",
    "StaticPriorPolicy",
    "bucket_key",
    "make_policy",
    "policy_class",
]
