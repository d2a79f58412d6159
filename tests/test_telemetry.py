"""Device telemetry: sysfs readers on a fake tree, the simulated device's readings, the sampler,
the config section, and what the scheduler does with it (logs it, hands the clocks to the policy)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from adaptive_sched import Scheduler, Shape
from adaptive_sched.config import load_config
from adaptive_sched.errors import ConfigError
from adaptive_sched.policies import AdaptiveParams, AdaptivePolicy, Observation
from adaptive_sched.sim import SimulatedDevice
from adaptive_sched.telemetry import BackendReading, ClockFeed, Sampler, SimTelemetry, Snapshot, SysfsTelemetry
from adaptive_sched.types import Backend, Stage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_telemetry import Lying, fake_rk3588

GPU, NPU, CPU = Backend.GPU, Backend.NPU, Backend.CPU


@pytest.fixture
def sysfs(tmp_path):
    fake_rk3588(tmp_path)
    return tmp_path


def test_reads_an_rk3588_sysfs_tree(sysfs):
    s = SysfsTelemetry(str(sysfs), cpu_load=False).read()
    assert s.backends[GPU] == BackendReading(
        temp_c=50.0, freq_hz=6e8, max_freq_hz=1e9, load=0.34, cap_hz=1e9, load_window_s=0.05
    )
    # the GPU idles at a low clock but is not throttled: work sent there runs at its cap
    assert s.backends[GPU].clock_ratio() == 1.0
    assert s.backends[NPU].temp_c == 51.0 and s.backends[NPU].clock_ratio() == pytest.approx(0.8)
    assert s.backends[NPU].load == pytest.approx(0.05)  # the mean of 12%, 0% and 3%: rknpu's, not devfreq's
    assert s.backends[CPU].temp_c == 45.0 and s.backends[CPU].clock_ratio() == pytest.approx(0.75)
    assert s.ddr_freq_hz == s.ddr_max_freq_hz == 2.112e9
    assert s.zones["bigcore0-thermal"] == 46.0 and len(s.zones) == 7


def test_a_devfreq_load_is_read_where_rknpu_s_is_not_and_garbage_reads_as_unknown(sysfs):
    source = SysfsTelemetry(str(sysfs), cpu_load=False, rediscover_s=0.0)
    (sysfs / "kernel" / "debug" / "rknpu" / "load").unlink()  # debugfs not readable: devfreq's count
    source.discover()
    assert source.read().loads() == {GPU: 0.34, NPU: 0.2, CPU: None}
    # how far back each counts: the GPU's devfreq polling interval; the NPU's, rknpu's latch of the
    # second before, up to a second old, whichever file it is read from
    assert source.read().load_windows() == {GPU: 0.05, NPU: 2.0, CPU: None}
    gpu_load = sysfs / "class" / "devfreq" / "fb000000.gpu" / "load"
    for garbage in ("", "busy@600000000Hz", "250@600000000Hz", "-3@1Hz"):
        gpu_load.write_text(garbage)
        assert source.read().loads()[GPU] is None
    gpu_load.write_text("7@300000000Hz\n")
    assert source.read().loads()[GPU] == pytest.approx(0.07)
    gpu_load.unlink()
    assert source.read().loads()[GPU] is None and source.read().backends[GPU].freq_hz == 6e8


def test_garbage_and_vanished_files_read_as_unknown_and_recover(sysfs):
    source = SysfsTelemetry(str(sysfs), cpu_load=False, rediscover_s=0.0)
    gpu_dir = sysfs / "class" / "devfreq" / "fb000000.gpu"
    (gpu_dir / "cur_freq").write_text("not a number\n")
    (sysfs / "class" / "thermal" / "thermal_zone6" / "temp").write_text("")  # npu-thermal, empty
    s = source.read()
    assert s.backends[GPU].freq_hz is None and s.backends[GPU].clock_ratio() == 1.0  # the cap still tells
    assert s.backends[NPU].temp_c is None and s.backends[NPU].freq_hz == 8e8
    (gpu_dir / "cur_freq").unlink()
    (gpu_dir / "max_freq").write_text("inf\n")
    assert source.read().backends[GPU].clock_ratio() is None
    (gpu_dir / "cur_freq").write_text("300000000\n")
    (gpu_dir / "max_freq").write_text("500000000\n")
    assert source.read().clock_ratios()[GPU] == pytest.approx(0.5)
    import shutil

    shutil.rmtree(sysfs / "class")  # the whole class tree goes: cpufreq and rknpu remain
    s = source.read()
    assert GPU not in s.backends and s.backends[CPU].freq_hz == 1.8e9


def test_a_thermal_cap_shows_against_the_top_of_the_available_clocks(sysfs):
    # the thermal governor lowers max_freq: without the clocks listed it is the only maximum
    # known, and against it the GPU would look unthrottled
    gpu_dir = sysfs / "class" / "devfreq" / "fb000000.gpu"
    (gpu_dir / "max_freq").write_text("600000000\n")
    (gpu_dir / "available_frequencies").unlink()
    assert SysfsTelemetry(str(sysfs), cpu_load=False).read().clock_ratios()[GPU] == 1.0
    (gpu_dir / "available_frequencies").write_text("300000000 400000000 600000000 800000000 1000000000\n")
    assert SysfsTelemetry(str(sysfs), cpu_load=False).read().clock_ratios()[GPU] == pytest.approx(0.6)


def test_an_idle_backend_under_a_load_governor_is_not_read_as_throttled(sysfs):
    npu_dir = sysfs / "class" / "devfreq" / "fdab0000.npu"
    (npu_dir / "max_freq").write_text("1000000000\n")  # no thermal cap
    (npu_dir / "cur_freq").write_text("300000000\n")  # the governor idles it at its lowest clock
    source = SysfsTelemetry(str(sysfs), cpu_load=False)
    assert source.read().clock_ratios()[NPU] == 1.0
    (npu_dir / "max_freq").write_text("400000000\n")  # now it is throttled, busy or not
    assert source.read().clock_ratios()[NPU] == pytest.approx(0.4)
    # a reader that knows no cap (another board's, an old log) falls back on the current clock
    assert BackendReading(freq_hz=3e8, max_freq_hz=1e9).clock_ratio() == pytest.approx(0.3)


def test_a_processors_hottest_zone_is_its_temperature(sysfs):
    zones = {"soc-thermal": "cpu", "bigcore0-thermal": "cpu", "bigcore1-thermal": "cpu"}
    s = SysfsTelemetry(str(sysfs), zones=zones, cpu_load=False).read()
    assert s.backends[CPU].temp_c == 47.0  # bigcore1, the hottest of the three


def test_an_absent_tree_reads_as_nothing(tmp_path):
    source = SysfsTelemetry(str(tmp_path / "nothing"), cpu_load=False)
    source.discover()
    assert not source.found_anything()
    assert not source.read()


def test_context_round_trips_and_ignores_what_is_not_a_number():
    s = Snapshot(1.0, {GPU: BackendReading(70.0, 5e8, 1e9, 0.25)}, ddr_freq_hz=2e9)
    ctx = s.as_context()
    assert ctx == {"gpu_temp_c": 70.0, "gpu_freq_hz": 5e8, "gpu_max_freq_hz": 1e9, "gpu_load": 0.25, "ddr_freq_hz": 2e9}
    back = Snapshot.from_context({**ctx, "npu_temp_c": "hot", "other": 3})
    assert back.backends == s.backends and back.ddr_freq_hz == 2e9


def test_the_simulated_device_reports_its_clock_stepping_down():
    thermal = {"backends": {"npu": {"tau_s": 2.0, "trips": [[75, 6.0e8], [85, 4.0e8]]}}}
    device = SimulatedDevice("rk3588", seed=0, noise=False, thermal=thermal)
    source = SimTelemetry(device)
    assert source.read().clock_ratios()[NPU] == 1.0
    shape = Shape(n=1, d=2048, kv_len=512, precision="int8")
    while device.now < 20.0 and source.read().clock_ratios()[NPU] == 1.0:
        device.run(Stage.QKV, shape, NPU)
    reading = source.read().backends[NPU]
    assert reading.clock_ratio() == pytest.approx(0.6) and reading.temp_c >= 75.0
    device.idle(30.0)  # it cools and its clock comes back
    assert source.read().clock_ratios()[NPU] == 1.0


def test_the_benchmarks_lying_clock_reads_its_maximum_cap_included(sysfs):
    honest = SysfsTelemetry(str(sysfs), cpu_load=False)
    assert honest.read().clock_ratios()[NPU] == pytest.approx(0.8)
    lying = Lying(honest).read()
    assert all(ratio == 1.0 for ratio in lying.clock_ratios().values())
    assert lying.backends[NPU].temp_c == 51.0
    # its loads come and go on their own, slowing nothing
    loads = [Lying(honest).read().loads() for _ in range(3)] + [lying.loads()]
    assert all(x[GPU] in (0.0, 0.5) and x[NPU] in (0.0, 0.5) and x[CPU] is None for x in loads)


def test_sampler_reads_at_most_every_interval_of_its_clock_and_goes_stale():
    now = [0.0]
    reads = []

    class Source:
        def read(self):
            reads.append(now[0])
            return Snapshot(now[0], {GPU: BackendReading(freq_hz=5e8, max_freq_hz=1e9)})

    sampler = Sampler(Source(), interval_s=1.0, clock=lambda: now[0])
    assert sampler.poll() is not None and reads == [0.0]
    now[0] = 0.5
    assert sampler.poll().taken_at == 0.0 and reads == [0.0]
    now[0] = 1.0
    sampler.poll()
    assert reads == [0.0, 1.0]
    assert sampler.context["gpu_freq_hz"] == 5e8
    now[0] = 10.0  # past four intervals: stale, whatever was read last
    assert sampler.fresh() is None


def test_between_whole_reads_the_sampler_reads_the_clocks_alone():
    now = [0.0]
    calls = []

    class Source:
        def read(self):
            calls.append(("all", now[0]))
            return Snapshot(now[0], {NPU: BackendReading(temp_c=70.0, freq_hz=1e9, max_freq_hz=1e9)})

        def read_clocks(self, previous):
            calls.append(("clocks", now[0]))
            reading = dataclasses.replace(previous.backends[NPU], freq_hz=6e8)
            return dataclasses.replace(previous, taken_at=now[0], backends={NPU: reading})

    sampler = Sampler(Source(), interval_s=1.0, clock=lambda: now[0], clock_interval_s=0.25)
    for t in (0.0, 0.1, 0.25, 0.5, 1.0, 1.25):
        now[0] = t
        sampler.poll()
    assert calls == [("all", 0.0), ("clocks", 0.25), ("clocks", 0.5), ("all", 1.0), ("clocks", 1.25)]
    assert sampler.latest.clock_ratios()[NPU] == pytest.approx(0.6) and sampler.latest.backends[NPU].temp_c == 70.0
    with pytest.raises(ValueError, match="clock_interval_s"):
        Sampler(Source(), interval_s=1.0, clock_interval_s=2.0)


def test_reading_a_boards_clocks_alone_keeps_the_rest_of_the_last_reading(sysfs):
    source = SysfsTelemetry(str(sysfs), cpu_load=False)
    whole = source.read()
    (sysfs / "class" / "devfreq" / "fdab0000.npu" / "max_freq").write_text("400000000\n")
    (sysfs / "class" / "thermal" / "thermal_zone6" / "temp").write_text("99000\n")  # npu-thermal
    clocks = source.read_clocks(whole)
    assert clocks.clock_ratios()[NPU] == pytest.approx(0.4) and clocks.clock_ratios()[GPU] == 1.0
    assert clocks.backends[NPU].temp_c == whole.backends[NPU].temp_c == 51.0  # temperatures wait for a whole read
    assert clocks.ddr_freq_hz == 2.112e9 and clocks.zones == whole.zones


def test_a_source_that_raises_is_counted_and_its_last_reading_ages():
    now = [0.0]
    calls = []

    class Flaky:
        def read(self):
            calls.append(1)
            if len(calls) > 1:
                raise OSError("gone")
            return Snapshot(0.0, {NPU: BackendReading(freq_hz=1e9, max_freq_hz=1e9)})

    sampler = Sampler(Flaky(), interval_s=1.0, clock=lambda: now[0])
    sampler.poll()
    now[0] = 2.0
    assert sampler.poll() is not None and sampler.errors == 1  # the last good one, still fresh
    now[0] = 9.0
    assert sampler.poll() is None and sampler.errors == 2 and not sampler.context


def test_the_sampler_thread_reads_until_stopped(sysfs):
    sampler = Sampler(SysfsTelemetry(str(sysfs), cpu_load=False), interval_s=0.01)
    sampler.start()
    try:
        import time

        deadline = time.monotonic() + 30
        while sampler.reads < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        sampler.stop()
    assert sampler.reads >= 3 and not sampler.running
    assert sampler.latest is not None and sampler.latest.clock_ratios()[NPU] == pytest.approx(0.8)


class _Listener:
    """A policy's side of a clock feed: what it was handed, and whether it asks for a reading."""

    def __init__(self, seen: list) -> None:
        self.seen = seen
        self.temps: list = []
        self.loads: list = []
        self.clocks_wanted = False

    def on_clocks(self, ratios) -> None:
        self.seen.append(ratios)

    def on_temperatures(self, temps) -> None:
        self.temps.append(temps)

    def on_loads(self, loads, at, settle_s) -> None:
        self.loads.append((loads, at, settle_s))


def test_clock_feed_hands_new_and_stale_readings_to_the_policy():
    now = [0.0]
    ratio = [0.5]
    seen = []
    sampler = Sampler(type("S", (), {"read": lambda self: Snapshot(now[0], {GPU: BackendReading(
        temp_c=60.0 + now[0], freq_hz=ratio[0] * 1e9, max_freq_hz=1e9, load=0.5), CPU: BackendReading(load=0.9)})})(),
        interval_s=1.0, clock=lambda: now[0])  # fmt: skip
    listener = _Listener(seen)
    feed = ClockFeed(sampler, listener, (GPU, NPU, CPU))
    feed()
    now[0], ratio[0] = 1.0, 0.25
    for _ in range(ClockFeed.EVERY - 1):  # it looks every EVERY observations
        feed()
    assert seen == [{GPU: 0.5, NPU: None, CPU: None}]
    feed()
    assert seen[-1] == {GPU: 0.25, NPU: None, CPU: None}
    for _ in range(ClockFeed.EVERY):
        feed()  # the same snapshot: nothing new
    assert len(seen) == 2
    sampler.source = type("Dead", (), {"read": lambda self: 1 / 0})()
    now[0] = 10.0
    for _ in range(ClockFeed.EVERY):
        feed()
    assert seen[-1] == {GPU: None, NPU: None, CPU: None}  # stale: no telemetry at all
    # each reading's temperatures and loads follow its clocks; the CPU's load, this process's
    # threads' as much as anyone's, is never handed on
    assert listener.temps == [{GPU: 60.0, NPU: None, CPU: None}, {GPU: 61.0, NPU: None, CPU: None},
                              {GPU: None, NPU: None, CPU: None}]  # fmt: skip
    # with how long after a backend ran its load counts others' alone: this source does not say
    # how far back its loads count (the longest known, 2 s), plus the sampler's interval
    loaded, settle = {GPU: 0.5, NPU: None, CPU: None}, dict.fromkeys((GPU, NPU, CPU), 2.0 + 1.0)
    assert listener.loads == [(loaded, 0.0, settle), (loaded, 1.0, settle), (dict.fromkeys(loaded), 10.0, settle)]


def test_a_surprised_policy_gets_a_reading_at_once_but_not_more_often_than_the_gap():
    now = [0.0]
    ratio = [1.0]
    seen: list = []
    source = type("S", (), {"read": lambda self: Snapshot(now[0], {NPU: BackendReading(
        freq_hz=ratio[0] * 1e9, max_freq_hz=1e9)})})()  # fmt: skip
    sampler = Sampler(source, interval_s=0.25, clock=lambda: now[0])
    listener = _Listener(seen)
    feed = ClockFeed(sampler, listener, (NPU,))
    feed()
    assert seen == [{NPU: 1.0}]
    now[0], ratio[0] = 0.05, 0.6  # the clock steps well within the interval
    feed()
    assert len(seen) == 1  # not due yet
    listener.clocks_wanted = True  # a latency surprised the policy
    feed()
    assert seen[-1] == {NPU: 0.6} and listener.clocks_wanted is False
    now[0], ratio[0] = 0.05 + 0.25 * ClockFeed.SURPRISE_GAP / 2, 1.0
    listener.clocks_wanted = True
    feed()  # asked again too soon after the last read: the same snapshot, nothing new
    assert seen[-1] == {NPU: 0.6} and sampler.reads == 2


def test_a_surprising_latency_asks_the_policy_for_a_clock_reading():
    policy = AdaptivePolicy(AdaptiveParams(seed=0))
    policy.bind((GPU, NPU), None)
    shape = Shape(n=1, d=2048, kv_len=256, precision="int8")
    for _ in range(50):
        policy.learn(Observation(Stage.QKV, shape, None, NPU, 1e-3))
    policy.clocks_wanted = False
    policy.learn(Observation(Stage.QKV, shape, None, NPU, 1.05e-3))  # within the noise
    assert policy.clocks_wanted is False
    policy.learn(Observation(Stage.QKV, shape, None, NPU, 3e-3))  # 3x: beyond the clip
    assert policy.clocks_wanted is True


def test_config_section_reports_every_problem_under_its_key():
    base = load_config("rk3588-sim").as_dict()
    with pytest.raises(ConfigError) as err:
        load_config({**base, "telemetry": {"interval_s": 0, "zones": {"gpu-thermal": "tpu"}, "devfreq": {"dsp": "x"}}})
    text = str(err.value)
    for key in ("telemetry.interval_s", "telemetry.zones.gpu-thermal", "telemetry.devfreq.dsp"):
        assert key in text
    assert len(err.value.errors) == 3  # the clocks' interval is not blamed for interval_s's mistake
    with pytest.raises(ConfigError, match=r"telemetry\.clock_interval_s"):
        load_config({**base, "telemetry": {"interval_s": 0.1, "clock_interval_s": 0.5}})
    assert load_config({**base, "telemetry": {"enabled": False}}).telemetry.enabled is False


def test_the_scheduler_logs_telemetry_with_each_decision_and_feeds_the_clocks(tmp_path):
    config = load_config("rk3588-sim")
    db = tmp_path / "log.db"
    shape = Shape(n=1, d=2048, kv_len=256, precision="int8")
    with Scheduler(config, db=db) as sched:
        for _ in range(50):
            sched.run_attention(shape)
        decision = sched.decide(Stage.QKV, shape, context={"npu_temp_c": 99.0, "ambient_c": 25.0})
        sched.observe(decision, 1e-3)
        stats = sched.stats()
    assert stats["telemetry"]["reads"] >= 1 and stats["telemetry"]["errors"] == 0
    assert stats["policy"]["device"]["npu"]["clock_slowdown"] == 1.0
    with sqlite3.connect(db) as conn:
        contexts = [json.loads(c) for (c,) in conn.execute("SELECT context FROM decisions ORDER BY id")]
    assert all("npu_freq_hz" in c and "gpu_max_freq_hz" in c for c in contexts)
    assert contexts[-1]["npu_temp_c"] == 99.0 and contexts[-1]["ambient_c"] == 25.0  # the caller's values win


def test_disabled_telemetry_logs_only_the_callers_context(tmp_path):
    config = load_config("rk3588-sim")
    config = dataclasses.replace(config, telemetry=dataclasses.replace(config.telemetry, enabled=False))
    with Scheduler(config, db=tmp_path / "log.db") as sched:
        assert sched.telemetry is None
        sched.observe(sched.decide(Stage.QKV, Shape(n=1, d=1024)), 1e-3)
        assert "telemetry" not in sched.stats()


def test_cli_prints_a_boards_telemetry_as_a_table_and_as_json(sysfs, capsys):
    from adaptive_sched.cli import main

    assert main(["telemetry", "--root", str(sysfs)]) == 0
    out = capsys.readouterr().out
    assert "gpu-thermal" in out and "600" in out and "0.80" in out
    assert main(["telemetry", "--root", str(sysfs), "--output", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backends"]["npu"]["clock_ratio"] == pytest.approx(0.8)
    assert data["ddr"]["freq_hz"] == 2.112e9 and data["zones"]["soc-thermal"] == 45.0


def test_cli_with_nothing_readable_says_so_and_succeeds(tmp_path, capsys):
    from adaptive_sched.cli import main

    assert main(["telemetry", "--root", str(tmp_path), "--output", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["backends"] == {} and "no telemetry readable" in captured.err


def test_cli_with_nothing_readable_prints_no_empty_table(tmp_path, capsys):
    from adaptive_sched.cli import main

    assert main(["telemetry", "--root", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no telemetry readable" in captured.err


def test_cli_names_a_root_that_is_not_there(tmp_path, capsys):
    from adaptive_sched.cli import main

    missing = tmp_path / "sys-typo"
    assert main(["telemetry", "--root", str(missing)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and f"telemetry root {missing}: no such directory" in captured.err


def test_cli_shows_the_simulated_devices_telemetry(capsys):
    from adaptive_sched.cli import main

    assert main(["telemetry", "--output", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "simulated device" and data["backends"]["npu"]["clock_ratio"] == 1.0


def test_telemetry_that_fails_never_stops_learning(monkeypatch):
    from adaptive_sched.policies import AdaptivePolicy

    monkeypatch.setattr(AdaptivePolicy, "on_clocks", lambda self, ratios: 1 / 0)  # the policy's side fails
    config = load_config("rk3588-sim")

    class Broken:
        def read(self):
            return Snapshot(0.0, {NPU: BackendReading(freq_hz=5e8, max_freq_hz=1e9)})

    sampler = Sampler(Broken(), interval_s=1e-9)
    with Scheduler(config, telemetry=sampler) as sched:
        for _ in range(40):
            sched.observe(sched.decide(Stage.QKV, Shape(n=1, d=1024)), 1e-3)
        stats = sched.stats()
    assert stats["observations"] == 40 and stats["learn_errors"] == 0
