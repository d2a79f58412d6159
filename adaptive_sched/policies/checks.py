"""The conformance suite every policy passes: plain check functions over a policy factory.

Each check takes a factory (``seed -> unbound policy``) and raises ``AssertionError``
naming what broke. ``tests/test_policies.py`` runs every registered policy against every
check in one parametrized test, and a user can run them on a policy of their own:

>>> from adaptive_sched.policies import AdaptivePolicy, AdaptiveParams
>>> for check in CHECKS:
...     check(lambda seed: AdaptivePolicy(AdaptiveParams(seed=seed)))

The checks bind policies to a fixed prior over GPU and NPU (:class:`CheckPrior`) and feed
latencies from a fixed table, so a failure repeats.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType

from ..types import Backend, Shape, Stage
from .base import Observation, Policy

GPU, NPU, CPU = Backend.GPU, Backend.NPU, Backend.CPU
CANDIDATES = (GPU, NPU)

Factory = Callable[[int], Policy]

#: shapes a policy must answer: decode and prefill, tiny and huge, unusual widths and batches
SHAPES = (
    Shape(n=1, d=2048, kv_len=300, precision="int8"),
    Shape(n=1, d=4096, kv_len=0),
    Shape(n=128, d=1024),
    Shape(n=1, d=64, kv_len=1, heads=1),
    Shape(n=1, d=12288, kv_len=65_536, heads=96, precision="int8"),
    Shape(n=4096, d=5120, heads=40),
    Shape(n=3, d=1000, kv_len=7, batch=16, heads=8),
    Shape(n=1, d=896, kv_len=100_000, heads=14, batch=64, precision="int8"),
)


def truth(stage: Stage, shape: Shape, backend: Backend, after: Backend | None) -> float:
    """The latency (seconds) the checks feed back: the GPU faster at qkv, the NPU at attention."""
    base = 1e-3 if stage is Stage.QKV else 5e-4
    factor = {GPU: 1.0, NPU: 1.4, CPU: 3.0}[backend] if stage is Stage.QKV else {GPU: 1.5, NPU: 1.0, CPU: 3.0}[backend]
    handoff = 2e-4 if after is not None and after is not backend else 0.0
    return base * factor * (shape.d / 2048) + handoff


class CheckPrior:
    """A prior that believes :func:`truth` without the handoffs."""

    name = "checks"
    device = "checks"
    content_hash = "checks"
    backends: tuple[Backend, ...] = CANDIDATES

    def latency(self, stage: Stage | str, shape: Shape) -> Mapping[Backend, float]:
        s = Stage(stage)
        return {b: truth(s, shape, b, None) for b in CANDIDATES}

    def choose(self, stage: Stage | str, shape: Shape) -> Backend:
        est = self.latency(stage, shape)
        return min(est, key=est.__getitem__)

    def extrapolating(self, stage: Stage | str, shape: Shape) -> bool:
        return False


def bound(factory: Factory, seed: int = 0) -> Policy:
    policy = factory(seed)
    policy.bind(CANDIDATES, CheckPrior(), supports=None)
    return policy


def drive(policy: Policy, layers: int) -> Iterator[tuple[Stage, Shape, Backend | None, Backend]]:
    """Decide and learn ``layers`` layers (qkv then attn) over :data:`SHAPES`; yield every choice."""
    for i in range(layers):
        shape = SHAPES[i % 3]
        after: Backend | None = None
        for stage in (Stage.QKV, Stage.ATTN):
            choice = policy.choose(stage, shape, after)
            policy.learn(Observation(stage, shape, after, choice.backend, truth(stage, shape, choice.backend, after),
                                     choice))  # fmt: skip
            yield stage, shape, after, choice.backend
            after = choice.backend


# -- the checks ---------------------------------------------------------------------------
def check_choices_are_consistent(factory: Factory) -> None:
    """A Choice names a candidate, gives it its probability, and its probabilities sum to 1."""
    policy = bound(factory)
    for stage, shape, after, _ in drive(policy, 60):
        c = policy.choose(stage, shape, after)
        assert c.backend in CANDIDATES, f"chose {c.backend} outside the candidates"
        assert 0.0 < c.propensity <= 1.0, f"propensity {c.propensity}"
        assert math.isclose(sum(c.probabilities.values()), 1.0, abs_tol=1e-9), f"probabilities {dict(c.probabilities)}"
        assert math.isclose(c.probabilities[c.backend], c.propensity, abs_tol=1e-12), "propensity != probability"
        assert set(c.probabilities) <= set(CANDIDATES)
        assert dict(policy.probabilities(stage, shape, after)) == dict(c.probabilities), "probabilities() disagrees"
        if policy.table is not None:
            entry = policy.table.lookup(stage, shape, after)
            if entry is not None:
                assert dict(entry.exploit.probabilities) == dict(c.probabilities), "the published table disagrees"
        assert policy.best(stage, shape, after) in CANDIDATES


def check_probabilities_match_frequencies(factory: Factory) -> None:
    """Drawing many choices at one point gives the probabilities the policy states."""
    policy = bound(factory)
    for _ in drive(policy, 30):
        pass
    for stage in Stage:
        shape = SHAPES[0]
        probs = policy.probabilities(stage, shape, None)
        n = 4000
        counts = Counter(policy.choose(stage, shape, None).backend for _ in range(n))
        for backend in CANDIDATES:
            p = probs.get(backend, 0.0)
            tolerance = 4 * math.sqrt(max(p * (1 - p), 1e-6) / n) + 1e-3
            assert abs(counts[backend] / n - p) <= tolerance, f"{stage}: {backend} drawn {counts[backend]}/{n}, p={p}"


def check_same_seed_same_decisions(factory: Factory) -> None:
    """Randomness comes only from the seed."""
    runs = [[b for *_, b in drive(bound(factory, seed=7), 150)] for _ in range(2)]
    assert runs[0] == runs[1], "two policies with the same seed decided differently"


def check_excluded_backend_is_never_chosen(factory: Factory) -> None:
    """While a backend is excluded (quarantined), another usable one is chosen, every time."""
    for excluded in CANDIDATES:
        policy = bound(factory)
        for _ in drive(policy, 10):
            pass
        policy.exclude({excluded})
        chosen = [b for *_, b in drive(policy, 80)]
        assert excluded not in chosen, f"chose excluded {excluded.value}"
        policy.exclude(set())
        assert {b for *_, b in drive(policy, 5)} <= set(CANDIDATES)


def check_learn_accepts_a_backend_outside_the_candidates(factory: Factory) -> None:
    """A stage re-run on a fallback (the CPU) is learned from, or ignored, without an error."""
    policy = bound(factory)
    for shape in SHAPES:
        for stage in Stage:
            policy.learn(Observation(stage, shape, None, CPU, 3e-3))
            policy.learn(Observation(stage, shape, CPU, GPU, 1e-3))
    for _ in drive(policy, 5):
        pass


def check_every_valid_shape_is_answered(factory: Factory) -> None:
    """No exception and a valid choice for any valid shape, seen or not, before and after learning."""
    policy = bound(factory)
    for learn_first in (False, True):
        if learn_first:
            for _ in drive(policy, 20):
                pass
        for shape in SHAPES:
            for stage in Stage:
                for after in (None, GPU, NPU):
                    c = policy.choose(stage, shape, after)
                    assert c.backend in CANDIDATES
                    assert isinstance(c.probabilities, MappingProxyType)


def check_clone_is_unbound_with_the_same_parameters(factory: Factory) -> None:
    """``clone()`` rebuilds the policy from its parameters alone, with none of its learned state."""
    policy = bound(factory)
    for _ in drive(policy, 20):
        pass
    twin = policy.clone()
    assert type(twin) is type(policy) and twin.params == policy.params
    twin.bind(CANDIDATES, CheckPrior())
    fresh = bound(factory)
    assert [b for *_, b in drive(twin, 40)] == [b for *_, b in drive(fresh, 40)], "a clone kept learned state"


CHECKS: tuple[Callable[[Factory], None], ...] = (
    check_choices_are_consistent,
    check_probabilities_match_frequencies,
    check_same_seed_same_decisions,
    check_excluded_backend_is_never_chosen,
    check_learn_accepts_a_backend_outside_the_candidates,
    check_every_valid_shape_is_answered,
    check_clone_is_unbound_with_the_same_parameters,
)
