"""The exported JSON Schema agrees with the loader: shipped configs pass, structural mistakes fail.

``jsonschema`` is not a dependency, so the keywords the schema uses are checked by the
small validator below (draft 2020-12 semantics for that subset); a keyword it does not
know fails the test rather than passing silently.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from adaptive_sched.cli import main
from adaptive_sched.config import Config, load_config
from adaptive_sched.config_schema import DRAFT, config_schema, dataclass_schema
from adaptive_sched.paths import CONFIG_DIR
from adaptive_sched.policies import POLICIES

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}
_ANNOTATIONS = {"$schema", "title", "description", "default"}


def problems(schema: dict[str, Any], value: Any, where: str = "") -> tuple[list[str], set[str]]:
    """(problems, names of the properties evaluated) of ``value`` under ``schema``."""
    out: list[str] = []
    seen: set[str] = set()
    unknown = set(schema) - _ANNOTATIONS - {
        "type", "enum", "const", "properties", "required", "additionalProperties", "unevaluatedProperties",
        "propertyNames", "minProperties", "items", "anyOf", "allOf", "if", "then", "not",
    }  # fmt: skip
    assert not unknown, f"{where}: keyword(s) the test validator does not know: {unknown}"
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[k](value) for k in kinds):
            return [f"{where}: not {'/'.join(kinds)}: {value!r}"], seen
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        out.append(f"{where}: {value!r} != {schema['const']!r}")
    if "anyOf" in schema:
        results = [problems(s, value, where) for s in schema["anyOf"]]
        passing = [r for r in results if not r[0]]
        if not passing:
            out.append(f"{where}: matches no option ({[r[0] for r in results]})")
        for r in passing:
            seen |= r[1]
    if "not" in schema and not problems(schema["not"], value, where)[0]:
        out.append(f"{where}: matches a 'not'")
    for sub in schema.get("allOf", []):
        found, names = problems(sub, value, where)
        out += found
        seen |= names
    if "if" in schema and not problems(schema["if"], value, where)[0] and "then" in schema:
        found, names = problems(schema["then"], value, where)
        out += found
        seen |= names
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{where}.{k}: required" for k in schema.get("required", []) if k not in value]
        if len(value) < schema.get("minProperties", 0):
            out.append(f"{where}: fewer than {schema['minProperties']} properties")
        for key, item in value.items():
            key_where = f"{where}.{key}" if where else str(key)
            if "propertyNames" in schema:
                out += problems(schema["propertyNames"], key, key_where)[0]
            if key in props:
                seen.add(key)
                out += problems(props[key], item, key_where)[0]
            elif "additionalProperties" in schema:
                extra = schema["additionalProperties"]
                if extra is False:
                    out.append(f"{key_where}: not allowed")
                else:
                    seen.add(key)
                    out += problems(extra, item, key_where)[0]
        if schema.get("unevaluatedProperties") is False:
            out += [f"{where}.{k}: not allowed" for k in value if k not in seen]
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += problems(schema["items"], item, f"{where}[{i}]")[0]
    return out, seen


def check(value: Any) -> list[str]:
    return problems(config_schema(), value)[0]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_validates_against_the_schema(path):
    load_config(path)  # the loader accepts it ...
    assert check(yaml.safe_load(path.read_text())) == []  # ... and so does the schema


def test_the_effective_config_of_every_policy_kind_validates(tmp_path):
    for kind in sorted(POLICIES):
        data = {"device": "t", "priors": "none", "backends": {"gpu": "sim", "npu": "sim"}, "simulator": {},
                "policy": {"kind": kind}}  # fmt: skip
        as_dict = load_config(data).as_dict()
        assert check(as_dict) == [], kind


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"backends": {"tpu": "cpu_numpy"}}, "backends.tpu"),
        ({"backends": {"gpu": {"executor": "cpu_numpy", "role": "leader"}}}, "backends.gpu"),
        ({"backends": {}}, "backends"),
        ({"policy": {"kind": "bandit"}}, "policy.kind"),
        ({"policy": {"learner": "fast"}}, "policy.learner"),
        ({"policy": {"epsilon": 0.1}}, "policy.epsilon"),  # the default kind (adaptive) has no epsilon
        ({"policy": {"kind": "epsilon", "explore_budget": 0.1}}, "policy.explore_budget"),
        ({"policy": {"kind": "adaptive", "explore_budget": "lots"}}, "policy.explore_budget"),
        ({"store": {"on_full": "wait"}}, "store.on_full"),
        ({"store": {"retention": {"max_rows": "many"}}}, "store.retention.max_rows"),
        ({"workload": {"precision": "fp8"}}, "workload.precision"),
        ({"workload": {"tokens": True}}, "workload.tokens"),
        ({"simulator": {"noise": "loud"}}, "simulator"),
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(change, key):
    data = {"device": "t", "priors": "none", "backends": {"gpu": "cpu_numpy"}, **change}
    with pytest.raises(ValueError, match=key.split(".")[-1]):
        load_config(data)
    found = check(data)
    assert found and all(p.startswith(key) for p in found), found
    assert check({"device": "t", "backends": {"gpu": "cpu_numpy"}, "policy": {"kind": "epsilon", "epsilon": 0.2}}) == []


def test_the_schema_is_draft_2020_12_with_every_section_and_kind():
    schema = config_schema()
    assert schema["$schema"] == DRAFT
    json.dumps(schema, allow_nan=False)  # plain JSON
    settable = {f.name for f in dataclasses.fields(Config) if not f.metadata.get("internal")}
    assert set(schema["properties"]) == settable
    policy = schema["properties"]["policy"]
    kinds = {branch["if"]["properties"]["kind"]["const"] for branch in policy["allOf"] if "properties" in branch["if"]}
    assert kinds == set(POLICIES) and set(policy["properties"]["kind"]["enum"]) == set(POLICIES)
    for kind, cls in POLICIES.items():
        branch = next(b for b in policy["allOf"] if b["if"].get("properties", {}).get("kind", {}).get("const") == kind)
        assert set(branch["then"]["properties"]) == {f.name for f in dataclasses.fields(cls.Params)}
    described = schema["properties"]["policy"]["properties"]["timeout_s"]
    assert "abandoned" in described["description"] and described["default"] == 1.0


@dataclass(frozen=True)
class Telemetry:
    """Where metrics go."""

    #: the endpoint to push to
    endpoint: str = "localhost:4317"
    interval_s: float = 10.0
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Extended:
    device: str
    telemetry: Telemetry | None = None


def test_a_new_section_appears_without_being_listed():
    schema = dataclass_schema(Extended)
    telemetry = schema["properties"]["telemetry"]["anyOf"][0]
    assert telemetry["properties"]["endpoint"] == {
        "type": "string", "description": "the endpoint to push to", "default": "localhost:4317",
    }  # fmt: skip
    assert telemetry["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    found = problems(schema, {"device": "x", "telemetry": {"interval_s": "often"}})[0]
    assert len(found) == 1 and "telemetry.interval_s: not number" in found[0]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_schema_prints_and_writes_without_overwriting(capsys, tmp_path):
    code, out, _ = run(capsys, "config", "schema")
    assert code == 0 and json.loads(out) == config_schema()
    target = tmp_path / "schema.json"
    assert run(capsys, "config", "schema", "--out", str(target))[0] == 0
    assert json.loads(target.read_text()) == config_schema()
    target.write_text("mine")
    code, _, err = run(capsys, "config", "schema", "--out", str(target))
    assert code == 2 and "exists" in err and target.read_text() == "mine"
    assert run(capsys, "config", "schema", "--out", str(target), "--force")[0] == 0
    assert json.loads(target.read_text()) == config_schema()


def test_cli_check_lists_every_problem(capsys, tmp_path):
    code, out, _ = run(capsys, "config", "check", *(str(p) for p in SHIPPED))
    assert (code, out) == (0, "ok\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: t\nbackends: {gpu: cpu_numpy}\nstore: {on_full: wait}\nworkload: {tokens: 0, x: 1}\n")
    code, out, err = run(capsys, "config", "check", str(bad))
    assert code == 2 and len(out.splitlines()) == 3 and "3 problems" in err
    assert all(line.startswith(f"{bad}: ") for line in out.splitlines())
    grid = tmp_path / "grid.yaml"
    grid.write_text("n: 0\nd: wide\n")
    code, out, _ = run(capsys, "config", "check", "--kind", "grid", str(grid))
    assert code == 2 and [line.split(": ")[1] for line in out.splitlines()] == ["n", "d"]
    assert run(capsys, "config", "check", "--kind", "profile", "rk3588")[:2] == (0, "ok\n")
