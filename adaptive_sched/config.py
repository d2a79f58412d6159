"""Configuration: YAML (or a dict) into validated, frozen dataclasses.

A config names the device profile, the backends and the executor behind each, the
priors, the policy, the log store and the default workload of ``adaptive-sched run``.
Every error names the key and the file it came from::

    ConfigError: configs/x.yaml: policy.explore_budget: expected a number, got 'lots'

The shipped configs live in ``configs/`` (see :mod:`adaptive_sched.paths`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .executors import executor_class
from .paths import resolve_config
from .types import Backend, Precision

#: the largest config file read, in bytes: a config is a page of YAML, and a file far larger
#: is a mistake (or hostile) that would otherwise cost seconds and gigabytes to parse
MAX_CONFIG_BYTES = 1 << 20
#: the most values (mappings, lists and scalars) a config may hold with its YAML aliases
#: expanded: a few nested anchors can stand for billions of values ...
MAX_CONFIG_NODES = 20_000
#: ... and the deepest it may nest (a self-referencing alias nests without end)
MAX_CONFIG_DEPTH = 32
#: the effective config is stored with each run in the log; beyond this many bytes of JSON only
#: its hash and size are (a log row must stay small whatever a caller builds in a dict)
MAX_RUN_CONFIG_BYTES = 64 * 1024


@dataclass(frozen=True)
class BackendConfig:
    """One backend: which executor runs it and with which options."""

    executor: str
    #: "candidate" backends are chosen between; a "fallback" only runs a stage whose backend failed
    role: str = "candidate"
    options: dict[str, Any] = field(default_factory=dict)

    def _validate(self, where: str) -> None:
        if self.role not in ("candidate", "fallback"):
            raise ConfigError(f"{where}.role: expected 'candidate' or 'fallback', got {self.role!r}")
        try:  # built in, or installed by another package (an entry point)
            cls = executor_class(self.executor)
        except ConfigError as exc:
            raise ConfigError(f"{where}.executor: {exc}") from None
        known = cls.OPTIONS
        for key in self.options:
            if key not in known or key in cls.INTERNAL_OPTIONS:
                settable = sorted(set(known) - set(cls.INTERNAL_OPTIONS))
                raise ConfigError(
                    f"{where}.options.{key}: not an option of executor {self.executor!r} "
                    f"(its options: {', '.join(settable) or 'none'})"
                )
        try:  # the executor checks its values; creating one touches no device
            cls(**self.options).close()
        except (ConfigError, ValueError, TypeError) as exc:
            raise ConfigError(f"{where}.options: {exc}") from None


@dataclass(frozen=True)
class SimulatorConfig:
    """The simulated device shared by every ``executor: sim`` backend."""

    profile: str = "rk3588"
    seed: int = 0
    #: log-normal latency noise: true (the profile's sigma), false, or a sigma
    noise: bool | float = True
    #: thermal drift: true/false, or a mapping overriding the profile's settings
    thermal: bool | dict[str, Any] = True
    #: on/off background load: true/false, or a mapping overriding the profile's settings
    contention: bool | dict[str, Any] = False
    #: scripted changes, e.g. ``{time_s: 10, backend: gpu, slowdown: 2.0}``
    steps: list[dict[str, Any]] = field(default_factory=list)

    def make_device(self) -> Any:
        """The simulated device this section describes (imports the simulator)."""
        from .sim import SimulatedDevice

        return SimulatedDevice(
            self.profile,
            seed=self.seed,
            noise=self.noise,
            thermal=self.thermal,
            contention=self.contention,
            steps=self.steps,
        )

    def _validate(self, where: str) -> None:
        if self.seed < 0:
            raise ConfigError(f"{where}.seed: must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.noise, bool) and not self.noise >= 0:
            raise ConfigError(f"{where}.noise: expected true, false or a sigma >= 0, got {self.noise!r}")
        from .sim import load_profile

        try:
            load_profile(self.profile)
        except ConfigError as exc:
            raise ConfigError(f"{where}.profile: {exc}") from None
        try:  # the drift overrides are checked by the device they describe (the profile is cached)
            self.make_device()
        except (ConfigError, ValueError, TypeError) as exc:
            head = re.split(r"[.\[:]", str(exc), maxsplit=1)[0]
            sep = "." if head in {f.name for f in dataclasses.fields(self)} else ": "
            raise ConfigError(f"{where}{sep}{exc}") from None


#: keys of the ``policy`` section that every kind shares; the rest are the kind's own ``Params``
POLICY_COMMON = ("kind", "learner", "timeout_s", "max_latency_s")


@dataclass(frozen=True)
class PolicyConfig:
    """The ``policy`` section: which policy, how the scheduler runs it, and the kind's own parameters.

    The kind's parameters sit beside these keys in YAML (``policy: {kind: adaptive,
    explore_budget: 0.01}``) and are declared by the kind's class (its ``Params``
    dataclass, see :mod:`adaptive_sched.policies`).
    """

    #: "adaptive" (the bandit), or a baseline: "static", "fixed", "epsilon", "oracle"
    kind: str = "adaptive"
    #: learn on the caller's thread ("inline", deterministic) or on a background thread ("thread")
    learner: str = "inline"
    #: a stage run slower than this (seconds) is abandoned, re-run elsewhere, and its backend quarantined
    timeout_s: float = 1.0
    #: an observed latency above this (seconds) is implausible: refused and counted, never learned
    #: (also for rows read from the log at a warm start)
    max_latency_s: float = 60.0
    #: the kind's parameters (an instance of its ``Params``); None means its defaults
    params: Any = field(default=None, metadata={"internal": True})

    def _validate(self, where: str) -> None:
        from .policies import POLICIES

        if self.kind not in POLICIES:
            raise ConfigError(f"{where}.kind: expected one of {', '.join(sorted(POLICIES))}, got {self.kind!r}")
        if self.learner not in ("inline", "thread"):
            raise ConfigError(f"{where}.learner: expected 'inline' or 'thread', got {self.learner!r}")
        if not self.timeout_s > 0:
            raise ConfigError(f"{where}.timeout_s: must be > 0, got {self.timeout_s!r}")
        if not self.max_latency_s > 0:
            raise ConfigError(f"{where}.max_latency_s: must be > 0, got {self.max_latency_s!r}")

    def resolved_params(self) -> Any:
        """The kind's parameters, its defaults filled in."""
        from .policies import policy_class

        return self.params if self.params is not None else policy_class(self.kind).Params()


def _build_policy(data: Any) -> PolicyConfig:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"policy: expected a mapping, got {type(data).__name__}")
    common = {k: v for k, v in data.items() if k in POLICY_COMMON}
    config: PolicyConfig = _build(PolicyConfig, common, "policy")
    from .policies import policy_class

    own = {k: v for k, v in data.items() if k not in POLICY_COMMON}
    params = _build(policy_class(config.kind).Params, own, "policy")
    return dataclasses.replace(config, params=params)


@dataclass(frozen=True)
class RetentionConfig:
    max_rows: int | None = None
    max_age_days: float | None = None
    #: how often the log writer counts the rows against the limits (seconds; 0: before every batch)
    check_every_s: float = 10.0

    def _validate(self, where: str) -> None:
        if self.max_rows is not None and self.max_rows < 1:
            raise ConfigError(f"{where}.max_rows: must be an integer >= 1 (or null: no limit), got {self.max_rows!r}")
        if self.max_age_days is not None and not self.max_age_days > 0:
            raise ConfigError(f"{where}.max_age_days: must be > 0 (or null: no limit), got {self.max_age_days!r}")
        if not self.check_every_s >= 0:
            raise ConfigError(f"{where}.check_every_s: must be >= 0, got {self.check_every_s!r}")


@dataclass(frozen=True)
class StoreConfig:
    """The SQLite decision log. ``path: null`` runs without a log."""

    path: str | None = None
    queue_size: int = 100_000
    flush_rows: int = 2000
    flush_interval_s: float = 0.25
    #: "drop" (count and go on; never blocks inference) or "block" (wait for the writer)
    on_full: str = "drop"
    exploit_sample_rate: float = 1.0
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    #: rebuild the learner's state from this many most recent logged outcomes at start
    warm_start_rows: int = 20_000

    def _validate(self, where: str) -> None:
        if self.on_full not in ("drop", "block"):
            raise ConfigError(f"{where}.on_full: expected 'drop' or 'block', got {self.on_full!r}")
        if not 0.0 < self.exploit_sample_rate <= 1.0:
            raise ConfigError(
                f"{where}.exploit_sample_rate: expected a number in (0, 1], got {self.exploit_sample_rate!r}"
            )
        for name in ("queue_size", "flush_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.flush_interval_s > 0:
            raise ConfigError(f"{where}.flush_interval_s: must be > 0, got {self.flush_interval_s!r}")
        if self.warm_start_rows < 0:
            raise ConfigError(f"{where}.warm_start_rows: must be an integer >= 0, got {self.warm_start_rows!r}")


@dataclass(frozen=True)
class WorkloadConfig:
    """The decode workload of ``adaptive-sched run``: a model shape, a prompt, generated tokens."""

    model: str = "qwen2.5-1.5b"
    precision: Precision = Precision.INT8
    prompt: int = 128
    tokens: int = 64
    #: layers to run per token (None: all of the model's layers)
    layers: int | None = None
    batch: int = 1
    #: idle time between tokens (seconds of device time spent elsewhere: FFN, sampling)
    idle_between_tokens_s: float = 0.0

    def _validate(self, where: str) -> None:
        for name in ("prompt", "tokens", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be an integer >= 1, got {getattr(self, name)!r}")
        if self.layers is not None and self.layers < 1:
            raise ConfigError(f"{where}.layers: must be an integer >= 1 (or null: all), got {self.layers!r}")
        if self.idle_between_tokens_s < 0:
            raise ConfigError(f"{where}.idle_between_tokens_s: must be >= 0, got {self.idle_between_tokens_s!r}")


@dataclass(frozen=True)
class Config:
    """A whole scheduler configuration.

    Examples
    --------
    >>> cfg = load_config("rk3588-sim")
    >>> cfg.device, sorted(b.value for b in cfg.candidates)
    ('rk3588', ['gpu', 'npu'])
    """

    device: str
    backends: dict[Backend, BackendConfig]
    simulator: SimulatorConfig | None = None
    #: "builtin" (shipped priors for the device), a JSON or SQLite path, or "none"
    priors: str = "builtin"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    #: where this config came from ('' for a dict), for messages and relative paths; not a YAML key
    source: str = field(default="", metadata={"internal": True})

    @property
    def candidates(self) -> tuple[Backend, ...]:
        """Backends the policy chooses between, in config order."""
        return tuple(b for b, bc in self.backends.items() if bc.role == "candidate")

    @property
    def fallbacks(self) -> tuple[Backend, ...]:
        return tuple(b for b, bc in self.backends.items() if bc.role == "fallback")

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able, loadable again), without ``source``."""
        data = _plain(dataclasses.asdict(self))
        data.pop("source", None)
        policy = data["policy"]
        policy.update(_plain(dataclasses.asdict(self.policy.resolved_params())))
        policy.pop("params", None)
        return data

    def log_json(self, limit: int = MAX_RUN_CONFIG_BYTES) -> str:
        """The effective config as JSON, for the log's ``runs`` table: at most ``limit`` bytes.

        A larger config is stored as its hash and size only (the hash is logged either way).
        """
        text = json.dumps(self.as_dict(), sort_keys=True)
        if len(text.encode()) <= limit:
            return text
        return json.dumps({"omitted": "larger than the log stores", "bytes": len(text.encode()),
                           "config_hash": self.content_hash()}, sort_keys=True)  # fmt: skip

    def content_hash(self) -> str:
        """A short hash of the effective config, logged with each run."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def resolve_path(self, path: str) -> str:
        """A path from the config, relative to the config file's directory."""
        p = Path(path).expanduser()
        if p.is_absolute() or not self.source:
            return str(p)
        return str(Path(self.source).parent / p)

    def _validate(self, where: str) -> None:
        if not self.backends:
            raise ConfigError("backends: at least one backend is required")
        if not self.candidates:
            raise ConfigError("backends: at least one backend must have role 'candidate'")
        uses_sim = any(bc.executor == "sim" for bc in self.backends.values())
        if uses_sim and self.simulator is None:
            raise ConfigError("simulator: required because a backend uses executor 'sim'")
        params = self.policy.resolved_params()
        if self.policy.kind == "fixed" and params.backend not in {b.value for b in self.backends}:
            raise ConfigError(f"policy.backend: {params.backend!r} is not a configured backend")
        if self.policy.kind == "oracle" and not uses_sim:
            raise ConfigError("policy.kind: 'oracle' needs a simulated device")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(getattr(k, "value", k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return getattr(value, "value", value)


def load_config(source: str | Path | Mapping[str, Any]) -> Config:
    """Load and validate a config from a YAML path, a shipped config name, or a mapping.

    Raises :class:`~adaptive_sched.errors.ConfigError` naming the file and the key.
    """
    if isinstance(source, Mapping):
        return build_config(source, origin="")
    path = resolve_config(source)
    import yaml

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes, the most a config may be")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return build_config(data, origin=str(path))


def build_config(data: Mapping[str, Any], origin: str = "") -> Config:
    """Validate a mapping into a :class:`Config`; ``origin`` names the file in messages."""
    try:
        _check_bounded(data)
        return _build_config(data, origin)
    except ConfigError as exc:
        if origin:
            raise ConfigError(f"{origin}: {exc}") from None
        raise


def _check_bounded(data: Any) -> None:
    """Refuse a config of more than :data:`MAX_CONFIG_NODES` values or nested deeper than
    :data:`MAX_CONFIG_DEPTH`, counting shared (aliased) values at every place they appear.

    The walk stops at the first limit crossed, so an alias bomb fails in microseconds
    instead of being expanded later (by validation, hashing, or the log's copy of the config).
    """
    budget = MAX_CONFIG_NODES
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        budget -= 1
        if budget < 0:
            key = where.split("[", 1)[0]  # the key, not the path inside its expansion
            raise ConfigError(
                f"{key or 'config'}: more than {MAX_CONFIG_NODES} values with YAML aliases expanded "
                "(an alias bomb?); a config is far smaller"
            )
        if depth > MAX_CONFIG_DEPTH:
            key = where.split("[", 1)[0]
            raise ConfigError(f"{key}: nested deeper than {MAX_CONFIG_DEPTH} levels (a self-referencing alias?)")
        if isinstance(value, Mapping):
            stack.extend((v, _join(where, str(k)), depth + 1) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))


def _build_config(data: Mapping[str, Any], origin: str) -> Config:
    data = dict(data)
    backends_raw = data.pop("backends", None)
    if not isinstance(backends_raw, Mapping):
        raise ConfigError("backends: required, a mapping of backend name (cpu, gpu, npu) to executor")
    backends: dict[Backend, BackendConfig] = {}
    for name, spec in backends_raw.items():
        try:
            backend = Backend(str(name))
        except ValueError:
            raise ConfigError(f"backends.{name}: unknown backend (expected cpu, gpu or npu)") from None
        if isinstance(spec, str):
            spec = {"executor": spec}
        backends[backend] = _build(BackendConfig, spec, f"backends.{name}")
    data["backends"] = {}
    policy = _build_policy(data.pop("policy", None))
    config: Config = _build(Config, data, "")
    config = dataclasses.replace(config, backends=backends, policy=policy, source=origin)
    config._validate("")
    return config


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, checking keys and types; errors name ``where.key``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = [k for k in data if k not in fields]
    if unknown:
        expected = f"expected one of {', '.join(sorted(fields))}" if fields else "none is taken here"
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key ({expected})")
    kwargs = {name: _coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]  # fmt: skip
    if missing:
        raise ConfigError(f"{_join(where, missing[0])}: required key is missing")
    try:
        obj = cls(**kwargs)
    except ValueError as exc:
        # A parameter class's own check names its field first ("epsilon must be ..."): name its key.
        name, _, rest = str(exc).partition(" ")
        if name in fields and rest:
            raise ConfigError(f"{_join(where, name)}: {rest}") from None
        raise ConfigError(f"{where or 'config'}: {exc}") from None
    if cls is not Config and hasattr(obj, "_validate"):
        obj._validate(where)
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        last: ConfigError | None = None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError as exc:
                last = exc
        assert last is not None
        raise last
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)  # type: ignore[arg-type]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(hint, type) and issubclass(hint, Precision):
        try:
            return Precision(str(value).lower())
        except ValueError:
            raise ConfigError(f"{where}: expected 'fp16' or 'int8', got {value!r}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is Any:
        return value
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")  # a bug in the config schema
