"""The package's import arrows all point down the layers (docs/architecture.md draws them).

Every module of ``adaptive_sched`` is parsed with :mod:`ast` (nothing is imported), and
every ``import`` in it, at the top or inside a function, is an arrow from its layer to
the imported module's layer. An arrow may stay in its layer or go down, never up:

====  ==================  ==========================================================
rank  layer               modules
====  ==================  ==========================================================
0     core                types, errors, features, stages, workload, paths, cache, validation,
                          buckets
1     executors           executors/, sim/ (the simulated SoC is an executor), checks, telemetry/
2     learners, policies  learners/, policies/
3     scheduler           scheduler, build, config, config_schema, runner, deadline, observed,
                          counters, quarantine, outcomes, learning, failover,
                          stage_runs
4     store               store/
5     offline, service    offline/; service, metrics (they serve a scheduler)
6     cli                 cli/, __main__
====  ==================  ==========================================================

Within a layer, learners/ and policies/ are peers, but learners/ (pure models of
data) imports nothing of policies/, nor of the executors below: a learner learns from
numbers, whatever measured them. The exceptions are listed in :data:`ALLOWED`, each
with its reason, and the test fails when one of them is no longer needed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "adaptive_sched"

#: (rank, layer name) by module prefix; the longest matching prefix wins
LAYERS: dict[str, tuple[int, str]] = {
    "adaptive_sched.types": (0, "core"),
    "adaptive_sched.errors": (0, "core"),
    "adaptive_sched.features": (0, "core"),
    "adaptive_sched.stages": (0, "core"),
    "adaptive_sched.workload": (0, "core"),
    "adaptive_sched.paths": (0, "core"),
    "adaptive_sched.cache": (0, "core"),
    "adaptive_sched.buckets": (0, "core"),
    "adaptive_sched.validation": (0, "core"),
    "adaptive_sched.executors": (1, "executors"),
    "adaptive_sched.sim": (1, "executors"),
    "adaptive_sched.checks": (1, "executors"),
    "adaptive_sched.telemetry": (1, "executors"),
    "adaptive_sched.learners": (2, "learners"),
    "adaptive_sched.policies": (2, "policies"),
    "adaptive_sched.scheduler": (3, "scheduler"),
    "adaptive_sched.build": (3, "scheduler"),
    "adaptive_sched.config": (3, "scheduler"),
    "adaptive_sched.config_schema": (3, "scheduler"),
    "adaptive_sched.runner": (3, "scheduler"),
    "adaptive_sched.deadline": (3, "scheduler"),
    "adaptive_sched.observed": (3, "scheduler"),
    "adaptive_sched.counters": (3, "scheduler"),
    "adaptive_sched.quarantine": (3, "scheduler"),
    "adaptive_sched.outcomes": (3, "scheduler"),
    "adaptive_sched.learning": (3, "scheduler"),
    "adaptive_sched.failover": (3, "scheduler"),
    "adaptive_sched.stage_runs": (3, "scheduler"),
    "adaptive_sched.store": (4, "store"),
    "adaptive_sched.offline": (5, "offline"),
    "adaptive_sched.service": (5, "service"),
    "adaptive_sched.metrics": (5, "service"),
    "adaptive_sched.cli": (6, "cli"),
    "adaptive_sched.__main__": (6, "cli"),
}

#: arrows that are wrong whatever the ranks say: (from layer, to layer)
FORBIDDEN = {("learners", "policies"), ("learners", "executors")}

#: arrows that go up on purpose: (importing module, imported module prefix) -> reason
ALLOWED: dict[tuple[str, str], str] = {
    ("adaptive_sched", "adaptive_sched.scheduler"): (
        "the package root is the public facade: it names Scheduler for type checkers and "
        "imports it lazily, on first use of adaptive_sched.Scheduler"
    ),
    ("adaptive_sched.build", "adaptive_sched.store"): (
        "build.py is the one place a config is wired into objects, the prior and the decision log it "
        "names included: they come from store/ (prior files, the log's writer, retention and warm-start "
        "reads), imported lazily, only when a config names a prior or a log is asked for"
    ),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str | None = None) -> Iterator[str]:
    """Every ``adaptive_sched`` module ``path`` (module ``name``) imports, relative imports resolved."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "adaptive_sched":
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "adaptive_sched":
                continue
            # ``from . import kernels`` imports a module; ``from .types import Shape`` a name
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield sub if _is_module(sub) else target


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _layer(name: str) -> tuple[int, str] | None:
    best = None
    for prefix, layer in LAYERS.items():
        if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _wrong_arrows_of(path: Path, name: str) -> dict[tuple[str, str], str]:
    """(``name``, imported module) -> what is wrong with the arrow, for each wrong import of ``path``."""
    # the package root (no layer of its own) may import the core only
    here = _layer(name) or (0, "package root")
    wrong = {}
    for target in _imports(path, name):
        there = _layer(target)
        if target == "adaptive_sched":
            continue  # the package root: ``from .. import __version__``
        if there is None:
            wrong[(name, target)] = f"{name} imports {target}, which has no layer (or does not exist)"
            continue
        if there[0] > here[0] or (here[1], there[1]) in FORBIDDEN:
            wrong[(name, target)] = f"{name} ({here[1]}) imports {target} ({there[1]})"
    return wrong


def _wrong_arrows() -> dict[tuple[str, str], str]:
    """(module, imported module) -> what is wrong with the arrow, over the whole package."""
    wrong: dict[tuple[str, str], str] = {}
    for path in _modules():
        wrong.update(_wrong_arrows_of(path, _module_name(path)))
    return wrong


def _allowed(module: str, target: str) -> bool:
    return any(m == module and (target == t or target.startswith(t + ".")) for m, t in ALLOWED)


def test_every_module_has_a_layer() -> None:
    unplaced = [
        _module_name(p) for p in _modules() if _module_name(p) != "adaptive_sched" and _layer(_module_name(p)) is None
    ]
    assert unplaced == [], f"give these modules a layer in LAYERS: {unplaced}"


def test_imports_point_down_the_layers() -> None:
    wrong = {k: v for k, v in _wrong_arrows().items() if not _allowed(*k)}
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong.values()))


def test_allowed_exceptions_are_still_needed() -> None:
    found = _wrong_arrows()
    stale = [k for k in ALLOWED if not any(m == k[0] and (t == k[1] or t.startswith(k[1] + ".")) for m, t in found)]
    assert not stale, f"these ALLOWED exceptions no longer happen; remove them: {stale}"


def test_the_walker_sees_relative_lazy_and_module_imports(tmp_path: Path) -> None:
    # the walker is what the other tests trust: an arrow it misses is an arrow never checked
    path = tmp_path / "probe.py"
    path.write_text(
        "from ..store.writer import DecisionLog\n"
        "def f():\n    from .. import config\n    import adaptive_sched.cli\n"
        "from . import models\nfrom .priors import Prior\nfrom ..policies.base import Policy\n"
        "from ..executors.base import Executor\n",
        encoding="utf-8",
    )
    name = "adaptive_sched.learners.probe"
    assert sorted(_imports(path, name)) == [
        "adaptive_sched.cli",
        "adaptive_sched.config",
        "adaptive_sched.executors.base",
        "adaptive_sched.learners.models",
        "adaptive_sched.learners.priors",
        "adaptive_sched.policies.base",
        "adaptive_sched.store.writer",
    ]
    assert sorted(t for _, t in _wrong_arrows_of(path, name)) == [
        "adaptive_sched.cli",
        "adaptive_sched.config",
        "adaptive_sched.executors.base",  # below, but learners learn from numbers, not from executors
        "adaptive_sched.policies.base",  # a peer, but learners import nothing of policies
        "adaptive_sched.store.writer",
    ]
