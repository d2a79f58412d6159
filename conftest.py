"""Collection: a compiled module's doctests run from its source.

When the latency model is compiled (see ``adaptive_sched/learners/native.py``), importing
``latency.py`` gives the extension module, which pytest refuses to collect as that file;
``tests/test_native.py`` runs the sources' doctests instead.
"""

from __future__ import annotations

from pathlib import Path

from adaptive_sched.learners import native


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if (
        collection_path.suffix == ".py"
        and collection_path.stem in native.NATIVE
        and collection_path.parent == Path(native.__file__).resolve().parent
        and native.status()["build"] == "compiled"
    ):
        return True
    return None
