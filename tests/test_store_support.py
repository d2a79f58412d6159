"""Helpers shared by the store tests (no tests here)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from adaptive_sched.types import Backend, Decision, Shape, Stage

REPO = Path(__file__).resolve().parents[1]
SHAPES = [Shape(n=1, d=256, kv_len=k, heads=4, precision="int8") for k in range(0, 512, 64)]
PRED = MappingProxyType({Backend.GPU: 2e-3, Backend.NPU: 1e-3})
PROBS = MappingProxyType({Backend.GPU: 0.95, Backend.NPU: 0.05})


def make_decision(run: int, seq: int, *, explored: bool = False, t: float | None = None) -> Decision:
    stage = Stage.QKV if seq % 2 else Stage.ATTN
    return Decision.of(
        run << 32 | seq,
        stage,
        SHAPES[seq % len(SHAPES)],
        Backend.NPU if explored else Backend.GPU,
        0.05 if explored else 0.95,
        explored=explored,
        predicted=PRED,
        probabilities=PROBS,
        after=None if stage is Stage.QKV else Backend.GPU,
        policy_version=7,
        time=time.time() if t is None else t,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def count(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[str]:
    """Make ``directory`` unwritable while in the block, as read-only media are; yields how.

    Permission bits stop anyone but root (``os.geteuid() == 0`` ignores them); for root,
    the immutable attribute (``chattr +i``) does. Skips the test, saying why, when neither
    is possible here.
    """
    how = ""
    directory.chmod(0o555)
    probe = directory / ".probe"
    try:
        probe.touch()
    except PermissionError:
        how = "chmod"
    else:
        probe.unlink()
        if (
            shutil.which("chattr")
            and subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
        ):
            how = "chattr"
    if not how:
        directory.chmod(0o755)
        pytest.skip(
            f"cannot make a directory read-only here: running as uid {os.geteuid()}, which ignores "
            "permission bits, and chattr +i is not available"
        )
    try:
        yield how
    finally:
        if how == "chattr":
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """Poll ``condition``: a liveness bound for background work, not a speed threshold."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Start ``python -c code`` with the repository importable."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


CHILD_PRELUDE = """
import sys, time, json
from types import MappingProxyType

import pytest
from adaptive_sched.store.writer import DecisionLog
from adaptive_sched.types import Backend, Decision, Shape, Stage
SHAPES = [Shape(n=1, d=256, kv_len=k, heads=4, precision="int8") for k in range(0, 512, 64)]
PRED = MappingProxyType({Backend.GPU: 2e-3, Backend.NPU: 1e-3})
def make(run, seq):
    stage = Stage.QKV if seq % 2 else Stage.ATTN
    return Decision.of(run << 32 | seq, stage, SHAPES[seq % len(SHAPES)], Backend.GPU, 0.95, predicted=PRED,
                       probabilities={Backend.GPU: 0.95, Backend.NPU: 0.05},
                       after=None if stage is Stage.QKV else Backend.GPU, policy_version=7, time=time.time())
"""
