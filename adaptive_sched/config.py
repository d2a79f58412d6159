"""Configuration: YAML (or a dict) into validated, frozen dataclasses.

A config names the device profile, the backends and the executor behind each, the
priors, the policy, the log store and the default workload of ``adaptive-sched run``.
Every problem of a config is reported at once, one line each naming the file and the key::

    ConfigError: configs/x.yaml: policy.explore_budget: expected a number, got 'lots'
    configs/x.yaml: store.on_full: expected 'drop' or 'block', got 'wait'

(``exc.errors`` lists the lines). Each section checks its own values in ``_validate(where)``,
which raises one error listing all of them; checks across sections run once every section
is sound. :mod:`adaptive_sched.config_schema` exports the same rules as a JSON Schema.

The shipped configs live in ``configs/`` (see :mod:`adaptive_sched.paths`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError
from .executors import executor_class
from .paths import resolve_config
from .telemetry.config import TelemetryConfig
from .types import Backend, Precision
from .validation import (
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    Problems,
    check_bounded,
    expect_bool,
    expect_int,
    expect_number,
    expect_str,
    join,
    read_yaml,
)

#: the bounds every YAML file is read within (see :mod:`adaptive_sched.validation`)
MAX_CONFIG_BYTES, MAX_CONFIG_NODES, MAX_CONFIG_DEPTH = MAX_YAML_BYTES, MAX_YAML_NODES, MAX_YAML_DEPTH
#: the effective config is stored with each run in the log; beyond this many bytes of JSON only
#: its hash and size are (a log row must stay small whatever a caller builds in a dict)
MAX_RUN_CONFIG_BYTES = 64 * 1024
#: the values a few string settings take (a field's ``choices``; the JSON Schema lists them too)
ROLES = ("candidate", "fallback")
LEARNERS = ("inline", "thread")
ON_FULL = ("drop", "block")


@dataclass(frozen=True)
class BackendConfig:
    """One backend: which executor runs it and with which options.

    In YAML, a string alone is the executor (``gpu: opencl``), its other keys left as defaults.
    """

    #: the key a string alone stands for
    SHORTHAND: ClassVar[str] = "executor"

    #: the executor that runs the backend's stages, by name (see ``adaptive-sched executors``)
    executor: str
    #: "candidate" backends are chosen between; a "fallback" only runs a stage whose backend failed
    role: str = field(default="candidate", metadata={"choices": ROLES})
    #: the executor's own options
    options: dict[str, Any] = field(default_factory=dict)

    def _validate(self, where: str) -> None:
        problems = Problems()
        if self.role not in ROLES:
            problems.add(f"{where}.role: expected 'candidate' or 'fallback', got {self.role!r}")
        try:  # built in, or installed by another package (an entry point)
            cls = executor_class(self.executor)
        except ConfigError as exc:
            problems.extend(exc, f"{where}.executor: ")
            problems.raise_if_any()  # the options cannot be checked without the executor
        settable = sorted(set(cls.OPTIONS) - set(cls.INTERNAL_OPTIONS))
        for key in self.options:
            if key not in settable:
                problems.add(
                    f"{where}.options.{key}: not an option of executor {self.executor!r} "
                    f"(its options: {', '.join(settable) or 'none'})"
                )
        if not problems:
            try:  # the executor checks its values; creating one touches no device
                cls(**self.options).close()
            except (ConfigError, ValueError, TypeError) as exc:
                problems.extend(_as_config_error(exc), f"{where}.options: ")
        problems.raise_if_any()


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
        problems = Problems()
        if self.seed < 0:
            problems.add(f"{where}.seed: must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.noise, bool) and not self.noise >= 0:
            problems.add(f"{where}.noise: expected true, false or a sigma >= 0, got {self.noise!r}")
        from .sim import load_profile

        with problems.catch(f"{where}.profile: "):
            load_profile(self.profile)
        if not problems:
            try:  # the drift overrides are checked by the device they describe (the profile is cached)
                self.make_device()
            except (ConfigError, ValueError, TypeError) as exc:
                names = {f.name for f in dataclasses.fields(self)}
                for line in _as_config_error(exc).errors:
                    head = re.split(r"[.\[:]", line, maxsplit=1)[0]
                    problems.add(f"{where}{'.' if head in names else ': '}{line}")
        problems.raise_if_any()


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
    learner: str = field(default="inline", metadata={"choices": LEARNERS})
    #: a stage run slower than this (seconds) is abandoned, re-run elsewhere, and its backend quarantined
    timeout_s: float = 1.0
    #: an observed latency above this (seconds) is implausible: refused and counted, never learned
    #: (also for rows read from the log at a warm start)
    max_latency_s: float = 60.0
    #: the kind's parameters (an instance of its ``Params``); None means its defaults
    params: Any = field(default=None, metadata={"internal": True})

    def _validate(self, where: str) -> None:
        from .policies import POLICIES

        problems = Problems()
        if self.kind not in POLICIES:
            problems.add(f"{where}.kind: expected one of {', '.join(sorted(POLICIES))}, got {self.kind!r}")
        if self.learner not in LEARNERS:
            problems.add(f"{where}.learner: expected 'inline' or 'thread', got {self.learner!r}")
        if not self.timeout_s > 0:
            problems.add(f"{where}.timeout_s: must be > 0, got {self.timeout_s!r}")
        if not self.max_latency_s > 0:
            problems.add(f"{where}.max_latency_s: must be > 0, got {self.max_latency_s!r}")
        problems.raise_if_any()

    def resolved_params(self) -> Any:
        """The kind's parameters, its defaults filled in."""
        from .policies import policy_class

        return self.params if self.params is not None else policy_class(self.kind).Params()


def _build_policy(data: Any) -> PolicyConfig:
    """The common keys and the kind's own ``Params``, checked together (the kind's keys only
    when the kind is known: against which ``Params`` would they be checked otherwise?)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"policy: expected a mapping, got {type(data).__name__}")
    from .policies import POLICIES

    problems = Problems()
    common = {k: v for k, v in data.items() if k in POLICY_COMMON}
    config, params = None, None
    with problems.catch():
        config = _build(PolicyConfig, common, "policy")
    kind = data.get("kind", PolicyConfig.kind)
    if isinstance(kind, str) and kind in POLICIES:
        own = {k: v for k, v in data.items() if k not in POLICY_COMMON}
        with problems.catch():
            params = _build(POLICIES[kind].Params, own, "policy")
    problems.raise_if_any()
    assert config is not None
    return dataclasses.replace(config, params=params)


@dataclass(frozen=True)
class RetentionConfig:
    """Row and age limits of the decision log (null: no limit)."""

    #: the most rows the log keeps; the oldest go first
    max_rows: int | None = None
    #: rows older than this many days are deleted
    max_age_days: float | None = None
    #: how often the log writer counts the rows against the limits (seconds; 0: before every batch)
    check_every_s: float = 10.0

    def _validate(self, where: str) -> None:
        problems = Problems()
        if self.max_rows is not None and self.max_rows < 1:
            problems.add(f"{where}.max_rows: must be an integer >= 1 (or null: no limit), got {self.max_rows!r}")
        if self.max_age_days is not None and not self.max_age_days > 0:
            problems.add(f"{where}.max_age_days: must be > 0 (or null: no limit), got {self.max_age_days!r}")
        if not self.check_every_s >= 0:
            problems.add(f"{where}.check_every_s: must be >= 0, got {self.check_every_s!r}")
        problems.raise_if_any()


@dataclass(frozen=True)
class StoreConfig:
    """The SQLite decision log. ``path: null`` runs without a log."""

    #: the SQLite file, relative to the config file (null: no log)
    path: str | None = None
    #: rows that may wait per queue (decisions, outcomes) before ``on_full`` applies
    queue_size: int = 100_000
    #: the writer wakes as soon as a queue holds this many rows
    flush_rows: int = 2000
    #: the writer commits what is queued at least this often (seconds): the most a crash loses
    flush_interval_s: float = 0.25
    #: "drop" (count and go on; never blocks inference) or "block" (wait for the writer)
    on_full: str = field(default="drop", metadata={"choices": ON_FULL})
    #: fraction of exploit decisions kept, in (0, 1]; explored ones are always kept
    exploit_sample_rate: float = 1.0
    #: row and age limits
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    #: rebuild the learner's state from this many most recent logged outcomes at start
    warm_start_rows: int = 20_000

    def _validate(self, where: str) -> None:
        problems = Problems()
        if self.on_full not in ON_FULL:
            problems.add(f"{where}.on_full: expected 'drop' or 'block', got {self.on_full!r}")
        if not 0.0 < self.exploit_sample_rate <= 1.0:
            problems.add(f"{where}.exploit_sample_rate: expected a number in (0, 1], got {self.exploit_sample_rate!r}")
        for name in ("queue_size", "flush_rows"):
            if getattr(self, name) < 1:
                problems.add(f"{where}.{name}: must be an integer >= 1, got {getattr(self, name)!r}")
        if not self.flush_interval_s > 0:
            problems.add(f"{where}.flush_interval_s: must be > 0, got {self.flush_interval_s!r}")
        if self.warm_start_rows < 0:
            problems.add(f"{where}.warm_start_rows: must be an integer >= 0, got {self.warm_start_rows!r}")
        problems.raise_if_any()


@dataclass(frozen=True)
class WorkloadConfig:
    """The decode workload of ``adaptive-sched run``: a model shape, a prompt, generated tokens."""

    #: a model shape by name (see :data:`adaptive_sched.workload.MODELS`)
    model: str = "qwen2.5-1.5b"
    precision: Precision = Precision.INT8
    #: prompt tokens (the prefill)
    prompt: int = 128
    #: tokens generated (decode steps)
    tokens: int = 64
    #: layers to run per token (None: all of the model's layers)
    layers: int | None = None
    #: sequences decoded together
    batch: int = 1
    #: idle time between tokens (seconds of device time spent elsewhere: FFN, sampling)
    idle_between_tokens_s: float = 0.0

    def _validate(self, where: str) -> None:
        problems = Problems()
        for name in ("prompt", "tokens", "batch"):
            if getattr(self, name) < 1:
                problems.add(f"{where}.{name}: must be an integer >= 1, got {getattr(self, name)!r}")
        if self.layers is not None and self.layers < 1:
            problems.add(f"{where}.layers: must be an integer >= 1 (or null: all), got {self.layers!r}")
        if self.idle_between_tokens_s < 0:
            problems.add(f"{where}.idle_between_tokens_s: must be >= 0, got {self.idle_between_tokens_s!r}")
        problems.raise_if_any()


@dataclass(frozen=True)
class Config:
    """A whole scheduler configuration.

    Examples
    --------
    >>> cfg = load_config("rk3588-sim")
    >>> cfg.device, sorted(b.value for b in cfg.candidates)
    ('rk3588', ['gpu', 'npu'])
    """

    #: the device the priors and the log are keyed by
    device: str
    #: the backends (cpu, gpu, npu) and the executor behind each
    backends: dict[Backend, BackendConfig]
    #: the simulated device, required when a backend uses executor ``sim``
    simulator: SimulatorConfig | None = None
    #: "builtin" (shipped priors for the device), a JSON or SQLite path, or "none"
    priors: str = "builtin"
    #: the policy and its parameters
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    #: the decision log
    store: StoreConfig = field(default_factory=StoreConfig)
    #: device telemetry (temperatures, clocks, loads)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    #: the default workload of ``adaptive-sched run``
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
        """The checks across sections (each section has checked its own values)."""
        problems = Problems()
        if not self.backends:
            problems.add("backends: at least one backend is required")
        elif not self.candidates:
            problems.add("backends: at least one backend must have role 'candidate'")
        uses_sim = any(bc.executor == "sim" for bc in self.backends.values())
        if uses_sim and self.simulator is None:
            problems.add("simulator: required because a backend uses executor 'sim'")
        params = self.policy.resolved_params()
        if self.policy.kind == "fixed" and params.backend not in {b.value for b in self.backends}:
            problems.add(f"policy.backend: {params.backend!r} is not a configured backend")
        if self.policy.kind == "oracle" and not uses_sim:
            problems.add("policy.kind: 'oracle' needs a simulated device")
        problems.raise_if_any()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(getattr(k, "value", k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return getattr(value, "value", value)


def load_config(source: str | Path | Mapping[str, Any]) -> Config:
    """Load and validate a config from a YAML path, a shipped config name, or a mapping.

    Raises :class:`~adaptive_sched.errors.ConfigError` listing every problem found, one per
    line, each naming the file and the key (``exc.errors`` lists the lines).
    """
    if isinstance(source, Mapping):
        return build_config(source, origin="")
    path = resolve_config(source)
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return build_config(data, origin=str(path))


def build_config(data: Mapping[str, Any], origin: str = "") -> Config:
    """Validate a mapping into a :class:`Config`; ``origin`` names the file in messages.

    Every problem is collected before one :class:`~adaptive_sched.errors.ConfigError` is
    raised: unknown keys, wrong types, bad values, each section's own checks, and (once the
    sections are sound) the checks across sections.
    """
    problems = Problems()
    with problems.catch():
        check_bounded(data)
    if not problems:
        config = _build_config(data, problems)
    problems.raise_if_any(origin)
    return dataclasses.replace(config, source=origin)


def _build_config(data: Mapping[str, Any], problems: Problems) -> Config:
    """The config in ``data``, its problems recorded in ``problems`` (the result is only
    meaningful when none were)."""
    data = dict(data)
    backends: dict[Backend, BackendConfig] = {}
    with problems.catch():
        backends = _build_backends(data.pop("backends", None))
    policy = PolicyConfig()
    with problems.catch():
        policy = _build_policy(data.pop("policy", None))
    data["backends"] = {}
    config = Config(device="", backends={})
    with problems.catch():
        config = _build(Config, data, "")
    if problems:
        return config
    config = dataclasses.replace(config, backends=backends, policy=policy)
    with problems.catch():
        config._validate("")
    return config


def _build_backends(raw: Any) -> dict[Backend, BackendConfig]:
    if not isinstance(raw, Mapping):
        raise ConfigError("backends: required, a mapping of backend name (cpu, gpu, npu) to executor")
    problems = Problems()
    backends: dict[Backend, BackendConfig] = {}
    for name, spec in raw.items():
        try:
            backend = Backend(str(name))
        except ValueError:
            problems.add(f"backends.{name}: unknown backend (expected cpu, gpu or npu)")
            continue
        with problems.catch():
            spec = {BackendConfig.SHORTHAND: spec} if isinstance(spec, str) else spec
            backends[backend] = _build(BackendConfig, spec, f"backends.{name}")
    problems.raise_if_any()
    return backends


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, checking keys, types and (unless ``cls`` is
    :class:`Config`) the section's own ``_validate``; raises every problem at once, each
    naming ``where.key``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    # unknown keys are reported beside the values' problems: the known keys are still checked
    expected = f"expected one of {', '.join(sorted(fields))}" if fields else "none is taken here"
    unknown = [f"{join(where, str(key))}: unknown key ({expected})" for key in data if key not in fields]
    problems = Problems()
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in fields:
            with problems.catch():
                kwargs[key] = _coerce(hints[key], value, join(where, key))
    for name, f in fields.items():
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.add(f"{join(where, name)}: required key is missing")
    if not problems:  # every value has its type: the section can be built and check its values
        try:
            obj = cls(**kwargs)
        except ValueError as exc:
            # A parameter class's own check names its field first ("epsilon must be ..."): name its key.
            name, _, rest = str(exc).partition(" ")
            problems.add(f"{join(where, name)}: {rest}" if name in fields and rest else f"{where or 'config'}: {exc}")
        else:
            if cls is not Config and hasattr(obj, "_validate"):
                with problems.catch():
                    obj._validate(where)
    problems.errors[:0] = unknown
    problems.raise_if_any()
    return obj


def _as_config_error(exc: Exception) -> ConfigError:
    return exc if isinstance(exc, ConfigError) else ConfigError(str(exc))


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
        problems, items = Problems(), []
        for i, v in enumerate(value):
            with problems.catch():
                items.append(_coerce(item, v, f"{where}[{i}]"))
        problems.raise_if_any()
        return items
    if isinstance(hint, type) and issubclass(hint, Precision):
        try:
            return Precision(str(value).lower())
        except ValueError:
            raise ConfigError(f"{where}: expected 'fp16' or 'int8', got {value!r}") from None
    checks: dict[Any, Any] = {bool: expect_bool, int: expect_int, float: expect_number, str: expect_str}
    if hint in checks:
        return checks[hint](value, where)
    if hint is Any:
        return value
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")  # a bug in the config schema
