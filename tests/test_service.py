"""The socket service: many clients, bad requests, limits, signals, and the socket path."""

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from adaptive_sched import Scheduler
from adaptive_sched.cli import main
from adaptive_sched.service import DecisionService, ServiceError, ServiceLimits, request

ROOT = Path(__file__).resolve().parents[1]
DECIDE = {"op": "decide", "stage": "qkv", "n": 1, "d": 2048, "kv_len": 100, "precision": "int8"}


@pytest.fixture
def short_dir():
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="as-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def served(short_dir):
    db = short_dir / "log.db"
    sched = Scheduler.from_config("rk3588-sim", db=db)
    service = DecisionService(sched, short_dir / "s.sock", ServiceLimits(max_line=4096))
    service.start()
    yield service, db
    service.stop()
    sched.close()


class Client:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def ask(self, message):
        self.send_raw(json.dumps(message).encode() + b"\n")
        return self.read()

    def read(self):
        line = self.file.readline()
        return json.loads(line) if line else None

    def close(self):
        self.file.close()
        self.sock.close()


def _rows(db):
    with sqlite3.connect(db) as conn:
        return (conn.execute("SELECT count(*) FROM decisions").fetchone()[0],
                conn.execute("SELECT count(*) FROM outcomes").fetchone()[0])  # fmt: skip


def test_decide_then_observe_by_id(served):
    service, _ = served
    c = Client(service.path)
    d = c.ask({**DECIDE, "tag": 7})
    assert d["ok"] and d["tag"] == 7 and d["backend"] in d["usable"] and 0 < d["propensity"] <= 1
    a = c.ask({**DECIDE, "stage": "attn", "after": d["id"]})
    assert a["ok"] and a["id"] != d["id"]
    assert c.ask({"op": "observe", "id": d["id"], "latency_ms": 1.5}) == {"ok": True, "id": d["id"]}
    again = c.ask({"op": "observe", "id": d["id"], "latency_ms": 1.5})
    assert not again["ok"] and again["error"]["code"] == "unknown_id"
    unknown = c.ask({"op": "observe", "id": 12345, "latency_ms": 1.5})
    assert unknown["error"]["code"] == "unknown_id"
    assert c.ask({"op": "observe", "id": a["id"], "failed": True, "error": "oom"})["ok"]
    stats = c.ask({"op": "stats"})
    assert stats["ok"] and stats["stats"]["scheduler"]["observations"] == 1
    assert stats["stats"]["service"]["requests"]["decide"] == 2
    assert c.ask({"op": "flush"}) == {"ok": True}
    c.close()


def test_socket_is_owner_only(served):
    service, _ = served
    mode = stat.S_IMODE(os.stat(service.path).st_mode)
    assert stat.S_ISSOCK(os.stat(service.path).st_mode) and mode == 0o600


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"this is not json", "bad_json"),
        (b"[1, 2]", "bad_request"),
        (b'{"op": "teleport"}', "bad_request"),
        (b'{"op": "decide", "stage": "qkv", "n": 0, "d": 64}', "bad_request"),
        (b'{"op": "decide", "stage": "qkv", "n": true, "d": 64}', "bad_request"),
        (b'{"op": "decide", "stage": "ffn", "n": 1, "d": 64}', "bad_request"),
        (b'{"op": "decide", "stage": "qkv", "n": 1, "d": 64, "colour": "red"}', "bad_request"),
        (b'{"op": "decide", "stage": "qkv", "n": 1, "d": 1000000000}', "unsupported"),
        (b'{"op": "observe", "id": 1, "latency_ms": -1}', "bad_request"),
        (b'{"op": "observe", "id": 1}', "bad_request"),
    ],
)
def test_a_bad_request_gets_an_error_and_the_connection_stays_usable(served, line, code):
    service, _ = served
    c = Client(service.path)
    c.send_raw(line + b"\n")
    reply = c.read()
    assert reply["ok"] is False and reply["error"]["code"] == code and reply["error"]["message"]
    assert c.ask(DECIDE)["ok"]
    c.close()


def test_a_request_over_the_size_limit_is_refused_and_the_connection_closed(served):
    service, _ = served
    c = Client(service.path)
    c.send_raw(b'{"op": "decide", "pad": "' + b"x" * 5000)  # no newline yet: 5000 > max_line 4096
    reply = c.read()
    assert reply["error"]["code"] == "too_large"
    assert c.read() is None  # closed: there is no telling where the next request would start
    c.close()
    other = Client(service.path)
    assert other.ask(DECIDE)["ok"]
    other.close()


def test_a_client_that_disconnects_mid_request_harms_no_one(served):
    service, _ = served
    for _ in range(5):
        c = Client(service.path)
        c.send_raw(b'{"op": "decide", "stage": "q')
        c.close()
    c = Client(service.path)
    assert c.ask(DECIDE)["ok"]
    c.close()
    assert service.stats()["service"]["requests"] == {"decide": 1}


def test_pending_decisions_are_bounded(short_dir):
    with Scheduler.from_config("rk3588-sim") as sched:
        service = DecisionService(sched, short_dir / "s.sock", ServiceLimits(max_pending=3))
        ids = [service.handle(DECIDE)["id"] for _ in range(5)]
        assert service.handle({"op": "observe", "id": ids[0], "latency_ms": 1})["error"]["code"] == "unknown_id"
        assert service.handle({"op": "observe", "id": ids[4], "latency_ms": 1})["ok"]
        assert service.stats()["service"]["evicted"] == 2


def test_sixteen_concurrent_clients_every_request_answered_nothing_lost(served):
    service, db = served
    answered = {"decide": 0, "observe": 0}
    failures = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 3.0

    def client(k):
        c = Client(service.path)
        decided = observed = 0
        try:
            while time.monotonic() < stop_at:
                d = c.ask({**DECIDE, "kv_len": 50 + k})
                if not d["ok"]:
                    failures.append(d)
                    continue
                decided += 1
                o = c.ask({"op": "observe", "id": d["id"], "latency_ms": 1.0 + k / 10})
                if o["ok"]:
                    observed += 1
                else:
                    failures.append(o)
        finally:
            c.close()
        with lock:
            answered["decide"] += decided
            answered["observe"] += observed

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and answered["decide"] > 16
    assert service.handle({"op": "flush"})["ok"]
    assert _rows(db) == (answered["decide"], answered["observe"])


def test_a_live_server_at_the_path_is_refused(served, short_dir):
    service, _ = served
    with Scheduler.from_config("rk3588-sim") as sched, pytest.raises(ServiceError, match="already listening"):
        DecisionService(sched, service.path).start()
    assert Client(service.path).ask(DECIDE)["ok"]  # the first server still serves


def test_a_stale_socket_is_replaced_and_another_file_is_not(short_dir):
    path = short_dir / "s.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nothing listens: a server that died
    with Scheduler.from_config("rk3588-sim") as sched:
        with DecisionService(sched, path):
            assert request(path, DECIDE)["ok"]
        assert not path.exists()  # removed on stop
        notes = short_dir / "notes.txt"
        notes.write_text("mine")
        with pytest.raises(ServiceError, match="not a socket"):
            DecisionService(sched, notes).start()
        assert notes.read_text() == "mine"


def test_cli_client_decide_and_observe_over_the_socket(served, capsys):
    service, _ = served
    code = main(["decide", "--socket", str(service.path), "--stage", "qkv", "--n", "1", "--d", "2048", "-o", "json"])
    reply = json.loads(capsys.readouterr().out)
    assert code == 0 and reply["backend"] in ("gpu", "npu")
    argv = ["observe", "--socket", str(service.path), "--id", str(reply["id"]), "--latency-ms", "2"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2 and "no pending decision" in capsys.readouterr().err
    assert main(["decide", "--socket", str(service.path), "--stage", "qkv", "--n", "1", "--d", "1000000000"]) == 1


def test_serve_refuses_a_live_server_with_exit_1(served, capsys):
    service, _ = served
    assert main(["serve", "--socket", str(service.path)]) == 1
    assert "already listening" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_answers_the_backlog_flushes_the_log_and_exits_0(short_dir, signum):
    _stop_with_backlog(short_dir, signum)


def _serve(sock_path, *args):
    """``adaptive-sched serve`` in a process of its own, once its socket exists."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "adaptive_sched", "serve", "--socket", str(sock_path), *args],
                              env=env, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 60
    while not sock_path.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"the server did not start: {server.stderr.read().decode()}")
        time.sleep(0.05)
    return server


def _stop_with_backlog(short_dir, signum):
    """A served log: 3000 decisions sent at once, the stop signal sent while most are unanswered."""
    sock_path, db = short_dir / "s.sock", short_dir / "log.db"
    server = _serve(sock_path, "--db", str(db))
    try:
        c = Client(sock_path)
        replies = []
        reader = threading.Thread(target=lambda: replies.extend(iter(c.read, None)))
        reader.start()
        n = 3000
        c.send_raw(b"".join(json.dumps({**DECIDE, "kv_len": i % 500}).encode() + b"\n" for i in range(n)))
        server.send_signal(signum)  # while most of the backlog is still unanswered
        reader.join(30)
        assert server.wait(30) == 0
        c.close()
    finally:
        if server.poll() is None:
            server.kill()
    assert all(r["ok"] for r in replies)
    assert len(replies) == n  # everything sent before the signal was answered ...
    assert _rows(db)[0] == n  # ... and is in the log
    assert not sock_path.exists()
    return db


def test_a_stopped_server_leaves_a_snapshot_that_decide_answers_from(short_dir, capsys, monkeypatch):
    db = _stop_with_backlog(short_dir, signal.SIGTERM)

    def no_scheduler(*args, **kwargs):
        raise AssertionError("decide built a scheduler: the server left no current snapshot")

    monkeypatch.setattr("adaptive_sched.scheduler.Scheduler.__init__", no_scheduler)
    argv = ["decide", "--stage", "qkv", "--n", "1", "--d", "2048", "--kv-len", "100", "--precision", "int8"]
    assert main([*argv, "--db", str(db), "-o", "json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["backend"] in reply["usable"] and reply["id"] is not None
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM decisions").fetchone()[0] == 3000 + 1


def test_connections_beyond_the_limit_are_told_busy(short_dir):
    with (
        Scheduler.from_config("rk3588-sim") as sched,
        DecisionService(sched, short_dir / "s.sock", ServiceLimits(max_clients=2)) as service,
    ):
        held = [Client(service.path) for _ in range(2)]
        assert all(c.ask(DECIDE)["ok"] for c in held)  # both are being served
        extra = Client(service.path)
        assert extra.read()["error"]["code"] == "busy" and extra.read() is None
        extra.close()
        held[0].close()
        deadline = time.monotonic() + 10
        while True:  # its thread notices the closed connection within a poll interval
            again = Client(service.path)
            try:
                reply = again.ask(DECIDE)
            except OSError:  # told busy and closed before the request was sent
                reply = None
            again.close()
            if reply is not None and reply["ok"]:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        held[1].close()


def test_register_adds_an_operation_but_cannot_replace_a_built_in(short_dir):
    with Scheduler.from_config("rk3588-sim") as sched:
        service = DecisionService(sched, short_dir / "s.sock")
        service.register("metrics", lambda request: {"text": f"decisions {service.stats()['service']['requests']}"})
        assert service.handle({"op": "metrics"})["text"].startswith("decisions")
        with pytest.raises(ValueError, match="built in"):
            service.register("decide", lambda request: {})


def test_serve_exposes_prometheus_metrics_on_the_loopback(short_dir):
    pytest.importorskip("prometheus_client")
    import socket as socket_
    import urllib.request

    with socket_.socket() as s:  # a free port on the loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sock_path = short_dir / "m.sock"
    server = _serve(sock_path, "--metrics-port", str(port))
    deadline = time.monotonic() + 60
    try:
        c = Client(sock_path)
        c.send_raw(json.dumps(DECIDE).encode() + b"\n")
        decision = c.read()
        c.send_raw(json.dumps({"op": "observe", "id": decision["id"], "latency_ms": 1.5}).encode() + b"\n")
        assert c.read()["ok"]
        c.close()
        body = ""
        while "adaptive_sched_decisions_total{" not in body:  # the endpoint listens before the socket does
            assert time.monotonic() < deadline
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
            except OSError:  # refused until it listens (URLError is an OSError)
                pass
            time.sleep(0.05)
        assert f'stage="{DECIDE["stage"]}"' in body
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
