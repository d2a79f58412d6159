"""One scheduler served over a Unix domain socket, as newline-delimited JSON.

Firmware scripts and processes in other languages share one long-running
:class:`~adaptive_sched.Scheduler` (one log, one learned state) through it: each request
is one JSON object on one line, each reply too, in order. The protocol is documented in
``docs/serve.md``; ``adaptive-sched serve`` runs it as a process, and a service that
already holds a scheduler can embed it:

>>> from adaptive_sched import Scheduler                                  # doctest: +SKIP
>>> with Scheduler.from_config("rk3588-sim", db="log.db") as sched:      # doctest: +SKIP
...     with DecisionService(sched, "/run/adaptive-sched.sock") as service:
...         serve_until_stopped()                                        # your own loop

Requests are handled by :meth:`DecisionService.handle`, a plain function of a decoded
request, so an embedding program can also answer them without a socket, and add its
own (a metrics endpoint, say) with :meth:`DecisionService.register`.

Nothing here imports numpy: :func:`request` is all a client needs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import select
import socket
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .cache import BoundedDict
from .errors import AdaptiveSchedError
from .types import Backend, Decision, Shape, Stage, parse_backend, parse_stage

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger(__name__)

#: longest request line accepted, in bytes (without its newline)
MAX_LINE = 64 * 1024
#: decisions kept for ``observe`` by id; past it the oldest are forgotten (and counted)
MAX_PENDING = 65_536
#: connections served at once; one more is told so and closed
MAX_CLIENTS = 256
#: how long a reply may wait for a client that does not read before the connection is dropped
SEND_TIMEOUT_S = 5.0
#: how often idle connection threads and the accept loop look at the stop flag
POLL_S = 0.2
#: after a stop, how long requests already sent are still read and answered
DRAIN_S = 2.0
#: distinct (stage, shape, after) remembered for the snapshot saved when a service stops
SERVED_POINTS = 4096
#: Unix socket paths longer than this do not fit ``sockaddr_un``
MAX_PATH_BYTES = 107


class ServiceError(AdaptiveSchedError, RuntimeError):
    """The socket cannot be served: a live server holds the path, or the path is not ours to replace."""


class RequestError(AdaptiveSchedError, ValueError):
    """A request that cannot be answered; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


Handler = Callable[[Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ServiceLimits:
    """Bounds that keep one misbehaving client from taking memory or threads from the rest."""

    max_line: int = MAX_LINE
    max_pending: int = MAX_PENDING
    max_clients: int = MAX_CLIENTS
    send_timeout_s: float = SEND_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("max_line", "max_pending", "max_clients"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.send_timeout_s, (int, float)) and self.send_timeout_s > 0):
            raise ValueError(f"send_timeout_s must be a number > 0, got {self.send_timeout_s!r}")


class DecisionService:
    """Serves ``scheduler`` on the Unix socket ``path`` (see the module docstring and ``docs/serve.md``).

    Parameters
    ----------
    scheduler : Scheduler
        Shared by every connection (it is thread-safe). The service never closes it.
    path : str or Path
        Where the socket is created, owner-only (mode 0600). A stale socket file left by a
        server that died is replaced; a live server there, or a file that is not a socket,
        is a :class:`ServiceError` and is left alone.
    limits : ServiceLimits, optional

    Notes
    -----
    One thread per connection; the scheduler's ``decide`` is a lookup, so threads spend
    their time waiting for requests. :meth:`stop` stops accepting, answers what clients
    have already sent (for up to ``DRAIN_S``), then closes every connection.
    """

    def __init__(self, scheduler: Scheduler, path: str | Path, limits: ServiceLimits | None = None) -> None:
        self.scheduler = scheduler
        self.path = Path(path)
        self.limits = limits if limits is not None else ServiceLimits()
        self._handlers: dict[str, Handler] = {
            "decide": self._decide,
            "observe": self._observe,
            "stats": self._stats,
            "flush": self._flush,
        }
        self._pending: OrderedDict[int, Decision] = OrderedDict()
        self._pending_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._requests: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._evicted = 0
        self._connections = 0
        self._unsupported: dict[tuple[Any, Shape], dict[Backend, str]] = {}
        # distinct (stage, shape, after) decided, the earliest forgotten first: what a snapshot covers
        self._served: BoundedDict[tuple[Stage, Shape, Backend | None], None] = BoundedDict(SERVED_POINTS)
        self._listener: socket.socket | None = None
        self._bound: tuple[int, int] | None = None
        self._accept_thread: threading.Thread | None = None
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()
        self._stopping = threading.Event()
        self._stop_deadline = math.inf

    # -- extension --------------------------------------------------------------------
    def register(self, op: str, handler: Handler) -> None:
        """Answer requests ``{"op": op, ...}`` with ``handler(request)`` (a JSON-able dict).

        For what a deployment adds, e.g. ``register("metrics", lambda r: {"text":
        exposition(service.stats())})``. The built-in operations cannot be replaced.
        """
        if op in ("decide", "observe", "stats", "flush"):
            raise ValueError(f"op {op!r} is built in and cannot be replaced")
        self._handlers[op] = handler

    # -- requests ---------------------------------------------------------------------
    def handle(self, request: Any) -> dict[str, Any]:
        """The reply to one decoded request: ``{"ok": true, ...}`` or ``{"ok": false, "error": {...}}``.

        Never raises: a bad request, or a failure inside the scheduler, is an error reply.
        """
        tag = request.get("tag") if isinstance(request, Mapping) else None
        op = request.get("op") if isinstance(request, Mapping) else None
        try:
            if not isinstance(request, Mapping):
                raise RequestError("bad_request", f"a request is a JSON object, got {type(request).__name__}")
            if not isinstance(op, str) or op not in self._handlers:
                known = ", ".join(sorted(self._handlers))
                raise RequestError("bad_request", f"op: expected one of {known}, got {op!r}")
            reply = {"ok": True, **self._handlers[op](request)}
            self._count(self._requests, op)
        except RequestError as exc:
            reply = _error(exc.code, str(exc))
        except Exception as exc:  # the service outlives whatever a request triggers
            log.exception("request %r failed", op)
            reply = _error("internal", f"{type(exc).__name__}: {exc}")
        if not reply["ok"]:
            self._count(self._errors, reply["error"]["code"])
        if tag is not None:
            reply["tag"] = tag
        return reply

    def _decide(self, request: Mapping[str, Any]) -> dict[str, Any]:
        _only(request, {"op", "tag", "stage", "n", "d", "kv_len", "batch", "heads", "precision", "after", "context"})
        try:
            stage = parse_stage(_field(request, "stage", str))
        except ValueError as exc:
            raise RequestError("bad_request", str(exc)) from None
        try:
            shape = Shape(
                n=_field(request, "n", int),
                d=_field(request, "d", int),
                kv_len=_field(request, "kv_len", int, 0),
                batch=_field(request, "batch", int, 1),
                heads=_field(request, "heads", int, None),
                precision=_field(request, "precision", str, "fp16"),
            )
        except ValueError as exc:
            raise RequestError("bad_request", f"shape: {exc}") from None
        after = self._after(request.get("after"))
        context = request.get("context")
        if context is not None and not (
            isinstance(context, dict) and all(isinstance(v, (int, float)) for v in context.values())
        ):
            raise RequestError("bad_request", "context: expected an object of numbers")
        why = self._why_unsupported(stage, shape)
        if why:
            reasons = "; ".join(f"{b.value}: {r}" for b, r in why.items())
            raise RequestError("unsupported", f"no usable backend runs {stage.value} at {shape}: {reasons}")
        decision = self.scheduler.decide(stage, shape, context, after)
        self._served[(stage, shape, decision.after)] = None
        with self._pending_lock:
            self._pending[decision.id] = decision
            while len(self._pending) > self.limits.max_pending:
                self._pending.popitem(last=False)
                self._evicted += 1
        return decision_fields(decision)

    def _after(self, value: Any) -> Decision | Backend | None:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return parse_backend(value)
            except ValueError as exc:
                raise RequestError("bad_request", f"after: {exc}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            with self._pending_lock:
                decision = self._pending.get(value)
            if decision is None:
                raise RequestError("unknown_id", f"after: no pending decision with id {value}")
            return decision
        raise RequestError("bad_request", f"after: expected a backend name or a decision id, got {value!r}")

    def _why_unsupported(self, stage: Any, shape: Shape) -> dict[Backend, str]:
        key = (stage, shape)
        why = self._unsupported.get(key)
        if why is None:
            why = self.scheduler.unsupported(stage, shape)
            if len(self._unsupported) >= 4096:  # kv_len changes every token: keep it bounded
                self._unsupported.clear()
            self._unsupported[key] = why
        return why

    def _observe(self, request: Mapping[str, Any]) -> dict[str, Any]:
        _only(request, {"op", "tag", "id", "latency_ms", "failed", "error"})
        decision_id = _field(request, "id", int)
        failed = _field(request, "failed", bool, False)
        latency_ms = request.get("latency_ms")
        if not failed or latency_ms is not None:
            if isinstance(latency_ms, bool) or not isinstance(latency_ms, (int, float)):
                raise RequestError("bad_request", f"latency_ms: expected a number, got {latency_ms!r}")
            if not (math.isfinite(latency_ms) and latency_ms > 0):
                raise RequestError("bad_request", f"latency_ms: must be finite and > 0, got {latency_ms!r}")
        error = request.get("error")
        if error is not None and not isinstance(error, str):
            raise RequestError("bad_request", f"error: expected a string, got {error!r}")
        with self._pending_lock:
            decision = self._pending.pop(decision_id, None)
        if decision is None:
            raise RequestError(
                "unknown_id",
                f"id: no pending decision {decision_id} (never made here, already observed, "
                f"or one of the oldest {self.limits.max_pending} forgotten)",
            )
        latency_s = None if latency_ms is None else latency_ms / 1e3
        if failed:
            self.scheduler.observe(decision, latency_s, ok=False, error=error or "failed")
        else:
            self.scheduler.observe(decision, latency_s)
        return {"id": decision_id}

    def _stats(self, request: Mapping[str, Any]) -> dict[str, Any]:
        return {"stats": self.stats()}

    def _flush(self, request: Mapping[str, Any]) -> dict[str, Any]:
        _only(request, {"op", "tag"})
        self.scheduler.flush()
        return {}

    def served(self) -> list[tuple[Stage, Shape, str | None]]:
        """The distinct ``(stage, shape, after)`` decided (the last ``SERVED_POINTS``), for a snapshot."""
        while True:
            try:
                points = list(self._served)
                break
            except RuntimeError:  # a connection decided meanwhile: read again
                continue
        return [(stage, shape, None if after is None else after.value) for stage, shape, after in points]

    def stats(self) -> dict[str, Any]:
        """The service's counters and the scheduler's :meth:`~adaptive_sched.Scheduler.stats`."""
        with self._pending_lock:
            pending, evicted = len(self._pending), self._evicted
        with self._count_lock:
            service = {
                "requests": dict(self._requests),
                "errors": dict(self._errors),
                "connections": self._connections,
                "pending": pending,
                "evicted": evicted,
            }
        return {"service": service, "scheduler": self.scheduler.stats()}

    def _count(self, counter: dict[str, int], key: str) -> None:
        with self._count_lock:
            counter[key] = counter.get(key, 0) + 1

    # -- the socket -------------------------------------------------------------------
    def start(self) -> None:
        """Create the socket (replacing a stale one) and start accepting connections.

        Raises
        ------
        ServiceError
            A live server listens at the path, the path is not a socket, or it cannot be bound.
        """
        path = self.path
        if len(os.fsencode(str(path))) > MAX_PATH_BYTES:
            raise ServiceError(f"{path}: too long for a Unix socket path (at most {MAX_PATH_BYTES} bytes)")
        _claim(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The socket file gets its mode from the umask at bind time: owner-only from the start,
        # so no other user can connect between bind and a chmod.
        old = os.umask(0o177)
        try:
            listener.bind(str(path))
        except OSError as exc:
            listener.close()
            raise ServiceError(f"{path}: cannot create the socket ({exc.strerror or exc})") from exc
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        st = os.stat(path)
        self._bound = (st.st_dev, st.st_ino)
        listener.listen(128)
        listener.settimeout(POLL_S)
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, name="adaptive-sched-accept", daemon=True)
        self._accept_thread.start()
        log.info("serving on %s", path)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, answer what was already sent, close connections, remove the socket. Idempotent."""
        if self._stopping.is_set():
            return
        self._stop_deadline = time.monotonic() + DRAIN_S
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout_s)
        if self._listener is not None:
            self._listener.close()
        self._remove_socket()
        deadline = time.monotonic() + timeout_s
        with self._workers_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("a connection did not finish within %s s", timeout_s)

    def __enter__(self) -> DecisionService:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _remove_socket(self) -> None:
        # Only the file this service bound: a later server may have taken the path over.
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._bound:
                os.unlink(self.path)
        except OSError:
            pass

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stopping.is_set():
                    log.error("accepting a connection on %s failed: %s", self.path, exc)
                    time.sleep(POLL_S)
                continue
            with self._workers_lock:
                busy = len(self._workers) >= self.limits.max_clients
                if not busy:
                    worker = threading.Thread(target=self._serve, args=(conn,), name="adaptive-sched-conn", daemon=True)
                    self._workers.add(worker)
            if busy:
                _send_quietly(conn, _error("busy", f"already serving {self.limits.max_clients} connections"))
                conn.close()
                continue
            self._count_connection()
            worker.start()

    def _count_connection(self) -> None:
        with self._count_lock:
            self._connections += 1

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self.limits.send_timeout_s)  # bounds sendall; reads wait in poll() below
            self._converse(conn)
        except OSError as exc:  # the client went away: nothing to answer
            log.debug("connection closed: %s", exc)
        except Exception:
            log.exception("a connection failed")
        finally:
            conn.close()
            with self._workers_lock:
                self._workers.discard(threading.current_thread())

    def _converse(self, conn: socket.socket) -> None:
        max_line = self.limits.max_line
        poller = select.poll()
        poller.register(conn, select.POLLIN)
        buf = bytearray()
        while True:
            newline = buf.find(b"\n")
            if newline > max_line or (newline < 0 and len(buf) > max_line):
                # No way to tell where the next request starts: say why, then hang up.
                self._count(self._errors, "too_large")
                conn.sendall(_encode(_error("too_large", f"a request line is limited to {max_line} bytes")))
                return
            if newline >= 0:
                line = bytes(buf[:newline])
                del buf[: newline + 1]
                if line.strip():
                    conn.sendall(_encode(self._reply(line)))
                continue
            stopping = self._stopping.is_set()
            if stopping and time.monotonic() > self._stop_deadline:
                return
            if not poller.poll(0 if stopping else POLL_S * 1000):
                if stopping:
                    return  # everything the client had sent is answered
                continue
            chunk = conn.recv(65536)
            if not chunk:
                return  # the client closed; a partial last line is not a request
            buf += chunk

    def _reply(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            self._count(self._errors, "bad_json")
            return _error("bad_json", f"not a JSON object: {exc}")
        return self.handle(request)


def decision_fields(decision: Decision) -> dict[str, Any]:
    """What a reply (and ``adaptive-sched decide``) says about a decision, as plain data."""
    return {
        "id": decision.id,
        "stage": decision.stage.value,
        "backend": decision.backend.value,
        "propensity": decision.propensity,
        "explored": decision.explored,
        "predicted_ms": {b.value: v * 1e3 for b, v in decision.predicted.items()},
        "usable": [b.value for b in decision.usable],
    }


def request(path: str | Path, message: Mapping[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one request to the server at ``path`` and return its reply (a client for scripts and tests).

    Raises
    ------
    ServiceError
        Nothing listens at ``path``, or it closed the connection without a reply.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise ServiceError(f"{path}: no server to connect to ({exc.strerror or exc})") from exc
        sock.sendall(_encode(dict(message)))
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ServiceError(f"{path}: the server closed the connection without a reply")
            data += chunk
        reply = json.loads(data)
        if not isinstance(reply, dict):
            raise ServiceError(f"{path}: the reply is not a JSON object")
        return reply
    finally:
        sock.close()


def _claim(path: Path) -> None:
    """Make ``path`` free to bind: remove a stale socket; refuse a live one or anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServiceError(f"{path}: exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("%s: replacing a stale socket (no server listens there)", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError as exc:
        raise ServiceError(f"{path}: cannot tell whether a server listens there ({exc.strerror or exc})") from exc
    finally:
        probe.close()
    raise ServiceError(f"{path}: a server is already listening there")


def _only(request: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(request) - allowed)
    if unknown:
        raise RequestError("bad_request", f"unknown field(s) {', '.join(unknown)} for op {request.get('op')!r}")


_MISSING = object()


def _field(request: Mapping[str, Any], name: str, kind: type, default: Any = _MISSING) -> Any:
    value = request.get(name, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise RequestError("bad_request", f"{name}: required")
        return default
    # JSON has no int/bool distinction worth trusting: true is not a sequence length
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RequestError("bad_request", f"{name}: expected an integer, got {value!r}")
    if not isinstance(value, kind):
        raise RequestError("bad_request", f"{name}: expected {kind.__name__}, got {value!r}")
    return value


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(getattr(k, "value", k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _encode(reply: Mapping[str, Any]) -> bytes:
    # Strict JSON (null, never NaN), one line: a reply never contains a raw newline.
    return json.dumps(_plain(reply), separators=(",", ":"), allow_nan=False, default=str).encode() + b"\n"


def _send_quietly(conn: socket.socket, reply: Mapping[str, Any]) -> None:
    try:
        conn.settimeout(1.0)
        conn.sendall(_encode(reply))
    except OSError:
        pass


__all__ = ["DecisionService", "RequestError", "ServiceError", "ServiceLimits", "decision_fields", "request"]
