"""The parameters of the online latency model (:mod:`.latency`): prior widths, forgetting, robustness."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ModelParams:
    """Prior widths, forgetting and robustness of :class:`LatencyModel` (log units; clocks are observations).

    The defaults are set from what they mean, not fitted to one device: the prior is trusted
    to about 20x before it has been checked (``stage_sd``), a group may differ from what its
    siblings learned by a further ~2.7x (``group_sd``), a shape twice as large may be wrong
    by a further ~19% (``slope_sd``), a backend's state may move by ~1.5x over a few
    thousand observations (``device_q``), and noise starts at 10% (``noise_var``) and is
    then learned.
    """

    #: prior standard deviation of a (stage, backend)'s error before any group of it was observed
    stage_sd: float = 1.5
    #: prior standard deviation of a group's error around what its siblings learned (all of them
    #: alike: weighing those of the new group's precision four times as much, the learning
    #: benchmark's worlds moved by +0.0003 over 10 seeds, se 0.0006, int8-gpu -0.0012, the
    #: NPU-heavy world +0.0013. Not kept. Nor learned from the observed siblings' spread around
    #: their mean, empirical Bayes with this as two pseudo-groups' worth: narrower where the prior
    #: is right, wider where groups differ: paired over seeds 0-9, +0.0002, se 0.0002, int8-gpu
    #: +0.0010, the prior's world unchanged.)
    group_sd: float = 1.0
    #: where the other stage of a backend showed a group's kernels (its precision and phase)
    #: faster than its other groups by ``delta`` in log, more than a group's usual spread around
    #: its siblings (``group_sd``), a group of this stage never observed starts ``twin_share``
    #: times the excess faster than its siblings: a prior wrong about a precision's rate is
    #: wrong about both stages' kernels of it (a GPU's INT8 dot products). Within the spread a
    #: difference says nothing of the kernels: a group first measured outside a burst of
    #: contention looks faster than its siblings measured inside one. Never slower: attention
    #: may be slow for reasons of its own (its extra kernels, its memory traffic), and a group
    #: believed slower might never be checked. Over 20 seeds of the learning benchmark's
    #: worlds: all -0.0011 (se 0.0003), gpu-heavy -0.0029, int8-gpu -0.0015, soc -0.0001. The
    #: whole difference carried over, not its excess: all -0.0014, gpu-heavy -0.0044, int8-gpu
    #: -0.0031, but the soc world's GPU contention +0.0079 (three seeds by 0.03 to 0.056: the
    #: bursts' differences carried over); both ways, soc +0.0022 over 10 seeds; half of it,
    #: int8-gpu +0.0008 and soc +0.0025 over 10. Groups compared where they ran rather than by
    #: their intercepts (a prefill's is its error at n = 1): seeds 0 to 9 -0.0005 (se 0.0002;
    #: gpu-heavy -0.0014, int8-gpu -0.0011), seeds 10 to 19 -0.0000 (se 0.0002). (A stage's
    #: first group on a backend, nothing of that stage observed there, starting at half its
    #: twin's level, either way: paired over seeds 0-9, 10-19 and 20-29, -0.0003, -0.0004 and
    #: +0.0002 (se 0.0003), the GPU-heavy world -0.0011, -0.0008 and -0.0009, ``--workload
    #: decode`` -0.0001 (se 0.0002), but ``--random-worlds 6`` +0.0003 (se 0.0002), every
    #: profile worse; never slower, -0.0002 and -0.0000 (se 0.0002). Not kept.)
    twin_share: float = 1.0
    #: variance a regression's intercept gains per observation made (a driver or firmware changes).
    #: (1e-4, so that a group's intercept left unobserved for a run's 12,000 observations gains
    #: a standard deviation of 1.1 in log, and what a group learned inside a burst of contention
    #: is checked again: paired over seeds 0-9, +0.0012, se 0.0003, every world worse, the soc
    #: world's contended seed 8 from 1.080 to 1.172. Not kept.)
    stage_q: float = 1e-6
    #: prior standard deviation of the error's growth per octave of keys, d and n. (A new group
    #: starts from its siblings' slopes as from their intercepts, a decode group's n slope
    #: included, which it never learns; counting each slope by the precision its group gained
    #: over this prior instead: +0.0015 over 10 seeds, se 0.0005, gpu-heavy +0.0039: a copied
    #: slope carries what its source learned. Not kept.)
    slope_sd: float = 0.25
    #: prior standard deviation of how much of the prior's own quirk at a shape (its departure
    #: from its smooth trend there, see ``stage_features``) this device shares: 0 is all of it
    #: (the device the prior was trained on), -1 none (a device without that slow path or
    #: cache step, on which the prior is wrong by as much, at those shapes alone). Without
    #: it, the int8-gpu world's GPU INT8 decode attention, learned at small caches (the prior
    #: 0.5 in log too slow there), was believed 1.95 ms at d = 3072 and 800 keys for 0.35 (the
    #: prior's quirk there, 0.9 in log, is its simulator's), and left for the NPU for 930 layers
    #: (``trace_regret.py --scenario gpu-attn-faster --world int8-gpu --seed 4``). Paired,
    #: ``bench_learning.py --policies adaptive --json``, seeds 0-9 and 10-19: +0.0001 (se
    #: 0.0003) and -0.0003 (se 0.0004), gpu-heavy +0.0016 and +0.0006 (its prefills' first
    #: checks drawn at other layers); ``--workload decode``: -0.0011 (se 0.0003) and -0.0004
    #: (se 0.0002), soc -0.0027 and -0.0008, cells over 1.03 18 to 10 and 14 to 15. At 1.0:
    #: +0.0009 (se 0.0004); at 0.25: +0.0000, gpu-heavy +0.0008.
    quirk_sd: float = 0.5
    #: prior standard deviation of the per-backend device term (0.4, to let a backend's state at
    #: start be learned with its groups' first runs, let their prior errors into the shared term:
    #: a GPU contended in bursts, ``bench_telemetry.py``'s gpu-contention, 0.030 to 0.047; 0.3,
    #: with one draw per decision, the learning benchmark's worlds +0.0001 over seeds 0-9, se
    #: 0.0003: soc -0.0013, its worst cell 1.166 to 1.079, the NPU-heavy world +0.0008)
    device_sd: float = 0.1
    #: variance the device term gains per observation made (of any backend): forgetting. A
    #: backend left unused for a few thousand observations is uncertain enough to be probed
    #: again: on the NPU-heavy world, the GPU's FP16 decode qkv, 2.5 times slower there, at 4
    #: to 7% a layer (``trace_regret.py --scenario steady --world npu-heavy --seed 0``). (5e-5:
    #: paired over seeds 0-9 and 10-19, -0.0006 and +0.0001, se 0.0002 and 0.0003; the
    #: NPU-heavy world -0.0011 and +0.0001, int8-gpu's drifts -0.0007 and +0.0018. 2e-4:
    #: +0.0002 and -0.0002. Flat within the seeds' noise.)
    device_q: float = 1e-4
    #: observations over which a backend's moves raise its forgetting (see ``DeviceTerm``) ...
    volatility_horizon: float = 2000.0
    #: ... and moves that add up to this (log units, a 1.3x change) make it volatile: it may change back
    volatile_change: float = 0.25
    #: prior standard deviation of one shape bucket's own effect (then learned per regression;
    #: widened for a bucket never observed by 0.1 per octave outside the shapes its regression
    #: was learned at, it cost the learning benchmark's worlds 0.0021 over 10 seeds, and 0.0017
    #: with the width given to the estimate alone, not to what an observation teaches)
    bucket_sd: float = 0.15
    #: initial noise variance of one observation (then learned per regression). (A new group
    #: starting from what its backend's observed groups learned instead, this counted as 10 runs:
    #: paired over ``bench_learning.py --policies adaptive --json`` seeds 0-9 -0.0002 (se
    #: 0.0002), ``--random-worlds 6`` +0.0008 (se 0.0004), its heavy noise +0.0051. With the
    #: device term's covariance with each group kept (see ``LatencyModel``) it went the other
    #: way there, -0.0009 (se 0.0009), heavy noise -0.0106. Not kept.)
    noise_var: float = 0.01
    #: smallest noise variance learned (a perfectly repeatable device still varies a little)
    min_noise_var: float = 1e-4
    #: weight of one observation in the learned noise and bucket variances
    noise_rate: float = 0.01
    #: standardised innovations are winsorised at this many standard deviations ...
    clip: float = 3.0
    #: ... unless at least this many in a row are beyond it in the slower direction ...
    #: (A run cut short, the policy having left the backend on the bounded moves alone, leaves
    #: no change whose end is watched for: a throttle whose onset was learned that way is seen
    #: to end only by chance. Remembering two in a row as a change that may revert, without
    #: learning it as one, mended such a run (npu-periodic on int8-gpu, seed 0, by 0.062) but
    #: moved the learning benchmark's mean over 10 seeds by -0.0001, se 0.0004: not kept. With
    #: one draw per decision, the shared term's move over the two remembered as that change:
    #: +0.0003 and -0.0000 over seeds 0-9 and 10-19, se 0.0002, that cell +0.018. Not kept.)
    confirm_slower: int = 3
    #: ... and enough that spikes come that many in a row at most this often per observation
    #: at the backend's learned spike rate (three at 1%, four at 2%, five at 4%) ...
    false_change_rate: float = 1e-6
    #: ... or this many in the faster direction (a run cannot be sped up by noise): then
    #: it is a change, learned at once. (Also two runs of different groups of a backend in a row
    #: more than 2 standard deviations faster than predicted, the first one's move handed to the
    #: shared term and that re-opened: meant for a contention that ends while the groups that
    #: ran in it are still uncertain, so that each takes half of the speed-up and a group that
    #: does not run again keeps the contention. Paired, one draw per decision: +0.0007 and
    #: -0.0000 over seeds 0-9 and 10-19, se 0.0005 and 0.0002, heavy-noise on gpu-heavy seed 4
    #: 1.010 to 1.203, and gpu-contention/soc seed 8, the cell it was meant for, unchanged.
    #: Not kept. Nor a single run more than 6 standard deviations faster taken for a change at
    #: once, noise being unable to speed a run up: paired over seeds 0-9, +0.0001, se 0.0001,
    #: spikes +0.0011, firmware swaps -0.0006; decode +0.0001, se 0.0001.)
    confirm_faster: int = 2
    #: a run may be a spike (preemption, a page fault), slower by a few to tens of times: a
    #: log-normal excess of this variance (about 7x at one standard deviation) ...
    spike_var: float = 4.0
    #: ... in this share of a backend's runs until it has been learned, and never less than
    #: ``min_spike_rate`` (rare, never impossible)
    spike_rate: float = 0.01
    min_spike_rate: float = 1e-3
    #: variances the device term, the regression's intercept and the shape bucket are re-opened
    #: to when a change is detected: they say where a change is first put. Changes of a whole
    #: backend (contention, throttling) are common, of one kernel (a driver) rarer, of one
    #: shape rarer still; observations of the backend's other stages then sort out the rest.
    #: Put mostly into the backend's shared term, a change that reverts (contention ends)
    #: is seen reverting by whichever stage runs there next. A change another group of the
    #: backend ran through unsurprised is the group's own: its intercept gets ``alarm_var``.
    alarm_var: float = 0.25
    alarm_stage_var: float = 0.04
    alarm_bucket_var: float = 0.01
    #: a change one group takes as its own (another group of the backend ran through it as
    #: predicted) is a change of that kernel's code, not of the device's state: an update of a
    #: driver or a firmware, which seldom moves one kernel alone. Every other group, of either
    #: stage and backend, is then made at least this uncertain where it last ran (the variance
    #: of its estimate there, raised through its intercept, so by as much at every shape: 0.04
    #: is a standard deviation of 1.2x), so the exploration rule checks again those an update
    #: could have made the faster; one it made faster where no stage runs now would otherwise
    #: be found only by the budget's trickle. Those in use settle again in a few runs. 0: off.
    #: (Paired, ``bench_learning.py --policies adaptive --json``: seeds 0-9 and 10-19 -0.0001 and
    #: -0.0002, se 0.0001, firmware swaps -0.0009 and -0.0010; decode +0.0001, se 0.0001; the
    #: firmware swap on six device profiles drawn at random, ``--random-worlds 6 --workload
    #: decode --scenarios firmware-swap --seeds 0-9``, -0.0016, se 0.0009. The other groups'
    #: intercept variance raised to it, rather than their variance where they ran, did almost
    #: nothing where a group had run at one shape only: its intercept and slopes are uncertain
    #: together, their sum is not.)
    kernel_change_var: float = 0.04
    #: ... and where that change sped the group up, the chance that it sped the other groups of
    #: its stage and backend up alike (their mean if so: as much faster), as a doubt their next
    #: run settles (see ``transient_window``); one that no stage runs now is checked once more
    #: (``AdaptiveParams.recheck_allowance``): the raised variance alone, probed within the
    #: budget, left a firmware update that made the NPU's FP16 qkv 2.3 times faster unfound for
    #: a tenth of a run (``trace_regret.py --scenario firmware-swap --seed 2``, 38.7 to 9.4 per
    #: mille). At most 0.5, as likely as not: a doubt never outweighs what a group's own runs
    #: showed. 0: off.
    update_doubt: float = 0.5
    #: a group's first run found to have been a transient (its next run much faster: the doubt
    #: of ``spike_rate``) casts that doubt on what the backend's other groups learned from runs
    #: made within this many observations of it, while they have run at most ``transient_runs``
    #: times: a burst of contention slows every kernel that runs through it, and a group whose
    #: level came from inside the burst alone would otherwise keep it while the backend's
    #: state, which no change detected, is believed unchanged. Their doubt is then 0.5 that
    #: they are as much faster as the transient made that first run slower, so the exploration
    #: rule checks them once more (``recheck_allowance``), and their next run settles it. 0:
    #: off. (The world's GPU contention with telemetry, ``bench_telemetry.py`` seed 0: 0.108 to
    #: 0.029, the GPU's FP16 decode qkv, run once inside a burst, no longer believed 3x slower
    #: for the rest of the run; nothing else in its 140 cells moved. The learning benchmark,
    #: seeds 0-9, 10-19 and ``--workload decode`` 0-9: 0, 4 and 4 of 430 cells moved, -0.0000
    #: on the whole each time, seven of the eight where spikes or heavy noise set it off. A
    #: transient also taken as found where a group's first run after its first runs' window is
    #: more than 2 standard deviations faster than predicted, and the doubts a transient casts
    #: priced as a first check: seeds 0-9 +0.0001, 10-19 -0.0001 (se 0.0001), single cells by
    #: -0.034 to +0.019. Not kept.)
    transient_window: int = 256
    #: ... groups run more often than this keep what they learned: a level that many runs
    #: agreed on is not doubted for another group's transient (see ``transient_window``)
    transient_runs: int = 3
    #: how a backend's latency follows its clock read from telemetry: latency ~ (max/cur)^beta,
    #: beta starting here (1: run time proportional to the clock period) ...
    clock_elasticity: float = 1.0
    #: ... within this prior standard deviation, then learned per backend ...
    clock_elasticity_sd: float = 0.5
    #: ... and each stage's gap to the backend's, shared by the stage's kernel groups, within this
    #: prior standard deviation (attention, memory-bound, follows the core clock less than a GEMM)
    clock_elasticity_spread: float = 0.3
    #: a backend's clock ratio must move by this (log units) for its estimates to be recomputed
    clock_tolerance: float = 0.02
    #: variance a backend's device term gains per degree C it cooled while unused, where its clock
    #: is not read (a board without devfreq for it): heat slows a backend through governor trips
    #: a few tens of degrees apart, by about 1.5x over the 20 C they span (0.16 / 20) ...
    temperature_var: float = 0.008
    #: ... beyond this (C) below its temperature when it last ran: a sensor's jitter
    temperature_deadband: float = 1.0
    #: how a backend's latency follows others' load on it, read from telemetry while it goes
    #: unused: latency ~ (1 / (1 - load))^beta, beta starting here (1: its time shared with the
    #: others'), then learned per backend from the first run after each move ...
    load_elasticity: float = 1.0
    #: ... its level moved by ``x`` (log units) since it last ran, its variance is
    #: ``load_var * x**2`` more, so the backend is checked soon after ...
    load_var: float = 0.25
    #: ... once ``log(1 - load)`` moved by this since the last move (a load's jitter: 0.65 +- 0.07)
    load_tolerance: float = 0.2
    #: variance the device term is re-opened to when a change is seen to revert (the level
    #: before the change is known, to about what the change's size was measured to)
    revert_var: float = 0.02
    #: ADWIN's confidence and how often (observations) it checks for a change
    adwin_delta: float = 0.002
    adwin_clock: int = 8
    #: learn the per-(stage, backend) regressions; off leaves the device term and buckets only
    regression: bool = True
    #: bucket effects kept at most (a stream of distinct shapes cannot grow memory)
    max_buckets: int = 20_000

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first parameter out of range."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} must be a finite number >= 0, got {value!r}")
        for name in (
            "clip", "noise_var", "min_noise_var", "adwin_delta", "noise_rate", "max_buckets", "adwin_clock",
            "volatility_horizon", "confirm_slower", "confirm_faster", "temperature_deadband",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.noise_rate > 1 or self.adwin_delta >= 1:
            raise ValueError("noise_rate must be <= 1 and adwin_delta < 1")
        if self.update_doubt > 0.5:
            raise ValueError(f"update_doubt must be <= 0.5, got {self.update_doubt!r}")
        if not 0 < self.false_change_rate < 1:
            raise ValueError(f"false_change_rate must be in (0, 1), got {self.false_change_rate!r}")
        if not 0 < self.min_spike_rate <= self.spike_rate < 0.5:
            raise ValueError("spike rates must satisfy 0 < min_spike_rate <= spike_rate < 0.5")
