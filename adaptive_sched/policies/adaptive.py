"""The adaptive policy: a contextual bandit over the offline priors.

Estimates (:mod:`.estimates`) say how long each backend would take and how sure that
is; exploration (:mod:`.exploration`) turns them into a probability vector; the budget
(:mod:`.budget`) keeps what probes cost within ``explore_budget`` of the total. ``qkv``
is valued looking ahead to the best ``attn`` after it, so the pair chosen is the best
pair, not two independent bests, and ``attn`` knows where ``qkv`` ran.

The hot path reads a :class:`~.base.PublishedTable` of entries per (stage, shape bucket,
previous backend). Learning never walks that table: each entry remembers the
:class:`~.base.Epoch` of the state it was computed from (one per precision and phase), and
an observation that moves that state by more than ``publish_tolerance`` (or that is very
informative, or a detected change) bumps the epoch, so the entries of that state are
recomputed when they are next used. Every ``refresh_every`` observations every epoch is
bumped, so exploration follows the growing uncertainty of backends nobody observes.
Learning thus costs the same whatever the number of shapes seen.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from ..learners.latency import ModelParams
from ..types import Backend, Choice, Shape, Stage, parse_stage
from .base import EMPTY, Entry, Epoch, Observation, Policy, PublishedTable
from .budget import AlarmWindows, ExplorationBudget
from .estimates import Estimates, Point
from .exploration import win_probabilities


@dataclasses.dataclass(frozen=True)
class AdaptiveParams:
    """Parameters of :class:`AdaptivePolicy` (settable from a config's ``policy`` section)."""

    #: seeds the exploration draws
    seed: int = 0
    #: largest share of total latency spent on exploration (outside drift alarms)
    explore_budget: float = 0.005
    #: largest probability of exploring one alternative in one decision
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
    #: best choice), as is a backend that changed recently (it may change back) ...
    first_checks: int = 1
    #: ... at an expected cost per decision of at most this many times the budget's allowance
    first_check_allowance: float = 10.0
    #: a detected change lifts the budget until every usable backend is observed this often ...
    alarm_probes: int = 8
    #: ... or for at most this many observations
    alarm_observations: int = 400
    #: entries are recomputed when their estimates have moved by more than this (log units) ...
    publish_tolerance: float = 0.03
    #: ... or when one observation removed more than this share of an estimate's variance ...
    publish_gain: float = 0.3
    #: ... and at least every this many observations (so exploration follows staleness)
    refresh_every: int = 256
    #: the online latency model's prior widths, forgetting and robustness
    model: ModelParams = dataclasses.field(default_factory=ModelParams)

    def __post_init__(self) -> None:
        for name in ("explore_budget", "explore_cap"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.transition_sync_s < 0 or not math.isfinite(self.transition_sync_s):
            raise ValueError(f"transition_sync_s must be finite and >= 0, got {self.transition_sync_s!r}")
        if not (self.transition_sd_s > 0 and math.isfinite(self.transition_sd_s)):
            raise ValueError(f"transition_sd_s must be finite and > 0, got {self.transition_sd_s!r}")
        if self.transition_bytes_per_s <= 0 or not math.isfinite(self.transition_bytes_per_s):
            raise ValueError(f"transition_bytes_per_s must be finite and > 0, got {self.transition_bytes_per_s!r}")
        if not (self.publish_tolerance > 0 and 0 < self.publish_gain <= 1):
            raise ValueError("publish_tolerance must be > 0 and publish_gain in (0, 1]")
        for name in ("alarm_probes", "alarm_observations", "refresh_every"):
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
        # key -> (stage, representative shape, after): what an entry is computed from
        self._reps: dict[tuple[Any, ...], tuple[Stage, Shape, Backend | None]] = {}
        # per (precision, phase): the epoch of its entries, and how far its state moved since
        self._epochs: dict[tuple[Any, ...], Epoch] = {}
        self._moved: dict[tuple[Any, ...], float] = {}
        self._device_moved: dict[Backend, float] = dict.fromkeys(self.candidates, 0.0)
        self._unsupported: set[tuple[Any, ...]] = set()
        self._checked: set[tuple[Any, ...]] = set()
        self._clock = 0  # observations learned: the clock of forgetting

    def prepare(self) -> None:
        with self._lock:
            self._est.model.prepare()

    # -- deciding ----------------------------------------------------------------------
    def choose(self, stage: Stage, shape: Shape, after: Backend | None) -> Choice:
        return self._entry(stage, shape, after).pick(self.draw())

    def probabilities(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Mapping[Backend, float]:
        return self._entry(parse_stage(stage), shape, after).exploit.probabilities

    def best(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Backend:
        return self._entry(parse_stage(stage), shape, after).exploit.backend

    def _entry(self, stage: Stage, shape: Shape, after: Backend | None) -> Entry:
        table = self.table
        assert table is not None
        entry = table.lookup(stage, shape, after)
        if entry is not None:
            return entry
        with self._lock:
            key = table.key(stage, shape, after)
            if len(self._reps) >= table.max_entries:
                self._reps.clear()  # the table starts over too (see PublishedTable.publish)
            self._reps.setdefault(key, (stage, shape, after))
            return self._publish(key)

    def _bump(self, group: tuple[Any, ...] | None = None) -> None:
        """Mark the entries of ``group`` (or every entry) stale."""
        if group is None:
            for epoch in self._epochs.values():
                epoch.bump()
            for g in self._moved:
                self._moved[g] = 0.0
        else:
            found = self._epochs.get(group)
            if found is not None:
                found.bump()
            self._moved[group] = 0.0

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

    def _publish(self, key: tuple[Any, ...]) -> Entry:
        """Compute and publish the entry of ``key`` from the current estimates."""
        stage, shape, after = self._reps[key]
        est, clock = self._est, self._clock
        point = est.point(stage, shape)
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
        version = clock
        shown = MappingProxyType(predicted)
        found = self._epochs.get(point.group)
        if found is None:
            found = self._epochs[point.group] = Epoch()
            self._moved[point.group] = 0.0
        epoch = found
        if not values:  # nothing known about any usable backend: the first, certainly
            only = usable[0]
            entry = Entry(Choice(only, 1.0, False, EMPTY, MappingProxyType({only: 1.0}), version), (), epoch)
        else:
            fastest = min(values, key=values.__getitem__)
            budget = self._budget.scale()
            alarms = self._alarms
            p = self.params
            observed, volatile = est.model.observed, est.model.volatile
            allowed = self._budget.allowance()
            scale: dict[Backend, float] = {}
            allowance: dict[Backend, float] = {}
            for b in values:
                if alarms and (alarms.lifted(b, clock) or alarms.lifted(fastest, clock)):
                    scale[b] = 1.0  # a detected slowdown: re-measure, outside the budget
                elif observed(stage, b, point.group) < p.first_checks or volatile(b, clock):
                    scale[b] = 1.0  # never checked here, or just changed: may hide the best choice
                    allowance[b] = p.first_check_allowance * allowed
                else:
                    scale[b] = budget
                    allowance[b] = allowed
            best, alternatives = win_probabilities(
                values, log_vars, cap=p.explore_cap, scale=scale, allowance=allowance
            )
            probs = MappingProxyType({best: 1.0 - sum(alternatives.values()), **alternatives})
            cumulative = 0.0
            table_alts = []
            for b, prob in alternatives.items():
                cumulative += prob
                table_alts.append((cumulative, Choice(b, prob, True, shown, probs, version)))
            entry = Entry(Choice(best, probs[best], False, shown, probs, version), tuple(table_alts), epoch)
        assert self.table is not None
        self.table.publish(key, entry)
        return entry

    # -- learning ----------------------------------------------------------------------
    def learn(self, observation: Observation) -> None:
        stage, shape, after, backend, latency_s, choice = observation
        if backend not in self._est.candidates:
            return  # a fallback backend outside the candidates: nothing to learn for the choice
        if after is not None and after not in self._est.candidates:
            after = None  # the handoff from a fallback is not a pair this policy chooses
        with self._lock:
            self._clock += 1
            clock = self._clock
            point = self._est.point(stage, shape)
            learned = self._est.observe(point, after, backend, latency_s, clock)
            self._charge(choice, backend, latency_s, clock)
            p = self.params
            if learned.alarm:
                if learned.shift > 0:
                    # The backend got slower: another may win now, so every backend is
                    # re-measured outside the budget. (One that got faster needs no probe of
                    # the others: its own estimate already moved.)
                    self._alarms.open(backend, clock, self.usable())
                self._bump()
            elif self._alarms and self._alarms.count(backend, clock):
                self._bump()  # every backend re-measured: the budget binds again everywhere
            elif clock % p.refresh_every == 0:
                self._bump()
            else:
                # Signed sums: noise moves estimates back and forth, a change moves them one way.
                moved = self._device_moved[backend] + learned.device_shift
                if abs(moved) > p.publish_tolerance:
                    self._bump()  # a backend's shared term moves every stage and shape on it
                    self._device_moved[backend] = 0.0
                    return
                self._device_moved[backend] = moved
                group = point.group
                local = self._moved.get(group, 0.0) + learned.shift - learned.device_shift
                if abs(local) > p.publish_tolerance or learned.gain > p.publish_gain:
                    self._bump(group)
                else:
                    self._moved[group] = local

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
        self._bump()

    def mark_unsupported(self, stage: Stage, shape: Shape, backend: Backend) -> None:
        with self._lock:
            point = self._est.point(stage, shape)
            self._checked.add((stage, point.bucket, backend))
            self._unsupported.add((stage, point.bucket, backend))
            self._bump()

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
