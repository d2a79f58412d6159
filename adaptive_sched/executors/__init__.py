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


#: the entry point group through which an installed package adds executors of its own, e.g. in
#: its pyproject.toml: ``[project.entry-points."adaptive_sched.executors"] my_npu = "my_pkg.npu:MyNpu"``
ENTRY_POINT_GROUP = "adaptive_sched.executors"


def installed_executors() -> dict[str, str]:
    """Executor kinds other installed packages register (entry point group :data:`ENTRY_POINT_GROUP`)."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def executor_class(kind: str) -> type[Executor]:
    """The class registered under ``kind``, built in or installed by another package (imports its module)."""
    target = EXECUTORS.get(kind)
    if target is None:
        installed = installed_executors()
        target = installed.get(kind)
        if target is None:
            known = ", ".join(sorted({*EXECUTORS, *installed}))
            raise ConfigError(f"unknown executor {kind!r} (known: {known})")
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"executor {kind!r}: cannot load {target!r} ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise ConfigError(f"executor {kind!r}: {target!r} is not an Executor subclass")
    return cls


def create_executor(kind: str, **options: Any) -> Executor:
    """Create an executor of ``kind`` with ``options`` (cheap: no device is touched yet).

    An option the executor does not declare (:attr:`Executor.OPTIONS`) is a ``ConfigError``.
    """
    cls = executor_class(kind)
    unknown = sorted(set(options) - {"backend", *cls.OPTIONS})
    if unknown:
        known = ", ".join(sorted(cls.OPTIONS)) or "none"
        raise ConfigError(f"executor {kind!r}: unknown option {unknown[0]!r} (its options: {known})")
    return cls(**options)


__all__ = [
    "ENTRY_POINT_GROUP",
    "EXECUTORS",
    "Executor",
    "RunResult",
    "create_executor",
    "executor_class",
    "installed_executors",
]
