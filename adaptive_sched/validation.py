"""Validation shared by every YAML file the package reads: configs, device profiles, grids.

Three pieces, used by :mod:`adaptive_sched.config`, :mod:`adaptive_sched.sim.loading` and
:mod:`adaptive_sched.offline.profiling` alike:

* :func:`read_yaml` reads a file within bounds (size, UTF-8, YAML aliases expanded, depth),
  so a hostile or careless file fails fast with its name in the message;
* :class:`Problems` collects every problem of a document, each ``key: message``, and raises
  them together as one :class:`~adaptive_sched.errors.ConfigError` (``file: key: message``
  per line), so a file with three mistakes is fixed in one pass, not three;
* the scalar checks (:func:`expect_int`, :func:`expect_number`, ...) word a wrong type the
  same way in every file.

>>> problems = Problems()
>>> with problems.catch():
...     expect_int("two", "workload.tokens")
>>> problems.add("policy.kind: expected one of adaptive, static")
>>> problems.raise_if_any("c.yaml")
Traceback (most recent call last):
...
adaptive_sched.errors.ConfigError: c.yaml: workload.tokens: expected an integer, got 'two'
c.yaml: policy.kind: expected one of adaptive, static
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: the largest YAML file read, in bytes: a config is a page of YAML, and a file far larger
#: is a mistake (or hostile) that would otherwise cost seconds and gigabytes to parse
MAX_YAML_BYTES = 1 << 20
#: the most values (mappings, lists and scalars) a file may hold with its YAML aliases
#: expanded: a few nested anchors can stand for billions of values ...
MAX_YAML_NODES = 20_000
#: ... and the deepest it may nest (a self-referencing alias nests without end)
MAX_YAML_DEPTH = 32


class Problems:
    """The problems found in one document so far, each a line ``key: message``.

    A validator records a problem and goes on with the next key; :meth:`raise_if_any`
    raises them all at once. Checks that depend on a part found wrong are skipped, so
    one mistake is reported once, not again by every check built on it.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.errors)

    def __len__(self) -> int:
        return len(self.errors)

    def add(self, message: str) -> None:
        """Record one problem (``key: message``)."""
        self.errors.append(message)

    def extend(self, exc: ConfigError, prefix: str = "") -> None:
        """Record every line of ``exc``, each behind ``prefix`` (``"where: "`` or ``"where."``)."""
        self.errors.extend(f"{prefix}{line}" for line in exc.errors)

    @contextmanager
    def catch(self, prefix: str = "") -> Iterator[None]:
        """Record a :class:`ConfigError` raised inside the block instead of letting it out."""
        try:
            yield
        except ConfigError as exc:
            self.extend(exc, prefix)

    def raise_if_any(self, origin: str = "") -> None:
        """Raise every problem recorded as one :class:`ConfigError`, each line behind ``origin: ``."""
        if self.errors:
            raise ConfigError(*(f"{origin}: {e}" if origin else e for e in self.errors))


def join(where: str, key: str) -> str:
    """The dotted key path ``where.key`` (just ``key`` at the top level)."""
    return f"{where}.{key}" if where else key


def read_yaml(path: Path | str) -> Any:
    """Parse a YAML file within the bounds above; errors are :class:`ConfigError` naming the file.

    The data is checked with :func:`check_bounded` before it is returned.
    """
    import yaml  # only needed when a file is read

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES} bytes (a config, profile or grid is far smaller)")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    try:
        check_bounded(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return data


def check_bounded(data: Any) -> None:
    """Refuse data of more than :data:`MAX_YAML_NODES` values or nested deeper than
    :data:`MAX_YAML_DEPTH`, counting shared (aliased) values at every place they appear.

    The walk stops at the first limit crossed, so an alias bomb fails in microseconds
    instead of being expanded later (by validation, hashing, or the log's copy of a config).
    """
    budget = MAX_YAML_NODES
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        budget -= 1
        if budget < 0:
            key = where.split("[", 1)[0]  # the key, not the path inside its expansion
            raise ConfigError(
                f"{key or 'config'}: more than {MAX_YAML_NODES} values with YAML aliases expanded "
                "(an alias bomb?); a config is far smaller"
            )
        if depth > MAX_YAML_DEPTH:
            key = where.split("[", 1)[0]
            raise ConfigError(f"{key}: nested deeper than {MAX_YAML_DEPTH} levels (a self-referencing alias?)")
        if isinstance(value, Mapping):
            stack.extend((v, join(where, str(k)), depth + 1) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))


# -- scalars: one wording for a wrong value, whichever file it is in --------------------------


def expect_bool(value: Any, key: str) -> bool:
    """``value`` if it is true or false, else a :class:`ConfigError` naming ``key``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def expect_str(value: Any, key: str) -> str:
    """``value`` if it is a string."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def expect_int(value: Any, key: str, low: int | None = None) -> int:
    """``value`` if it is an integer (not a boolean) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{key}: expected an integer >= {low}, got {value!r}")
    return value


def expect_number(
    value: Any, key: str, low: float | None = None, *, strict: bool = False, numeric_strings: bool = False
) -> float:
    """``value`` as a finite float of at least ``low`` (above it if ``strict``).

    ``numeric_strings`` accepts ``"1e9"``: YAML 1.1 reads an exponent without a dot or a
    sign as a string, which hand-written device profiles are full of.
    """
    number = value
    if numeric_strings and isinstance(value, str):
        with suppress(ValueError):
            number = float(value)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        number = float(number)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    if low is not None and (number < low or (strict and number == low)):
        raise ConfigError(f"{key}: expected a number {'>' if strict else '>='} {low:g}, got {value!r}")
    return number
