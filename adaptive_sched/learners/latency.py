"""The online latency model: how far this device is from the prior, and how sure of it we are.

For a stage ``s`` run on backend ``b`` at shape ``x``, the log of the stage's own run
time (without any handoff from another backend) is modelled as::

    log t = log prior(s, x, b) + device[b] + w[s, b, g] . phi_s(x) + bucket[s, b, x] + noise

``device[b]``
    One random walk per backend: what moves every stage on it at once (throttling,
    contention, a governor pinned low). It starts at zero and nearly sure of it, and
    grows uncertain while the backend goes unobserved, so a stale backend is worth a
    probe; faster after changes were seen on it (contention that comes and goes).
    With telemetry it also carries the backend's clock (``set_clocks``), or where the
    clock is not read, grows uncertain as the backend cools while unused (``set_temperatures``).
``w[s, b, g] . phi_s(x)``
    A Bayesian linear regression per (stage, backend) and group ``g`` (precision and
    phase: INT8 and FP16 kernels, a GEMV and a GEMM, are wrong in their own ways) on an
    intercept, two Table 1 features of the shape and the prior's own quirk there
    (:func:`stage_features`): how far the prior is from this device for this stage, how
    that error grows with the shape, and whether this device shares what the prior learned
    of particular shapes. What it learns at one shape moves the estimate at shapes never
    observed. The first
    regression of a (stage, backend) starts wide (by default a prior wrong by 20x is two
    standard deviations away); the next ones start from what their siblings learned, a
    little less wide (a hierarchical prior, empirical Bayes), and faster where the other
    stage on the backend showed the group's kernels faster than its others by more than
    groups differ (``twin_share``).
``bucket[s, b, x]``
    A small random effect per shape bucket: what the regression cannot express. Its
    spread is learned per regression, so where the regression fits badly a bucket never
    observed is uncertain, and checked.
``noise``
    Log-normal with a variance learned per regression, and a heavy right tail: a stage
    can be delayed by any amount (preemption, page faults), never sped up. A group's
    first run, learned in full against its wide prior, may have been such a spike: the
    probability that it was is kept until the group's next run settles it (a run faster
    than the learned level says the first was a spike, and the group goes back to its
    prior), so that one spike cannot make a backend look slow forever. A first run so found
    to have been a transient casts the same doubt on the backend's other groups that ran only
    near it: a burst of contention slows them all.

One observation makes one Kalman step on the three terms it touches with the same
innovation (the prior covariance is block-diagonal between the terms, so the mean update
is the joint one; the cross-covariance it creates is dropped, which makes the variance
of their sum err on the wide side by at most the device's and the bucket's small prior
variances: the terms were chosen not to be collinear). (Keeping the covariance of the device
term and each group's coefficients, so that what a group's runs pin is the sum of the two and a
change seen later goes to the term that drifts: paired over ``bench_learning.py --policies
adaptive --json``, seeds 0-9 -0.0007 (se 0.0003), the soc world's GPU contention seed 8 1.080
to 1.023; seeds 10-19 -0.0003 (se 0.0002), ``--workload decode`` -0.0000, ``--random-worlds
6`` +0.0017 (se 0.0010); ``bench_telemetry.py --seeds 0-19`` -0.0013 with telemetry. Not kept:
the covariances between groups are not kept, so another group's runs must either shrink a
group's covariance with the device term, and then a group idle while the other stage ran 300
times lost what it had pinned, learned a 3x throttle through clipped steps without calling it
a change, and never watched for its end; or leave it, and then the joint covariance lost
positive-definiteness and learning failed on a negative variance.) The step has bounded
influence: the standardised innovation is winsorised at ``clip`` standard deviations, so a rare 8x
spike moves an estimate by at most a few noise widths. A surprise that repeats is a
change: a run of innovations beyond the clip in one direction (``confirm_slower``, more
where the backend's learned spike rate would make that many spikes in a row likelier
than ``false_change_rate``; or ``confirm_faster`` since noise cannot speed a run up)
re-opens the device term and the regression's intercept and is learned at once, mostly on
the device term: changes of a whole backend are the common ones. Unless another group of the
backend ran as predicted while the surprises repeated: then the backend did not change, this
group was wrong (often at a shape it had not seen), and its intercept takes the change: a
change of that kernel's code (an update), which makes every other group less certain
(``kernel_change_var``) and, if it sped the kernel up, casts a doubt on the other groups of
its stage and backend that they sped up alike (``update_doubt``), settled by their next run. A
:class:`river.drift.ADWIN` on the winsorised innovations catches the slow or small shifts
the clip hides from that test.

An observation costs a constant amount of work whatever the number of shapes seen:
nothing here is keyed by shape except the bounded bucket table. Everything is plain
Python floats: at four features, numpy's per-call overhead would cost more than the
arithmetic.

Examples
--------
>>> model = LatencyModel(ModelParams())
>>> group, phi = stage_features(Stage.ATTN, Shape(n=1, d=2048, kv_len=511))
>>> for clock in range(1, 40):          # the prior was 3x too pessimistic here
...     _ = model.observe(Stage.ATTN, Backend.GPU, group, phi, ("k",), prior_log=0.0, log_t=-math.log(3), clock=clock)
>>> est = model.estimate(Stage.ATTN, Backend.GPU, group, phi, ("k",))
>>> round(math.exp(est.mean), 2), est.var(40) < 0.01
(0.33, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..cache import BoundedDict
from ..types import Backend, Shape, Stage
from .latency_params import ModelParams
from .latency_terms import ClockGap, DeviceTerm, Regression

#: feature names of :func:`stage_features` per stage, after the intercept
FEATURES: dict[Stage, tuple[str, str, str]] = {
    Stage.QKV: ("log2_d", "log2_n", "prior_quirk"),
    Stage.ATTN: ("log2_keys", "log2_d", "prior_quirk"),
}
#: centres of the log2 features, so that the intercept is the error at a typical decode shape. A
#: prefill's n is not centred: its group's intercept is the error at n = 1, so a group never
#: observed is known at a typical prompt only to about 2 in log (the slope's width over 7
#: octaves), not the 1 of ``group_sd``. Centred at 128 tokens, the learning benchmark's worlds
#: lost 0.0019 over 10 seeds (se 0.0008): the width is what finds the prior's 10-25x errors
#: on INT8 prefills there. (With each decision taking one draw, paired: centred, +0.0007 and
#: +0.0006 over seeds 0-9 and 10-19; centred with a never-observed prefill group's intercept
#: widened by the slope's width over 7 octaves, -0.0004 and -0.0007, int8-gpu -0.0027 and
#: -0.0035, but gpu-heavy +0.0017 and +0.0014 and 7 more cells over 1.03 in seeds 10-19. And
#: siblings of the other phase weighed as twice as far: +0.0015. None kept.)
_CENTRE_KEYS, _CENTRE_D = 9.0, 11.0

Group = tuple[Any, ...]

#: the other stage of a layer: where a group's kernels were seen, for a group not yet observed
_TWIN = {Stage.QKV: Stage.ATTN, Stage.ATTN: Stage.QKV}

_new_tuple = tuple.__new__

#: the largest change (log units, 10x) one detection applies at once
MAX_CHANGE = math.log(10.0)
#: the largest doubt that a group's run was a spike or a transient: a doubt never outweighs the run it doubts
MAX_DOUBT = 0.5
#: a clock's elasticity stays within [0, this]: a latency following its clock more than in proportion is noise
MAX_ELASTICITY = 2.0
#: others' load is read as at most this: a backend taken by others is predicted at most 5x slower
#: for it (beyond, its own runs tell), and a load that lies can move it no further
MAX_LOAD = 0.8


def stage_features(stage: Stage, shape: Shape, quirk: float = 0.0) -> tuple[Group, tuple[float, float, float, float]]:
    """The group a shape's regression belongs to, and its inputs: the intercept, then :data:`FEATURES`.

    qkv does not see the KV cache; attention's cost grows with the keys and the width.
    ``quirk`` is the prior's own departure, at this shape and for this backend, from the
    smooth trend it fitted (log units; see :meth:`Prior.quirks
    <adaptive_sched.learners.priors.Prior.quirks>`): what the device it was trained on does
    at this shape alone (a slow path for unaligned rows, a cache that overflows). Whether
    this device shares it is learned like the slopes: a device without it sees the prior
    wrong by as much, at those shapes only.

    >>> stage_features(Stage.ATTN, Shape(n=1, d=2048, kv_len=511, precision="int8"))
    ((<Precision.INT8: 'int8'>, 'decode'), (1.0, 0.0, 0.0, 0.0))
    >>> stage_features(Stage.QKV, Shape(n=128, d=4096), quirk=1.5)
    ((<Precision.FP16: 'fp16'>, 'prefill'), (1.0, 1.0, 7.0, 1.5))
    """
    group = (shape.precision, "decode" if shape.n == 1 else "prefill")
    if stage is Stage.QKV:
        return group, (1.0, math.log2(shape.d) - _CENTRE_D, math.log2(shape.n), quirk)
    return group, (1.0, math.log2(shape.kv_len + shape.n) - _CENTRE_KEYS, math.log2(shape.d) - _CENTRE_D, quirk)


class Estimate:
    """An offset estimate whose variance grows linearly with the clock: ``var(clock) = a + b * clock``.

    ``versions`` say which state of the model it was computed from, so a caller can keep
    it until the model is observed there again.
    """

    __slots__ = ("a", "b", "mean", "versions")

    def __init__(self, mean: float, a: float, b: float, versions: tuple[Any, ...]) -> None:
        self.mean = mean
        self.a = a
        self.b = b
        self.versions = versions

    def var(self, clock: int) -> float:
        return self.a + self.b * clock


class Learned(NamedTuple):
    """What one observation did to the model, for its owner to decide what to refresh."""

    #: a change was detected on the observation's regression
    alarm: bool
    #: how far the backend's device term moved (log units, signed)
    device_shift: float
    #: how far the prediction at the observed shape moved, all terms together (log units, signed)
    shift: float
    #: the part of ``shift`` every shape of the group shares (device and regression, not bucket)
    shared_shift: float
    #: the log run time the model predicts at the observed shape now (after this observation)
    predicted: float
    #: the share of its variance the prediction lost (near 1 for the first observations)
    gain: float


NOTHING_LEARNED = Learned(alarm=False, device_shift=0.0, shift=0.0, shared_shift=0.0, predicted=math.nan, gain=0.0)


class LatencyModel:
    """The per-device state of every backend and stage (see the module docstring).

    Not thread-safe: its owner (a policy) serialises calls.
    """

    def __init__(self, params: ModelParams) -> None:
        params.validate()
        self.params = params
        self._devices: dict[Backend, DeviceTerm] = {}
        self._groups: dict[tuple[Stage, Backend, Group], Regression] = {}
        #: per (stage, backend): how its kernels follow the clock beyond the backend's elasticity
        self._gaps: dict[tuple[Stage, Backend], ClockGap] = {}
        # per (stage, backend): a counter of observations of any of its groups; per group not yet
        # observed, the prior it starts from (from its siblings and its twin at the other stage,
        # at their stages' counts)
        self._families: dict[tuple[Stage, Backend], int] = {}
        self._unobserved: dict[tuple[Stage, Backend, Group], tuple[tuple[int, int], Regression]] = {}
        # (stage, backend, bucket) -> [mean, variance]
        self._buckets: BoundedDict[tuple[Any, ...], list[float]] = BoundedDict(params.max_buckets)
        self._bucket_var = params.bucket_sd**2
        #: drift detections per (stage, backend): ADWIN's, and the run test's
        self.alarms: dict[tuple[Stage, Backend], int] = {}
        self.changes: dict[tuple[Stage, Backend], int] = {}
        #: detected changes seen to revert, per backend
        self.reversions: dict[Backend, int] = {}
        #: groups' first runs found by the next to have been transients (a spike, a burst), per backend
        self.transients: dict[Backend, int] = {}
        self.observations = 0
        #: the latest observation's clock at the last temperature reading
        self._temps_at = 0
        #: an observation fell beyond the clip since its owner last cleared this (a clock may
        #: have stepped: telemetry is worth reading before the next observation)
        self.surprised = False
        #: an observation moved the backend's shared term beyond its own estimate (a move of
        #: others' load undone), or doubted other groups than its own (a transient found), since
        #: its owner last cleared this: every estimate may be stale
        self.stale = False

    # -- state, created on first use ------------------------------------------------------
    def _device_of(self, backend: Backend) -> DeviceTerm:
        device = self._devices.get(backend)
        if device is None:
            p = self.params
            device = self._devices[backend] = DeviceTerm(p.device_sd**2, p.device_q, p.volatility_horizon,
                                                         p.clock_elasticity, p.clock_elasticity_sd**2,
                                                         p.spike_rate, p.load_elasticity)  # fmt: skip
        return device

    def set_clocks(self, ratios: Mapping[Backend, float | None]) -> bool:
        """Each backend's clock (the one it may run at now) over its maximum, from telemetry (None or out of (0, 1]:
        unknown, read as full clock). True when an estimate moved: its entries are stale."""
        moved = False
        for backend, ratio in ratios.items():
            slowdown = -math.log(ratio) if ratio is not None and 0.0 < ratio < 1.0 else 0.0
            device = self._device_of(backend)
            device.clock_read = ratio is not None and 0.0 < ratio <= 1.0
            step = slowdown - device.slowdown
            stepped = abs(step) > self.params.clock_tolerance or (slowdown == 0.0) != (device.slowdown == 0.0)
            # Readings come a few times a second, latencies far more often: the backend's
            # latencies may already have shown the clock's step. Each regression observed since
            # the last reading measures its elasticity by what they showed, in the step's
            # direction: if a change was detected since, by how far its prediction moved (the
            # change learned whole); else by the surprising latency that asked for this
            # reading (the step came just before it). Otherwise the moves are noise, and the
            # elasticity is learned from the latencies that follow, through the clock term.
            weight = explained = 0.0
            changed = device.jump_at > device.last_at_reading
            observed: list[tuple[Regression, float]] = []  # with what each one's intercept took since
            for (_, b, _), reg in self._groups.items():
                if b is not backend:
                    continue
                took = reg.m[0] - reg.intercept_at_reading
                reg.intercept_at_reading = reg.m[0]
                n = reg.n - reg.n_at_reading
                if stepped and n:
                    since = reg.moved - reg.moved_at_reading
                    if changed and since * step > 0.0:
                        self._learn_elasticity(device, reg, since / step, (device.var + reg.noise / n) / step**2)
                    elif reg.surprise_n > reg.n_at_reading and reg.surprise * step > 0.0:
                        self._learn_elasticity(device, reg, reg.surprise / step, reg.surprise_var / step**2)
                    explained += n * (device.beta + reg.gap.mean) * step
                    weight += n
                    observed.append((reg, took))
                reg.moved_at_reading = reg.moved
                reg.n_at_reading = reg.n
            if stepped:
                # What the shared term moved since, in the step's direction and up to what the
                # clock explains for the runs that moved it, is given back to the clock term,
                # so the step is not counted twice.
                since = device.mean - device.mean_at_reading
                back = 0.0
                if weight:
                    explained /= weight
                    if explained * since > 0.0:
                        back = since if abs(since) < abs(explained) else explained
                        device.mean -= back
                # So is what a group's intercept took of the rest: a change the group's runs showed
                # before the reading, while the backend's other groups ran as predicted, is put
                # there (see ``observe``). Kept, it would outlast the step: a throttled backend
                # would still be predicted slow once its clock recovered, and not be run again.
                for reg, took in observed:
                    rest = (device.beta + reg.gap.mean) * step - back
                    if reg.k and rest * took > 0.0:
                        m = reg.m
                        reg.m = [m[0] - (took if abs(took) < abs(rest) else rest), m[1], m[2], m[3]]
                        reg.intercept_at_reading = reg.m[0]
                        reg.version += 1
                device.slowdown = slowdown
                device.version += 1
                moved = True
            device.mean_at_reading = device.mean
            device.last_at_reading = device.last
        return moved

    def set_temperatures(self, temps: Mapping[Backend, float | None]) -> bool:
        """Each backend's temperature (C) from telemetry (None: unknown). True when an estimate's
        variance moved: its entries are stale.

        A backend whose clock is not read (no devfreq for it on this board) and that has not
        run since the last reading, or ran only early in it (a probe), may have cooled enough
        for its governor to release it: a throttled NPU left alone while the GPU runs
        recovers, and nothing else would say so before a probe. How far it cooled below its
        temperature when it last ran is forgetting, ``temperature_var`` per degree beyond
        ``temperature_deadband``, so it is checked again sooner. Only the lowest temperature
        read counts: a sensor's jitter never adds up. A backend in use tells by its latencies
        what heat does to it, one heating while unused can only have got slower, and with its
        clock read the clock says it: none of those is counted.
        """
        p = self.params
        moved = False
        now = max((d.last for d in self._devices.values()), default=0)
        since, self._temps_at = now - self._temps_at, now
        for backend, temp in temps.items():
            if temp is None or not math.isfinite(temp):
                continue  # not read now: nothing to count
            device = self._device_of(backend)
            ran = device.last != device.temp_seen_at
            device.temp_seen_at = device.last
            before, device.temp_read = device.temp_read, temp
            if device.clock_read or not math.isfinite(device.temp_anchor):
                device.temp_anchor = device.temp_low = temp
                continue
            if ran:
                # It last ran between the reading before and this one: at a temperature between
                # the two, by when in the interval it ran (in observations). A probe early in the
                # interval of a backend that cooled after it saw it before it cooled; a backend in
                # use ran at this reading's temperature.
                share = min(1.0, max(0.0, 1.0 - (now - device.last) / since)) if since > 0 else 1.0
                anchor = temp if not math.isfinite(before) else before + (temp - before) * share
                device.temp_anchor = device.temp_low = anchor
            low = device.temp_low
            if temp < low:
                counted = max(0.0, device.temp_anchor - low - p.temperature_deadband)
                cooled = max(0.0, device.temp_anchor - temp - p.temperature_deadband)
                device.temp_low = temp
                if cooled > counted:
                    device.var += p.temperature_var * (cooled - counted)
                    device.version += 1
                    # entries are recomputed once per degree: a reading's jitter beyond the
                    # deadband is not worth every entry
                    moved = moved or math.floor(cooled) > math.floor(counted)
        return moved

    def set_loads(self, loads: Mapping[Backend, float | None], at: float, settle_s: Mapping[Backend, float]) -> bool:
        """Each backend's load (its busy share, 0 to 1) from telemetry (None: unknown), read at
        ``at`` (seconds, the telemetry's clock); ``settle_s``: how long after a backend last ran
        its load no longer counts its own work (the load's window). True when an estimate moved:
        its entries are stale.

        A load counts only while the backend goes unused: on a board it counts this process's
        own work too, and a backend in use tells by its latencies what others' load does to it.
        Its level was last learned under others' load of the reading before its last run, if
        that reading found it unused for ``settle_s`` (else of the first reading ``settle_s``
        after the run): that load anchors it, so contention that ended right after a probe into
        it is seen at the next reading. (Anchored at the first clean reading after the run, such
        an end was missed, the backend left believed contended until a probe: over 60 seeds of
        ``bench_telemetry.py``, with telemetry, the world's GPU contention 0.0225 to 0.0178 of
        the best total, 38 cells better and 14 worse, the simulator's periodic throttling 0.0046
        to 0.0040; a load that lies is followed more often, 0.0375 to 0.0425 there.) A later one
        that moved by more than
        ``load_tolerance`` (in ``log(1 - load)``) moves its level as much, times how its latency
        follows others' load (``load_elasticity`` at first, then learned from the first run after
        each move: a load that says nothing, or lies, is soon not followed). Its variance is
        ``load_var`` times the square of the whole move since it last ran: a load that came and
        went leaves it as sure as it was. Contention that ended
        while nobody ran there (another client left the GPU) is thus seen, and the backend
        predicted faster and run again, as a clock that recovered is; contention that came is
        not probed into.
        """
        p = self.params
        moved = False
        for backend, load in loads.items():
            device = self._device_of(backend)
            if device.last != device.load_seen_at:  # it ran since the last reading: its latencies told
                device.load_seen_at = device.last
                device.load_used_at = at
                # Its runs were learned under others' load of the reading before them, if that one
                # was clean: anchored there, a move right after them (contention that ended just
                # after a probe into it) is seen, where the next clean reading would be past it.
                device.load_anchor, device.load_clean = device.load_clean, math.nan
                continue
            if load is None or not 0.0 <= load <= 1.0:
                device.load_anchor = device.load_clean = math.nan  # not read: anchored again once read
                continue
            if not at - device.load_used_at >= settle_s.get(backend, math.inf):
                continue  # its own work may still show in the load's window
            device.load_clean = load
            anchor = device.load_anchor
            if math.isnan(anchor):
                device.load_anchor = load
                continue
            delta = math.log((1.0 - min(anchor, MAX_LOAD)) / (1.0 - min(load, MAX_LOAD)))
            if abs(delta) <= p.load_tolerance:
                continue
            shift = device.load_beta * delta
            device.load_delta += delta
            device.mean += shift
            device.mean_at_reading += shift  # not a move the next clock reading may explain
            before, device.load_shift = device.load_shift, device.load_shift + shift
            device.var += p.load_var * (device.load_shift**2 - before**2)
            if device.jump * shift < 0.0:
                # the load explains the change undone: no reversion left to expect (unless the next
                # run refutes the move, see ``DeviceTerm.learn_load_elasticity``)
                device.load_jump, device.jump = device.jump, 0.0
                device.reverted = 0.0
            elif device.load_jump * shift > 0.0:  # the load came back: so is the change it explained
                device.jump, device.load_jump = device.load_jump, 0.0
            device.load_anchor = load
            device.version += 1
            moved = True
        return moved

    @staticmethod
    def _learn_elasticity(device: DeviceTerm, reg: Regression, measured: float, noise: float) -> None:
        """One measurement of the elasticity of ``reg``'s runs, split between the backend's shared
        elasticity and its stage's gap to it by their uncertainties (as an observation is split
        between the device term and a regression): a group rarely run while the clock is low,
        a prefill, follows what the others measured."""
        cov, v_shared, v_gap = device.beta_cov, device.beta_var, reg.gap.var
        total = v_shared + v_gap + noise
        innovation = min(MAX_ELASTICITY, max(0.0, measured)) - (device.beta + reg.gap.mean)
        # the device term's mean moves with the elasticity it is correlated with
        device.mean += cov / total * innovation
        device.beta += v_shared / total * innovation
        reg.gap.mean += v_gap / total * innovation
        device.var -= cov * cov / total
        device.beta_cov = cov * (1.0 - v_shared / total)
        device.beta_var = v_shared * (1.0 - v_shared / total)
        reg.gap.var = v_gap * (1.0 - v_gap / total)
        device.version += 1

    def _group_of(self, stage: Stage, backend: Backend, group: Group) -> Regression:
        """The regression of a group, created (from its siblings) when first observed."""
        reg = self._groups.get((stage, backend, group))
        if reg is None:
            reg = self._groups[(stage, backend, group)] = self._new_regression(stage, backend, group)
        return reg

    def _group_or_prior(self, stage: Stage, backend: Backend, group: Group) -> tuple[Regression, Any]:
        """The regression of a group and its version; for a group never observed, the prior its
        siblings give it now (not stored: it follows them until the group is observed)."""
        reg = self._groups.get((stage, backend, group))
        if reg is not None:
            return reg, reg.version
        families = self._families
        # the twin stage's counter matters only once the twin is observed (it then moves the shift)
        twin = (_TWIN[stage], backend)
        seen = (families.get((stage, backend), 0),
                families.get(twin, 0) if self.params.twin_share and (*twin, group) in self._groups else 0)  # fmt: skip
        key = (stage, backend, group)
        cached = self._unobserved.get(key)
        if cached is None or cached[0] != seen:
            cached = self._unobserved[key] = (seen, self._new_regression(stage, backend, group))
        return cached[1], ("prior", seen)

    def _siblings_mean(self, stage: Stage, backend: Backend) -> tuple[list[float], float] | None:
        """What the observed groups of ``stage`` on ``backend`` learned, weighted by how sure each
        is, and the weights' sum; None if none was observed."""
        p = self.params
        siblings = [r for (s, b, _), r in self._groups.items() if s is stage and b is backend and r.n]
        if not siblings:
            return None
        weights = [1.0 / (r.c[0] + p.group_sd**2) for r in siblings]
        total = sum(weights)
        return [sum(w * r.m[i] for w, r in zip(weights, siblings, strict=True)) / total for i in range(4)], total

    def _twin_shift(self, stage: Stage, backend: Backend, group: Group) -> float:
        """How much faster the same group's kernels ran than their siblings at the other stage of
        ``backend``, beyond ``group_sd``, times ``twin_share`` (log, <= 0); 0 unless both were observed.

        Each is compared where it ran (:meth:`Regression.level`), not by its intercept: a
        prefill's intercept is its error at n = 1, and one run at a long prompt moves it by under
        a third of the run's surprise (the rest goes to the slope), so by intercepts one run of
        the GPU's INT8 prefill qkv 20 times faster than the prior at n = 488 showed attention
        nothing.
        """
        other = _TWIN[stage]
        twin = self._groups.get((other, backend, group))
        if twin is None or not twin.n:
            return 0.0
        p = self.params
        g2 = p.group_sd**2
        total = weighted = 0.0
        for (s, b, g), r in self._groups.items():
            if s is other and b is backend and g != group and r.n:
                mean, var = r.level()
                w = 1.0 / (var + g2)
                total += w
                weighted += w * mean
        if not total:
            return 0.0
        return p.twin_share * min(0.0, twin.level()[0] - weighted / total + p.group_sd)

    def _new_regression(self, stage: Stage, backend: Backend, group: Group) -> Regression:
        p = self.params
        gap = self._gaps.get((stage, backend))
        if gap is None:
            gap = self._gaps[(stage, backend)] = ClockGap(p.clock_elasticity_spread**2)
        if not p.regression:
            return Regression(None, None, 0.0, p.noise_var, self._bucket_var, None, gap)
        # What the siblings (the other groups of this stage and backend) learned, weighted by
        # how sure each is, is where a new group starts: the prior's error on this device is
        # mostly shared between precisions and phases.
        siblings = self._siblings_mean(stage, backend)
        mean = [0.0, 0.0, 0.0, 0.0]
        first = p.stage_sd**2
        if siblings is not None:
            mean, total = siblings
            first = p.group_sd**2 + 1.0 / total
        if p.twin_share:
            # ... and where the other stage showed these kernels (this precision and phase) faster
            # than its others, by more than groups differ, this group starts faster by the excess
            # (see ``ModelParams.twin_share``).
            mean = [mean[0] + self._twin_shift(stage, backend, group), mean[1], mean[2], mean[3]]
        # the detector comes with the first observation: a prior for an unobserved group needs none
        return Regression(mean, [first, p.slope_sd**2, p.slope_sd**2, p.quirk_sd**2], p.stage_q, p.noise_var,
                          self._bucket_var, None, gap)  # fmt: skip

    def _detector(self) -> Any:
        from river.drift import ADWIN

        return ADWIN(delta=self.params.adwin_delta, clock=self.params.adwin_clock)

    def _bucket_of(self, key: tuple[Any, ...], between: float) -> list[float]:
        b = self._buckets.get(key)
        if b is None:
            # Past max_buckets the oldest is forgotten: the regressions and the device terms
            # still hold what it taught.
            b = self._buckets[key] = [0.0, between]
        return b

    def prepare(self) -> None:
        """Pay the one-time cost of the first regression (river's import) now, not on first use."""
        self._detector()

    def versions(self, stage: Stage, backend: Backend, group: Group) -> tuple[Any, ...]:
        """Counters that change whenever an estimate of ``stage`` on ``backend`` in ``group`` may have."""
        device = self._devices.get(backend) or self._device_of(backend)
        return device.version, self._group_or_prior(stage, backend, group)[1]

    def volatile(self, backend: Backend, clock: int) -> bool:
        """Whether changes were detected on ``backend`` recently (within about the volatility horizon):
        one that changed is likely to change back (contention that comes and goes); or, where its
        clock is not read, whether it cooled while unused by as much as such a change (its
        governor may have released it, see :meth:`set_temperatures`)."""
        device = self._devices.get(backend)
        if device is None:
            return False
        p = self.params
        threshold = p.volatile_change**2
        cooled = device.temp_anchor - device.temp_low - p.temperature_deadband  # NaN when unknown
        if not device.clock_read and cooled * p.temperature_var >= threshold:
            return True
        if not device.energy:
            return False
        decayed = device.energy * device._decay ** max(0, clock - device.last)
        return decayed > threshold

    def load_read(self, backend: Backend) -> bool:
        """Whether others' load on ``backend`` is read while it goes unused (telemetry): contention
        that ends shows there, without a probe (see :meth:`set_loads`)."""
        device = self._devices.get(backend)
        return device is not None and not math.isnan(device.load_anchor)

    def unobserved_for(self, backend: Backend, clock: int) -> int:
        """Observations (of any backend) made since ``backend`` was last observed."""
        device = self._devices.get(backend)
        return clock if device is None else max(0, clock - device.last)

    def reversion(self, backend: Backend, clock: int) -> tuple[float, float, float]:
        """(probability, log shift, rate): that ``backend``'s last detected change has reverted by
        now, how its estimate would move if so, and the rate of such reversions per observation
        (see ``DeviceTerm``)."""
        device = self._devices.get(backend)
        if device is None or not device.jump:
            return 0.0, 0.0, 0.0
        return (*device.reversion(clock), device.jump_rate(clock))

    def observed(self, stage: Stage, backend: Backend, group: Group) -> int:
        """How many observations the regression of ``stage`` on ``backend`` in ``group`` has learned from."""
        reg = self._groups.get((stage, backend, group))
        return 0 if reg is None else reg.n

    def doubt(self, stage: Stage, backend: Backend, group: Group, phi: tuple[float, ...]) -> tuple[float, float]:
        """(probability, log shift): that the one run the group's estimate rests on was a spike, and
        how its estimate at ``phi`` would move if so (back to before that run); or that an update
        which sped a sibling up sped it up alike, and how far (see ``ModelParams.update_doubt``)."""
        reg = self._groups.get((stage, backend, group))
        if reg is None or not reg.doubt:
            return 0.0, 0.0
        return reg.doubt, reg.back(phi)

    def group_offset(self, stage: Stage, backend: Backend, group: Group, phi: tuple[float, ...]) -> float:
        """How far from the prior the group's own regression puts ``phi`` (log units): how this
        device's kernels differ from what the prior believes of them, without the backend's shared
        term (throttling, contention, its clock) or the shape bucket's own effect; 0 for a group
        never observed."""
        reg = self._groups.get((stage, backend, group))
        return 0.0 if reg is None or not reg.k else reg.mean_at(phi)

    def noise_var(self, stage: Stage, backend: Backend, group: Group) -> float:
        """The learned noise variance of one observation of ``stage`` on ``backend`` in ``group``."""
        return self._group_or_prior(stage, backend, group)[0].noise

    # -- estimates --------------------------------------------------------------------------
    def estimate(self, stage: Stage, backend: Backend, group: Group, phi: tuple[float, ...], bucket: Any) -> Estimate:
        """The offset of the log-latency from the prior at ``phi`` and ``bucket``, and its variance.

        The variance is that of the expected value (what exploration weighs), not of one
        observation's noise; it grows with the clock while nothing is observed.
        """
        device = self._devices.get(backend) or self._device_of(backend)
        reg, version = self._group_or_prior(stage, backend, group)
        mean = device.mean
        rate = device.rate()
        a = device.var - rate * device.last
        x = device.slowdown
        if x:
            mean += (device.beta + reg.gap.mean) * x
            a += device.clock_var(reg.gap.var)
        b = rate
        if reg.k:
            _, _, _, _, v_reg, at = reg.project(phi)
            mean += at
            a += v_reg - reg.q * reg.last
            b += reg.q
        bk = self._buckets.get((stage, backend, bucket))
        if bk is None:
            a += reg.between
        else:
            mean += bk[0]
            a += bk[1]
        return Estimate(mean, a, b, (device.version, version))

    def slope_gap(
        self, stage: Stage, backend: Backend, group: Group, phi: tuple[float, ...], base: tuple[float, ...]
    ) -> float:
        """How far the learned offset at ``phi`` is above that at ``base`` (the regression's slopes
        alone: the other terms are the same at two points of one group and bucket)."""
        reg = self._group_or_prior(stage, backend, group)[0]
        return reg.mean_at(phi) - reg.mean_at(base) if reg.k else 0.0

    # -- learning ---------------------------------------------------------------------------
    def observe(
        self,
        stage: Stage,
        backend: Backend,
        group: Group,
        phi: tuple[float, ...],
        bucket: Any,
        prior_log: float,
        log_t: float,
        clock: int,
    ) -> Learned:
        """Learn from one run whose log run time was ``log_t`` where the prior said ``prior_log``."""
        p = self.params
        device = self._devices.get(backend) or self._device_of(backend)
        reg = self._groups.get((stage, backend, group)) or self._group_of(stage, backend, group)
        bkey = (stage, backend, bucket)
        bk = self._buckets.get(bkey) or self._bucket_of(bkey, reg.between)
        self.observations += 1
        family = (stage, backend)
        self._families[family] = self._families.get(family, 0) + 1

        v_device = device.var_at(clock)
        reg.grow(clock)
        predicted = prior_log + device.mean + bk[0]
        x = device.slowdown
        v_clock = 0.0
        if x:  # the clock's share, read from telemetry
            predicted += (device.beta + reg.gap.mean) * x
            v_clock = device.clock_var(reg.gap.var)
        k = reg.k
        if k:
            p0, p1, p2, p3, v_reg, at = reg.project(phi)
            predicted += at
        else:
            v_reg = 0.0
        v_model = v_device + v_reg + bk[1] + v_clock
        s = v_model + reg.noise
        raw = log_t - predicted
        if device.load_delta:  # the first run since others' load moved the shared term
            unsaid = device.learn_load_elasticity(raw, p.load_var)  # what the run says the load's move was not
            if unsaid:
                self.stale = True
                predicted += unsaid
                raw -= unsaid
                v_device = device.var_at(clock)
                v_model = v_device + v_reg + bk[1] + v_clock
                s = v_model + reg.noise
        reverted = False
        if device.jump and device.weigh_reversion(raw, s, clock, p.clip):
            # The last change undid itself (contention ended or came back, the clock recovered):
            # undo it on the shared term and learn this observation against what that predicts.
            device.revert(p.revert_var, clock)
            self.reversions[backend] = self.reversions.get(backend, 0) + 1
            reverted = True
            predicted += device.jump  # the jump undone, now recorded with its sign flipped
            raw -= device.jump
            v_device = device.var
            v_model = v_device + v_reg + bk[1] + v_clock
            s = v_model + reg.noise
        update, reg.doubt_update = reg.doubt_update, False
        undone = reg.weigh_doubt(phi, raw, s, v_reg) if reg.doubt else None
        if undone is not None:
            # The one run the group's mean rested on was a spike (or a sibling's update sped this
            # group up too): this run is learned against the mean the doubt held.
            p0, p1, p2, p3, v_reg, then = undone
            if not update:  # a slow first run undone
                self.transients[backend] = self.transients.get(backend, 0) + 1
                if p.transient_window and at > then:
                    self._doubt_neighbours(backend, reg, at - then)
            predicted += then - at
            raw = log_t - predicted
            v_model = v_device + v_reg + bk[1] + v_clock
            s = v_model + reg.noise
        sd = math.sqrt(s)
        z = raw / sd
        clip = p.clip
        # Bounded influence, unless the surprise repeats: a run of innovations beyond the
        # clip in one direction is a change (throttling, contention, a new driver), not noise.
        run = reg.run
        change = False
        spikes = device.spike_rate
        spikes += ((1.0 if z > clip else 0.0) - spikes) / device.horizon
        if z > clip or z < -clip:
            self.surprised = True
            reg.surprise, reg.surprise_var, reg.surprise_n = raw, s, reg.n + 1
        if z > clip:
            reg.run_size = min(reg.run_size, raw) if run > 0 else raw
            if run <= 0:
                reg.run_at = clock
            run = run + 1 if run > 0 else 1
            change = run >= p.confirm_slower and spikes**run <= p.false_change_rate
        elif z < -clip:
            reg.run_size = min(reg.run_size, -raw) if run < 0 else -raw
            if run >= 0:
                reg.run_at = clock
            run = run - 1 if run < 0 else -1
            change = -run >= p.confirm_faster
        else:
            run = 0
            reg.calm_at, reg.calm_sd = clock, sd
        local = False
        if change:
            reg.run = 0
            if run > 0:  # the run's surprises were a change's first runs, not spikes
                spikes -= run / device.horizon
            size = min(reg.run_size, MAX_CHANGE)
            self.changes[(stage, backend)] = self.changes.get((stage, backend), 0) + 1
            # Where the change is, the next observations tell: the backend's device term, this
            # regression, or this shape bucket alone are all re-opened. Unless another group of
            # the backend ran as predicted since the run of surprises began: then the backend
            # did not change, this group was wrong (a shape it had not seen), and it is this
            # regression that takes the change.
            local = bool(k) and self._calm_since(backend, reg, reg.run_at, size / clip)
            self._reopen(device, reg, bk, local)
            if local and p.kernel_change_var:
                self._unsettle(reg, p.kernel_change_var)
                if raw < 0.0 and p.update_doubt:
                    self._doubt_siblings(stage, backend, reg, size)
            v_device = device.var
            if k:
                p0, p1, p2, p3, v_reg, _ = reg.project(phi)
            v_model = v_device + v_reg + bk[1] + v_clock
            s = v_model + reg.noise
            e = size if raw > 0 else -size
            zw = e / math.sqrt(s)
        else:
            reg.run = run
            zw = clip if z > clip else -clip if z < -clip else z
            e = zw * sd
        device.spike_rate = spikes if spikes > p.min_spike_rate else p.min_spike_rate
        step = e / s

        # One Kalman step per term, all with the innovation's total variance s. The device
        # term's mean and the clock's shared elasticity are one step: at a clock held low,
        # they explain the same level (their covariance turns negative), and only the
        # clock's moves tell them apart (and at full clock, what is learned of the one still
        # moves the other).
        cov = device.beta_cov
        if x or cov:
            v_shared, v_gap = device.beta_var, reg.gap.var
            k_mean = v_device + x * cov
            k_beta = cov + x * v_shared
            device_move = k_mean * step
            device.mean += device_move
            device.var = v_device - k_mean * k_mean / s
            device.beta += k_beta * step
            device.beta_var = v_shared - k_beta * k_beta / s
            device.beta_cov = cov - k_mean * k_beta / s
            reg.gap.mean += v_gap * x * step
            reg.gap.var = v_gap * (1.0 - v_gap * x * x / s)
        else:  # no clock read yet: the same step with x and the covariance zero, written out
            k_mean = v_device
            device_move = v_device * step
            device.mean += device_move
            device.var = v_device * (1.0 - v_device / s)
        if device.energy and clock > device.last:
            device.energy *= device._decay ** (clock - device.last)
        # How far the device term moves beyond what noise moves it (2 standard deviations of a
        # right model's move, k_mean / sqrt(s)) is the evidence of how much it changes: a
        # backend whose term jumped (detected as a change or not) is re-checked sooner. A
        # detected change counts whole: the variance it re-opened would call its move expected.
        surprise = device_move * device_move
        if not change:
            surprise -= 4.0 * k_mean * k_mean / s
        if surprise > 0.0:
            device.energy += surprise
        device.last = clock
        device.n += 1
        device.version += 1
        if k:
            m_then, c_then = reg.m, reg.c  # (update replaces both lists)
            reg.update(p0, p1, p2, p3, step, 1.0 / s)
            if not reg.n and raw > 0.0 and not change:
                # A group's first run, slower than predicted: learned in full (the group's prior
                # is wide, one run cannot tell), but it may have been a spike. If a spike is
                # what made the group lose, nothing would ever run it again: the probability of
                # one (a one-sided log-normal excess beside the run as predicted) is kept, for
                # the policy to check the group once more, and for the next run to settle.
                s_spike = s + p.spike_var
                ratio = 0.5 * raw * raw * (1.0 / s - 1.0 / s_spike)
                odds = 2.0 * spikes * math.sqrt(s / s_spike) * math.exp(ratio if ratio < 30.0 else 30.0)
                doubt = odds / (odds + 1.0 - spikes)
                if doubt > p.min_spike_rate:
                    reg.doubt = doubt if doubt < MAX_DOUBT else MAX_DOUBT
                    reg.doubt_m, reg.doubt_c = m_then, c_then
        if not reg.n:
            reg.first_at = clock
        reg.n += 1
        reg.version += 1
        reg.seen_at = (phi[0], phi[1], phi[2], phi[3])
        bk_mean, bk_var = bk[0], bk[1]
        bk[0] += bk_var * step
        bk[1] = bk_var * (1.0 - bk_var / s)

        # The noise variance: what the (winsorised) innovations show beyond the model's own
        # uncertainty, followed slowly so that a change in level is not mistaken for noise.
        sample = e * e - v_model
        floor = p.min_noise_var
        noise = reg.noise
        reg.noise += p.noise_rate * ((sample if sample > floor else floor) - noise)
        if not change:
            # The variance between buckets: what the residual left by every term but the
            # bucket's shows beyond noise and the terms' uncertainty (empirical Bayes).
            r = e + bk_mean
            sample = r * r - (v_model - bk_var) - noise
            floor = self._bucket_var
            reg.between += p.noise_rate * ((sample if sample > floor else floor) - reg.between)

        gain = v_model / s
        shared = (v_device + v_reg) * step
        reg.moved += gain * e + device.jump if reverted else gain * e  # a reversion moved it by the jump undone
        if change:
            reg.detector = self._detector()
            # What may revert is the whole change seen (contention ends, a throttled clock
            # recovers), however this first step split it between the terms.
            if not local:
                device.jumped(e, clock)
            return Learned(alarm=True, device_shift=device_move, shift=gain * e, shared_shift=shared,
                           predicted=predicted + gain * e, gain=gain)  # fmt: skip
        # Slow or small shifts, which the clip hides from the run test: river's ADWIN on the
        # winsorised innovations.
        detector = reg.detector
        if detector is None:
            detector = reg.detector = self._detector()
        detector.update(zw)
        alarm = detector.drift_detected
        if alarm:
            reg.detector = self._detector()
            key = (stage, backend)
            self.alarms[key] = self.alarms.get(key, 0) + 1
            self._reopen(device, reg, bk)
        if reverted:  # a change of the whole backend, like one detected: its sign is the jump undone's
            return Learned(alarm=True, device_shift=device_move - device.jump, shift=gain * e - device.jump,
                           shared_shift=shared - device.jump, predicted=predicted + gain * e, gain=gain)  # fmt: skip
        # (tuple.__new__ directly: the named tuple's own constructor, with keywords, costs half a microsecond)
        return _new_tuple(Learned, (alarm, device_move, gain * e, shared, predicted + gain * e, gain))

    def _calm_since(self, backend: Backend, reg: Regression, clock: int, sd: float) -> bool:
        """Whether a group of ``backend`` other than ``reg`` ran as predicted after ``clock``, to
        a standard deviation below ``sd`` (sure enough that a change of the backend would have
        surprised it too)."""
        for (_, b, _), other in self._groups.items():
            if b is backend and other is not reg and other.calm_at > clock and other.calm_sd < sd:
                return True
        return False

    def _reopen(self, device: DeviceTerm, reg: Regression, bucket: list[float] | None, local: bool = False) -> None:
        """Distrust the terms a change may be in: the device term mostly, or with ``local`` the
        regression alone (the backend's other groups showed no change).

        The backend's other groups are left as they are. (Their intercepts widened by half the
        square of each change of the whole backend and of each reversion, for a group first
        measured inside a burst of contention took the burst as its own: paired over seeds 0-9
        of ``bench_learning.py --policies adaptive --json``, +0.0004, se 0.0003, GPU contention
        -0.0006 but the NPU's periodic throttling +0.0040; on speedups alone, +0.0002, se
        0.0001, the worst cell, GPU contention on the soc world's seed 8, unchanged. Not kept.)
        """
        p = self.params
        if not local:
            device.changed(p.alarm_var)
        if reg.k:
            reg.c[0] = max(reg.c[0], p.alarm_var if local else p.alarm_stage_var)
        reg.version += 1
        if bucket is not None:
            bucket[1] = max(bucket[1], p.alarm_bucket_var)

    def _doubt_neighbours(self, backend: Backend, spiked: Regression, size: float) -> None:
        """``spiked``'s first run was a transient ``size`` slower (log units) than the group is:
        doubt alike what ``backend``'s other groups learned from runs made near it only (see
        ``ModelParams.transient_window``); their entries are stale."""
        p = self.params
        start, end = spiked.first_at - p.transient_window, spiked.first_at + p.transient_window
        for (_, b, _), reg in self._groups.items():
            if b is not backend or reg is spiked or not reg.k or reg.n > p.transient_runs or reg.doubt >= MAX_DOUBT:
                continue
            if start <= reg.first_at and reg.last <= end:
                self._doubt(reg, size, MAX_DOUBT)

    def _doubt_siblings(self, stage: Stage, backend: Backend, sped: Regression, size: float) -> None:
        """``sped``'s kernels became ``size`` faster (log units) by a change of their own (an update,
        see ``ModelParams.kernel_change_var``): doubt that the other groups of ``stage`` on
        ``backend`` sped up alike (``ModelParams.update_doubt``). The next run of each settles it,
        as a doubted spike is settled. Their entries are stale."""
        doubt = min(self.params.update_doubt, MAX_DOUBT)
        for (s, b, _), reg in self._groups.items():
            if s is stage and b is backend and reg is not sped and reg.k and reg.n and not reg.doubt:
                self._doubt(reg, size, doubt)
                reg.doubt_update = True

    def _doubt(self, reg: Regression, size: float, chance: float) -> None:
        """Doubt, with probability ``chance``, that ``reg`` is as it seems rather than ``size``
        faster (log units, through its intercept), for its next run to settle; its entries are stale.
        A doubt it holds already keeps what undoing it means (its own first run's)."""
        if not reg.doubt:
            # as sure as the group is now (the same list: it grows as the group's does)
            m = reg.m
            reg.doubt_m, reg.doubt_c = [m[0] - size, m[1], m[2], m[3]], reg.c
        reg.doubt = chance
        reg.version += 1
        self.stale = True

    def _unsettle(self, changed: Regression, var: float) -> None:
        """Make every group but ``changed`` at least ``var`` uncertain where it last ran, through its
        intercept (so at every shape by as much): a change of one kernel's code may have come with
        others' (see ``ModelParams.kernel_change_var``)."""
        for reg in self._groups.values():
            if reg is not changed and reg.k and reg.n:
                short = var - reg.level()[1]
                if short > 0.0:
                    reg.c[0] += short
                    reg.version += 1

    def reopen(self, stage: Stage, backend: Backend, group: Group) -> None:
        """Distrust what is known of ``stage`` on ``backend`` (a failure, a long outage): the next
        observations move it fast."""
        reg = self._groups.get((stage, backend, group))
        if reg is None:
            self._device_of(backend).changed(self.params.alarm_var)
        else:
            self._reopen(self._device_of(backend), reg, None)

    # -- introspection ------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Plain-data state for reports: the device factor per backend, the fitted error per stage and group."""
        out: dict[str, Any] = {
            "device": {b.value: {"factor": round(math.exp(d.mean), 4), "sd": round(math.sqrt(d.var), 4),
                                 "forgetting": d.rate(), "clock_slowdown": round(math.exp(d.slowdown), 4),
                                 "clock_elasticity": round(d.beta, 4), "spike_rate": round(d.spike_rate, 5),
                                 "load_elasticity": round(d.load_beta, 4), "load_moves_tested": d.load_n}
                       for b, d in self._devices.items()},
            "groups": {},
            "buckets": len(self._buckets),
            "alarms": {f"{s.value}/{b.value}": n for (s, b), n in self.alarms.items()},
            "changes": {f"{s.value}/{b.value}": n for (s, b), n in self.changes.items()},
            "reversions": {b.value: n for b, n in self.reversions.items()},
            "transients": {b.value: n for b, n in self.transients.items()},
        }  # fmt: skip
        for (stage, backend, (precision, phase)), reg in self._groups.items():
            elasticity = self._device_of(backend).beta + reg.gap.mean
            entry: dict[str, Any] = {"observations": reg.n, "noise_sd": round(math.sqrt(reg.noise), 4),
                                     "clock_elasticity": round(elasticity, 4)}  # fmt: skip
            if reg.k:
                entry["factor"] = round(math.exp(reg.m[0]), 4)
                entry["sd"] = round(math.sqrt(reg.c[0]), 4)
                entry["slopes"] = {name: round(v, 4) for name, v in zip(FEATURES[stage], reg.m[1:], strict=True)}
            out["groups"][f"{stage.value}/{backend.value}/{precision.value}/{phase}"] = entry
        return out
