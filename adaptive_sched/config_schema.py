"""The config as a JSON Schema (draft 2020-12), derived from the dataclasses that read it.

The schema is generated, never written by hand: :func:`config_schema` walks
:class:`~adaptive_sched.config.Config` field by field (nested sections are dataclasses,
so a new section appears by itself), takes types and defaults from the type hints, the
``choices`` of a field's metadata as an ``enum``, and descriptions from the ``#:``
comment above each field. The ``policy`` section is its common keys plus, per kind,
that kind's ``Params`` (an ``if``/``then`` on ``kind``).

The schema checks structure and types for editors and CI; the loader checks more
(bounds, executors' options, the profile a simulator names, checks across sections):
``adaptive-sched config check`` runs it.

>>> schema = config_schema()
>>> schema["$schema"], schema["required"]
('https://json-schema.org/draft/2020-12/schema', ['device', 'backends'])
>>> schema["properties"]["backends"]["propertyNames"]
{'enum': ['cpu', 'gpu', 'npu']}
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import types
import typing
from functools import cache
from typing import Any

from .config import POLICY_COMMON, Config, PolicyConfig

DRAFT = "https://json-schema.org/draft/2020-12/schema"

_SCALARS: dict[Any, str] = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def config_schema() -> dict[str, Any]:
    """The JSON Schema of a whole config file."""
    return {
        "$schema": DRAFT,
        "title": "adaptive-sched config",
        **dataclass_schema(Config),
    }


def dataclass_schema(cls: type) -> dict[str, Any]:
    """An object schema of dataclass ``cls``: its settable fields, their types, defaults and descriptions.

    Fields marked ``metadata={"internal": True}`` are not keys of the file and are left out;
    :class:`PolicyConfig` gets :func:`policy_schema`.
    """
    return policy_schema() if cls is PolicyConfig else _object_schema(cls)


def _object_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    notes = field_comments(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        prop = type_schema(hints[f.name])
        if "choices" in f.metadata:
            prop["enum"] = list(f.metadata["choices"])
        if f.name in notes:
            prop["description"] = notes[f.name]
        if f.default is not dataclasses.MISSING:
            prop["default"] = _json_default(f.default)
        elif f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        properties[f.name] = prop
    out: dict[str, Any] = {"type": "object"}
    if _summary(cls):
        out["description"] = _summary(cls)
    out["properties"] = properties
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    return out


def policy_schema() -> dict[str, Any]:
    """The ``policy`` section: the keys every kind shares, and per kind the keys of its ``Params``.

    ``kind`` selects the ``Params`` (a missing ``kind`` is the default kind); a key that
    neither the common part nor the selected kind declares is refused
    (``unevaluatedProperties``).
    """
    from .policies import POLICIES

    common = _object_schema(PolicyConfig)
    assert set(common["properties"]) == set(POLICY_COMMON)
    common["properties"]["kind"]["enum"] = sorted(POLICIES)
    del common["additionalProperties"]  # the kind's keys sit beside the common ones
    branches: list[dict[str, Any]] = []
    for kind in sorted(POLICIES):
        own = {"properties": dataclass_schema(POLICIES[kind].Params)["properties"]}
        branches.append({"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]}, "then": own})
        if kind == PolicyConfig.kind:
            branches.append({"if": {"not": {"required": ["kind"]}}, "then": own})
    return {**common, "allOf": branches, "unevaluatedProperties": False}


def type_schema(hint: Any) -> dict[str, Any]:
    """The schema of one type hint (scalars, enums, unions, lists, mappings, dataclasses)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [type_schema(option) for option in typing.get_args(hint)]
        if all(set(o) == {"type"} for o in options):  # scalars only: one "type" list
            return {"type": [o["type"] for o in options]}
        return {"anyOf": options}
    if dataclasses.is_dataclass(hint):
        assert isinstance(hint, type)
        shorthand = getattr(hint, "SHORTHAND", None)
        schema = dataclass_schema(hint)
        if shorthand:  # a string alone stands for this key
            return {"anyOf": [{"type": "string", "description": f"the {shorthand} alone"}, schema]}
        return schema
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [member.value for member in hint]}
    if origin is list:
        (item,) = typing.get_args(hint)
        return {"type": "array", "items": type_schema(item)}
    if origin is dict:
        key, value = typing.get_args(hint)
        out: dict[str, Any] = {"type": "object"}
        if isinstance(key, type) and issubclass(key, enum.Enum):
            out["propertyNames"] = {"enum": [member.value for member in key]}
            out["minProperties"] = 1
        if value is not Any:
            out["additionalProperties"] = type_schema(value)
        return out
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is Any:
        return {}
    raise TypeError(f"no JSON Schema for setting type {hint!r}")  # a config field of a new kind of type


def _json_default(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _summary(cls: type) -> str:
    """The first paragraph of ``cls``'s own docstring, on one line."""
    doc = cls.__dict__.get("__doc__") or ""
    return " ".join(inspect.cleandoc(doc).split("\n\n", 1)[0].split())


_FIELD = re.compile(r"^\s+(\w+)\s*:")


@cache
def field_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines above each field of ``cls``, joined (empty if its source is not at hand)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    notes: dict[str, str] = {}
    pending: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = _FIELD.match(line)
        if match and pending:
            notes[match.group(1)] = " ".join(pending)
        pending = []
    return notes
