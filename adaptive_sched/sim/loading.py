"""Reading device profiles: YAML in, a validated :class:`DeviceProfile` out.

Errors are one :class:`~adaptive_sched.errors.ConfigError` listing every problem of the
file, one line each naming the file and the key (the same machinery as configs: see
:mod:`adaptive_sched.validation`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar, cast

from ..errors import ConfigError
from ..paths import resolve_config
from ..types import Backend, Precision, Stage
from ..validation import Problems, expect_bool, expect_int, expect_number, expect_str, read_yaml
from .schema import (
    Alignment,
    Anchor,
    BackendProfile,
    Bound,
    ContentionParams,
    ContentionProfile,
    DeviceProfile,
    KVBuckets,
    PageStride,
    PrecisionRate,
    ShapeHalf,
    ThermalParams,
    ThermalProfile,
    TransitionProfile,
)

T = TypeVar("T")


class _Incomplete(ConfigError):
    """A part of the profile was found wrong (its problems are recorded): what is built on it is skipped."""


class _Node:
    """A mapping being read: tracks its key path and which keys were used, for error messages.

    A wrong value is recorded in ``problems`` (shared with the whole document) and read as
    a placeholder, so the next keys are still checked; :meth:`done` then raises
    :class:`_Incomplete` (a ConfigError listing every problem so far) rather than let the
    node be built from placeholders. A parent reads on past a wrong child with :meth:`part`.
    """

    def __init__(self, data: Any, path: str = "", problems: Problems | None = None, parent: _Node | None = None):
        self.problems = problems if problems is not None else Problems()
        self.path, self.parent = path, parent
        self.used: set[str] = set()
        self.failed = self.absent = False
        if not isinstance(data, Mapping):
            self.fail(f"{path or 'profile'}: expected a mapping, got {type(data).__name__}")
            data = {}
        self.data: Mapping[Any, Any] = data

    def fail(self, message: str) -> None:
        """Record a problem; this node and every node above it can no longer be built."""
        self.problems.add(message)
        node: _Node | None = self
        while node is not None:
            node.failed = True
            node = node.parent

    def key(self, name: Any) -> str:
        return f"{self.path}.{name}" if self.path else str(name)

    def has(self, name: str) -> bool:
        self.used.add(name)  # an optional key is still a known one, for "unknown key" messages
        return name in self.data

    def raw(self, name: Any, default: Any = ...) -> Any:
        self.used.add(name)
        if name in self.data:
            return self.data[name]
        if default is ... and not self.absent:  # a missing section is reported once, not key by key
            self.fail(f"{self.key(name)}: required key is missing")
        return None if default is ... else default

    def node(self, name: Any) -> _Node:
        if name not in self.data:
            self.raw(name)  # records the missing key
            absent = _Node({}, self.key(name), self.problems, parent=self)
            absent.failed = absent.absent = True
            return absent
        return _Node(self.raw(name), self.key(name), self.problems, parent=self)

    def check(self, read: Callable[[], T], placeholder: T) -> T:
        """``read()``, or ``placeholder`` with the :class:`ConfigError` it raised recorded."""
        try:
            return read()
        except ConfigError as exc:
            for line in exc.errors:
                self.fail(line)
            return placeholder

    def part(self, parse: Callable[..., T], *args: Any) -> T:
        """``parse(*args)``, a sub-part; when it is wrong, its problems are recorded and the
        reading goes on. The ``None`` returned then never reaches a constructor: a wrong part
        has failed this node too, whose :meth:`done` raises first."""
        try:
            return parse(*args)
        except _Incomplete:
            return cast(T, None)

    def _present(self, name: str, default: Any) -> bool:
        return name in self.data or default is not ...

    def number(self, name: str, default: Any = ..., *, low: float = 0.0, strict: bool = False) -> float:
        value = self.raw(name, default)
        if not self._present(name, default):
            return math.nan
        key = self.key(name)
        return self.check(lambda: expect_number(value, key, low, strict=strict, numeric_strings=True), math.nan)

    def integer(self, name: Any, default: Any = ..., *, low: int = 0) -> int:
        value = self.raw(name, default)
        if not self._present(name, default):
            return 0
        return self.check(lambda: expect_int(value, self.key(name), low), 0)

    def boolean(self, name: str, default: Any = ...) -> bool:
        value = self.raw(name, default)
        if not self._present(name, default):
            return False
        return self.check(lambda: expect_bool(value, self.key(name)), False)

    def string(self, name: str, default: Any = ...) -> str:
        value = self.raw(name, default)
        if not self._present(name, default):
            return ""
        return self.check(lambda: expect_str(value, self.key(name)), "")

    def done(self) -> None:
        """Record the unknown keys; if anything here was wrong, raise every problem so far
        (a plain :class:`ConfigError` from the root, :class:`_Incomplete` from a part)."""
        for name in [k for k in self.data if k not in self.used]:
            self.fail(f"{self.key(name)}: unknown key (expected one of {', '.join(sorted(self.used))})")
        if self.failed:
            raise (ConfigError if self.parent is None else _Incomplete)(*self.problems.errors)


def _as_number(value: Any) -> float | None:
    """A finite number (numeric strings too, as :meth:`_Node.number` reads them), or None."""
    try:
        return expect_number(value, "", numeric_strings=True, low=None)
    except ConfigError:
        return None


def _backend_key(node: _Node, name: Any) -> Backend:
    try:
        return Backend(str(name))
    except ValueError:
        raise ConfigError(f"{node.key(name)}: unknown backend (expected cpu, gpu or npu)") from None


def _known_backend(node: _Node, name: Any, shown: Any = None) -> Backend | None:
    """The backend ``name``, or None with the problem recorded (under key ``shown``, default ``name``)."""
    try:
        return Backend(str(name).strip())
    except ValueError:
        node.fail(f"{node.key(name if shown is None else shown)}: unknown backend (expected cpu, gpu or npu)")
        return None


def _backend_keys(node: _Node) -> list[tuple[Backend, Any]]:
    """The backends a mapping is keyed by, with their keys; an unknown name is recorded and skipped."""
    node.used.update(node.data)
    found = [(_known_backend(node, name), name) for name in list(node.data)]
    return [(backend, name) for backend, name in found if backend is not None]


def _per_precision(node: _Node, name: str, read: Callable[[_Node, Any], T]) -> dict[Precision, T]:
    sub = node.node(name)
    out: dict[Precision, T] = {}
    for key in list(sub.data):
        try:
            precision = Precision(str(key))
        except ValueError:
            sub.fail(f"{sub.key(key)}: unknown precision (expected fp16 or int8)")
            continue
        out[precision] = sub.part(read, sub, key)
    for missing in [p.value for p in Precision if p.value not in {str(k) for k in sub.data} and not sub.absent]:
        sub.fail(f"{sub.key(missing)}: required key is missing")
    sub.used.update(sub.data)
    sub.done()
    return out


def _calls(node: _Node, name: str) -> dict[Precision, int]:
    """Launches of a stage: one integer, or one per precision."""
    if isinstance(node.raw(name, None), Mapping):
        return node.part(_per_precision, node, name, lambda n, k: n.integer(k, low=1))
    return dict.fromkeys(Precision, node.integer(name, low=1))


def _parse_rate(node: _Node, name: str) -> PrecisionRate:
    sub = node.node(name)
    rate = PrecisionRate(
        peak_flops=sub.number("peak_flops", strict=True),
        efficiency=sub.number("efficiency", strict=True),
        element_s=sub.number("element_s", 0.0),
    )
    if rate.efficiency > 1:
        sub.fail(f"{sub.key('efficiency')}: expected a fraction in (0, 1], got {rate.efficiency!r}")
    sub.done()
    return rate


def _parse_kv_buckets(node: _Node, name: str) -> KVBuckets:
    """``kv_buckets``: a list of prepared KV lengths, or ``pow2`` (every power of two)."""
    value = node.raw(name)
    if value == "pow2":
        return KVBuckets(pow2=True)
    ok = isinstance(value, list) and value and all(not isinstance(v, bool) and isinstance(v, int) for v in value)
    if not ok or min(value) < 1:
        node.fail(f"{node.key(name)}: expected 'pow2' or a non-empty list of KV lengths >= 1, got {value!r}")
        return KVBuckets()
    return KVBuckets(lengths=tuple(sorted(set(value))))


def _parse_align(node: _Node) -> Alignment:
    align = Alignment(
        k_bytes=node.integer("k_bytes", low=1),
        n_elements=node.part(_per_precision, node, "n_elements", lambda n, k: n.integer(k, low=1)),
    )
    node.done()
    return align


def _parse_shape_half(node: _Node) -> ShapeHalf:
    half = ShapeHalf(m=node.number("m"), k=node.number("k"), n=node.number("n"))
    node.done()
    return half


def _parse_page_stride(node: _Node) -> PageStride:
    stride = PageStride(
        page_bytes=node.integer("page_bytes", low=1),
        tlb_entries=node.integer("tlb_entries", low=1),
        penalty_s=node.part(_per_precision, node, "penalty_s", lambda n, key: n.number(key)),
        max_n=node.integer("max_n", 1, low=1),
    )
    node.done()
    return stride


def _parse_bound(node: _Node) -> Bound:
    bound = Bound(roofline_factor=node.number("roofline_factor", low=1.0), extra_s=node.number("extra_s"))
    node.done()
    return bound


def _optional(node: _Node, name: str, parse: Callable[[_Node], T]) -> T | None:
    return node.part(parse, node.node(name)) if node.has(name) else None


def _parse_unsupported(node: _Node) -> tuple[str, ...]:
    unsupported = node.raw("unsupported", [])
    if not isinstance(unsupported, list) or not all(isinstance(u, str) for u in unsupported):
        node.fail(f"{node.key('unsupported')}: expected a list of 'stage:precision' strings")
        return ()
    for rule in unsupported:
        stage, _, prec = rule.partition(":")
        if stage not in ("qkv", "attn", "*") or prec not in ("fp16", "int8", "*"):
            node.fail(f"{node.key('unsupported')}: bad rule {rule!r} (expected e.g. 'attn:int8' or 'qkv:*')")
    return tuple(unsupported)


def _parse_calls(node: _Node) -> dict[Stage, dict[Precision, int]]:
    calls = {stage: _calls(node, stage.value) for stage in Stage}
    node.done()
    return calls


def _parse_backend(node: _Node, name: Backend) -> BackendProfile:
    max_k = node.raw("max_k", None)
    profile = BackendProfile(
        name=name,
        clock_hz=node.number("clock_hz", strict=True),
        bandwidth_Bps=node.number("bandwidth_Bps", strict=True),
        launch_s=node.number("launch_s"),
        calls=node.part(_parse_calls, node.node("calls")),
        rates=node.part(_per_precision, node, "rates", _parse_rate),
        max_buffer_bytes=node.number("max_buffer_bytes", strict=True),
        max_k=None if max_k is None else node.integer("max_k", low=1),
        unsupported=_parse_unsupported(node),
        align=_optional(node, "align", _parse_align),
        shape_half=_optional(node, "shape_half", _parse_shape_half),
        occupancy_half=node.number("occupancy_half", 0.0),
        row_align=node.integer("row_align", 0),
        unaligned_efficiency=node.number("unaligned_efficiency", 1.0, strict=True),
        page_stride=_optional(node, "page_stride", _parse_page_stride),
        layout_Bps=node.number("layout_Bps", 0.0),
        kv_buckets=_parse_kv_buckets(node, "kv_buckets") if node.has("kv_buckets") else None,
        clock_bound_memory=node.boolean("clock_bound_memory", False),
        bound=_optional(node, "bound", _parse_bound),
    )
    if profile.unaligned_efficiency > 1:
        node.fail(f"{node.key('unaligned_efficiency')}: expected a fraction in (0, 1]")
    node.done()
    return profile


def _parse_thermal_params(node: _Node) -> ThermalParams:
    trips_raw = node.raw("trips")
    trips: list[tuple[float, float]] = []
    if not isinstance(trips_raw, (list, tuple)) or not trips_raw:
        if "trips" in node.data:
            node.fail(f"{node.key('trips')}: expected a non-empty list of [temperature_c, clock_hz]")
        trips_raw = []
    for i, item in enumerate(trips_raw):
        pair = [_as_number(v) for v in item] if isinstance(item, (list, tuple)) and len(item) == 2 else [None]
        if any(v is None or v <= 0 for v in pair):
            node.fail(f"{node.key('trips')}[{i}]: expected [temperature_c, clock_hz], got {item!r}")
            break
        temp, clock = pair
        assert temp is not None and clock is not None
        if trips and (temp <= trips[-1][0] or clock >= trips[-1][1]):
            node.fail(f"{node.key('trips')}[{i}]: trips must rise in temperature and fall in clock")
            break
        trips.append((temp, clock))
    params = ThermalParams(
        rise_c=node.number("rise_c"),
        tau_s=node.number("tau_s", strict=True),
        power_exponent=node.number("power_exponent"),
        hysteresis_c=node.number("hysteresis_c"),
        trips=tuple(trips),
    )
    node.done()
    return params


def _parse_contention_params(node: _Node) -> ContentionParams:
    params = ContentionParams(
        on_rate_hz=node.number("on_rate_hz"),
        off_rate_hz=node.number("off_rate_hz"),
        slowdown=node.number("slowdown", low=1.0),
    )
    node.done()
    return params


def _per_backend(node: _Node, parse: Callable[[_Node], T]) -> dict[Backend, T]:
    return {backend: node.part(parse, node.node(name)) for backend, name in _backend_keys(node)}


def _parse_thermal(node: _Node) -> ThermalProfile:
    b = node.node("backends")
    out = ThermalProfile(
        enabled=node.boolean("enabled"),
        ambient_c=node.number("ambient_c", low=-273.15),
        backends=_per_backend(b, _parse_thermal_params),
    )
    node.done()
    return out


def _parse_contention(node: _Node) -> ContentionProfile:
    b = node.node("backends")
    out = ContentionProfile(enabled=node.boolean("enabled"), backends=_per_backend(b, _parse_contention_params))
    node.done()
    return out


def _parse_transition(node: _Node, backends: Iterable[Backend]) -> TransitionProfile:
    sync = node.node("sync_s")
    pairs: dict[tuple[Backend, Backend], float] = {}
    for key in list(sync.data):
        src, sep, dst = str(key).partition("->")
        if not sep:
            sync.used.add(key)
            sync.fail(f"{sync.key(key)}: expected a 'producer->consumer' pair such as 'gpu->npu'")
            continue
        producer, consumer = _known_backend(sync, src), _known_backend(sync, dst)
        value = sync.number(key)
        if producer is not None and consumer is not None:
            pairs[producer, consumer] = value
    names = list(backends)
    for a in names:
        for b in names:
            if a != b and (a, b) not in pairs and f"{a.value}->{b.value}" not in sync.data:
                sync.fail(f"{sync.key(f'{a.value}->{b.value}')}: required key is missing")
    out = TransitionProfile(bandwidth_Bps=node.number("bandwidth_Bps", strict=True), sync_s=pairs)
    node.done()  # sync_s: every key is used, and a wrong one has failed this node too
    return out


def _parse_anchor(node: _Node, name: str, backends: Iterable[Backend]) -> Anchor:
    from ..workload import MODELS

    model = node.string("model")
    if "model" in node.data and model not in MODELS:
        node.fail(f"{node.key('model')}: unknown model {model!r} (known: {', '.join(MODELS)})")
    name_b = node.string("backend")
    known = {b.value for b in backends} or {b.value for b in Backend}  # no sound backends: already said
    if "backend" in node.data and name_b not in known:
        node.fail(f"{node.key('backend')}: {name_b!r} is not a backend of this profile")
    precision = node.string("precision")
    if "precision" in node.data and precision not in {p.value for p in Precision}:
        node.fail(f"{node.key('precision')}: unknown precision {precision!r} (expected fp16 or int8)")
    kv = node.raw("kv_len")
    if not (isinstance(kv, list) and len(kv) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in kv)):
        if "kv_len" in node.data:
            node.fail(f"{node.key('kv_len')}: expected [first, last] decode KV lengths, got {kv!r}")
        kv = [0, 0]
    elif not 0 <= kv[0] <= kv[1]:
        node.fail(f"{node.key('kv_len')}: expected 0 <= first <= last, got {kv!r}")
    source, weight_bytes = node.string("source"), node.number("weight_bytes", strict=True)
    cores, launches = node.integer("cores", 1, low=1), node.integer("launches", 0)
    tok_s, tolerance = node.number("tok_s", strict=True), node.number("tolerance", strict=True)
    node.done()  # the names below are known from here on
    return Anchor(
        name=name,
        source=source,
        model=model,
        backend=Backend(name_b),
        precision=Precision(precision),
        weight_bytes=weight_bytes,
        cores=cores,
        launches=launches,
        kv_len=(kv[0], kv[1]),
        tok_s=tok_s,
        tolerance=tolerance,
    )


def _parse_anchors(node: _Node, backends: Iterable[Backend]) -> tuple[Anchor, ...]:
    anchors = tuple(node.part(_parse_anchor, node.node(k), str(k), backends) for k in list(node.data))
    node.done()
    return anchors


def _parse_noise(node: _Node) -> float:
    sigma = node.number("sigma")
    node.done()
    return sigma


def _parse_memory(node: _Node) -> float:
    dram_Bps = node.number("dram_Bps", strict=True)
    node.done()
    return dram_Bps


def _parse_profile(root: _Node, source: str) -> DeviceProfile:
    b = root.node("backends")
    backends = {key: b.part(_parse_backend, b.node(name), key) for key, name in _backend_keys(b)}
    if not b.data and not b.failed:
        root.fail("backends: at least one backend is required")
    thermal = root.part(_parse_thermal, root.node("thermal"))
    contention = root.part(_parse_contention, root.node("contention"))
    for section, part in (("thermal", thermal), ("contention", contention)):
        # checked against the profile's backends only when there are some (else: already said)
        for backend in part.backends if part is not None and backends else ():
            if backend not in backends:
                root.fail(f"{section}.backends.{backend.value}: not a backend of this profile")
    profile = DeviceProfile(
        name=root.string("name"),
        description=root.string("description", ""),
        backends=backends,
        transition=root.part(_parse_transition, root.node("transition"), backends),
        noise_sigma=root.part(_parse_noise, root.node("noise")),
        thermal=thermal,
        contention=contention,
        dram_Bps=root.part(_parse_memory, root.node("memory")) if root.has("memory") else float("inf"),
        anchors=root.part(_parse_anchors, root.node("anchors"), backends) if root.has("anchors") else (),
        source=source,
    )
    root.done()
    return profile


def parse_profile(data: Any, source: str = "") -> DeviceProfile:
    """Validate a mapping (parsed YAML) into a profile.

    Raises one :class:`~adaptive_sched.errors.ConfigError` listing every problem, each
    line ``source: key: message``.
    """
    problems = Problems()
    try:
        return _parse_profile(_Node(data, "", problems), source)
    except ConfigError:  # raised by the root's done(): every problem is recorded
        problems.raise_if_any(source or "<mapping>")
        raise


def load_profile(name_or_path: str | Path = "rk3588") -> DeviceProfile:
    """Load a device profile by shipped name (``"rk3588"``) or path.

    Raises :class:`~adaptive_sched.errors.ConfigError` naming the file and the key.

    >>> p = load_profile("rk3588")
    >>> p.name, sorted(b.value for b in p.backends)
    ('rk3588', ['cpu', 'gpu', 'npu'])
    """
    path = resolve_config(name_or_path, "devices")
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    return _load_profile_cached(str(path), stamp)


@lru_cache(maxsize=32)
def _load_profile_cached(path: str, stamp: int) -> DeviceProfile:
    data = read_yaml(path)
    return parse_profile(data if data is not None else {}, source=path)
