"""The executor protocol: a backend answers "can I run this?" and runs it. It never decides.

An executor runs one stage at one shape and reports how long it took. It does not
choose backends, log decisions or touch SQLite: that is the scheduler's and the
store's job. Heavy imports (pyopencl, rknnlite) happen inside each backend's own
module, and only when that backend is created.
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from ..errors import UnsupportedShape
from ..stages import check_inputs, make_inputs
from ..types import Backend, Shape, Stage, parse_stage


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one stage run produced.

    ``output`` is None only in latency-only mode (the simulator with no inputs).
    ``latency_s`` is the latency the scheduler learns from: wall time for real
    devices, modelled time for the simulator. ``device_s`` is the device's own
    timing where it has one (OpenCL event profiling), else None. ``cold`` marks a
    run that paid one-time costs.
    """

    output: np.ndarray | None
    latency_s: float
    device_s: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    #: the run paid one-time costs (a kernel built, weights uploaded or converted on first
    #: sight): its latency says little about the next run, so the scheduler does not learn from it
    cold: bool = False


class Executor(abc.ABC):
    """Base class of every backend.

    Subclasses implement :meth:`_probe`, :meth:`_supports` and :meth:`_run`;
    this class provides the uniform checks and error messages around them.

    Parameters are stored as given (``__init__`` does no work), so creating an
    executor is cheap and never fails for lack of hardware: that is what
    :meth:`is_available` is for.
    """

    #: registry name of the implementation, e.g. ``"cpu_numpy"``
    kind: str = "abstract"
    #: the options this executor takes (name -> what it sets); a config naming another is refused
    OPTIONS: ClassVar[Mapping[str, str]] = MappingProxyType({})
    #: those of :attr:`OPTIONS` only code passes (objects a YAML file cannot hold)
    INTERNAL_OPTIONS: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, backend: Backend | str = Backend.CPU, **options: Any) -> None:
        self.backend = Backend(backend)
        self.options = dict(options)
        self._availability: tuple[bool, str] | None = None
        self._prepared: set[tuple[Stage, Shape]] = set()
        self._closed = False

    # -- availability ---------------------------------------------------------
    def is_available(self) -> bool:
        """True if this executor can run here. Never raises; see :attr:`unavailable_reason`."""
        if self._availability is None:
            try:
                reason = self._probe()
            except Exception as exc:  # a probe must never take the caller down
                reason = f"{type(exc).__name__}: {exc}"
            self._availability = (reason is None, reason or "")
        return self._availability[0]

    @property
    def unavailable_reason(self) -> str:
        """Why :meth:`is_available` is False ('' when available)."""
        self.is_available()
        assert self._availability is not None
        return self._availability[1]

    def _probe(self) -> str | None:
        """Return None if usable, else a one-line reason. May raise; the caller catches."""
        return None

    # -- support --------------------------------------------------------------
    def supports(self, stage: Stage | str, shape: Shape) -> bool:
        """True if this executor can run ``stage`` at ``shape`` and its precision."""
        return self.why_unsupported(stage, shape) is None

    def why_unsupported(self, stage: Stage | str, shape: Shape) -> str | None:
        """None if supported, else the reason (used in error messages)."""
        return self._supports(parse_stage(stage), shape)

    def _supports(self, stage: Stage, shape: Shape) -> str | None:
        return None

    def check_supported(self, stage: Stage | str, shape: Shape) -> Stage:
        """Raise :class:`UnsupportedShape` with the reason if ``stage`` at ``shape`` cannot run."""
        stage = parse_stage(stage)
        reason = self._supports(stage, shape)
        if reason is not None:
            raise UnsupportedShape(f"{self.kind} ({self.backend.value}) cannot run {stage.value} at {shape}: {reason}")
        return stage

    # -- running --------------------------------------------------------------
    def prepare(self, stage: Stage | str, shape: Shape) -> None:
        """Compile or build what ``stage`` at ``shape`` needs, once; later calls are free."""
        stage = self.check_supported(stage, shape)
        key = (stage, shape)
        if key not in self._prepared:
            self._prepare(stage, shape)
            self._prepared.add(key)

    def _prepare(self, stage: Stage, shape: Shape) -> None:
        return None

    def run(
        self,
        stage: Stage | str,
        shape: Shape,
        inputs: Mapping[str, np.ndarray] | None = None,
        *,
        after: Backend | None = None,
    ) -> RunResult:
        """Run ``stage`` at ``shape`` and time it.

        ``inputs`` follow :mod:`adaptive_sched.stages`; when None, real executors
        make deterministic inputs (for profiling) and the simulator runs in
        latency-only mode. ``after`` names the backend that produced this stage's
        input, for executors that model the cost of moving it (the simulator);
        real devices pay that cost in their own timing.
        """
        if self._closed:
            raise RuntimeError(f"{self.kind} executor is closed")
        stage = self.check_supported(stage, shape)
        if inputs is not None:
            check_inputs(stage, shape, inputs)
        elif not self.latency_only:
            inputs = make_inputs(stage, shape)
        self.prepare(stage, shape)
        return self._run(stage, shape, inputs, after)

    #: True for executors that can report a latency without computing outputs
    latency_only: bool = False
    #: True for an executor whose run returns in bounded host time by construction (the
    #: simulator: a modelled latency, no device to wait for), so the scheduler may call it on
    #: the caller's thread; any other runs on a worker thread the caller abandons at its deadline
    RUNS_INLINE: ClassVar[bool] = False

    @abc.abstractmethod
    def _run(
        self, stage: Stage, shape: Shape, inputs: Mapping[str, np.ndarray] | None, after: Backend | None
    ) -> RunResult:
        """Run one prepared, supported stage. ``inputs`` is None only if :attr:`latency_only`."""

    def close(self) -> None:
        """Release device resources. Safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._close()

    def _close(self) -> None:
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend.value!r})"


def read_only(a: np.ndarray) -> bool:
    """True if nothing can write to ``a`` without first flipping a read-only flag.

    Executors that keep a device copy of weights use this to trust an array by identity:
    a read-only array (or a view of read-only memory) cannot change behind their back.
    """
    obj: Any = a
    while isinstance(obj, np.ndarray):
        if obj.flags.writeable:
            return False
        obj = obj.base
    if obj is None:
        return True
    try:
        return bool(memoryview(obj).readonly)
    except TypeError:
        return False


V = TypeVar("V")


class WeightCache(Generic[V]):
    """What an executor derived from weight arrays (a converted copy, a device buffer), by identity.

    Inference runtimes treat a weight array as immutable once seen: the value derived from
    it is kept, keyed by ``id(array)`` and a variant (a precision, a storage format), for
    the ``capacity`` most recently used arrays. Each entry holds a strong reference to its
    array, so the id cannot be reused by another array while the entry lives, and a hit
    requires the very same object. Whether an array may be trusted by identity at all
    (it could be written in place) is the caller's decision: see :func:`read_only`.

    Not locked: an executor runs one stage at a time (or holds its own lock).

    Parameters
    ----------
    capacity
        Arrays kept; the least recently used is dropped past it (0 keeps nothing).
    release
        Called with each value dropped (evicted, or on :meth:`clear`), e.g. to free a
        device buffer.

    Examples
    --------
    >>> cache = WeightCache(capacity=1)
    >>> w = np.ones((2, 2))
    >>> cache.get(w, "fp16") is None
    True
    >>> cache.put(w, "fp16", "converted")
    0
    >>> cache.get(w, "fp16"), cache.get(w.copy(), "fp16")
    ('converted', None)
    >>> cache.put(np.zeros(1), "fp16", "other"), len(cache)   # the least recently used goes
    (1, 1)
    """

    def __init__(self, capacity: int, release: Callable[[V], None] | None = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be an integer >= 0, got {capacity!r}")
        self.capacity = capacity
        self._release = release
        self._entries: OrderedDict[tuple[int, Hashable], tuple[np.ndarray, V]] = OrderedDict()

    def get(self, array: np.ndarray, variant: Hashable = None) -> V | None:
        """The value stored for this very ``array`` object and ``variant``, or None."""
        key = (id(array), variant)
        hit = self._entries.get(key)
        if hit is None or hit[0] is not array:
            return None
        self._entries.move_to_end(key)
        return hit[1]

    def put(self, array: np.ndarray, variant: Hashable, value: V) -> int:
        """Keep ``value`` for ``array`` and ``variant``; returns how many entries were dropped."""
        key = (id(array), variant)
        old = self._entries.pop(key, None)
        if old is not None and self._release is not None:
            self._release(old[1])
        self._entries[key] = (array, value)
        dropped = 0
        while len(self._entries) > self.capacity:
            _, (_, gone) = self._entries.popitem(last=False)
            if self._release is not None:
                self._release(gone)
            dropped += 1
        return dropped

    def values(self) -> Iterator[V]:
        """The values kept, least recently used first."""
        return (value for _, value in self._entries.values())

    def clear(self) -> None:
        """Drop (and release) every entry."""
        entries, self._entries = self._entries, OrderedDict()
        if self._release is not None:
            for _, value in entries.values():
                self._release(value)

    def __len__(self) -> int:
        return len(self._entries)
