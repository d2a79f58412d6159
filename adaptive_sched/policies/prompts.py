"""A prompt's first checks, offered at its first layers.

A prefill runs every layer of the model at one shape, one decision per layer and stage, all
read from one published entry. A first check (an alternative never run in the stage's group,
see ``AdaptiveParams.first_checks``) made at any of those layers serves every layer after it:
made at the third layer of 28, it informs 25; at the twentieth, 8. So the chance the prompt's
layers would give a check one by one, at the rate the exploration rule sets for each, is
offered at its first layers instead: the same chance of a check per prompt, hence the same
expected cost, made sooner. What the prompt's first layers teach still counts: a rate that
rises after them (the choice ran slower than its prior said) offers the difference at the
next layer; one that falls has had its chance.

Where the prior is wrong, the checks come layers sooner: on the learning benchmark's GPU-heavy
world (``python benchmarks/trace_regret.py --scenario steady --world gpu-heavy --seed 0``) the
first prompt's GPU attention is checked at its first layer at 0.8, not at 0.2 a layer. Where it
is right, a prompt pays the same expected cost, in one draw rather than spread over its layers:
a dear check the prior rightly calls 45 times the choice, offered at 0.008 once rather than at
0.0003 a layer, is made in the same share of prompts, but by other seeds. (Offered from a
prompt's second layer only, once the choice had run at its shape: paired over seeds 0-29 of
``bench_learning.py --policies adaptive --json``, -0.0001 where from the first it is -0.0010,
the GPU-heavy world -0.0007 where it is -0.0026. Not kept.)

:class:`PromptChecks` follows the prefill each stage is running (the layers so far, the
chance each check was offered in them and the chance it would not have been at their own
rates), learns how many layers a prompt has (the last one's, counted at its end), and says
which entries to recompute when either moves. It learns from observations: with
``learner: thread``, a layer decided before the one above it was learned reads the entry as
it stood (the prompt's first layer's offer, again), and what it was offered is counted when it
is learned, so the next entry offers that much less.

>>> from adaptive_sched.policies.exploration import front_loaded
>>> checks = PromptChecks(layers=8)
>>> unchecked = 0.9**8                      # a 10% chance a layer, over a prompt of 8 layers
>>> round(front_loaded(0.1, checks.fresh(0.8)), 3) == round(1 - unchecked, 3)
True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..cache import BoundedDict
from ..types import Backend, Choice, Shape, Stage
from .estimates import Point
from .exploration import Front


class _Prompt:
    """The prefill one stage is running."""

    __slots__ = ("keys", "layers", "offered", "point", "unoffered")

    def __init__(self, point: Point) -> None:
        self.point = point
        self.layers = 0
        self.offered: dict[Backend, float] = {}
        self.unoffered: dict[Backend, float] = {}
        #: the entries its decisions were read from
        self.keys: set[tuple[Any, ...]] = set()


class PromptChecks:
    """The prefill each stage is running, and how many layers a prompt has (see the module docstring).

    ``layers`` is assumed until a prompt has been seen to its end.
    """

    __slots__ = ("_prompts", "_rates", "layers")

    def __init__(self, layers: int) -> None:
        self.layers = float(layers)
        self._prompts: dict[Stage, _Prompt] = {}
        # entry key -> each first check's rate a layer when the entry was computed
        self._rates: BoundedDict[tuple[Any, ...], dict[Backend, float]] = BoundedDict(1024)

    def fresh(self, ceiling: float) -> Front:
        """The :data:`Front` of a check at a prompt's first layer."""
        return (self.layers, 1.0, 0.0, ceiling)

    def fronts(
        self, stage: Stage, point: Point, checks: Mapping[Backend, float], ceiling: float
    ) -> dict[Backend, Front]:
        """The :data:`Front` of each of ``checks`` at a prefill entry of ``stage`` at ``point``."""
        prompt = self._prompts.get(stage)
        if prompt is None or prompt.point is not point:  # the next prompt to come here starts afresh
            return dict.fromkeys(checks, self.fresh(ceiling))
        left = max(1.0, self.layers - prompt.layers)
        unoffered, offered = prompt.unoffered, prompt.offered
        return {b: (left, unoffered.get(b, 1.0), offered.get(b, 0.0), ceiling) for b in checks}

    def rates_of(self, key: tuple[Any, ...]) -> dict[Backend, float]:
        """A new, empty record of the rates of the first checks the prefill entry ``key`` offers,
        for the exploration rule to fill (left empty, the entry offers none)."""
        rates = self._rates[key] = {}
        return rates

    def follow(self, stage: Stage, shape: Shape, point: Point, choice: Choice | None) -> set[tuple[Any, ...]]:
        """Count one observed stage; return the keys of the entries to recompute (those of a prompt
        that moved on a layer, or ended, that offer a first check)."""
        prompt = self._prompts.get(stage)
        if shape.n == 1:  # a decode step: the prompt, if any, has ended
            return self._end(stage, prompt) if prompt is not None else set()
        ended: set[tuple[Any, ...]] = set()
        if prompt is None or prompt.point is not point:
            if prompt is not None:
                ended = self._end(stage, prompt)
            prompt = self._prompts[stage] = _Prompt(point)
        prompt.layers += 1
        if choice is not None:
            offered, unoffered = prompt.offered, prompt.unoffered
            for b, chance in choice.probabilities.items():
                offered[b] = 1.0 - (1.0 - offered.get(b, 0.0)) * (1.0 - chance)
            key = choice.entry
            if key is not None:
                prompt.keys.add(key)
                for b, rate in self._rates.get(key, {}).items():
                    unoffered[b] = unoffered.get(b, 1.0) * (1.0 - rate)
        return ended | self._checking(prompt.keys)

    def running(self, stage: Stage) -> bool:
        return stage in self._prompts

    def _end(self, stage: Stage, prompt: _Prompt) -> set[tuple[Any, ...]]:
        del self._prompts[stage]
        if prompt.layers >= 2:
            self.layers = float(prompt.layers)
        return self._checking(prompt.keys)

    def _checking(self, keys: set[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
        rates = self._rates
        return {key for key in keys if rates.get(key)}
