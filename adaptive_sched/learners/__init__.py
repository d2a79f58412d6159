"""Learners: the offline priors (:mod:`.priors`, :mod:`.models`) and the online per-stage state.

Nothing heavy is imported here: river loads only when a classifier is built, so a
process that only reads a decision table never pays for it.

>>> from adaptive_sched.learners import load_prior   # cheap: no river import
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "load_prior": "priors",
    "Prior": "priors",
    "PriorData": "priors",
    "TrainingRow": "priors",
    "export_prior": "priors",
    "import_prior": "priors",
    "MODELS": "models",
    "model_features": "models",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adaptive_sched.learners' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = sorted(_LAZY)
