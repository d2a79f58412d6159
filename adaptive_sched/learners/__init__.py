"""Learners: the offline priors (:mod:`.prior_data`, :mod:`.priors`, :mod:`.models`) and the online state.

Learners do no I/O: they turn data into models and answer questions. Priors are read
and written by :mod:`adaptive_sched.store.prior_files` and :mod:`adaptive_sched.store.priors`.
Nothing heavy is imported here: river loads only when a classifier is built, so a
process that only reads a decision table never pays for it.

>>> from adaptive_sched.learners import Prior   # cheap: no river import
"""

from __future__ import annotations

from typing import Any

from . import native

# before anything imports the latency model: a compiled build older than its source is not used
native.select()

_LAZY = {
    "Prior": "priors",
    "PriorData": "prior_data",
    "TrainingRow": "prior_data",
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
