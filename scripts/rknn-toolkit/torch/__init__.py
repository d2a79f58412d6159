"""A stand-in for ``torch`` inside rknn-toolkit2's own virtual environment (never in the project's).

rknn-toolkit2 imports torch (and a few of its submodules) when ``rknn.api`` is imported, for
its PyTorch front end; the ONNX path that ``scripts/build_rknn_models.py`` uses never calls
it. The toolkit pins torch<=2.4, which would pull in about 2 GB of wheels, so
``scripts/rknn-toolkit-env.sh`` installs this module as ``torch`` instead: every attribute
and every ``torch.*`` submodule is an inert placeholder that can be called, subclassed and
looked into. Anything that really needs torch (``RKNN.load_pytorch``) gets placeholders
back and fails; use the ONNX path.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any, ClassVar

__version__ = "2.4.0"
#: marks this module as the stand-in, so the env script never overwrites a real torch
ADAPTIVE_SCHED_STAND_IN = True


class _Placeholder(types.ModuleType):
    """A module-like object whose every attribute is another placeholder."""

    __path__: ClassVar[list[str]] = []  # a package, so ``import torch.a.b`` works

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # keeps pickle, copy and inspect from mistaking it for something else
        return _Placeholder(f"{self.__name__}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _Placeholder(f"{self.__name__}()")

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return (object,)  # ``class X(torch.nn.Module)`` at import time


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers every ``import torch.<anything>`` with a placeholder module."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _Placeholder(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


sys.meta_path.insert(0, _Finder())


def __getattr__(name: str) -> Any:
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    return _Placeholder(f"{__name__}.{name}")
