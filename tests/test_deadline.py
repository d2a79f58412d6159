"""The deadline runner: results and exceptions come back; a hung call is abandoned and its result dropped."""

from __future__ import annotations

import threading
import time

import pytest

from adaptive_sched.deadline import MAX_ABANDONED_PER_KEY, DeadlineExceeded, DeadlineRunner


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < end:
        time.sleep(0.005)
    return condition()


def test_results_and_exceptions_come_back_to_the_caller():
    runner = DeadlineRunner()
    assert runner.call(divmod, (7, 2), timeout_s=5.0) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        runner.call(divmod, (1, 0), timeout_s=5.0)
    runner.close()


def test_a_hung_call_is_abandoned_and_its_late_result_dropped_and_counted():
    runner = DeadlineRunner()
    release = threading.Event()
    with pytest.raises(DeadlineExceeded, match="abandoned"):
        runner.call(release.wait, (), timeout_s=0.02, key="gpu")
    assert runner.abandoned("gpu") == 1 and runner.late == 0
    assert runner.call(sum, ([1, 2],), timeout_s=5.0, key="npu") == 3  # other work goes on
    release.set()
    assert wait_for(lambda: runner.late == 1)
    assert runner.abandoned() == 0
    assert runner.call(sum, ([4],), timeout_s=5.0, key="gpu") == 4  # the key is usable again
    runner.close()


def test_a_key_with_too_many_hung_calls_fails_at_once_without_another_thread():
    runner = DeadlineRunner()
    release = threading.Event()
    for _ in range(MAX_ABANDONED_PER_KEY):
        with pytest.raises(DeadlineExceeded):
            runner.call(release.wait, (), timeout_s=0.01, key="npu")
    threads = threading.active_count()
    calls = []
    with pytest.raises(DeadlineExceeded, match="still running past their deadline"):
        runner.call(calls.append, (1,), timeout_s=5.0, key="npu")
    assert calls == [] and threading.active_count() == threads
    release.set()
    assert wait_for(lambda: runner.abandoned() == 0)
    runner.close()


def test_concurrent_callers_each_get_their_own_result():
    runner = DeadlineRunner()
    results: dict[int, list[int]] = {}

    def caller(k: int) -> None:
        results[k] = [runner.call(lambda x: x * x, (k * 100 + i,), timeout_s=10.0) for i in range(200)]

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[k] == [(k * 100 + i) ** 2 for i in range(200)] for k in range(4))
    runner.close()
    with pytest.raises(RuntimeError, match="closed"):
        runner.call(sum, ([],), timeout_s=1.0)
