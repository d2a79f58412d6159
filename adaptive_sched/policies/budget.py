"""The exploration budget: how much latency exploration may cost, and when it may cost more.

:class:`ExplorationBudget` keeps a decayed account of total latency and of what probes
cost beyond the exploit choice (measured, not predicted: a probe of a backend the prior
wrongly called slow costs nothing, so a wrong prior is checked again soon). While the
spend is over ``share`` of the total, exploration probabilities are scaled down to a
trickle (``floor``), so stale estimates are still probed now and then.

:class:`AlarmWindows` lifts the budget after a detected slowdown of a backend until every
other usable backend has been observed ``probes`` times since at every stage (re-measured,
the choice needs no more probes), or ``max_observations`` have passed. At every stage: a
change one stage saw (GPU attention slowed) may make another backend win at either stage,
and attention's runs on the NPU say nothing of a change to the NPU's qkv that nobody has
measured (a firmware update that sped it up).

>>> b = ExplorationBudget(share=0.01)
>>> for _ in range(100):
...     b.charge(latency_s=1e-3, extra_s=0.0)
>>> b.scale()
1.0
>>> b.charge(latency_s=5e-3, extra_s=4e-3)   # one probe cost 4 ms more than the exploit choice
>>> b.scale() < 1.0
True
"""

from __future__ import annotations

from collections.abc import Iterable

from ..types import Backend, Stage


class ExplorationBudget:
    """A decayed ratio of exploration spend to total latency, and the throttle it implies."""

    __slots__ = ("_decay", "count", "floor", "share", "spent", "total")

    def __init__(self, share: float, floor: float = 0.02, horizon: int = 2000) -> None:
        self.share = share
        self.floor = floor
        self._decay = 1.0 - 1.0 / horizon
        self.spent = 0.0
        self.total = 0.0
        self.count = 0.0

    def charge(self, latency_s: float, extra_s: float) -> None:
        """Account one observed stage: its latency, and what it cost beyond the exploit choice."""
        decay = self._decay
        self.total = self.total * decay + latency_s
        self.spent = self.spent * decay + extra_s
        self.count = self.count * decay + 1.0

    def allowance(self) -> float:
        """Seconds of exploration one decision may cost on average: ``share`` of a recent mean stage.

        Of a typical stage, not of the decision's own: a probe of a prefill 30 times dearer than
        a decode step is tried 30 times more rarely. Only a group's first check is priced at its
        own stage (see ``AdaptiveParams.first_check_allowance``): made once, it serves every
        decision of the group, and on devices the prior misjudges most (``gpu-heavy`` and
        ``int8-gpu`` in ``benchmarks/worlds.py``, whose INT8 prefills it believes 10 to 25 times
        dearer on the GPU than they are) a check priced at a typical stage came several
        requests' prefills late: adaptive/oracle 1.049 and 1.121 there over 10 seeds, against
        1.028 and 1.041 priced at their own (more where the choice's kernels run slower than
        their prior said), for +0.0023 where the prior is right, +0.0019 on the NPU-heavy world
        (where the GPU's prefills are checked, and lose) and -0.0006 on the soc world. Priced at
        1.5 times that, it finds no more; at twice the stage's own cost, without the choice's
        slowness, less (+0.0031 over the worlds); pricing the recheck of a doubted first run at
        its own cost as well spends more than it finds (+0.0018). By the square of the choice's
        slowness rather than the slowness itself: int8-gpu 1.0409 to 1.0324 (paired -0.0085, se
        0.0020; worst 1.129 to 1.102), gpu-heavy -0.0007, soc +0.0007, the NPU-heavy and prior's
        worlds unchanged (every cell identical).

        Nor is a dear probe made outside the budget where what it may save over the decisions of
        its group to come (the expected improvement, at the group's recent rate of use)
        outweighs what it is expected to cost: over 120 seeds of four scenarios it cut the soc
        world's worst cells (periodic GPU contention 1.176 to 1.099, spikes 1.127 to 1.075) but
        probed the NPU-heavy world's GPU prefills at shapes not yet seen, where extrapolation
        leaves the estimate wide (mean +0.007 to +0.014 there); kept to probes dearer than the
        budget could ever afford, it found no more than it spent (mean +0.0008).

        Nor, conversely, is a first check withheld where the model says it cannot pay for itself
        (the chance that the alternative is faster, times all of the choice's own time, over the
        group's next 3000 decisions, against one probe's expected cost): over 10 seeds of the
        worlds it changed nothing (1.0216 to 1.0217), and it spared the simulator's periodic
        throttling with telemetry its rare 70x-dear prefill probes (regret 0.0057 to 0.0049 over
        20 seeds), but where a GPU contended at the start had its groups measured slow, the very
        checks that would have undone that were withheld (``bench_telemetry.py``'s
        gpu-contention seed 15: 1.058 to 1.131): the chance it weighs is the model's, and is
        wrongest where a check is most needed. Capping first checks at 0.5 per decision instead
        of ``explore_cap``: -0.0020 on gpu-heavy, -0.0016 on int8-gpu, +0.0026 on the soc world.
        Nor is a first check priced at the mean stage its group has cost so far rather than at its
        own, so that it is made at a short prompt of a narrow model more often than at a long one
        of a wide model (it informs the group alike): paired over seeds 0-9 (``python
        benchmarks/compare_runs.py``), +0.0001 (se 0.0002), the prior's world -0.0007 (its checks,
        all lost, cheaper), int8-gpu +0.0009; the checks so spared afforded twice and four times
        ``first_check_allowance`` with it: +0.0009 and +0.0012 (se 0.0005), soc +0.0035 and +0.0042.
        Nor does probing whatever the model believes pay: a floor under every alternative's
        probability within the budget, a quarter of the allowance per decision, cost the worlds
        +0.0015, and the world's GPU contention in ``bench_telemetry.py`` without telemetry 0.030
        to 0.033 (20 seeds).
        """
        return self.share * self.typical()

    def typical(self) -> float:
        """A recent mean stage latency (seconds; 0 before any)."""
        return self.total / self.count if self.count else 0.0

    def scale(self) -> float:
        """1 within budget, ``floor`` over it (0 with a zero budget)."""
        if self.share <= 0.0:
            return 0.0
        return 1.0 if self.spent <= self.share * self.total else self.floor

    def share_spent(self) -> float:
        return self.spent / self.total if self.total > 0 else 0.0


class AlarmWindows:
    """Backends whose detected change lifts the budget, until everything is re-measured."""

    __slots__ = ("_open", "max_observations", "probes")

    def __init__(self, probes: int = 8, max_observations: int = 400) -> None:
        self.probes = probes
        self.max_observations = max_observations
        # alarmed backend -> (clock it closes at, observations since of each (stage, backend) to re-measure)
        self._open: dict[Backend, tuple[int, dict[tuple[Stage, Backend], int]]] = {}

    def open(self, backend: Backend, clock: int, usable: Iterable[tuple[Stage, Backend]]) -> None:
        """Lift the budget for ``backend`` until each of the ``usable`` (stage, backend) pairs is re-measured."""
        self._open[backend] = (clock + self.max_observations, dict.fromkeys(usable, 0))

    def lifted(self, backend: Backend, clock: int) -> bool:
        """Whether probes involving ``backend`` are outside the budget now."""
        window = self._open.get(backend)
        return window is not None and clock <= window[0]

    def count(self, stage: Stage, observed: Backend, clock: int) -> bool:
        """Count an observation of ``stage`` on ``observed`` against open windows; True if one closed."""
        closed = False
        key = (stage, observed)
        for alarmed, (until, seen) in list(self._open.items()):
            if clock > until:
                del self._open[alarmed]
                closed = True
                continue
            if key in seen:
                seen[key] += 1
            if min(seen.values(), default=self.probes) >= self.probes:
                del self._open[alarmed]
                closed = True
        return closed

    def open_for(self) -> list[Backend]:
        """The backends whose windows are open."""
        return sorted(self._open, key=lambda b: b.value)

    def __bool__(self) -> bool:
        return bool(self._open)
