"""Calls with a deadline: run an executor on a worker thread, and give up on it when it hangs.

A Python thread cannot be interrupted, so the only way for a caller to abandon a call that
hangs (a driver that never returns, a device that locked up) is not to be the thread that
makes it. :class:`DeadlineRunner` keeps a few worker threads; :meth:`DeadlineRunner.call`
hands a call to an idle one and waits for it at most ``timeout_s``. A call past its deadline
is abandoned: the caller gets :class:`DeadlineExceeded` at once, the worker stays with the call
until it returns, and its result is then dropped and counted (:attr:`DeadlineRunner.late`).

>>> runner = DeadlineRunner()
>>> runner.call(sum, ([1, 2, 3],), timeout_s=1.0)
6
>>> import time
>>> runner.call(time.sleep, (0.2,), timeout_s=0.01)
Traceback (most recent call last):
...
adaptive_sched.deadline.DeadlineExceeded: no result within 0.01 s (the call is abandoned)
>>> runner.close()
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Hashable
from typing import Any

from .errors import ExecutorError

#: calls abandoned while still running that one key (a backend) may have at a time: past this,
#: a new call for it fails at once instead of parking one more thread on a device that hangs
MAX_ABANDONED_PER_KEY = 2

_PENDING, _DONE, _ABANDONED = 0, 1, 2


class DeadlineExceeded(ExecutorError):
    """A call ran past its deadline and was abandoned (its result, if it ever comes, is dropped)."""


class _Job:
    __slots__ = ("args", "done", "error", "fn", "key", "result", "state")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], key: Hashable) -> None:
        self.fn = fn
        self.args = args
        self.key = key
        self.result: Any = None
        self.error: BaseException | None = None
        self.state = _PENDING
        # Released by the worker when the call returns: a bare lock is the cheapest handoff
        # between two threads that has a timeout.
        self.done = threading.Lock()
        self.done.acquire()


class DeadlineRunner:
    """Runs calls on worker threads so that a caller can abandon one that runs past its deadline.

    Thread-safe. Workers are started on demand (one per concurrent caller, plus one per
    abandoned call still running) and stop at :meth:`close`.
    """

    def __init__(self, name: str = "adaptive-sched-run") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._workers = 0
        self._numbers = itertools.count(1)
        self._abandoned: dict[Hashable, int] = {}
        self._closed = False
        #: abandoned calls that returned later (their results were dropped)
        self.late = 0

    def abandoned(self, key: Hashable = None) -> int:
        """Abandoned calls still running (for ``key``, or in all)."""
        with self._lock:
            return self._abandoned.get(key, 0) if key is not None else sum(self._abandoned.values())

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout_s: float, key: Hashable = None) -> Any:
        """``fn(*args)`` on a worker, waiting at most ``timeout_s``; its exception is raised here.

        Raises :class:`DeadlineExceeded` if it has not returned by then, or if ``key`` already
        has :data:`MAX_ABANDONED_PER_KEY` abandoned calls still running.
        """
        job = _Job(fn, args, key)
        with self._lock:
            if self._closed:
                raise RuntimeError("the deadline runner is closed")
            stuck = self._abandoned.get(key, 0)
            if stuck >= MAX_ABANDONED_PER_KEY:
                raise DeadlineExceeded(f"{stuck} earlier calls are still running past their deadline")
            if self._idle:
                self._idle -= 1
            else:
                self._start_worker()
        self._jobs.put(job)
        if not job.done.acquire(timeout=timeout_s):
            with self._lock:
                if job.state == _PENDING:
                    job.state = _ABANDONED
                    self._abandoned[key] = self._abandoned.get(key, 0) + 1
            if job.state == _ABANDONED:
                raise DeadlineExceeded(f"no result within {timeout_s:g} s (the call is abandoned)")
        if job.error is not None:
            raise job.error
        return job.result

    def _start_worker(self) -> None:
        # Called with the lock held.
        self._workers += 1
        threading.Thread(target=self._work, name=f"{self._name}-{next(self._numbers)}", daemon=True).start()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                job.result = job.fn(*job.args)
            except BaseException as exc:  # handed to the caller, who decides what it means
                job.error = exc
            with self._lock:
                if job.state == _ABANDONED:
                    self.late += 1
                    left = self._abandoned[job.key] - 1
                    if left:
                        self._abandoned[job.key] = left
                    else:
                        del self._abandoned[job.key]
                    job.result = job.error = None  # dropped: nobody waits for it
                else:
                    job.state = _DONE
                stop = self._closed
                if stop:
                    self._workers -= 1
                else:
                    self._idle += 1
            job.done.release()
            if stop:
                return

    def close(self) -> None:
        """Stop the idle workers; a worker inside an abandoned call stops when the call returns."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, 0
            self._workers -= idle
        for _ in range(idle):
            self._jobs.put(None)


__all__ = ["MAX_ABANDONED_PER_KEY", "DeadlineExceeded", "DeadlineRunner"]
