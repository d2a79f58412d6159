"""adaptive_sched: choose, stage by stage, which processor runs an LLM's attention.

>>> from adaptive_sched import Scheduler, Shape
>>> shape = Shape(n=1, d=4096, kv_len=512, precision="int8")

See :class:`Scheduler` for the execution wrapper and ``adaptive-sched --help`` for the CLI.
Importing the package is cheap: the scheduler, numpy-heavy modules, river and
sqlite-utils load only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    AdaptiveSchedError,
    ConfigError,
    ExecutorError,
    ExecutorUnavailable,
    PriorError,
    StoreError,
    UnsupportedShape,
)
from .types import Backend, Decision, Outcome, Precision, Shape, Stage

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .scheduler import LayerRun, Scheduler, StageRun

_LAZY = {"Scheduler": "scheduler", "StageRun": "scheduler", "LayerRun": "scheduler"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adaptive_sched' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "AdaptiveSchedError",
    "Backend",
    "ConfigError",
    "Decision",
    "ExecutorError",
    "ExecutorUnavailable",
    "LayerRun",
    "Outcome",
    "Precision",
    "PriorError",
    "Scheduler",
    "Shape",
    "Stage",
    "StageRun",
    "StoreError",
    "UnsupportedShape",
    "__version__",
]
