"""Which build of the online latency model runs: compiled by mypyc, or its Python source.

Every observation runs through :mod:`.latency` and :mod:`.latency_terms`: a few hundred
float operations on slotted objects, which CPython spends most of its time dispatching.
The package build compiles the two with mypyc when it can (see ``setup.py``); the compiled
modules make the same floating-point operations in the same order, so they learn the same
thing to the last bit, in about two thirds of the time.

A compiled module is only used while its source is the one it was compiled from: the
build records a digest of each source (``_native_sources.json``), and :func:`select`,
run when :mod:`adaptive_sched.learners` is imported, loads the Python sources instead if
any digest differs (an edit after the build), with a warning. The two modules are always
taken together, compiled or not: a compiled module checks the types of the objects it is
given, and the source's classes are not the compiled ones.

``ADAPTIVE_SCHED_PURE_PYTHON=1`` in the environment runs the source whatever was built
(to profile it line by line, or to compare the two builds' speed).

>>> sorted(status())
['build', 'modules', 'reason']
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

#: compiled together, in import order (``setup.py`` reads these from here)
NATIVE = ("latency_terms", "latency")
#: set (not to 0) in the environment, the sources run even where they were compiled (and, at
#: install, nothing is compiled)
PURE_PYTHON = "ADAPTIVE_SCHED_PURE_PYTHON"
#: what a build records next to the compiled modules: :func:`source_digests` as they were compiled
DIGESTS_FILE = "_native_sources.json"
_HERE = Path(__file__).resolve().parent
_PACKAGE = __name__.rpartition(".")[0]
_DIGESTS = _HERE / DIGESTS_FILE

_status: dict[str, Any] = {"build": "source", "reason": "not selected yet", "modules": list(NATIVE)}


def _compiled_file(name: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = _HERE / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def pure_python_asked() -> bool:
    """Whether the environment asks for the Python sources (:data:`PURE_PYTHON`)."""
    return os.environ.get(PURE_PYTHON, "") not in ("", "0")


def source_digests() -> dict[str, str]:
    """A SHA-256 of each source of :data:`NATIVE`, as the build records them."""
    return {name: hashlib.sha256((_HERE / f"{name}.py").read_bytes()).hexdigest() for name in NATIVE}


def load_sources(register: bool = True) -> dict[str, ModuleType]:
    """The Python sources of :data:`NATIVE`, loaded as modules of this package.

    With ``register`` they replace the compiled ones in ``sys.modules`` (what :func:`select`
    does); without, they are returned only, and ``sys.modules`` is left as it was (to compare
    the two builds). Each sees the others' source modules, never the compiled ones.
    """
    saved = {name: sys.modules.get(f"{_PACKAGE}.{name}") for name in NATIVE}
    loaded: dict[str, ModuleType] = {}
    try:
        for name in NATIVE:
            full = f"{_PACKAGE}.{name}"
            spec = importlib.util.spec_from_file_location(full, _HERE / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[full] = module  # the next module's relative import finds this one
            spec.loader.exec_module(module)
            loaded[name] = module
    finally:
        if not register:
            for name, before in saved.items():
                full = f"{_PACKAGE}.{name}"
                if before is None:
                    sys.modules.pop(full, None)
                else:
                    sys.modules[full] = before
    return loaded


def select() -> str:
    """Decide, before either module is imported, which build is used; returns 'compiled' or 'source'."""
    compiled = [name for name in NATIVE if _compiled_file(name) is not None]
    if not compiled:
        _status.update(build="source", reason="not compiled")
        return "source"
    if pure_python_asked():
        load_sources(register=True)
        _status.update(build="source", reason=f"{PURE_PYTHON} is set")
        return "source"
    why = None
    if len(compiled) < len(NATIVE):
        why = f"only {', '.join(compiled)} compiled"
    else:
        try:
            recorded = json.loads(_DIGESTS.read_text())
        except (OSError, ValueError):
            recorded = {}
        digests = source_digests()
        changed = [name for name in NATIVE if recorded.get(name) != digests[name]]
        if changed:
            why = f"{', '.join(f'{n}.py' for n in changed)} changed since the build"
    if why is None:
        _status.update(build="compiled", reason="compiled by mypyc from the current sources")
        return "compiled"
    warnings.warn(
        f"adaptive_sched: the compiled latency model is not used ({why}); running its Python source. "
        "Reinstall the package (pip install -e .) to compile it again.",
        RuntimeWarning,
        stacklevel=2,
    )
    load_sources(register=True)
    _status.update(build="source", reason=why)
    return "source"


def status() -> dict[str, Any]:
    """Which build runs and why (see :func:`describe`)."""
    return dict(_status)


def describe() -> str:
    """Which build runs, in words: 'compiled by mypyc', or 'Python source (<why>)'."""
    if _status["build"] == "compiled":
        return "compiled by mypyc"
    return f"Python source ({_status['reason']})"


__all__ = [
    "DIGESTS_FILE",
    "NATIVE",
    "PURE_PYTHON",
    "describe",
    "load_sources",
    "pure_python_asked",
    "select",
    "source_digests",
    "status",
]
