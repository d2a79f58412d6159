"""Where the shipped configs live, and how a config name becomes a file.

The YAML files under ``configs/`` in a checkout are the package's own
``adaptive_sched/configs`` directory, so they are installed with the package and a
bare name such as ``"rk3588-sim"`` works from any directory.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = "rk3588-sim"


def resolve_config(name_or_path: str | Path, kind: str = "") -> Path:
    """Return the file for a config path, or for the name of a shipped config.

    ``kind`` is a sub-directory of the shipped configs (``"devices"``, ``"grids"``).

    >>> resolve_config("rk3588-sim").name
    'rk3588-sim.yaml'
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped_dir = CONFIG_DIR / kind if kind else CONFIG_DIR
    for candidate in (shipped_dir / path, shipped_dir / f"{path}.yaml"):
        if path.parent == Path(".") and candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in shipped_dir.glob("*.yaml"))
    raise ConfigError(f"{name_or_path}: no such file, nor a shipped {kind or 'config'} (shipped: {', '.join(shipped)})")
