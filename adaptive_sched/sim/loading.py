"""Reading device profiles: YAML in, a validated :class:`DeviceProfile` out.

Errors are :class:`~adaptive_sched.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..paths import resolve_config
from ..types import Backend, Precision, Stage
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


class _Node:
    """A mapping being read: tracks its key path and which keys were used, for error messages."""

    def __init__(self, data: Any, path: str = "") -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or 'profile'}: expected a mapping, got {type(data).__name__}")
        self.data, self.path = data, path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else str(name)

    def has(self, name: str) -> bool:
        self.used.add(name)  # an optional key is still a known one, for "unknown key" messages
        return name in self.data

    def raw(self, name: str, default: Any = ...) -> Any:
        self.used.add(name)
        if name in self.data:
            return self.data[name]
        if default is ...:
            raise ConfigError(f"{self.key(name)}: required key is missing")
        return default

    def node(self, name: str) -> _Node:
        return _Node(self.raw(name), self.key(name))

    def number(self, name: str, default: Any = ..., *, low: float = 0.0, strict: bool = False) -> float:
        value = _as_number(self.raw(name, default))
        if value is None:
            raise ConfigError(f"{self.key(name)}: expected a number, got {self.data.get(name, default)!r}")
        if value < low or (strict and value == low):
            raise ConfigError(f"{self.key(name)}: expected a number {'>' if strict else '>='} {low:g}, got {value!r}")
        return float(value)

    def integer(self, name: str, default: Any = ..., *, low: int = 0) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.key(name)}: expected an integer, got {value!r}")
        if value < low:
            raise ConfigError(f"{self.key(name)}: expected an integer >= {low}, got {value!r}")
        return value

    def boolean(self, name: str, default: Any = ...) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: expected true or false, got {value!r}")
        return value

    def string(self, name: str, default: Any = ...) -> str:
        value = self.raw(name, default)
        if not isinstance(value, str):
            raise ConfigError(f"{self.key(name)}: expected a string, got {value!r}")
        return value

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self.used]
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key (expected one of {', '.join(sorted(self.used))})")


def _as_number(value: Any) -> float | None:
    """A finite number, or None. YAML 1.1 reads ``1e9`` (no dot, no exponent sign) as a
    string, so numeric strings are accepted too."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _backend_key(node: _Node, name: Any) -> Backend:
    try:
        return Backend(str(name))
    except ValueError:
        raise ConfigError(f"{node.key(name)}: unknown backend (expected cpu, gpu or npu)") from None


def _precision_key(node: _Node, name: Any) -> Precision:
    try:
        return Precision(str(name))
    except ValueError:
        raise ConfigError(f"{node.key(name)}: unknown precision (expected fp16 or int8)") from None


def _per_precision(node: _Node, name: str, read: Any) -> dict[Precision, Any]:
    sub = node.node(name)
    out = {_precision_key(sub, k): read(sub, k) for k in list(sub.data)}
    missing = [p.value for p in Precision if p not in out]
    if missing:
        raise ConfigError(f"{sub.key(missing[0])}: required key is missing")
    return out


def _calls(node: _Node, name: str) -> dict[Precision, int]:
    """Launches of a stage: one integer, or one per precision."""
    if isinstance(node.raw(name), Mapping):
        return _per_precision(node, name, lambda n, k: n.integer(k, low=1))
    return dict.fromkeys(Precision, node.integer(name, low=1))


def _parse_rate(node: _Node, name: str) -> PrecisionRate:
    sub = node.node(name)
    rate = PrecisionRate(
        peak_flops=sub.number("peak_flops", strict=True),
        efficiency=sub.number("efficiency", strict=True),
        element_s=sub.number("element_s", 0.0),
    )
    if rate.efficiency > 1:
        raise ConfigError(f"{sub.key('efficiency')}: expected a fraction in (0, 1], got {rate.efficiency!r}")
    sub.done()
    return rate


def _parse_kv_buckets(node: _Node, name: str) -> KVBuckets:
    """``kv_buckets``: a list of prepared KV lengths, or ``pow2`` (every power of two)."""
    value = node.raw(name)
    if value == "pow2":
        return KVBuckets(pow2=True)
    ok = isinstance(value, list) and value and all(not isinstance(v, bool) and isinstance(v, int) for v in value)
    if not ok or min(value) < 1:
        raise ConfigError(f"{node.key(name)}: expected 'pow2' or a non-empty list of KV lengths >= 1, got {value!r}")
    return KVBuckets(lengths=tuple(sorted(set(value))))


def _parse_backend(node: _Node, name: Backend) -> BackendProfile:
    calls_node = node.node("calls")
    calls = {stage: _calls(calls_node, stage.value) for stage in Stage}
    calls_node.done()
    rates = _per_precision(node, "rates", _parse_rate)
    align = None
    if node.has("align"):
        a = node.node("align")
        align = Alignment(
            k_bytes=a.integer("k_bytes", low=1),
            n_elements=_per_precision(a, "n_elements", lambda n, k: n.integer(k, low=1)),
        )
        a.done()
    shape_half = None
    if node.has("shape_half"):
        s = node.node("shape_half")
        shape_half = ShapeHalf(m=s.number("m"), k=s.number("k"), n=s.number("n"))
        s.done()
    page_stride = None
    if node.has("page_stride"):
        k = node.node("page_stride")
        page_stride = PageStride(
            page_bytes=k.integer("page_bytes", low=1),
            tlb_entries=k.integer("tlb_entries", low=1),
            penalty_s=_per_precision(k, "penalty_s", lambda n, key: n.number(key)),
            max_n=k.integer("max_n", 1, low=1),
        )
        k.done()
    bound = None
    if node.has("bound"):
        bn = node.node("bound")
        bound = Bound(roofline_factor=bn.number("roofline_factor", low=1.0), extra_s=bn.number("extra_s"))
        bn.done()
    unsupported = node.raw("unsupported", [])
    if not isinstance(unsupported, list) or not all(isinstance(u, str) for u in unsupported):
        raise ConfigError(f"{node.key('unsupported')}: expected a list of 'stage:precision' strings")
    for rule in unsupported:
        stage, _, prec = rule.partition(":")
        if stage not in ("qkv", "attn", "*") or prec not in ("fp16", "int8", "*"):
            raise ConfigError(f"{node.key('unsupported')}: bad rule {rule!r} (expected e.g. 'attn:int8' or 'qkv:*')")
    max_k = node.raw("max_k", None)
    if max_k is not None:
        max_k = node.integer("max_k", low=1)
    profile = BackendProfile(
        name=name,
        clock_hz=node.number("clock_hz", strict=True),
        bandwidth_Bps=node.number("bandwidth_Bps", strict=True),
        launch_s=node.number("launch_s"),
        calls=calls,
        rates=rates,
        max_buffer_bytes=node.number("max_buffer_bytes", strict=True),
        max_k=max_k,
        unsupported=tuple(unsupported),
        align=align,
        shape_half=shape_half,
        occupancy_half=node.number("occupancy_half", 0.0),
        row_align=node.integer("row_align", 0),
        unaligned_efficiency=node.number("unaligned_efficiency", 1.0, strict=True),
        page_stride=page_stride,
        layout_Bps=node.number("layout_Bps", 0.0),
        kv_buckets=_parse_kv_buckets(node, "kv_buckets") if node.has("kv_buckets") else None,
        clock_bound_memory=node.boolean("clock_bound_memory", False),
        bound=bound,
    )
    if profile.unaligned_efficiency > 1:
        raise ConfigError(f"{node.key('unaligned_efficiency')}: expected a fraction in (0, 1]")
    node.done()
    return profile


def _parse_thermal_params(node: _Node) -> ThermalParams:
    trips_raw = node.raw("trips")
    if not isinstance(trips_raw, (list, tuple)) or not trips_raw:
        raise ConfigError(f"{node.key('trips')}: expected a non-empty list of [temperature_c, clock_hz]")
    trips: list[tuple[float, float]] = []
    for i, item in enumerate(trips_raw):
        pair = [_as_number(v) for v in item] if isinstance(item, (list, tuple)) and len(item) == 2 else [None]
        if any(v is None or v <= 0 for v in pair):
            raise ConfigError(f"{node.key('trips')}[{i}]: expected [temperature_c, clock_hz], got {item!r}")
        temp, clock = pair
        assert temp is not None and clock is not None
        if trips and (temp <= trips[-1][0] or clock >= trips[-1][1]):
            raise ConfigError(f"{node.key('trips')}[{i}]: trips must rise in temperature and fall in clock")
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


def _parse_thermal(node: _Node) -> ThermalProfile:
    b = node.node("backends")
    out = ThermalProfile(
        enabled=node.boolean("enabled"),
        ambient_c=node.number("ambient_c", low=-273.15),
        backends={_backend_key(b, k): _parse_thermal_params(b.node(k)) for k in list(b.data)},
    )
    node.done()
    return out


def _parse_contention(node: _Node) -> ContentionProfile:
    b = node.node("backends")
    out = ContentionProfile(
        enabled=node.boolean("enabled"),
        backends={_backend_key(b, k): _parse_contention_params(b.node(k)) for k in list(b.data)},
    )
    node.done()
    return out


def _parse_transition(node: _Node, backends: Iterable[Backend]) -> TransitionProfile:
    sync = node.node("sync_s")
    pairs: dict[tuple[Backend, Backend], float] = {}
    for key in list(sync.data):
        src, sep, dst = str(key).partition("->")
        if not sep:
            raise ConfigError(f"{sync.key(key)}: expected a 'producer->consumer' pair such as 'gpu->npu'")
        pair = (_backend_key(sync, src.strip()), _backend_key(sync, dst.strip()))
        pairs[pair] = sync.number(key)
    names = list(backends)
    for a in names:
        for b in names:
            if a != b and (a, b) not in pairs:
                raise ConfigError(f"{sync.key(f'{a.value}->{b.value}')}: required key is missing")
    out = TransitionProfile(bandwidth_Bps=node.number("bandwidth_Bps", strict=True), sync_s=pairs)
    node.done()
    return out


def _anchor_precision(node: _Node) -> Precision:
    value = node.string("precision")
    try:
        return Precision(value)
    except ValueError:
        raise ConfigError(f"{node.key('precision')}: unknown precision {value!r} (expected fp16 or int8)") from None


def _parse_anchor(node: _Node, name: str, backends: Iterable[Backend]) -> Anchor:
    from ..workload import MODELS

    model = node.string("model")
    if model not in MODELS:
        raise ConfigError(f"{node.key('model')}: unknown model {model!r} (known: {', '.join(MODELS)})")
    name_b = node.string("backend")
    if name_b not in {b.value for b in backends}:
        raise ConfigError(f"{node.key('backend')}: {name_b!r} is not a backend of this profile")
    backend = Backend(name_b)
    kv = node.raw("kv_len")
    if not (isinstance(kv, list) and len(kv) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in kv)):
        raise ConfigError(f"{node.key('kv_len')}: expected [first, last] decode KV lengths, got {kv!r}")
    if not 0 <= kv[0] <= kv[1]:
        raise ConfigError(f"{node.key('kv_len')}: expected 0 <= first <= last, got {kv!r}")
    anchor = Anchor(
        name=name,
        source=node.string("source"),
        model=model,
        backend=backend,
        precision=_anchor_precision(node),
        weight_bytes=node.number("weight_bytes", strict=True),
        cores=node.integer("cores", 1, low=1),
        launches=node.integer("launches", 0),
        kv_len=(kv[0], kv[1]),
        tok_s=node.number("tok_s", strict=True),
        tolerance=node.number("tolerance", strict=True),
    )
    node.done()
    return anchor


def _parse_profile(root: _Node, source: str) -> DeviceProfile:
    b = root.node("backends")
    backends = {_backend_key(b, k): _parse_backend(b.node(k), _backend_key(b, k)) for k in list(b.data)}
    if not backends:
        raise ConfigError("backends: at least one backend is required")
    noise = root.node("noise")
    sigma = noise.number("sigma")
    noise.done()
    dram_Bps = float("inf")
    if root.has("memory"):
        memory = root.node("memory")
        dram_Bps = memory.number("dram_Bps", strict=True)
        memory.done()
    anchors: list[Anchor] = []
    if root.has("anchors"):
        a = root.node("anchors")
        anchors = [_parse_anchor(a.node(k), str(k), backends) for k in list(a.data)]
        a.done()
    profile = DeviceProfile(
        name=root.string("name"),
        description=root.string("description", ""),
        backends=backends,
        transition=_parse_transition(root.node("transition"), backends),
        noise_sigma=sigma,
        thermal=_parse_thermal(root.node("thermal")),
        contention=_parse_contention(root.node("contention")),
        dram_Bps=dram_Bps,
        anchors=tuple(anchors),
        source=source,
    )
    root.done()
    for section in ("thermal", "contention"):
        for backend in getattr(profile, section).backends:
            if backend not in backends:
                raise ConfigError(f"{section}.backends.{backend.value}: not a backend of this profile")
    return profile


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
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    return DeviceProfile.from_dict(data if data is not None else {}, source=path)
