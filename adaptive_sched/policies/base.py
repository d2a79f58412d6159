"""The contract every policy keeps, and the published table the scheduler reads.

A policy answers, for a stage at a shape after the previous stage's backend, a
:class:`~adaptive_sched.types.Choice`: the backend, the probability it gave that backend
(the propensity), the whole probability vector, and what it predicted. It learns from
observed latencies. The scheduler talks to a policy only through :class:`Policy`:

=====================================  ================================================
``bind(candidates, prior, supports)``  attach to a scheduler (required, done by it)
``choose(stage, shape, after)``        the slow path: a Choice (required)
``probabilities(stage, shape, after)`` the probability vector a Choice would carry
``table``                              (optional) a :class:`PublishedTable` the scheduler
                                       reads on its hot path before calling ``choose``
``learn(observation)``                 (optional) learn from one observed latency
``catch_up(deadline)``                 (optional) bounded background work (refreshes)
``pending()``                          (optional) whether ``catch_up`` has work queued
``exclude(backends)``                  stop choosing quarantined backends (base class)
``on_excluded()``                      (optional) react to a change of the exclusions
``mark_unsupported(stage, shape, b)``  (optional) ``b`` cannot run ``stage`` there
``prepare()``                          (optional) pay one-time costs before serving
``on_clocks(ratios)``                  (optional) each backend's clock over its maximum, from telemetry
``on_temperatures(temps)``             (optional) each backend's temperature in C, from telemetry
``on_loads(loads, at, settle_s)``      (optional) each backend's busy share, from telemetry
``clocks_wanted``                      (optional) True asks for a reading before the next observation
``state()``                            (optional) a plain-data summary for reports
=====================================  ================================================

Optional hooks default to doing nothing, so the scheduler never probes for them.
Every policy declares its parameters as a frozen dataclass ``Params`` beside its class
(configs set them by name); ``__init__`` only stores them, randomness comes only from
a ``seed``, and learned state lives in private attributes built by :meth:`Policy.bind`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple, Protocol

from ..buckets import entry_key
from ..cache import BoundedDict
from ..types import Backend, Choice, Shape, Stage, parse_stage

_ATTN = Stage.ATTN  # a module constant: looking it up on the enum costs more than the comparison

#: predictions or probabilities that are empty
EMPTY: Mapping[Backend, float] = MappingProxyType({})


class Prior(Protocol):
    """What policies need from an offline prior (see :mod:`adaptive_sched.learners.priors`).

    A prior may also offer ``quirks(stage, shape) -> {backend: log units}``, how far its
    latency at a shape is from the smooth trend it fitted (:meth:`Prior.quirks
    <adaptive_sched.learners.priors.Prior.quirks>`); the adaptive policy's latency model
    then learns whether this device shares them. Without it, that feature stays at 0.
    """

    backends: tuple[Backend, ...]

    def latency(self, stage: Stage | str, shape: Shape) -> Mapping[Backend, float]: ...

    def choose(self, stage: Stage | str, shape: Shape) -> Backend: ...


Supports = Callable[[Stage, Shape, Backend], bool]


class Observation(NamedTuple):
    """One observed stage run, as a policy learns from it."""

    stage: Stage
    shape: Shape
    after: Backend | None
    backend: Backend
    latency_s: float
    #: the choice the decision carried (None for a run the policy did not choose, e.g. a warm start row)
    choice: Choice | None = None


def choice(
    backend: Backend,
    probabilities: Mapping[Backend, float],
    predicted: Mapping[Backend, float] = EMPTY,
    exploit: Backend | None = None,
    version: int = 0,
) -> Choice:
    """A Choice of ``backend`` from a probability vector (``exploit`` defaults to ``backend``)."""
    probs = probabilities if isinstance(probabilities, MappingProxyType) else MappingProxyType(dict(probabilities))
    return Choice(backend, probs[backend], backend is not (exploit or backend), predicted, probs, version)


def certain(backend: Backend, predicted: Mapping[Backend, float] = EMPTY, version: int = 0) -> Choice:
    """The Choice of a deterministic policy: ``backend`` with probability 1."""
    return Choice(backend, 1.0, False, predicted, MappingProxyType({backend: 1.0}), version)


class Freshness:
    """The clock entries are checked against: one counter that learning advances.

    An entry is served until the counter reaches its ``expires``; then the scheduler asks
    the policy, which recomputes it. Every observation learned advances the counter by one;
    a detected change or a quarantine advances it past every entry's expiry at once
    (``span``, the longest lifetime), for the cost of one addition.
    """

    __slots__ = ("now", "span")

    def __init__(self, span: float = math.inf) -> None:
        self.now = 0.0
        self.span = span

    def tick(self) -> None:
        self.now += 1.0

    def invalidate(self) -> None:
        self.now += self.span + 1.0


#: the freshness of entries that never go stale
FOREVER = Freshness()


class Entry:
    """What the scheduler draws from for one (stage, shape bucket, previous backend).

    ``exploit`` is taken unless the uniform draw ``u`` falls below one of the cumulative
    thresholds of ``alternatives``. Entries are immutable once published: a refresh
    replaces the whole entry, so a reader on another thread sees the old one or the new one.
    """

    __slots__ = ("alternatives", "expires", "exploit", "explore", "freshness", "renew", "tolerance")

    def __init__(
        self,
        exploit: Choice,
        alternatives: tuple[tuple[float, Choice], ...] = (),
        freshness: Freshness = FOREVER,
        lifetime: float = math.inf,
        renew_after: float = math.inf,
        tolerance: float = 0.0,
    ) -> None:
        self.exploit = exploit
        self.alternatives = alternatives
        #: the chance of exploring: a draw at or above it takes ``exploit``
        self.explore = alternatives[-1][0] if alternatives else 0.0
        self.freshness = freshness
        self.expires = freshness.now + lifetime
        #: past this, the policy recomputes the entry when it next learns from its shape
        self.renew = freshness.now + min(renew_after, lifetime)
        #: how far (log units) one backend's estimate may move before the entry is worth recomputing
        #: (for the policy that owns it: a clear choice tolerates more than a near tie)
        self.tolerance = tolerance

    def fresh(self) -> bool:
        return self.freshness.now < self.expires

    def pick(self, u: float) -> Choice:
        for threshold, alternative in self.alternatives:
            if u < threshold:
                return alternative
        return self.exploit


class PublishedTable:
    """The entries a policy publishes, one per (stage and shape bucket, previous backend).

    The policy owns and writes it; the scheduler only calls :attr:`lookup`. An entry is
    keyed by :func:`entry_key`: the stage, ``after`` and the bucket a shape computed when it
    was made, so a decision costs the same whether its exact shape was seen before or not (a
    cache of shapes would make the seen ones cheaper and every new one dearer, and a KV
    length grows every token).
    Its size is bounded: past ``max_entries`` the oldest entry is forgotten (a miss only
    costs a slow decision).
    """

    __slots__ = ("_entries", "_lookahead", "lookup", "max_entries")

    def __init__(self, lookahead: bool = True, max_entries: int = 50_000) -> None:
        self._entries: BoundedDict[tuple[Any, ...], Entry] = BoundedDict(max_entries)
        self._lookahead = lookahead
        self.max_entries = max_entries
        #: ``lookup(stage, shape, after)``: the entry for this decision, or None if there is none
        #: or it is stale (the scheduler then asks the policy). A closure over the table's dict,
        #: built once: the hot path then reads no attribute of the table (15 to 20 ns of a
        #: decision's microsecond between the learning benchmark's observations).
        self.lookup: Callable[[Stage, Shape, Backend | None], Entry | None] = _lookup_in(self._entries, lookahead)

    @property
    def lookahead(self) -> bool:
        """Whether qkv's entries are keyed by the KV length too (they plan attention after them);
        fixed when the table is made, as :attr:`lookup` was built for it."""
        return self._lookahead

    def key(self, stage: Stage, shape: Shape, after: Backend | None) -> tuple[Any, ...]:
        """The key of the entry for this decision: its stage, shape bucket and ``after``."""
        return entry_key(stage, shape, after, self._lookahead)

    def get(self, key: tuple[Any, ...]) -> Entry | None:
        """The entry under ``key``, fresh or not (for the policy that owns it)."""
        return self._entries.get(key)

    def publish(self, key: tuple[Any, ...], entry: Entry) -> None:
        self._entries[key] = entry

    def __len__(self) -> int:
        return len(self._entries)


def _lookup_in(
    entries: BoundedDict[tuple[Any, ...], Entry], lookahead: bool
) -> Callable[[Stage, Shape, Backend | None], Entry | None]:
    """:attr:`PublishedTable.lookup` over ``entries``, with :func:`entry_key` written out for what
    it nearly always is (a call costs more than the rest)."""
    get = entries.get

    def lookup(stage: Stage, shape: Shape, after: Backend | None) -> Entry | None:
        key = (stage, shape.bucket, after) if lookahead or stage is _ATTN else entry_key(stage, shape, after, False)
        entry = get(key)
        if entry is None or entry.freshness.now >= entry.expires:
            return None  # none yet, or stale: the policy recomputes it
        return entry

    return lookup


class Policy(abc.ABC):
    """Base class of every policy (see the module docstring for the contract)."""

    #: the kind name configs use
    name: ClassVar[str] = "policy"

    @dataclasses.dataclass(frozen=True)
    class Params:
        """A policy's parameters (none by default)."""

    #: the published table, for policies that have one (read by the scheduler's hot path)
    table: PublishedTable | None = None
    #: set by a policy that wants the device's clocks read before its next observation (a
    #: latency surprised it: a clock may just have stepped); whoever feeds it clocks clears it
    clocks_wanted: bool = False

    def __init__(self, params: Any = None, **overrides: Any) -> None:
        params = params if params is not None else self.Params()
        self.params = dataclasses.replace(params, **overrides) if overrides else params

    @classmethod
    def from_params(cls, **params: Any) -> Policy:
        """Build from keyword parameters (a ``TypeError`` names an unknown one)."""
        return cls(cls.Params(**params))

    def clone(self) -> Policy:
        """A new, unbound policy with the same parameters."""
        return type(self)(self.params)

    # -- binding -------------------------------------------------------------------------
    def bind(self, candidates: Iterable[Backend], prior: Prior | None, supports: Supports | None = None) -> None:
        """Attach to a scheduler: the backends it chooses between, the offline prior, and a
        predicate telling whether a backend's executor can run a stage at a shape."""
        self.candidates = tuple(candidates)
        if not self.candidates:
            raise ValueError("a policy needs at least one candidate backend")
        self.prior = prior
        self.supports = supports
        self._excluded: frozenset[Backend] = frozenset()
        self._lock = threading.RLock()
        self.draw: Callable[[], float] = random.Random(getattr(self.params, "seed", 0)).random
        self._setup()

    def _setup(self) -> None:
        """Build learned state (subclasses)."""

    # -- deciding ------------------------------------------------------------------------
    @abc.abstractmethod
    def choose(self, stage: Stage, shape: Shape, after: Backend | None) -> Choice:
        """Choose a backend for ``stage`` at ``shape``; ``after`` is where the previous stage ran."""

    def probabilities(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Mapping[Backend, float]:
        """The probability this policy gives each backend now (offline replay asks this).

        Drawing many choices gives these frequencies. The default suits deterministic
        policies; stochastic ones override it without drawing.
        """
        return self.choose(parse_stage(stage), shape, after).probabilities

    def best(self, stage: Stage | str, shape: Shape, after: Backend | None) -> Backend:
        """The backend this policy holds most likely to be fastest now."""
        probs = self.probabilities(stage, shape, after)
        return max(probs, key=probs.__getitem__)

    # -- learning (optional) -------------------------------------------------------------
    def learn(self, observation: Observation) -> None:
        """Learn from one observed latency (already validated; the backend may be outside the candidates)."""

    def catch_up(self, deadline: float | None = None) -> None:
        """Do queued background work until ``deadline`` (``time.perf_counter``), or all of it."""

    def pending(self) -> bool:
        """Whether :meth:`catch_up` has work queued."""
        return False

    def prepare(self) -> None:
        """Pay one-time costs (imports, models) before serving."""

    def on_clocks(self, ratios: Mapping[Backend, float | None]) -> None:
        """The device's telemetry changed: each backend's clock (the one it may run at now) over
        its maximum (None: unknown). Optional: policies that predict latencies may scale them; stale or
        missing telemetry arrives as None and must leave the policy as it would be without."""

    def on_temperatures(self, temps: Mapping[Backend, float | None]) -> None:
        """Each backend's temperature in C (None: unknown), with each reading after :meth:`on_clocks`.
        Optional, as that one is: policies may grow less sure of a backend as it heats or cools."""

    def on_loads(self, loads: Mapping[Backend, float | None], at: float, settle_s: Mapping[Backend, float]) -> None:
        """Each backend's busy share, 0 to 1 (None: unknown), with each reading after
        :meth:`on_temperatures`; ``at`` is when it was read (seconds, the telemetry's clock). A
        board counts this process's own work in it, over a window: ``settle_s`` is how long after
        a backend last ran its load counts others' work alone. The CPU's is never given: this
        process's threads load it.
        Optional: policies may read others' load on a backend they do not use as contention."""

    # -- exclusions ----------------------------------------------------------------------
    def exclude(self, backends: Iterable[Backend]) -> None:
        """Stop choosing ``backends`` (quarantined after failures) until excluded no more."""
        with self._lock:
            self._excluded = frozenset(backends)
            self.on_excluded()

    def on_excluded(self) -> None:
        """React to a change of the excluded set (optional)."""

    def mark_unsupported(self, stage: Stage, shape: Shape, backend: Backend) -> None:
        """``backend`` cannot run ``stage`` at ``shape`` (optional: policies that remember it)."""

    def usable(self) -> tuple[Backend, ...]:
        """The candidates not excluded (all of them if every one is)."""
        usable = tuple(b for b in self.candidates if b not in self._excluded)
        return usable or self.candidates

    def state(self) -> dict[str, Any]:
        """A plain-data summary of what the policy has learned (for reports)."""
        return {}
