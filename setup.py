"""Build hook: compile the online latency model to C with mypyc where this machine can.

Everything else is in ``pyproject.toml``. The modules in ``native.NATIVE`` are what every observation
runs through (:mod:`adaptive_sched.learners.native` says why and how their use is checked).
They are compiled when mypyc and a C compiler are at hand; if either is missing, or the
build fails, the package installs as pure Python with a warning, and works the same, slower.
``ADAPTIVE_SCHED_PURE_PYTHON=1`` skips the compilation.

Each build records a digest of the sources it compiled (``_native_sources.json``): at import,
a compiled module whose source has changed since is not used (see ``native.py``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

PACKAGE = Path("adaptive_sched") / "learners"


def _load_native():
    """``learners/native.py`` alone (it needs only the standard library): which modules are
    compiled, the variable that skips them, and how their sources are digested, in one place.
    Importing it as part of the package would import the package, and numpy with it."""
    spec = importlib.util.spec_from_file_location("_adaptive_sched_native", PACKAGE / "native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


native = _load_native()


def _native_extensions() -> list:
    if native.pure_python_asked():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("adaptive-sched: mypyc not available, installing as pure Python", file=sys.stderr)
        return []
    # The modules import only the standard library and adaptive_sched's plain types: skipping
    # what they import keeps mypyc from type-checking numpy and river (minutes) to build them.
    return mypycify(
        ["--follow-imports=skip", *(str(PACKAGE / f"{name}.py") for name in native.NATIVE)],
        group_name="adaptive_sched_native",
    )


class OptionalBuildExt(build_ext):
    """Builds the compiled modules all or none: a failed build leaves a pure-Python package."""

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers: the pure-Python modules serve
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            print(f"adaptive-sched: compiling the latency model failed ({exc}); installing as pure Python",
                  file=sys.stderr)  # fmt: skip
            return
        target = PACKAGE if self.inplace else Path(self.build_lib) / PACKAGE
        target.mkdir(parents=True, exist_ok=True)
        (target / native.DIGESTS_FILE).write_text(json.dumps(native.source_digests(), indent=1) + "\n")


setup(ext_modules=_native_extensions(), cmdclass={"build_ext": OptionalBuildExt})
