"""The terms of the online latency model (:mod:`.latency`): a backend's device term and a regression.

Plain Python floats and ``__slots__``: an observation updates one of each, at three
features, where numpy's per-call overhead would cost more than the arithmetic.
"""

from __future__ import annotations

import math
from typing import Any

#: a detected change is forgotten (no longer expected to revert) once the decayed count of
#: recent changes falls below this: about five volatility horizons after a lone one
FORGET_JUMPS = 0.01
#: how long changes lasted is remembered over about this many of them ...
SPAN_MEMORY = 4.0
#: ... as a log-normal whose spread is at least this (log units): a handful of spans, each
#: known to within the gap between two runs, cannot promise more regularity than that
SPAN_SD_FLOOR = 0.35
#: how others' load is followed is learned within [0, this], over about this many of its moves
MAX_LOAD_ELASTICITY = 2.0
LOAD_MEMORY = 20


class Spans:
    """How long a backend's changes of one direction lasted before they reverted: a decayed
    log-normal fit, from which the chance that the current one has ended by a given age follows.

    Contention that comes in bursts, or a governor that throttles on a duty cycle, ends after
    about as long as it did before: probing for its end is worth most when that time comes,
    little just after it began.

    >>> spans = Spans()
    >>> for _ in range(3):
    ...     spans.add(700.0)
    >>> round(spans.survival(350.0), 3), round(spans.survival(1400.0), 3)
    (0.976, 0.024)
    """

    __slots__ = ("mean", "n", "sq")

    def __init__(self) -> None:
        self.n = 0.0
        self.mean = 0.0
        self.sq = 0.0

    def add(self, span: float) -> None:
        x = math.log(span if span > 1.0 else 1.0)
        self.n = self.n * (1.0 - 1.0 / SPAN_MEMORY) + 1.0
        w = 1.0 / self.n
        self.mean += w * (x - self.mean)
        self.sq += w * (x * x - self.sq)

    def sd(self) -> float:
        v = self.sq - self.mean * self.mean
        return math.sqrt(v) if v > SPAN_SD_FLOOR * SPAN_SD_FLOOR else SPAN_SD_FLOOR

    def weight(self) -> float:
        """How far the fit is trusted over a memoryless hazard: more with each span seen."""
        return self.n / (self.n + 1.0)

    def survival(self, age: float) -> float:
        """P(a change of this kind lasts longer than ``age`` observations)."""
        if age <= 1.0:
            return 1.0
        return 0.5 * math.erfc((math.log(age) - self.mean) / (self.sd() * math.sqrt(2.0)))

    def hazard(self, age: float) -> float:
        """The rate (per observation) at which a change of age ``age`` ends now."""
        if age <= 1.0:
            age = 1.0
        sd = self.sd()
        z = (math.log(age) - self.mean) / sd
        tail = 0.5 * math.erfc(z / math.sqrt(2.0))
        density = math.exp(-0.5 * z * z) / (age * sd * math.sqrt(2.0 * math.pi))
        if tail > 1e-12:
            return density / tail
        return z / (sd * age)  # the log-normal's hazard far in its tail


class DeviceTerm:
    """One backend's device term: a scalar random walk.

    It forgets at ``q`` per observation at least, and faster after it moved: ``energy`` is a
    decayed sum (over about ``horizon`` observations) of the squared moves of its mean, so a
    backend that just jumped (contention that comes and goes, a governor stepping) grows
    uncertain faster while unobserved and is re-checked sooner, and one that never changes
    is re-checked rarely.

    A detected change is also remembered as a jump that may revert (contention ends, a
    throttled clock recovers): ``jump`` is its size (log units, positive when the backend
    got slower) and ``jumps`` a decayed count of the changes detected here, whose rate
    gives the hazard that the last one has reverted while the backend went unobserved; once
    changes of its direction have been seen to revert, mostly how long they lasted does
    (:class:`Spans`), so contention in bursts of one length is watched for as each should end.
    Whether it has is a second hypothesis tracked beside the estimate (``reverted``, its
    probability): each observation weighs the two by their likelihoods, and once reversion is
    the likelier the whole jump is undone at once, on the shared term, so every stage of the
    backend follows. Otherwise a reversion seen by one stage is learned slowly, split between
    the terms, and the other stage keeps believing the backend slow and never checks it.

    With device telemetry it also carries the backend's clock: ``slowdown`` (log of maximum
    over current clock) times an elasticity, ``beta`` here (what the backend's kernels share,
    learned) plus its stage's gap to it (:class:`ClockGap`, shared by the stage's regressions; see
    ``LatencyModel.set_clocks``). The ``*_at_reading`` fields remember the term at the last
    clock reading, so that a step the latencies showed first is not counted twice. Without its
    clock, the backend cooling while unused is forgetting (see ``LatencyModel.set_temperatures``).
    While it goes unused, others' load on it moves its level (see ``LatencyModel.set_loads``).
    """

    __slots__ = ("_decay", "beta", "beta_cov", "beta_var", "clock_read", "energy", "horizon", "jump", "jump_at",
                 "jumps", "last", "last_at_reading", "load_anchor", "load_beta", "load_clean", "load_delta",
                 "load_jump", "load_n", "load_seen_at", "load_shift", "load_used_at", "mean", "mean_at_reading", "n",
                 "q", "reverted", "slowdown", "spans_faster", "spans_slower", "spike_rate", "temp_anchor", "temp_low",
                 "temp_read", "temp_seen_at", "var", "version")  # fmt: skip

    def __init__(self, var: float, q: float, horizon: float, beta: float = 1.0, beta_var: float = 0.0,
                 spike_rate: float = 0.01, load_beta: float = 1.0) -> None:  # fmt: skip
        self.mean = 0.0
        self.var = var
        #: the clock term: the backend's log slowdown read from its clock (log max/cur, 0 at
        #: full clock or unknown), and how strongly its kernels' latency follows it (1: run time
        #: proportional to the clock period, less for memory-bound work), learned
        self.slowdown = 0.0
        #: whether the clock is read now (``slowdown`` 0 is then full clock, not unknown)
        self.clock_read = False
        #: its temperature (C) when it last ran (between the two readings around the run), NaN when
        #: unknown; the lowest read since, and ``last`` at the latest reading (see
        #: ``LatencyModel.set_temperatures``)
        self.temp_anchor = math.nan
        self.temp_low = math.nan
        #: its temperature at the latest reading
        self.temp_read = math.nan
        self.temp_seen_at = -1
        #: others' load on it (0 to 1) once it went unused (NaN: in use, or unknown), ``last`` at
        #: the latest load reading, and that reading's time (telemetry's clock) when it had run since
        self.load_anchor = math.nan
        self.load_seen_at = -1
        self.load_used_at = -math.inf
        #: others' load at the latest reading, if that reading found it unused long enough for its
        #: own work to be out of the load's window (NaN otherwise): where its next run's level is anchored
        self.load_clean = math.nan
        #: what others' load moved since it last ran (log of its free share, summed) and what that
        #: moved its mean by: times how its latency follows others' load (learned from the first
        #: run after each move, ``load_n`` of them so far)
        self.load_delta = 0.0
        self.load_shift = 0.0
        self.load_beta = load_beta
        self.load_n = 0
        self.beta = beta
        self.beta_var = beta_var
        #: the covariance of ``mean`` and ``beta``: where the clock has only been seen low, a
        #: level may be told by either, and only a moving clock tells them apart
        self.beta_cov = 0.0
        #: the mean when the clock was last read: what it moved by since, the clock may explain
        self.mean_at_reading = 0.0
        self.last_at_reading = 0
        self.q = q
        self.horizon = horizon
        self._decay = 1.0 - 1.0 / horizon
        self.energy = 0.0
        self.last = 0
        self.n = 0
        #: the share of its runs slower than predicted beyond the clip: spikes (preemption, page
        #: faults), learned over about ``horizon`` observations (a detected change takes its
        #: own first runs back out)
        self.spike_rate = spike_rate
        self.version = 0
        self.jump = 0.0
        self.jump_at = 0
        self.jumps = 0.0
        #: the jump a load's move explained as undone, kept until the next run tells whether it did
        self.load_jump = 0.0
        self.reverted = 0.0
        #: how long its slowdowns and its speedups lasted before reverting
        self.spans_slower = Spans()
        self.spans_faster = Spans()

    def learn_load_elasticity(self, raw: float, load_var: float) -> float:
        """The first run since others' load moved this term, with innovation ``raw``: how far it
        ran from where the term was before the load moved, over how far the load moved, is one
        measurement of how its latency follows others' load. A load that says nothing of it
        (counting work that does not slow this backend's kernels, or lying) is soon not followed.

        Returns what the mean moved by: where the run went against the load's move (or more
        than twice as far), the move is undone to what the run allows at once, with the doubt it
        added (``load_var`` times its square), so the run is learned from the level before it,
        as without the load (a load that lied is not left to wear off slowly). A run that went
        against the move gives back the change the move had explained as undone: it may still
        revert, and is watched for as before (a lying load must not cost the watch for the end
        of contention).

        Each measurement is held within [0, 2] before it is averaged. (Their mean held there
        instead, so that a load whose moves say nothing, measuring as often below zero as above,
        averages to nothing: over 60 seeds of ``bench_telemetry.py``'s GPU contention, a lying
        load 0.0425 to 0.0412 and an inverted one, over 20, 0.0657 to 0.0545, but honest
        telemetry 0.0178 to 0.0191, 9 cells worse and 3 better: an honest load's move is now and
        then measured below zero by a run some other change moved. Not kept.)"""
        delta, shift = self.load_delta, self.load_shift
        jump, self.load_jump = self.load_jump, 0.0
        shown = (raw + shift) / delta
        measured = min(MAX_LOAD_ELASTICITY, max(0.0, shown))
        self.load_n = min(self.load_n + 1, LOAD_MEMORY)
        self.load_beta += (measured - self.load_beta) / (self.load_n + 1)  # the prior counts as one
        self.load_delta = self.load_shift = 0.0
        if measured == shown:
            return 0.0
        undone = measured * delta - shift
        if measured == 0.0 and jump:
            self.jump = jump
        self.mean += undone
        self.var = max(self.var - load_var * (shift * shift - (measured * delta) ** 2), 0.0)
        self.version += 1
        return undone

    def jumped(self, size: float, clock: int) -> None:
        """A change of ``size`` (log units, signed) was detected and learned at ``clock``."""
        self.jumps = self._recent_changes(clock) + 1.0
        self.jump = size
        self.load_jump = 0.0  # one a load explained away before is past
        self.jump_at = clock
        self.reverted = 0.0

    def weigh_reversion(self, raw: float, s: float, clock: int, clip: float) -> bool:
        """Weigh one observation's innovation ``raw`` (variance ``s``) between "the last jump
        holds" and "it has reverted"; True when reversion became the likelier (see
        :meth:`revert`).

        Student-t likelihoods (3 degrees of freedom), with the hazard since the last
        observation as the prior of a reversion meanwhile. A level that sits where the
        reverted estimate puts it is strong evidence when the reversion is a speedup (noise
        cannot make a run faster); when it is a slowdown (a speedup undone), a spike of the
        right size would look the same, so the surprise is counted only up to ``clip``
        standard deviations: it takes a few in a row, as the run test does.
        """
        if self._recent_changes(clock) < FORGET_JUMPS:
            self.jump = 0.0  # a change long past: no longer expected to revert
            self.reverted = 0.0
            return False
        hazard = self.reversion(clock)[0]
        prior = self.reverted + (1.0 - self.reverted) * hazard
        if prior <= 0.0:
            return False
        if prior >= 1.0:
            return True
        z0 = raw * raw / s
        if self.jump < 0.0 and z0 > clip * clip:
            z0 = clip * clip
        z1 = (raw + self.jump) ** 2 / s
        log_odds = math.log(prior / (1.0 - prior)) + 2.0 * (math.log1p(z0 / 3.0) - math.log1p(z1 / 3.0))
        if log_odds > 0.0:
            return True
        self.reverted = 1.0 / (1.0 + math.exp(-log_odds)) if log_odds > -30.0 else 0.0
        return False

    def revert(self, reopen_var: float, clock: int) -> None:
        """Undo the last jump on this shared term; the jump back is now what may revert."""
        jump = self.jump
        # it ended between the last run that still showed it and this one
        shown = self.last if self.last > self.jump_at else self.jump_at
        self._spans_of(jump).add(0.5 * (shown + clock) - self.jump_at)
        self.mean -= jump
        self.var = max(self.var, reopen_var)
        self.version += 1
        self.jumped(-jump, clock)

    def _spans_of(self, jump: float) -> Spans:
        """How long the changes of ``jump``'s direction lasted."""
        return self.spans_slower if jump > 0.0 else self.spans_faster

    def _recent_changes(self, clock: int) -> float:
        """The decayed count of the changes detected here, at ``clock``."""
        return self.jumps * self._decay ** max(0, clock - self.jump_at)

    def _changes_rate(self, clock: int) -> float:
        """Changes per observation lately."""
        return self._recent_changes(clock) / self.horizon

    def jump_rate(self, clock: int) -> float:
        """The rate (per observation) at which the last change may revert now: as often as changes
        came lately, or, once changes of its direction have been seen to end, when they ended.

        A first change is thus less and less expected to revert as it lasts. (A duration known
        to nothing, whose end is as likely in every octave of its age, hazard 1/age, and its
        reversion since the backend was last seen 1 - seen/age, where more likely: a throttle
        lasting 40% of a run is watched for its end more often, but a change that does not
        revert is too; the learning benchmark's worlds +0.0007 over 10 seeds, se 0.0003. Not kept.)"""
        if not self.jump:
            return 0.0
        rate = self._changes_rate(clock)
        spans = self._spans_of(self.jump)
        if not spans.n:
            return rate
        w = spans.weight()
        return w * spans.hazard(clock - self.jump_at) + (1.0 - w) * rate

    def reversion(self, clock: int) -> tuple[float, float]:
        """(probability, size): that the last detected change has reverted since the backend was
        last observed, and by how much its estimate would then move back."""
        if not self.jump or clock <= self.last:
            return 0.0, 0.0
        memoryless = 1.0 - math.exp(-self._changes_rate(clock) * (clock - self.last))
        spans = self._spans_of(self.jump)
        if not spans.n:
            return memoryless, -self.jump
        seen = self.last - self.jump_at if self.last > self.jump_at else 0
        before = spans.survival(seen)
        if before > 1e-12:
            timed = 1.0 - spans.survival(clock - self.jump_at) / before
        else:  # far beyond every span seen: the hazard there
            timed = 1.0 - math.exp(-spans.hazard(seen) * (clock - self.last))
        w = spans.weight()
        return w * timed + (1.0 - w) * memoryless, -self.jump

    def rate(self) -> float:
        """Variance gained per observation while unobserved."""
        return self.q + self.energy / self.horizon

    def var_at(self, clock: int) -> float:
        return self.var + self.rate() * (clock - self.last) if clock > self.last else self.var

    def clock_var(self, gap_var: float) -> float:
        """The variance the clock term adds at the current slowdown, for a stage whose gap to the
        shared elasticity has variance ``gap_var`` (with the covariance of mean and elasticity)."""
        x = self.slowdown
        return x * (2.0 * self.beta_cov + x * (self.beta_var + gap_var))

    def changed(self, reopen_var: float) -> None:
        """A change was seen: distrust the mean (the next observations move it, and count as volatility)."""
        self.var = max(self.var, reopen_var)
        self.version += 1


class ClockGap:
    """How much more strongly one stage's kernels on a backend follow its clock than the backend's
    do on the whole (``DeviceTerm.beta``): attention over a long cache, bound by memory, follows
    the core clock less than a GEMM. Shared by the stage's groups, so what one group learned of
    it holds for the others before they run at a low clock."""

    __slots__ = ("mean", "var")

    def __init__(self, var: float) -> None:
        self.mean = 0.0
        self.var = var


class Regression:
    """Bayesian linear regression on (intercept, three features), with its noise, bucket spread and detector.

    The covariance is kept as its ten distinct entries and the arithmetic written out:
    at four features that is several times faster than general loops in Python.
    """

    __slots__ = ("between", "c", "calm_at", "calm_sd", "detector", "doubt", "doubt_c", "doubt_m", "doubt_update",
                 "first_at", "gap", "intercept_at_reading", "k", "last", "m", "moved", "moved_at_reading", "n",
                 "n_at_reading", "noise", "q", "run", "run_at",
                 "run_size", "seen_at", "surprise", "surprise_n", "surprise_var", "version")  # fmt: skip

    def __init__(self, mean: list[float] | None, variances: list[float] | None, q: float, noise: float,
                 between: float, detector: Any, gap: ClockGap) -> None:  # fmt: skip
        self.k = 0 if mean is None else 4
        self.m = mean or [0.0, 0.0, 0.0, 0.0]
        v = variances or [0.0, 0.0, 0.0, 0.0]
        # c00, c01, c02, c03, c11, c12, c13, c22, c23, c33
        self.c = [v[0], 0.0, 0.0, 0.0, v[1], 0.0, 0.0, v[2], 0.0, v[3]]
        self.q = q  # the intercept's forgetting
        self.last = 0
        #: the inputs of its last run: where what it learned is known (a prefill's intercept is
        #: its error at n = 1, which one run at a long prompt hardly moves)
        self.seen_at: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0)
        self.noise = noise
        #: variance of the bucket effects of this regression: what it cannot express, learned
        self.between = between
        self.n = 0
        self.detector = detector
        #: consecutive innovations beyond the clip, signed (positive: slower than predicted),
        #: and the smallest of their sizes (a spike within the run does not inflate the change)
        self.run = 0
        self.run_size = 0.0
        #: the clock at which the current run began, and that of its last run within the clip
        #: with the standard deviation it was predicted to: a change one group sees while
        #: another group of the backend, sure enough to have seen it, ran as predicted is its own
        self.run_at = 0
        self.calm_at = -1
        self.calm_sd = 0.0
        self.version = 0
        #: how much more strongly these runs follow the backend's clock than its kernels do on
        #: the whole: the stage's, shared with its other groups
        self.gap = gap
        #: the sum of the moves of its prediction at the observed shapes (all terms), and that sum
        #: and ``n`` at the last clock reading: what moved since, a clock step may explain
        self.moved = 0.0
        self.moved_at_reading = 0.0
        self.n_at_reading = 0
        #: the intercept at the last clock reading: what it took since of a step the clock explains
        self.intercept_at_reading = self.m[0]
        #: the last innovation beyond the clip (log units, before clipping), its variance, and
        #: ``n`` then: a clock step read just after it is measured by it
        self.surprise = 0.0
        self.surprise_var = 0.0
        self.surprise_n = 0
        #: the probability that the one run its mean rests on was a spike, and its mean and
        #: covariance before that run (see ``LatencyModel.observe``)
        self.doubt = 0.0
        #: whether the doubt is instead that an update which sped a sibling up sped it up alike
        #: (its mean and covariance if so in ``doubt_m`` and ``doubt_c``)
        self.doubt_update = False
        #: the clock of its first run (-1 before any)
        self.first_at = -1
        self.doubt_m: list[float] = self.m
        self.doubt_c: list[float] = self.c

    def back(self, phi: tuple[float, ...]) -> float:
        """How far the mean at ``phi`` would move if the doubted run were undone."""
        m, now = self.doubt_m, self.m
        return (m[0] - now[0]) * phi[0] + (m[1] - now[1]) * phi[1] + (m[2] - now[2]) * phi[2] + (m[3] - now[3]) * phi[3]

    def weigh_doubt(
        self, phi: tuple[float, ...], raw: float, s: float, v_reg: float
    ) -> tuple[float, float, float, float, float, float] | None:
        """Weigh a second run (innovation ``raw``, variance ``s``, of which ``v_reg`` this
        regression's) between "the first run was as it seemed" and "it was a spike". When the
        spike became the likelier, the mean and covariance are back to what they were before it,
        and their :meth:`project` at ``phi`` is returned; else None. Either way the doubt is
        settled. Only a run faster than predicted can say the first was a spike: a slower one
        confirms it, or is a spike itself."""
        doubt, self.doubt = self.doubt, 0.0
        if raw >= 0.0:
            return None
        alt = raw - self.back(phi)
        now_m, now_c = self.m, self.c
        self.m, self.c = self.doubt_m, self.doubt_c
        then = self.project(phi)
        s_then = s - v_reg + then[4]
        log_odds = math.log(doubt / (1.0 - doubt)) + 0.5 * (raw * raw / s - alt * alt / s_then + math.log(s / s_then))
        if log_odds <= 0.0:
            self.m, self.c = now_m, now_c
            return None
        self.version += 1
        return then

    def grow(self, clock: int) -> None:
        if clock > self.last:
            self.c[0] += self.q * (clock - self.last)
            self.last = clock

    def level(self) -> tuple[float, float]:
        """Its error where it last ran, and the variance of that: how wrong the prior was for it."""
        _, _, _, _, var, mean = self.project(self.seen_at)
        return mean, var

    def mean_at(self, phi: tuple[float, ...]) -> float:
        m = self.m
        return m[0] * phi[0] + m[1] * phi[1] + m[2] * phi[2] + m[3] * phi[3]

    def project(self, phi: tuple[float, ...]) -> tuple[float, float, float, float, float, float]:
        """``(C phi, phi' C phi, m . phi)``: the covariance's direction along ``phi``, the variance
        there, and the mean there (one call: learning and estimating each want all of them)."""
        f0, f1, f2, f3 = phi
        c00, c01, c02, c03, c11, c12, c13, c22, c23, c33 = self.c
        p0 = c00 * f0 + c01 * f1 + c02 * f2 + c03 * f3
        p1 = c01 * f0 + c11 * f1 + c12 * f2 + c13 * f3
        p2 = c02 * f0 + c12 * f1 + c22 * f2 + c23 * f3
        p3 = c03 * f0 + c13 * f1 + c23 * f2 + c33 * f3
        m = self.m
        return (p0, p1, p2, p3, p0 * f0 + p1 * f1 + p2 * f2 + p3 * f3,
                m[0] * f0 + m[1] * f1 + m[2] * f2 + m[3] * f3)  # fmt: skip

    def update(self, p0: float, p1: float, p2: float, p3: float, step: float, inv_s: float) -> None:
        """The Kalman step along ``C phi = (p0, p1, p2, p3)`` for an innovation ``step * s``."""
        m, c = self.m, self.c
        self.m = [m[0] + p0 * step, m[1] + p1 * step, m[2] + p2 * step, m[3] + p3 * step]
        g0, g1, g2, g3 = p0 * inv_s, p1 * inv_s, p2 * inv_s, p3 * inv_s
        self.c = [c[0] - g0 * p0, c[1] - g0 * p1, c[2] - g0 * p2, c[3] - g0 * p3, c[4] - g1 * p1, c[5] - g1 * p2,
                  c[6] - g1 * p3, c[7] - g2 * p2, c[8] - g2 * p3, c[9] - g3 * p3]  # fmt: skip
