"""The executor conformance suite, run over every registered executor (one test per executor:check)."""

import pytest

from adaptive_sched.checks import EXECUTOR_CHECKS, CheckSkipped
from adaptive_sched.executors import EXECUTORS, create_executor, executor_class
from adaptive_sched.types import Backend

#: (kind, backend) pairs to check; simulated backends are checked one by one
TARGETS = [
    ("cpu_numpy", Backend.CPU),
    ("sim", Backend.GPU),
    ("sim", Backend.NPU),
    ("sim", Backend.CPU),
    ("gpu_opencl", Backend.GPU),
    ("npu_rknn", Backend.NPU),
]


def _factory(kind, backend):
    def make():
        return create_executor(kind, backend=backend)

    return make


@pytest.mark.parametrize(
    ("kind", "backend", "check"),
    [(k, b, c) for k, b in TARGETS for c in EXECUTOR_CHECKS],
    ids=[f"{k}[{b.value}]:{c.__name__.removeprefix('check_')}" for k, b in TARGETS for c in EXECUTOR_CHECKS],
)
def test_executor_conformance(kind, backend, check):
    try:
        executor_class(kind)
    except ImportError as exc:
        pytest.skip(f"{kind} cannot be imported here: {exc}")
    executor = _factory(kind, backend)()
    try:
        check(executor)
    except CheckSkipped as exc:
        pytest.skip(str(exc))
    finally:
        executor.close()


def test_every_registered_executor_is_checked():
    assert {k for k, _ in TARGETS} == set(EXECUTORS)


def test_importing_the_registry_imports_no_backend_module():
    import subprocess
    import sys

    code = (
        "import sys, adaptive_sched.executors; "
        "print(any(m in sys.modules for m in ('pyopencl', 'rknnlite', 'adaptive_sched.executors.opencl.executor')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cpu_executor_int8_is_bit_exact_with_the_reference_for_long_k():
    import numpy as np

    from adaptive_sched.stages import make_inputs, reference
    from adaptive_sched.types import Shape

    shape = Shape(n=3, d=2304, heads=36, precision="int8")  # K = 2304: three float32 chunks
    inputs = make_inputs("qkv", shape, seed=4)
    inputs["x"] = inputs["x"] * 50  # large activations: big integer sums
    with create_executor("cpu_numpy") as ex:
        first = ex.run("qkv", shape, inputs).output
        again = ex.run("qkv", shape, inputs).output  # from the prepared-weights cache
    expected = reference("qkv", shape, inputs)
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected)


def test_weight_cache_is_keyed_by_identity_and_variant_and_releases_what_it_drops():
    import numpy as np

    from adaptive_sched.executors.base import WeightCache

    released: list[str] = []
    cache: WeightCache[str] = WeightCache(2, released.append)
    a, b, c = np.ones(3), np.ones(3), np.zeros(3)
    assert cache.put(a, "fp16", "a16") == 0 and cache.put(a, "int8", "a8") == 0
    assert cache.get(a, "fp16") == "a16" and cache.get(a, "int8") == "a8"
    assert cache.get(b, "fp16") is None  # equal content, another object: never a hit
    assert cache.get(a, "fp16") == "a16"  # now the most recently used
    assert cache.put(c, "fp16", "c16") == 1 and released == ["a8"]
    assert cache.put(c, "fp16", "c16'") == 0 and released == ["a8", "c16"]  # replacing releases the old value
    cache.clear()
    assert sorted(released) == ["a16", "a8", "c16", "c16'"] and len(cache) == 0
    with pytest.raises(ValueError, match="capacity must be an integer >= 0"):
        WeightCache(-1)
