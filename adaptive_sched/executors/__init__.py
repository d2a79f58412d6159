"""Backends that run stages, behind one protocol, created lazily by name.

>>> ex = create_executor("cpu_numpy")
>>> ex.is_available()
True
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError
from .base import Executor, RunResult

#: executor kind -> "module:Class"; a module is imported only when its kind is created
EXECUTORS: dict[str, str] = {
    "cpu_numpy": "adaptive_sched.executors.cpu_numpy:CpuNumpyExecutor",
    "sim": "adaptive_sched.executors.sim:SimExecutor",
    "gpu_opencl": "adaptive_sched.executors.opencl.executor:OpenCLExecutor",
    "npu_rknn": "adaptive_sched.executors.npu_rknn:RknnExecutor",
}


def executor_class(kind: str) -> type[Executor]:
    """The class registered under ``kind`` (imports its module)."""
    try:
        target = EXECUTORS[kind]
    except KeyError:
        known = ", ".join(sorted(EXECUTORS))
        raise ConfigError(f"unknown executor {kind!r} (known: {known})") from None
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Executor] = getattr(module, class_name)
    return cls


def create_executor(kind: str, **options: Any) -> Executor:
    """Create an executor of ``kind`` with ``options`` (cheap: no device is touched yet)."""
    return executor_class(kind)(**options)


__all__ = ["EXECUTORS", "Executor", "RunResult", "create_executor", "executor_class"]
