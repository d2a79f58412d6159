"""The adaptive policy: a contextual bandit over the offline priors.

Estimates (:mod:`.estimates`) say how long each backend would take and how sure that
is; exploration (:mod:`.exploration`) turns them into a probability vector; the budget
(:mod:`.budget`) keeps what probes cost within ``explore_budget`` of the total. ``qkv``
is valued looking ahead to the best ``attn`` after it, so the pair chosen is the best
pair, not two independent bests, and ``attn`` knows where ``qkv`` ran.

The hot path reads a :class:`~.base.PublishedTable` of entries per (stage, shape bucket,
previous backend). Learning never walks that table: an observation recomputes its own
shape's entry (and qkv's, which looks ahead to attention) if the observed backend's
estimate there has moved by more than ``publish_tolerance`` since the entry was computed,
or if it is older than ``refresh_every`` observations (so exploration follows the
uncertainty that grows while a backend goes unobserved); an entry nobody observes is
served for at most ``expire_after`` observations, and a detected change makes every entry
stale at once (:class:`~.base.Freshness`). A stale entry is recomputed when next asked
for. Learning thus costs the same whatever the number of shapes seen; between
recomputations an entry may be off by the noise of its estimates, which costs a near-tie
little and cannot flip a clear winner.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from ..cache import BoundedDict
from ..learners.latency import ModelParams
from ..types import Backend, Choice, Shape, Stage, parse_stage
from .base import EMPTY, Entry, Freshness, Observation, Policy, PublishedTable
from .budget import AlarmWindows, ExplorationBudget
from .estimates import Estimates, Point
from .exploration import win_probabilities
from .prompts import PromptChecks

#: what an entry is computed from (see ``AdaptivePolicy._reps``)
Rep = tuple[Stage, Shape, Backend | None, Point, tuple[Any, ...] | None]


@dataclasses.dataclass(frozen=True)
class AdaptiveParams:
    """Parameters of :class:`AdaptivePolicy` (settable from a config's ``policy`` section)."""

    #: seeds the exploration draws
    seed: int = 0
    #: largest share of total latency spent on exploration (outside drift alarms; half of it, the
    #: learning benchmark's worlds +0.0018 over 10 seeds, se 0.0009, where the prior is right -0.0026;
    #: twice it, with one draw per decision, paired: +0.0021, se 0.0004, GPU-heavy +0.0044)
    explore_budget: float = 0.005
    #: largest probability of exploring one alternative in one decision; for a first check,
    #: this times how many times slower than its prior the choice's own kernels ran here, up to
    #: ``first_check_ceiling``: made once, a check is paid once whatever its chance, a higher
    #: chance only makes it sooner, and the further the prior was off on the choice, the
    #: likelier it hid a better one
    #: (paired, ``bench_learning.py --policies adaptive --seeds 0-9 --json``, and 10-19, and
    #: ``--workload decode``: -0.0005, se 0.0002, -0.0006, se 0.0002, and -0.0000; int8-gpu
    #: -0.0014 and -0.0016, no world worse). Its chance, likewise, is that of winning at least
    #: one of as many Thompson draws as that slowness: a backend never checked in a group serves
    #: every later decision of the group once checked, which one draw's chance of being the
    #: faster undervalues (traced, an INT8 prefill's 8 layers on the int8-gpu world left on an
    #: NPU 9x slower than its prior, the GPU drawn at 0.25 a layer and never drawn:
    #: ``trace_regret.py --scenario steady --world int8-gpu --seed 3``, 38.8 per mille of its
    #: 43.1. Paired: -0.0008, se 0.0002, -0.0009, se 0.0003, and +0.0000; int8-gpu -0.0034 and
    #: -0.0042, no world worse by more than 0.0002; as many draws as its square: -0.0007, soc
    #: +0.0004). (The cap's rule before one draw per decision, when runs that learned
    #: differently drew differently: -0.0004 over 20 seeds, se 0.0003, int8-gpu -0.0023, the
    #: worst cell 1.160 to 1.173, and it was not kept then. 0.3 for
    #: every alternative, with one draw per decision, paired: seeds 0-9 -0.0004, se 0.0003,
    #: 10-19 -0.0002, se 0.0004, int8-gpu -0.0020 and -0.0018, soc -0.0003 and +0.0011, the
    #: NPU-heavy world's worst cell 1.046 to 1.084. Not kept. 0.5 for first checks whatever the
    #: choice's slowness, paired: seeds 0-9 -0.0004, se 0.0003, 10-19 -0.0011, se 0.0003,
    #: int8-gpu -0.0019 and -0.0037, but the decode workload
    #: +0.0008, se 0.0004, 6 more cells over 1.03: a first check made sooner is made while the
    #: chance that its run was a spike weighs less: after a spiked first run, the NPU's FP16
    #: decode attention (0.4 ms) was believed to take 9.6 for a tenth of the run, 1.135 of the oracle.
    #: Not kept.)
    explore_cap: float = 0.2
    #: plan ``qkv`` over where ``attn`` will run next (transition-aware pair choice)
    lookahead: bool = True
    #: prior cost of consuming activations produced on another backend: a sync ...
    transition_sync_s: float = 1e-4
    #: ... plus the activations moved at this rate ...
    transition_bytes_per_s: float = 1e10
    #: ... known only to about this (seconds) before a handoff has been seen: synchronising
    #: two accelerators costs from tens of microseconds to milliseconds
    transition_sd_s: float = 1e-3
    #: a backend observed fewer times than this for a stage, precision and phase has not been
    #: checked on this device: it is probed whatever the budget's state (its prior may hide the
    #: best choice) (its runs all inside one burst of contention, a group keeps their slowness:
    #: checking it again later was measured and not kept, see the README's weak points) ...
    first_checks: int = 1
    #: ... at an expected cost per decision of at most this many times the budget's share of
    #: the stage it would replace (or of a typical stage, if more), times the square of how many
    #: times slower than its prior that stage's kernels have run here: a check, made once, serves
    #: every decision of its group, so a dear stage's is not made rarer than a cheap one's; and
    #: the further the prior was from this device on the choice, the less its ranking is worth.
    #: (On the alternative as well, by the square of how much faster than its prior its siblings
    #: put it: the learning benchmark's worlds +0.0005 over 10 seeds, se 0.0004. Not kept. At 60
    #: and at 200: +0.0013 and +0.0022, se 0.0006 and 0.0007; the GPU-heavy world +0.0001 and
    #: -0.0016, the NPU-heavy one +0.0033 and +0.0080. At 60 again with one draw per decision,
    #: paired over seeds 0-9: +0.0021, se 0.0005. At 10: +0.0011, se 0.0004, GPU-heavy +0.0027,
    #: int8-gpu +0.0022. Divided, where the choice's kernels run faster than their prior said,
    #: by the square of how many times faster (the alternative must then beat a choice cheaper
    #: than the prior ranked it against): seeds 0-9, 10-19 and 20-29 -0.0011, -0.0012 and -0.0012
    #: (se 0.0003, 0.0003, 0.0002), the GPU-heavy and NPU-heavy worlds -0.0020 to -0.0033, the
    #: soc world +0.0009, +0.0004, -0.0003; but the device profiles drawn at random +0.0001 over
    #: seeds 0-2 and 3-9 (se 0.0003, 0.0002), their decode layers +0.0003, and the soc world's NPU
    #: on and off in ``bench_telemetry.py`` without telemetry +0.0032 and +0.0018 over seeds 0-19
    #: and 20-59: a gain on the two worlds whose prior misjudges one backend everywhere, and
    #: nowhere else. Not kept.)
    first_check_allowance: float = 20.0
    #: ... and with a probability of at most this, beyond ``MAX_EXPLORE`` (the exploit choice
    #: keeps the rest), where the choice's slowness makes it likely to win (``explore_cap``):
    #: left the majority, an NPU 6x slower than its prior kept an INT8 prefill's first three
    #: layers, the GPU's checks at 0.5 a stage in the second and third going undrawn
    #: (``trace_regret.py --scenario npu-periodic --world gpu-heavy --seed 5``: 70 of its 85
    #: per mille; 45 with 0.8). Paired, ``bench_learning.py --policies adaptive --seeds 0-9
    #: --json``, and 10-19: -0.0011, se 0.0003, and -0.0011, se 0.0002; int8-gpu -0.0043 and
    #: -0.0038, no world worse by more than 0.0001, the worst cells 1.088 to 1.080 and 1.137 to
    #: 1.097; the decode workload unchanged (its first checks are cheap, never near the cap).
    #: At 0.95: -0.0012 over seeds 0-9. (Every prefill's first check given this ceiling, its
    #: chance that of winning one of 8 draws whatever the choice's slowness, since a prompt's
    #: layers share one entry: paired over seeds 0-9, -0.0001, se 0.0002, the GPU-heavy world
    #: -0.0002, soc +0.0009; with 28 draws the same. The first checks that cost most there
    #: are held back by ``first_check_allowance``, not by this: the first prompt's, a check
    #: predicted 204 ms dearer than the NPU's 11.7, at 0.0057 a layer. Not kept.)
    first_check_ceiling: float = 0.8
    #: an alternative predicted more than this many times slower than the choice (times the
    #: choice's own slowness against its prior, as for ``first_check_allowance``) is not first
    #: checked: a prior wrong by this much would still leave it slower. It is probed within the
    #: budget, as a checked alternative is. (The NPU-heavy world's GPU INT8 prefills, believed
    #: 45 and 48 times the NPU's, cost 233 and 646 ms a check, 2 and 6% of a run; where what
    #: was learned before puts the first at 32 times (heavy noise on that world, seed 0), it is
    #: still checked. At 20, a prior
    #: 20 times wrong still found: paired over seeds 0-9 and 10-19 of the learning benchmark
    #: -0.0002 against this (se 0.0001 each), but on the random device profiles
    #: (``--random-worlds 6``) +0.0001, ``random-4`` +0.0006: its GPU INT8 decode attention,
    #: believed 29 times the NPU's 0.54 ms where it takes 0.6, went unchecked for a tenth of a
    #: run (``trace_regret.py --scenario gpu-contention --world random-4 --seed 2``, 27.6 to
    #: 46.6 per mille). At 10: -0.0002 more on seeds 0-9, se 0.0001.)
    first_check_reach: float = 40.0
    #: a prompt's layers share one shape, so a first check made at one of them serves the rest
    #: of the prompt: the chance its layers would give it one by one is offered at its first
    #: layers instead, up to ``first_check_ceiling`` (see :mod:`.prompts`) ...
    front_load_checks: bool = True
    #: ... a prompt's layers being those of the last one seen to its end, and before one was,
    #: this many (an LLM has 16 to 80)
    prompt_layers: int = 16
    #: a backend that changed recently (it may change back), or whose estimate rests on one run
    #: that may have been a spike, is probed whatever the budget's state too, at an expected
    #: cost per decision of at most this many times the budget's allowance (a typical stage's)
    #: (30: +0.0003 over seeds 0-9, se 0.0001, with one draw per decision, paired)
    recheck_allowance: float = 10.0
    #: a detected slowdown lifts the budget until every other usable backend is observed this
    #: often at every stage ...
    alarm_probes: int = 8
    #: ... or for at most this many observations
    alarm_observations: int = 400
    #: an observation whose backend's estimate at its shape has moved by more than this (log
    #: units; more where the choice is clear, see ``_tolerance``) since that shape's entry was
    #: computed recomputes the entry ...
    publish_tolerance: float = 0.05
    #: ... or if older than this many observations (so exploration follows the uncertainty
    #: that grows while a backend goes unobserved) (256: paired over 60 seeds of the learning
    #: benchmark's worlds, +0.0000, se 0.0001) ...
    refresh_every: int = 1024
    #: ... and an entry is served for at most this many observations however rarely it is used
    expire_after: int = 8192
    #: the online latency model's prior widths, forgetting and robustness
    model: ModelParams = dataclasses.field(default_factory=ModelParams)

    def __post_init__(self) -> None:
        for name in ("explore_budget", "explore_cap", "first_check_ceiling"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if not self.first_check_reach >= 1.0:
            raise ValueError(f"first_check_reach must be >= 1, got {self.first_check_reach!r}")
        if self.transition_sync_s < 0 or not math.isfinite(self.transition_sync_s):
            raise ValueError(f"transition_sync_s must be finite and >= 0, got {self.transition_sync_s!r}")
        if not (self.transition_sd_s > 0 and math.isfinite(self.transition_sd_s)):
            raise ValueError(f"transition_sd_s must be finite and > 0, got {self.transition_sd_s!r}")
        if self.transition_bytes_per_s <= 0 or not math.isfinite(self.transition_bytes_per_s):
            raise ValueError(f"transition_bytes_per_s must be finite and > 0, got {self.transition_bytes_per_s!r}")
        if not self.publish_tolerance > 0:
            raise ValueError(f"publish_tolerance must be > 0, got {self.publish_tolerance!r}")
        for name in ("alarm_probes", "alarm_observations", "refresh_every", "expire_after", "prompt_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        self.model.validate()


class AdaptivePolicy(Policy):
    """The contextual bandit (see the module docstring).

    >>> from adaptive_sched.learners.rule import RooflineRule
    >>> p = AdaptivePolicy(seed=0)
    >>> p.bind((Backend.GPU, Backend.NPU), RooflineRule((Backend.GPU, Backend.NPU)))
    >>> c = p.choose(Stage.QKV, Shape(n=256, d=2048), None)
    >>> sum(c.probabilities.values()) == 1.0 and c.backend in c.probabilities
    True
    """

    name: ClassVar[str] = "adaptive"
    Params = AdaptiveParams  # type: ignore[assignment]
    params: AdaptiveParams

    def _setup(self) -> None:
        p = self.params
        prior = self.prior
        if prior is None:
            from ..learners.rule import RooflineRule

            prior = RooflineRule(self.candidates)
        self._est = Estimates(
            prior,
            self.candidates,
            p.model,
            transition_sync_s=p.transition_sync_s,
            transition_bytes_per_s=p.transition_bytes_per_s,
            transition_sd_s=p.transition_sd_s,
        )
        self._budget = ExplorationBudget(p.explore_budget)
        self._alarms = AlarmWindows(p.alarm_probes, p.alarm_observations)
        self.table = PublishedTable(lookahead=p.lookahead)
        # key -> (stage, representative shape, after, its point, the key of the qkv entry that looks
        # ahead to it (attn, with lookahead) or None): what an entry is computed from
        self._reps: BoundedDict[tuple[Any, ...], Rep] = BoundedDict(self.table.max_entries)
        self._freshness = Freshness(span=float(p.expire_after))
        self._unsupported: set[tuple[Any, ...]] = set()
        self._checked: set[tuple[Any, ...]] = set()
        self._clock = 0  # observations learned: the clock of forgetting
        self._stages: set[Stage] = set()  # the stages learned from: what a drift alarm re-measures
        self._prompts = PromptChecks(p.prompt_layers)  # the prefills running (``front_load_checks``)
        # qkv entry key -> what each backend whose change may have reverted would save the layer if it had
        self._layer_gains: BoundedDict[tuple[Any, ...], dict[Backend, float]] = BoundedDict(1024)

    def prepare(self) -> None:
        with self._lock:
            self._est.model.prepare()

    # -- deciding ----------------------------------------------------------------------
    def choose(self, stage: Stage, shape: Shape, after: Backend | None) -> Choice:
        return self._entry(stage, shape, after).pick(self.draw())

    def probabilities(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Mapping[Backend, float]:
        return self._current(parse_stage(stage), shape, after).exploit.probabilities

    def best(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Backend:
        return self._current(parse_stage(stage), shape, after).exploit.backend

    def _current(self, stage: Stage, shape: Shape, after: Backend | None) -> Entry:
        """The entry as the estimates stand now (introspection: recomputed if due for renewal)."""
        entry = self._entry(stage, shape, after)
        if self._freshness.now < entry.renew:
            return entry
        with self._lock:
            return self._publish(self.table.key(stage, shape, after))  # type: ignore[union-attr]

    def _entry(self, stage: Stage, shape: Shape, after: Backend | None) -> Entry:
        table = self.table
        assert table is not None
        entry = table.lookup(stage, shape, after)
        if entry is not None:
            return entry
        with self._lock:
            key = table.key(stage, shape, after)
            if key not in self._reps:
                ahead = table.key(Stage.QKV, shape, None) if stage is Stage.ATTN and self.params.lookahead else None
                self._reps[key] = (stage, shape, after, self._est.point(stage, shape), ahead)
            return self._publish(key)

    # -- publishing --------------------------------------------------------------------
    def _usable_at(self, point: Point) -> list[Backend]:
        out = []
        for backend in self.usable():
            key = (point.stage, point.bucket, backend)
            if key not in self._checked:
                self._checked.add(key)
                if self.supports is not None and not self.supports(point.stage, point.shape, backend):
                    self._unsupported.add(key)
            if key not in self._unsupported:
                out.append(backend)
        return out

    def _values(
        self, stage: Stage, shape: Shape, after: Backend | None, point: Point
    ) -> tuple[list[Backend], dict[Backend, float], dict[Backend, float], dict[Backend, float]]:
        """The usable backends at ``point`` and, for each with a finite estimate: the stage's own
        expected seconds (after ``after``), its value (qkv's with the best attention after it,
        where it looks ahead) and the variance of the value's log."""
        est, clock = self._est, self._clock
        usable = self._usable_at(point) or list(self.usable())
        lookahead = stage is Stage.QKV and self.params.lookahead
        if lookahead:
            attn_point = est.point(Stage.ATTN, shape)
            attn_usable = self._usable_at(attn_point) or list(self.usable())
        predicted: dict[Backend, float] = {}
        values: dict[Backend, float] = {}
        log_vars: dict[Backend, float] = {}
        for b in usable:
            seconds, var = est.total(point, after, b, clock)
            if not math.isfinite(seconds):
                continue
            predicted[b] = seconds
            if lookahead:
                follow = [est.total(attn_point, b, a, clock) for a in attn_usable]
                finite = [f for f in follow if math.isfinite(f[0])]
                if finite:
                    f_s, f_var = min(finite)
                    seconds += f_s
                    var += f_var
            values[b] = seconds
            log_vars[b] = var / (seconds * seconds)
        return usable, predicted, values, log_vars

    def _first_check_slowness(
        self, stage: Stage, point: Point, b: Backend, fastest: Backend, values: Mapping[Backend, float]
    ) -> float | None:
        """How many times slower than its prior the choice ``fastest``'s kernels run here (at
        least 1), if ``b``, never checked in ``point``'s group, is within a first check's reach
        (``first_check_reach``); None if it is beyond it."""
        model = self._est.model
        slower = max(1.0, math.exp(model.group_offset(stage, fastest, point.group, point.phi[fastest])))
        return None if values[b] > self.params.first_check_reach * slower * values[fastest] else slower

    def _publish(self, key: tuple[Any, ...]) -> Entry:
        """Compute and publish the entry of ``key`` from the current estimates."""
        stage, shape, after, point, ahead = self._reps[key]
        est, clock = self._est, self._clock
        usable, predicted, values, log_vars = self._values(stage, shape, after, point)
        version = clock
        shown = MappingProxyType(predicted)
        freshness = self._freshness
        if not values:  # nothing known about any usable backend: the first, certainly
            only = usable[0]
            entry = Entry(Choice(only, 1.0, False, EMPTY, MappingProxyType({only: 1.0}), version, key), (), freshness,
                          float(self.params.expire_after), float(self.params.refresh_every),
                          self.params.publish_tolerance)  # fmt: skip
        else:
            fastest = min(values, key=values.__getitem__)
            budget = self._budget.scale()
            alarms = self._alarms
            p = self.params
            model = est.model
            observed, volatile = model.observed, model.volatile
            # A group whose estimate rests on one run that may have been a spike: checked again
            # like a group never checked, weighing the chance that it is as fast as before.
            # (Where the prior is wrong, most doubted first runs were slow in truth: over the
            # learning benchmark's default cells these rechecks cost 0.3 per mille a cell and
            # found the best pair once in 226. Without them, paired over seeds 0-9, 10-19 and
            # 20-29: -0.0004, -0.0006 and -0.0004 (se 0.0003, 0.0002, 0.0005); but the decode
            # workload +0.0004 (se 0.0003), heavy noise on the soc world's seed 4 1.012 to 1.093,
            # and a spike on a first run after a change that came and went locks the
            # backend out (``test_a_spike_on_a_groups_first_run_is_checked_again_where_...``).)
            doubts = {}
            for b in values:
                doubt, shift = model.doubt(stage, b, point.group, point.phi[b])
                if doubt:
                    doubts[b] = (doubt, shift * predicted[b] / values[b])
            # before any observation, the budget's share of what the exploit choice should cost
            allowed = self._budget.allowance() or p.explore_budget * predicted.get(fastest, 0.0)
            typical = self._budget.typical() or predicted.get(fastest, 0.0)
            scale: dict[Backend, float] = {}
            allowance: dict[Backend, float] = {}
            caps: dict[Backend, float] = {}
            draws: dict[Backend, float] = {}
            for b in values:
                if alarms and (alarms.lifted(b, clock) or alarms.lifted(fastest, clock)):
                    # A detected slowdown: re-measure, outside the budget, but where a probe costs
                    # about a stage (at most explore_cap of a typical stage per decision): the
                    # cheap shapes re-measure the backend as well as a prefill 30 times dearer.
                    scale[b] = 1.0
                    allowance[b] = p.explore_cap * typical
                elif observed(stage, b, point.group) < p.first_checks:
                    # Never checked here: the prior may hide the best choice. Priced at the stage's
                    # own cost, so a prefill's first check is not made 30 times rarer than a decode
                    # step's, and more where the choice's own kernels run slower than the prior
                    # said (not its backend's state: a throttled NPU says nothing of the prior),
                    # by the square of it: the prior that ranked the two is wrong here, perhaps
                    # about both, and more likely so the further it was off.
                    slower = self._first_check_slowness(stage, point, b, fastest, values)
                    if slower is None:
                        scale[b] = budget  # beyond a first check's reach: as a checked alternative
                        allowance[b] = allowed
                        continue
                    scale[b] = 1.0
                    own = p.explore_budget * predicted[fastest] * slower * slower
                    allowance[b] = p.first_check_allowance * max(allowed, own)
                    caps[b] = min(p.first_check_ceiling, p.explore_cap * slower)  # made once: sooner, not more
                    if slower > 1.0:
                        # and its chance is that of winning one of as many draws: see ``explore_cap``
                        draws[b] = slower
                elif volatile(b, clock) or b in doubts:
                    scale[b] = 1.0  # just changed, or its one run may have been a spike: may hide the best choice
                    allowance[b] = p.recheck_allowance * allowed
                else:
                    scale[b] = budget
                    allowance[b] = allowed
            # A backend whose last change may have reverted since it was last seen: its own
            # stage's share of the value moves back by the change.
            reversion = {}
            for b in values:
                hazard, shift, rate = model.reversion(b, clock)
                if rate > 0.0:
                    reversion[b] = (hazard, shift * predicted[b] / values[b], rate)
            # What a reversion would save the layer, read from its qkv entry (which looks ahead to
            # attention): any stage tells whether the backend's shared term reverted, so the
            # cheaper stage watches for the dearer one too. (Paired, ``bench_learning.py
            # --policies adaptive --json``: seeds 0-9 and 10-19 -0.0001 each, se 0.0000 and 0.0001,
            # the NPU's periodic throttling -0.0005 and -0.0006; ``--random-worlds 6`` -0.0002, its
            # worst cell 1.094 to 1.080; ``--workload decode`` -0.0000, a sustained throttle, which
            # never ends, +0.0003; ``bench_telemetry.py --seeds 0-19`` without telemetry -0.0003,
            # with it -0.0000.)
            # what each such backend would save this stage if its change has reverted
            gains = {b: values[fastest] - values[b] * math.exp(shift)
                     for b, (_, shift, _) in reversion.items() if b is not fastest}  # fmt: skip
            layer_gains = None
            if stage is Stage.QKV:
                if gains:
                    self._layer_gains[key] = gains
                else:
                    self._layer_gains.pop(key, None)  # none may revert now: an older record is void
            elif reversion and ahead is not None:
                layer_gains = self._layer_gains.get(ahead)
            if shape.n > 1:
                # A prefill's layers share one shape: a change that may have reverted, checked at one
                # of them, serves the rest of the prompt. Where what the check is expected to save at
                # the next layer alone (the chance that it reverted, times what the backend would
                # then save) outweighs what it is expected to cost, it is offered whatever the
                # budget's state, and front-loaded as a first check is. (Held to the budget's share
                # of a typical stage, a recovered NPU was checked at 0.002 a layer through a prompt
                # that lost 68 ms at each: ``trace_regret.py --scenario npu-periodic --seed 2``.)
                # Not where others' load on it is read: an end shows there (probed anyway, the
                # world's GPU contention with telemetry in ``bench_telemetry.py`` lost up to 0.0019
                # a seed). A clock read is not enough: one that reads its maximum while the backend
                # is slow, the benchmark's lying telemetry, would hide a throttle's end again
                # (the NPU on and off, 0.0238 to 0.0262).
                for b, gain in gains.items():
                    if model.load_read(b):
                        continue  # others' load on it is read: contention that ended shows there
                    saving = reversion[b][0] * gain
                    if saving > allowance.get(b, 0.0):
                        scale[b] = 1.0
                        allowance[b] = saving
                        caps.setdefault(b, p.explore_cap)
            front = rates = None
            if p.front_load_checks and shape.n > 1:  # a prefill's: its first checks, front-loaded
                rates = self._prompts.rates_of(key)
                if caps:
                    front = self._prompts.fronts(stage, point, caps, p.first_check_ceiling)
            best, alternatives = win_probabilities(
                values,
                log_vars,
                cap=p.explore_cap,
                scale=scale,
                allowance=allowance,
                reversion=reversion,
                layer_gains=layer_gains,
                doubt=doubts,
                typical=typical,
                caps=caps,
                draws=draws,
                front=front,
                rates=rates,
            )
            probs = MappingProxyType({best: 1.0 - sum(alternatives.values()), **alternatives})
            cumulative = 0.0
            table_alts = []
            for b, prob in alternatives.items():
                cumulative += prob
                table_alts.append((cumulative, Choice(b, prob, True, shown, probs, version, key)))
            # An entry weighing a backend that changed (it may change back) is renewed as often as
            # that backend has gone unobserved: the chance that it reverted grows with that time,
            # fast at first, so the renewals come at first often, then rarely.
            renew = float(p.refresh_every)
            for b in values:
                if b in reversion or volatile(b, clock):
                    renew = min(renew, max(p.refresh_every / 64, model.unobserved_for(b, clock)))
            entry = Entry(Choice(best, probs[best], False, shown, probs, version, key), tuple(table_alts), freshness,
                          float(p.expire_after), renew, self._tolerance(values, log_vars))  # fmt: skip
        assert self.table is not None
        self.table.publish(key, entry)
        return entry

    def _tolerance(self, values: Mapping[Backend, float], log_vars: Mapping[Backend, float]) -> float:
        """How far one backend's estimate may move before the entry is worth recomputing.

        ``publish_tolerance`` for a near tie; for a clear choice, as much as still leaves the
        runner-up three standard deviations of their difference behind, where a move changes
        neither the choice nor, beyond the budget's rounding, the chance of exploring.
        """
        base = self.params.publish_tolerance
        if len(values) < 2:
            return base
        first, second = sorted(values, key=values.__getitem__)[:2]
        margin = math.log(values[second] / values[first])
        return max(base, margin - 3.0 * math.sqrt(log_vars[first] + log_vars[second]))

    # -- learning ----------------------------------------------------------------------
    def learn(self, observation: Observation) -> None:
        stage, shape, after, backend, latency_s, choice = observation
        est = self._est
        if backend not in est.candidates:
            return  # a fallback backend outside the candidates: nothing to learn for the choice
        key = None if choice is None else choice.entry
        if after is not None and after not in est.candidates:
            after = None  # the handoff from a fallback is not a pair this policy chooses
            key = None
        with self._lock:
            self._clock = clock = self._clock + 1
            self._freshness.tick()
            point = est.point(stage, shape)
            learned = est.observe(point, after, backend, latency_s, clock)
            model = est.model
            if model.surprised:
                model.surprised = False
                self.clocks_wanted = True  # read by the scheduler's clock feed, if it has telemetry
            if model.stale:
                model.stale = False
                self._invalidate()  # a backend's every stage moved (a load's move undone)
            self._charge(choice, backend, latency_s, clock)
            stages = self._stages
            stages.add(stage)
            if learned.alarm:
                if learned.shift > 0:
                    # The backend got slower: another may win now, so the others are
                    # re-measured outside the budget, at every stage. (One that got faster
                    # needs no probe of the others: its own estimate already moved.)
                    others = [b for b in self.usable() if b is not backend]
                    self._alarms.open(backend, clock, [(s, b) for s in stages for b in others])
                self._invalidate()
            elif self._alarms and self._alarms.count(stage, backend, clock):
                self._invalidate()  # every backend re-measured: the budget binds again everywhere
            else:
                self._renew(key, stage, shape, point, after, backend, learned.predicted)
            if self.params.front_load_checks and (shape.n > 1 or self._prompts.running(stage)):
                for moved in self._prompts.follow(stage, shape, point, choice):
                    if moved in self._reps:
                        self._publish(moved)  # what the prompt offered its first checks moved

    def _renew(
        self,
        key: tuple[Any, ...] | None,
        stage: Stage,
        shape: Shape,
        point: Point,
        after: Backend | None,
        backend: Backend,
        log_now: float,
    ) -> None:
        """Recompute this observation's entry if the observed backend's estimate at the entry's own
        shape has moved by more than the entry's tolerance since the entry was computed (changes add
        up, noise comes and goes), or if it is due; qkv's entry looks ahead to attention, so it
        follows attention's moves by the same rule. (Two thirds of what learning recomputes in a
        decode loop are qkv's entries after attention's runs: 8,196 of 12,632 in 60,000 layers
        of ``bench_learning_cost.py``'s loop. Taking each of attention's moves at what it moves
        qkv's values, in seconds against the entry's least value, left 221, and the Python source's
        mean ``observe`` there 20.3 and 21.1 us to 17.1 and 17.6 (two runs each); but paired over 60
        seeds of ``bench_learning.py --policies adaptive``, +0.0002 (se 0.0001): attention's run on
        a backend also moves its shared term, and with it the backend's qkv (the NPU's recovery seen
        by its attention alone, ``npu-throttle`` on the int8-gpu world, seed 43, 1.005 to 1.154).
        Counting that too left 1,687, and +0.0002 (se 0.0001), the periodic NPU throttling +0.0014,
        its worst cell 1.162 to 1.264. Not kept.) ``key`` is the entry's key if the decision's
        choice carried it (else it is worked out).

        ``log_now`` is the estimate (the stage's own log run time) at the observed ``point``. An
        entry serves a whole shape bucket and was computed at the bucket's first shape: when the
        observation is at another point of the bucket (a longer KV cache), the estimate is taken
        at the entry's point, so that the difference between two shapes is not taken for a move.
        (Where the prior itself changes inside a bucket, the entry is off at the bucket's other
        shapes; entries keyed finer, computed at the bucket's middle, or recomputed at the shape
        that finds them due or at an observation's own shape, were measured and not kept: see
        the README's weak points.)
        """
        table = self.table
        assert table is not None
        if key is None:
            key = table.key(stage, shape, after)
        entry = table.get(key)
        rep = self._reps.get(key)
        if entry is None or rep is None:
            return
        moved = math.inf
        then = entry.exploit.predicted.get(backend)
        if then is not None and math.isfinite(log_now):
            est = self._est
            at = rep[3]
            if at is not point:
                log_now = est.moved_to(at, point, backend, log_now, self._clock)
            now = math.exp(log_now)
            if after is not None and after is not backend:
                now += est.transition(at, after, backend)[0]
            moved = abs(math.log(now / then))
        now_clock = self._freshness.now
        if moved > entry.tolerance or now_clock >= entry.renew:
            self._publish(key)
        qkv_key = rep[4]
        if qkv_key is not None:
            qkv_entry = table.get(qkv_key)
            if qkv_entry is None or qkv_key not in self._reps:
                return
            # qkv's value holds the best attention after it: a move there moves qkv's by at most as much
            if moved > qkv_entry.tolerance or now_clock >= qkv_entry.renew:
                self._publish(qkv_key)

    def _invalidate(self) -> None:
        """Make every entry stale (it is recomputed on its next use)."""
        self._freshness.invalidate()

    def _charge(self, choice: Choice | None, backend: Backend, latency_s: float, clock: int) -> None:
        extra = 0.0
        if choice is not None and choice.explored and choice.predicted:
            probs = choice.probabilities
            exploit = max(probs, key=probs.__getitem__)
            alarms = self._alarms
            lifted = alarms and (alarms.lifted(backend, clock) or alarms.lifted(exploit, clock))
            expected = choice.predicted.get(exploit)
            if not lifted and expected is not None:
                # What the probe cost beyond the exploit choice, as measured: a probe that
                # found a faster backend cost nothing.
                extra = max(0.0, latency_s - expected)
        self._budget.charge(latency_s, extra)

    # -- exclusions and support --------------------------------------------------------
    def on_excluded(self) -> None:
        # Entries are recomputed on their next use, so a quarantine costs nothing now
        # whatever the number of entries.
        self._invalidate()

    def on_clocks(self, ratios: Mapping[Backend, float | None]) -> None:
        # A clock that stepped moves every estimate of its backend: entries are recomputed on
        # their next use (clocks step a few times a second at most).
        with self._lock:
            if self._est.model.set_clocks({b: r for b, r in ratios.items() if b in self.candidates}):
                self._invalidate()

    def on_temperatures(self, temps: Mapping[Backend, float | None]) -> None:
        # Only a backend whose clock is not read grows uncertain, as it cools while unused (see
        # LatencyModel.set_temperatures); entries are recomputed on their next use.
        with self._lock:
            if self._est.model.set_temperatures({b: t for b, t in temps.items() if b in self.candidates}):
                self._invalidate()

    def on_loads(self, loads: Mapping[Backend, float | None], at: float, settle_s: Mapping[Backend, float]) -> None:
        # Others' load on a backend left unused moves its level (see LatencyModel.set_loads):
        # contention that ended is seen without a probe; entries are recomputed on their next use.
        with self._lock:
            if self._est.model.set_loads({b: x for b, x in loads.items() if b in self.candidates}, at, settle_s):
                self._invalidate()

    def mark_unsupported(self, stage: Stage, shape: Shape, backend: Backend) -> None:
        with self._lock:
            point = self._est.point(stage, shape)
            self._checked.add((stage, point.bucket, backend))
            self._unsupported.add((stage, point.bucket, backend))
            self._invalidate()

    def state(self) -> dict[str, Any]:
        with self._lock:
            model = self._est.model
            alarms = dict.fromkeys((b.value for b in self.candidates), 0)
            for (_, backend), n in (*model.alarms.items(), *model.changes.items()):
                alarms[backend.value] = alarms.get(backend.value, 0) + n
            return {
                "observations": self._clock,
                #: changes detected per backend (ADWIN's and the run test's together)
                "drift_alarms": alarms,
                #: backends whose detected slowdown lifts the budget until all are re-measured
                "alarm_windows": [b.value for b in self._alarms.open_for()],
                "entries": len(self.table) if self.table is not None else 0,
                "explore_share": round(self._budget.share_spent(), 6),
                **self._est.state(),
            }
