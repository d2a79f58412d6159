"""Every command's ``--output json`` is strict JSON: ``null``, never ``NaN`` or ``Infinity``."""

import importlib
import json
import sqlite3

import pytest

from adaptive_sched.cli import VERBS, main


def _strict(text):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """A log with outcomes (a short run), one with a decision never observed, and a profile database."""
    root = tmp_path_factory.mktemp("json")
    run_db, bare_db, prof_db = root / "run.db", root / "bare.db", root / "prof.db"
    assert main(["run", "--tokens", "4", "--layers", "2", "--no-compare", "--db", str(run_db)]) == 0
    assert main(["decide", "--stage", "qkv", "--n", "1", "--d", "2048", "--db", str(bare_db)]) == 0
    assert main(["decide", "--stage", "qkv", "--n", "1", "--d", "2048", "--db", str(prof_db)]) == 0
    assert main(["profile", "--grid", "smoke", "--repetitions", "2", "--db", str(prof_db)]) == 0
    with sqlite3.connect(prof_db) as conn:
        (decision_id,) = conn.execute("SELECT max(id) FROM decisions").fetchone()
    return {"run": str(run_db), "bare": str(bare_db), "prof": str(prof_db), "id": decision_id}


#: verb -> the arguments each JSON case adds (several cases per verb where the data differ)
CASES = {
    "run": [["--tokens", "4", "--layers", "2"]],
    "decide": [["--stage", "attn", "--n", "1", "--d", "4096", "--kv-len", "512", "--precision", "int8"]],
    "profile": [["--grid", "smoke", "--repetitions", "2", "--db", "{tmp}/p.db"]],
    "train": [["--db", "{prof}"]],
    "replay": [["--db", "{run}"], ["--db", "{bare}"]],
    "export": [["--db", "{run}", "--format", "vw", "--out", "{tmp}/log.vw"]],
    "report": [["--db", "{run}"], ["--db", "{bare}"]],
    "observe": [["--db", "{prof}", "--id", "{id}", "--latency-ms", "1.5"]],
    "executors": [[]],
    "check": [[]],
    "telemetry": [[], ["--root", "{tmp}"]],
}


def _cases():
    for verb, module_name in VERBS.items():
        if not importlib.import_module(f"adaptive_sched.cli.{module_name}").OUTPUT:
            continue
        for i, argv in enumerate(CASES.get(verb, [None])):
            yield pytest.param(verb, argv, id=f"{verb}-{i}")


@pytest.mark.parametrize(("verb", "argv"), list(_cases()))
def test_json_output_is_strict(verb, argv, logs, tmp_path, capsys):
    assert argv is not None, f"no JSON case for the verb {verb!r}: add one to CASES"
    argv = [a.format(tmp=tmp_path, **logs) for a in argv]
    capsys.readouterr()
    code = main([verb, *argv, "--output", "json"])
    out = capsys.readouterr().out
    if code == 1 and not out:
        return  # a failure said on stderr (e.g. replay of a log with no outcome): nothing to parse
    # replay exits 3 (and still prints its JSON) when the log cannot support an estimate
    assert code == 0 or (verb == "replay" and code == 3), out
    _strict(out)  # raises on NaN / Infinity


def test_strict_parser_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        _strict('{"x": NaN}')
