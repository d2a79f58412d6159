import pytest

from adaptive_sched.config import load_config
from adaptive_sched.errors import ConfigError
from adaptive_sched.types import Backend


@pytest.mark.parametrize("name", ["rk3588-sim", "rk3588", "local"])
def test_shipped_configs_load(name):
    config = load_config(name)
    assert config.candidates
    assert load_config(config.source).as_dict() == config.as_dict()


def test_rk3588_configs_name_backends_gpu_npu_cpu():
    for name in ("rk3588-sim", "rk3588"):
        assert set(load_config(name).backends) == {Backend.GPU, Backend.NPU, Backend.CPU}


def test_content_hash_changes_with_the_config():
    a = load_config({"device": "x", "backends": {"gpu": "cpu_numpy"}})
    b = load_config({"device": "x", "backends": {"gpu": "cpu_numpy"}, "policy": {"explore_budget": 0.02}})
    assert a.content_hash() != b.content_hash()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("device: x\nbackends: {gpu: cpu_numpy}\npolcy: {}\n", "polcy: unknown key"),
        ("device: x\nbackends: {gpu: warp_drive}\n", "backends.gpu.executor: unknown executor 'warp_drive'"),
        ("device: x\nbackends: {tpu: cpu_numpy}\n", "backends.tpu: unknown backend"),
        (
            "device: x\nbackends: {gpu: cpu_numpy}\npolicy: {explore_budget: lots}\n",
            "policy.explore_budget: expected a number",
        ),
        (
            "device: x\nbackends: {gpu: cpu_numpy}\npolicy: {learner: fast}\n",
            "policy.learner: expected 'inline' or 'thread'",
        ),
        ("device: x\nbackends: {gpu: cpu_numpy}\nstore: {on_full: explode}\n", "store.on_full"),
        ("device: x\nbackends: {gpu: sim}\n", "simulator: required"),
        ("backends: {gpu: cpu_numpy}\n", "device: required key is missing"),
        ("device: x\nbackends: {gpu: {executor: cpu_numpy, role: spare}}\n", "backends.gpu.role"),
        ("device: x\nbackends: {gpu: cpu_numpy}\nworkload: {precision: fp8}\n", "workload.precision"),
        ("device: x\nbackends: [gpu]\n", "backends: required, a mapping"),
        ("- just\n- a list\n", "expected a mapping at the top level"),
        ("device: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_file_lists_shipped_configs():
    with pytest.raises(ConfigError, match="shipped: local, rk3588, rk3588-sim"):
        load_config("nonexistent")


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("device: x\nbackends: {gpu: cpu_numpy}\nstore: {path: logs/a.db}\n")
    config = load_config(tmp_path / "c.yaml")
    assert config.resolve_path(config.store.path) == str(tmp_path / "logs" / "a.db")
