"""Exploration: turning value estimates with their uncertainty into a probability vector.

A strategy is a function of the candidates' estimated values (seconds, lower is better)
and the variances of those estimates. The rule here gives each alternative the
probability that it is in fact faster than the exploit choice (Thompson sampling's
propensity for two arms, with a normal approximation in log space), capped per
alternative, so a backend is probed in proportion to how plausibly it could win: a
far-slower backend whose estimate is fresh is left alone; one that is uncertain (never
checked here, or unobserved for long) is tried. The exploit choice keeps the majority
of the mass, unless an alternative is given a higher cap of its own (a first check, made
once, that the choice's own runs make likely to win). Scaling by the budget happens
before the cap is applied to the total.

>>> from adaptive_sched.types import Backend
>>> probs = win_probabilities({Backend.GPU: 1.0, Backend.NPU: 1.1}, {Backend.GPU: 0.01, Backend.NPU: 0.01}, cap=0.2)
>>> best, alternatives = probs
>>> best, round(alternatives[Backend.NPU], 3)
(<Backend.GPU: 'gpu'>, 0.2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..types import Backend

#: what :func:`front_loaded` needs of a prompt for one first check: the prompt's layers left (this
#: one included), the chance the check would not have been offered in its layers so far at their
#: own rates, the chance it was, and the highest chance one decision may give it
Front = tuple[float, float, float, float]

#: below this, a probe would almost never happen: publish none (and keep entries small)
MIN_PROBABILITY = 1e-4
#: exploration never takes more than this share of one decision's probability, unless
#: ``caps`` allow one alternative more
MAX_EXPLORE = 0.5


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z * 0.7071067811865476)


def front_loaded(rate: float, front: Front) -> float:
    """The chance to offer a first check at a prefill's layer, given its ``rate`` a layer: what the
    prompt's layers so far and those left would give it at that rate, less what it was offered
    (see :mod:`.prompts`).

    >>> round(front_loaded(0.1, (8, 1.0, 0.0, 0.8)), 3)  # a prompt's first layer: 1 - 0.9**8
    0.57
    >>> front_loaded(0.1, (7, 0.9, 0.57, 0.8))            # the next one, the rate unchanged
    0.0
    """
    left, unoffered, offered, ceiling = front
    target = 1.0 - unoffered * (1.0 - rate) ** left
    if offered >= target:
        return 0.0
    chance = (target - offered) / (1.0 - offered)
    return ceiling if chance > ceiling else chance


def _watch_rate(value: float, best: float, shift: float, rate: float, layer_gain: float = 0.0) -> float:
    """How often to probe a backend whose last change may revert, outside the budget.

    A change that reverts at ``rate`` per decision and would make the backend faster by ``gain``
    per decision is found after ``1/p`` decisions when probed with probability ``p``, each
    probe costing ``loss`` while it has not: the cost per decision ``rate * gain / p + p * loss``
    is least at ``p = sqrt(rate * gain / loss)``. Contention that comes and goes is thus
    watched for; a change long past (its rate decayed) is not. ``layer_gain``, if larger, is the
    gain: what the reversion would save the whole layer, found by a probe of this stage.
    """
    gain = max(best - value * math.exp(shift), layer_gain)
    loss = value - best
    if gain <= 0.0 or loss <= 0.0 or rate <= 0.0:
        return 0.0
    return math.sqrt(rate * gain / loss)


def win_probabilities(
    values: Mapping[Backend, float],
    log_variances: Mapping[Backend, float],
    *,
    cap: float,
    scale: Mapping[Backend, float] | None = None,
    allowance: Mapping[Backend, float] | None = None,
    reversion: Mapping[Backend, tuple[float, float, float]] | None = None,
    layer_gains: Mapping[Backend, float] | None = None,
    doubt: Mapping[Backend, tuple[float, float]] | None = None,
    typical: float | None = None,
    caps: Mapping[Backend, float] | None = None,
    draws: Mapping[Backend, float] | None = None,
    front: Mapping[Backend, Front] | None = None,
    rates: dict[Backend, float] | None = None,
) -> tuple[Backend, dict[Backend, float]]:
    """The exploit choice and, per alternative, its probability of being explored.

    ``values`` are expected seconds, ``log_variances`` the variances of their logs;
    ``scale`` multiplies an alternative's probability (the budget's throttle, 1 by default);
    ``allowance`` bounds what exploring it may cost on average per decision (seconds): an
    alternative expected to cost 30 stages is tried 30 times more rarely than one expected
    to cost one; ``reversion`` gives, per alternative, the probability that a change it
    went through has reverted, the log shift of its value if so (the probability of
    being faster is then a mixture of the two cases: a thin Gaussian tail would miss that
    contention which came is likely to go) and the rate of such reversions, which sets a
    floor on how often it is watched (see :func:`_watch_rate`: for what the reversion would
    save this stage, or the layer, ``layer_gains``, if more), less often where a probe costs
    more than a ``typical`` stage (seconds); ``doubt`` gives, per alternative, the probability
    that the one run its estimate rests on was a spike and the log shift of its value if so, a
    third case of the same mixture; ``caps`` gives an alternative its own cap instead of
    ``cap`` (which may exceed :data:`MAX_EXPLORE`: the total is then held to the largest of
    them instead); ``draws`` makes an alternative's probability, before the caps, that of
    being the faster in at least one of this many independent draws (a real number: the
    power of the chance of losing each); ``front`` gives an alternative, a first check at a
    prefill's layer, what :func:`front_loaded` turns its probability (after the caps and the
    allowance: its rate a layer) into, the ceiling then taking the cap's place, and ``rates``, if
    given, records each such rate. Non-finite values are never chosen.
    """
    finite = {b: v for b, v in values.items() if math.isfinite(v)}
    best = min(finite, key=finite.__getitem__)
    best_log, best_var = math.log(finite[best]), log_variances[best]
    out: dict[Backend, float] = {}
    total = 0.0
    for b, v in finite.items():
        if b is best:
            continue
        spread = math.sqrt(log_variances[b] + best_var)
        gap = math.log(v) - best_log
        p = normal_sf(gap / spread) if spread > 0 else 0.0
        hazard = spiked = watch = shift = spike_shift = 0.0
        if reversion is not None and b in reversion:
            hazard, shift, rate = reversion[b]
            watch = _watch_rate(v, finite[best], shift, rate, layer_gains.get(b, 0.0) if layer_gains else 0.0)
            if watch and typical is not None and v - finite[best] > typical:
                # any stage tells whether the backend's shared term reverted: watch where a probe is cheap
                watch *= typical / (v - finite[best])
        if doubt is not None and b in doubt:
            spiked, spike_shift = doubt[b]
        if spread > 0 and hazard + spiked > 0.0:
            if hazard + spiked > 1.0:
                hazard, spiked = hazard / (hazard + spiked), spiked / (hazard + spiked)
            mixed = (1.0 - hazard - spiked) * p
            if hazard:
                mixed += hazard * normal_sf((gap + shift) / spread)
            if spiked:
                mixed += spiked * normal_sf((gap + spike_shift) / spread)
            p = mixed
        hazard += spiked
        if draws is not None and b in draws:
            p = 1.0 - (1.0 - p) ** draws[b]
        p = min(cap if caps is None else caps.get(b, cap), p) * (1.0 if scale is None else scale.get(b, 1.0))
        if allowance is not None and b in allowance:
            extra = (v - finite[best]) * (1.0 - hazard)  # what the probe is expected to cost
            if extra * p > allowance[b]:
                p = allowance[b] / extra  # 0 with a zero budget
        if front is not None and b in front:
            if rates is not None:
                rates[b] = p
            p = front_loaded(p, front[b])
        if watch > p:
            p = min(cap, watch)
        if p >= MIN_PROBABILITY:
            out[b] = p
            total += p
    limit = max(MAX_EXPLORE, *caps.values()) if caps else MAX_EXPLORE
    if front:
        limit = max(limit, *(f[3] for f in front.values()))
    if total > limit:
        out = {b: p * limit / total for b, p in out.items()}
    return best, out
