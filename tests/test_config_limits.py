"""A config is bounded and checked at load: hostile or careless input fails fast, naming the file and key."""

from __future__ import annotations

import inspect
import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from adaptive_sched import Scheduler, Shape
from adaptive_sched.config import MAX_CONFIG_BYTES, MAX_RUN_CONFIG_BYTES, build_config, load_config
from adaptive_sched.errors import ConfigError
from adaptive_sched.executors import EXECUTORS, create_executor, executor_class

from .conftest import base_config


def write(tmp_path: Path, data: dict | str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def alias_bomb(levels: int = 9) -> str:
    """Nested anchors under ``backends.cpu.options``: a few hundred bytes standing for 9**levels strings."""
    lines = ["device: test", "priors: none", "backends:", "  gpu: cpu_numpy", "  cpu:",
             "    executor: cpu_numpy", "    options:",
             '      l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']  # fmt: skip
    lines += [f"      l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_naming_file_and_key(tmp_path):
    text = alias_bomb()
    assert len(text.encode()) < 700
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "backends.cpu.options.l" in message and "alias" in message


def test_a_self_referencing_alias_is_refused(tmp_path):
    path = write(tmp_path, "device: test\npriors: none\nbackends: {gpu: cpu_numpy}\nworkload: &w {x: [*w]}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: workload.*nested deeper"):
        load_config(path)


def test_the_same_bounds_hold_for_a_dict(tmp_path):
    node: list = ["x"] * 10
    for _ in range(6):
        node = [node] * 10  # shared, as an alias would be
    with pytest.raises(ConfigError, match="more than"):
        build_config(base_config(workload={"model": node}))


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("device: test\n# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match=rf"big\.yaml: larger than {MAX_CONFIG_BYTES} bytes"):
        load_config(path)


def test_non_utf8_and_deeply_nested_files_are_config_errors(tmp_path):
    raw = tmp_path / "raw.yaml"
    raw.write_bytes(b"device: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"raw\.yaml: not UTF-8"):
        load_config(raw)
    deep = write(tmp_path, "device: " + "[" * 50_000 + "]" * 50_000 + "\n", "deep.yaml")
    with pytest.raises(ConfigError, match=r"deep\.yaml"):
        load_config(deep)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"policy": {"kind": "adaptive", "transition_bytes_per_s": 0}}, "policy.transition_bytes_per_s"),
        ({"policy": {"kind": "epsilon", "epsilon": 2}}, "policy.epsilon"),
        ({"policy": {"kind": "adaptive", "timeout_s": 0}}, "policy.timeout_s"),
        ({"policy": {"kind": "adaptive", "max_latency_s": -1}}, "policy.max_latency_s"),
        ({"policy": {"kind": "adaptive", "timeout_s": float("inf")}}, "policy.timeout_s"),
        ({"store": {"retention": {"max_rows": 0}}}, "store.retention.max_rows"),
        ({"store": {"retention": {"max_age_days": 0}}}, "store.retention.max_age_days"),
        ({"store": {"retention": {"check_every_s": -1}}}, "store.retention.check_every_s"),
        ({"store": {"flush_interval_s": 0}}, "store.flush_interval_s"),
        ({"store": {"queue_size": 0}}, "store.queue_size"),
        ({"store": {"warm_start_rows": -1}}, "store.warm_start_rows"),
        ({"simulator": {"seed": -1}}, "simulator.seed"),
        ({"simulator": {"noise": -0.5}}, "simulator.noise"),
        ({"simulator": {"profile": "nope"}}, "simulator.profile"),
        ({"simulator": {"contention": {"enabled": True, "duty": 2}}}, "simulator.contention.duty"),
        ({"simulator": {"steps": [{"time_s": 1, "backend": "gpu", "slowdown": -1}]}}, "simulator.steps"),
        ({"workload": {"layers": 0}}, "workload.layers"),
        ({"workload": {"tokens": 0}}, "workload.tokens"),
    ],
)
def test_invalid_numbers_are_refused_at_load_naming_file_and_key(tmp_path, override, key):
    path = write(tmp_path, base_config(**override))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {key}:"), str(info.value)


@pytest.mark.parametrize(
    ("backend", "options", "message"),
    [
        ({"executor": "cpu_numpy", "options": {"thredas": 4}}, None,
         "backends.gpu.options.thredas: not an option of executor 'cpu_numpy' (its options: none)"),
        ({"executor": "gpu_opencl", "options": {"platfrom": "x"}}, None, "backends.gpu.options.platfrom"),
        ({"executor": "gpu_opencl", "options": {"fp16": "fp8"}}, None, "backends.gpu.options: fp16: unknown value"),
        ({"executor": "npu_rknn", "options": {"runtime": "x"}}, None, "backends.gpu.options.runtime: not an option"),
        ({"executor": "npu_rknn", "options": {"max_loaded_models": 0}}, None,
         "backends.gpu.options: max_loaded_models must be"),
        ({"executor": "sim", "options": {"device": "x"}}, None, "backends.gpu.options.device: not an option"),
    ],
)  # fmt: skip
def test_executor_options_are_checked_per_executor(tmp_path, backend, options, message):
    data = base_config(backends={"gpu": backend, "cpu": "cpu_numpy"}, simulator={"profile": "rk3588"})
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)


def test_valid_executor_options_load():
    cfg = load_config(base_config(backends={"gpu": {"executor": "gpu_opencl", "options": {"fp16": "float"}},
                                            "cpu": "cpu_numpy"}))  # fmt: skip
    assert cfg.backends[next(iter(cfg.backends))].options == {"fp16": "float"}


@pytest.mark.parametrize("kind", sorted(EXECUTORS))
def test_each_executor_declares_exactly_the_options_its_constructor_takes(kind):
    cls = executor_class(kind)
    named = {
        name for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD and name not in ("self", "backend")
    }  # fmt: skip
    assert named <= set(cls.OPTIONS), f"{kind}: undeclared options {sorted(named - set(cls.OPTIONS))}"
    assert set(cls.INTERNAL_OPTIONS) <= set(cls.OPTIONS)
    create_executor(kind, **{}).close()
    with pytest.raises(ConfigError, match="unknown option 'thredas'"):
        create_executor(kind, thredas=4)


def test_the_config_stored_with_a_run_is_bounded(tmp_path):
    steps = [{"time_s": float(i), "backend": "gpu", "slowdown": 1.5} for i in range(4000)]
    cfg = load_config(base_config(backends={"gpu": "sim", "npu": "sim"},
                                  simulator={"profile": "rk3588", "steps": steps}))  # fmt: skip
    assert len(json.dumps(cfg.as_dict())) > MAX_RUN_CONFIG_BYTES
    db = tmp_path / "log.db"
    with Scheduler.from_config(cfg, db=db):
        pass
    (stored,) = sqlite3.connect(db).execute("SELECT config FROM runs").fetchone()
    assert len(stored) <= MAX_RUN_CONFIG_BYTES
    assert json.loads(stored)["config_hash"] == cfg.content_hash()
    small = load_config(base_config())
    assert json.loads(small.log_json()) == small.as_dict()


hostile = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(allow_nan=True), st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
numbers = st.one_of(st.integers(-1, 100), st.floats(-1.0, 100.0), st.sampled_from([0, 0.0, 1e-9, 1e30]))
counts = st.integers(-1, 5000)


def typed(valid):
    """Mostly a value of the key's type (in range or not), sometimes anything at all."""
    return st.one_of(valid, valid, valid, hostile)


SECTIONS = {
    "policy": {
        # not "static": it needs a prior, and these configs have none (a prior can also be given in code)
        "kind": typed(st.sampled_from(["adaptive", "epsilon", "fixed", "oracle", "bogus"])),
        "learner": typed(st.sampled_from(["inline", "thread", "later"])),
        "timeout_s": typed(numbers),
        "max_latency_s": typed(numbers),
    },
    "store": {
        "queue_size": typed(counts),
        "flush_rows": typed(counts),
        "flush_interval_s": typed(numbers),
        "on_full": typed(st.sampled_from(["drop", "block", "wait"])),
        "warm_start_rows": typed(counts),
        "exploit_sample_rate": typed(numbers),
    },
    "simulator": {
        "seed": typed(counts),
        "noise": typed(st.one_of(st.booleans(), numbers)),
        "thermal": typed(st.booleans()),
        "contention": typed(st.booleans()),
    },
    "workload": {
        "precision": typed(st.sampled_from(["int8", "fp16", "fp8"])),
        "prompt": typed(counts),
        "tokens": typed(counts),
        "layers": typed(st.one_of(st.none(), counts)),
        "batch": typed(st.integers(-1, 8)),
        "idle_between_tokens_s": typed(numbers),
    },
}


@st.composite
def configs(draw):
    data = base_config(backends={"gpu": "sim", "npu": "sim"}, simulator={"profile": "rk3588"})
    data["policy"] = {"kind": "adaptive"}
    for section, keys in SECTIONS.items():
        chosen = draw(st.lists(st.sampled_from(sorted(keys)), max_size=2, unique=True))
        data[section] = {**data.get(section, {}), **{k: draw(keys[k]) for k in chosen}}
    if draw(st.integers(0, 3)) == 0:
        executor = draw(st.sampled_from(["sim", "cpu_numpy", "gpu_opencl", "x"]))
        options = draw(st.dictionaries(st.text(max_size=6), hostile, max_size=2))
        data["backends"]["gpu"] = {"executor": executor, "options": options}
    return data


@settings(max_examples=100, deadline=None)
@given(data=configs())
def test_any_config_is_refused_at_load_naming_the_file_or_builds_a_scheduler(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ")
        event("refused at load")
        return
    event("loaded")
    assert cfg.policy.timeout_s > 0 and cfg.policy.max_latency_s > 0
    assert cfg.store.flush_interval_s > 0 and cfg.store.queue_size >= 1
    json.loads(cfg.log_json())
    with Scheduler.from_config(cfg) as sched:  # a loaded config builds: no error is left for later
        sched.decide("qkv", Shape(n=1, d=1024, kv_len=8))
