"""Priors in files: JSON prior files, the shipped (builtin) priors, and loading by source.

:func:`load_prior` is what a config's ``priors:`` key resolves to: ``"builtin"`` (the
prior shipped for the device), a JSON file, or a log database holding priors (its
``priors`` table, :mod:`.priors`). Everything read is verified (hashes, device, model
hyperparameters) before it is used, and bounded: a file over :data:`MAX_PRIOR_BYTES`,
not UTF-8, or nested deeper than a prior is, is refused with an error naming it.

>>> prior = load_prior("builtin", device="rk3588")
>>> prior.name, [b.value for b in prior.backends]
('rk3588', ['gpu', 'npu'])
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..errors import PriorError, StoreError
from ..learners.prior_data import PriorData, prior_from_dict
from ..learners.priors import Prior
from .priors import MAX_JSON_DEPTH, json_depth, read_prior_db, save_prior
from .schema import SQLITE_MAGIC

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BUILTIN = "builtin"
#: the largest prior file read (the shipped ones are well under 1 MB)
MAX_PRIOR_BYTES = 16 * 2**20


def builtin_path(device: str) -> Path:
    """Where the shipped prior of ``device`` lives (it may not exist)."""
    return DATA_DIR / f"priors-{device}.json"


def write_prior_json(data: PriorData, path: str | Path) -> Path:
    """Write ``data`` as a JSON file (sorted keys, indented), atomically; returns the path."""
    path = Path(path)
    text = json.dumps(data.as_dict(), sort_keys=True, indent=1, allow_nan=False) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise PriorError(f"{path}: cannot write the prior ({exc.strerror})") from exc
    return path


def read_prior_json(path: str | Path) -> PriorData:
    """Read and verify a JSON prior file.

    Raises
    ------
    PriorError
        Naming the file: unreadable, over :data:`MAX_PRIOR_BYTES`, not UTF-8, not JSON,
        nested deeper than a prior is, or not a valid prior (see
        :func:`~adaptive_sched.learners.prior_data.prior_from_dict`).
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            # Read one byte past the limit rather than trusting the size a stat reports
            # (a pipe or /proc file says 0).
            raw = fh.read(MAX_PRIOR_BYTES + 1)
    except OSError as exc:
        raise PriorError(f"{path}: cannot read the prior ({exc.strerror})") from exc
    if len(raw) > MAX_PRIOR_BYTES:
        raise PriorError(f"{path}: over {MAX_PRIOR_BYTES // 2**20} MB; a prior is far smaller, refusing to read it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PriorError(f"{path}: not UTF-8 text (byte {exc.start}); not a prior") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise PriorError(f"{path}: JSON nested too deeply; not a prior") from None
    except ValueError as exc:
        raise PriorError(f"{path}: not valid JSON ({exc})") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise PriorError(f"{path}: JSON nested over {MAX_JSON_DEPTH} levels deep; not a prior")
    return prior_from_dict(data, str(path))


def _source_kind(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        raise PriorError(f"{path}: no such prior file or database") from None
    except IsADirectoryError:
        raise PriorError(f"{path}: is a directory, not a prior") from None
    except OSError as exc:
        raise PriorError(f"{path}: cannot read ({exc.strerror})") from exc
    return "sqlite" if head == SQLITE_MAGIC else "json"


def read_prior_data(source: str | Path, *, device: str | None = None, name: str | None = None) -> PriorData:
    """The verified :class:`PriorData` at ``source`` ("builtin", a JSON file or a database)."""
    if str(source) == BUILTIN:
        if device is None:
            raise PriorError("the builtin prior needs a device name")
        path = builtin_path(device)
        if not path.is_file():
            shipped = sorted(p.stem.removeprefix("priors-") for p in DATA_DIR.glob("priors-*.json"))
            raise PriorError(f"no builtin prior for device {device!r} (shipped: {', '.join(shipped) or 'none'})")
        return read_prior_json(path)
    path = Path(source).expanduser()
    if _source_kind(path) == "sqlite":
        try:
            return read_prior_db(path, name=name, device=device)
        except StoreError as exc:
            raise PriorError(f"{path}: {exc}") from exc
    data = read_prior_json(path)
    if name is not None and data.name != name:
        raise PriorError(f"{path}: holds prior {data.name!r}, not {name!r}")
    return data


def load_prior(source: str | Path, *, device: str = "rk3588", name: str | None = None) -> Prior:
    """Load, verify and prepare a prior for ``device``.

    Parameters
    ----------
    source
        ``"builtin"`` (the prior shipped for ``device``), a JSON prior file, or an SQLite
        database holding priors (then ``name``, or the newest prior of ``device``).
    device
        The device profile the caller runs on. A prior trained for another device is
        refused.

    Raises
    ------
    PriorError
        Missing source, bad JSON, a content hash that does not match (tampered or
        corrupted), another device, an unknown model or feature set.
    """
    data = read_prior_data(source, device=device, name=name)
    if data.device != device:
        raise PriorError(
            f"prior {data.name!r} ({source}) was trained for device {data.device!r}, not {device!r}; "
            "profile this device and train a prior for it"
        )
    return Prior(data, source=str(source))


def export_prior(source: str | Path, path: str | Path, *, device: str | None = None, name: str | None = None) -> Path:
    """Copy a verified prior from ``source`` (a database, a JSON file, "builtin") to a JSON file."""
    return write_prior_json(read_prior_data(source, device=device, name=name), path)


def import_prior(path: str | Path, db_path: str | Path, *, rename: str | None = None) -> PriorData:
    """Verify the JSON prior at ``path`` and store it in the ``priors`` table of ``db_path``."""
    data = read_prior_json(path)
    if rename:
        data = replace(data, name=rename)
    save_prior(db_path, data)
    return data


__all__ = [
    "BUILTIN",
    "MAX_PRIOR_BYTES",
    "builtin_path",
    "export_prior",
    "import_prior",
    "load_prior",
    "read_prior_data",
    "read_prior_json",
    "write_prior_json",
]
