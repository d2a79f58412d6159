"""Device profiles: the frozen dataclasses a profile YAML file is read into.

:func:`~adaptive_sched.sim.loading.load_profile` builds them, validating every key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..features import kv_bucket
from ..types import Backend, Precision, Stage


@dataclass(frozen=True)
class PrecisionRate:
    """Compute rate of one backend at one precision."""

    peak_flops: float
    #: fraction of the peak a well-shaped, well-sized kernel reaches
    efficiency: float
    #: seconds per input element (weights included) spent converting inputs on every call
    element_s: float = 0.0


@dataclass(frozen=True)
class Alignment:
    """Matmul alignment: K padded to ``k_bytes``, N padded to ``n_elements[precision]``."""

    k_bytes: int
    n_elements: Mapping[Precision, int]


@dataclass(frozen=True)
class ShapeHalf:
    """Shape sensitivity: a GEMM dim ``x`` scales efficiency by ``x / (x + half)`` (0 = no effect)."""

    m: float
    k: float
    n: float


@dataclass(frozen=True)
class PageStride:
    """Decode attention over a token-major KV cache, read one head at a time, past the TLB's reach.

    A head's sweep touches ``2 * keys * min(1, row / page_bytes)`` pages (``row = d * itemsize``);
    past ``tlb_entries`` pages a fraction ``1 - tlb_entries / pages`` of its accesses miss. The
    cost is ``penalty_s[precision] * batch * miss``: it saturates at ``penalty_s`` per sequence
    and call, and never grows with the number of keys beyond that.
    """

    page_bytes: int
    tlb_entries: int
    #: seconds per sequence and call once every access misses
    penalty_s: Mapping[Precision, float]
    #: the effect applies to attention with at most this many query rows (decode kernels)
    max_n: int = 1


@dataclass(frozen=True)
class Bound:
    """A backend's documented physical envelope, checked over the whole shape grid by the tests.

    Every stage latency is at most ``roofline_factor`` times its roofline (bytes over
    ``bandwidth_Bps``, FLOPs over ``peak_flops``, at the shape the backend runs, i.e. its
    KV bucket), plus its launches, plus ``extra_s``, plus the page-stride penalty at most.
    """

    roofline_factor: float
    extra_s: float


@dataclass(frozen=True)
class KVBuckets:
    """The KV lengths a static-graph backend has prepared attention graphs for.

    Attention over ``keys`` keys runs on the smallest prepared length that holds them
    (the padded keys are masked out), so it costs what that length costs; past the
    largest there is no graph. ``pow2`` prepares every power of two (no largest).

    >>> KVBuckets(lengths=(64, 128, 256)).bucket(129), KVBuckets(pow2=True).bucket(129)
    (256, 256)
    >>> KVBuckets(lengths=(64, 128)).bucket(129) is None
    True
    """

    #: the prepared lengths, ascending (empty when ``pow2``)
    lengths: tuple[int, ...] = ()
    pow2: bool = False

    def bucket(self, keys: int) -> int | None:
        """The prepared length attention over ``keys`` keys runs on, or None if none holds it."""
        if self.pow2:
            return 1 << max(0, keys - 1).bit_length()
        return kv_bucket(keys, self.lengths)

    @property
    def largest(self) -> int | None:
        """The largest prepared length (None for ``pow2``)."""
        return None if self.pow2 else self.lengths[-1]


@dataclass(frozen=True)
class ThermalParams:
    """First-order thermal model of one backend, with clock trip points."""

    #: steady-state rise over ambient when busy all the time at the nominal clock (C)
    rise_c: float
    #: time constant of heating and cooling (s)
    tau_s: float
    #: power (hence the steady rise) scales with (clock / nominal) ** power_exponent
    power_exponent: float
    #: a trip is released once the temperature falls this far below it (C)
    hysteresis_c: float
    #: ascending (temperature C, clock Hz) pairs: at or above the temperature the clock steps down
    trips: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class ContentionParams:
    """Background load on one backend: a two-state Markov process in virtual time."""

    on_rate_hz: float
    off_rate_hz: float
    slowdown: float


@dataclass(frozen=True)
class BackendProfile:
    """Everything that prices a stage on one backend."""

    name: Backend
    clock_hz: float
    bandwidth_Bps: float
    launch_s: float
    #: launches (kernels, graph runs) per stage and precision
    calls: Mapping[Stage, Mapping[Precision, int]]
    rates: Mapping[Precision, PrecisionRate]
    max_buffer_bytes: float
    max_k: int | None = None
    unsupported: tuple[str, ...] = ()
    align: Alignment | None = None
    shape_half: ShapeHalf | None = None
    occupancy_half: float = 0.0
    row_align: int = 0
    unaligned_efficiency: float = 1.0
    page_stride: PageStride | None = None
    layout_Bps: float = 0.0
    #: static-graph attention: the KV lengths prepared (None: any length runs as it is)
    kv_buckets: KVBuckets | None = None
    #: the memory path is clocked with the backend (a per-core DMA port), so it slows when throttled
    clock_bound_memory: bool = False
    #: the documented envelope of this backend's latencies (None: not declared)
    bound: Bound | None = None


@dataclass(frozen=True)
class TransitionProfile:
    """Cost of a stage consuming an output produced on another backend."""

    bandwidth_Bps: float
    #: (producer, consumer) -> synchronisation seconds
    sync_s: Mapping[tuple[Backend, Backend], float]


@dataclass(frozen=True)
class ThermalProfile:
    enabled: bool
    ambient_c: float
    backends: Mapping[Backend, ThermalParams]


@dataclass(frozen=True)
class ContentionProfile:
    enabled: bool
    backends: Mapping[Backend, ContentionParams]


@dataclass(frozen=True)
class Anchor:
    """A public end-to-end decode speed of a whole model on this SoC, which the profile reproduces.

    The simulated token streams every weight matrix of :attr:`model` (see
    :meth:`~adaptive_sched.workload.ModelShape.layer_matrices`) as one GEMV each, at
    ``weight_bytes`` per weight over ``cores`` cores, runs the attention core as the
    simulated ``attn`` stage, and launches ``launches`` other kernels per layer; see
    :func:`~adaptive_sched.sim.anchors.token_latency`.
    """

    name: str
    #: where the figure was published
    source: str
    #: a key of :data:`adaptive_sched.workload.MODELS`
    model: str
    backend: Backend
    #: precision of the stages (the GEMVs' arithmetic and the attention core)
    precision: Precision
    #: bytes per weight as the runtime streams them (1 for int8, 0.5625 for 4-bit with fp16 group scales)
    weight_bytes: float
    #: cores the runtime spreads each GEMV over (their streams add up to the DRAM's limit)
    cores: int
    #: kernels launched per layer besides the attention core (GEMVs and element-wise kernels)
    launches: int
    #: the KV lengths the figure was measured over (first and last decode step)
    kv_len: tuple[int, int]
    #: the published decode speed
    tok_s: float
    #: the relative error the simulated speed must stay within, over the whole ``kv_len`` range
    tolerance: float


@dataclass(frozen=True)
class DeviceProfile:
    """A simulated SoC: per-backend cost model, transitions, noise and drift defaults.

    Load one with :func:`load_profile`; another SoC is another YAML file.
    """

    name: str
    description: str
    backends: Mapping[Backend, BackendProfile]
    transition: TransitionProfile
    noise_sigma: float
    thermal: ThermalProfile
    contention: ContentionProfile
    #: DRAM bandwidth shared by every backend: what several cores' streams add up to at most
    dram_Bps: float = float("inf")
    #: public end-to-end figures the profile reproduces
    anchors: tuple[Anchor, ...] = ()
    #: the file it came from ('' for a mapping)
    source: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "") -> DeviceProfile:
        """Validate a mapping (parsed YAML) into a profile; every problem is reported at once,
        each naming ``source`` and the key (see :func:`~adaptive_sched.sim.loading.parse_profile`)."""
        from .loading import parse_profile

        return parse_profile(data, source)
