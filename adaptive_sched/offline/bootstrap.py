"""Bootstrap resampling for replay's 95% intervals: rows (in groups, for large logs) and contiguous blocks."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from .replay_results import Interval, Settings


class Resampler:
    """Bootstrap replicates of ratios of column sums, the same resamples for every candidate of a view.

    Rows are resampled, and (the block bootstrap) contiguous blocks of rows in log order,
    which keeps drift and the correlation of neighbouring decisions inside each replicate.
    Past ``max_groups`` rows, rows are first summed into that many groups of randomly
    assigned rows and the groups resampled: a sum of randomly assigned rows has the
    variance of the same number of resampled rows, at a fraction of the cost. Resamples
    depend only on the number of rows and the seed, so candidates evaluated on the same
    rows are compared on the same resamples (a paired bootstrap).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._plans: dict[tuple[int, bool], tuple[np.ndarray | None, np.ndarray]] = {}

    def _plan(self, n: int, blocks: bool) -> tuple[np.ndarray | None, np.ndarray]:
        """(each row's group, or None for rows themselves, or each block's first row; resample counts).

        The counts are replicate x group: how often each group is drawn in each replicate.
        """
        plan = self._plans.get((n, blocks))
        if plan is None:
            st = self.settings
            rng = np.random.default_rng([st.seed, n, int(blocks)])
            group: np.ndarray | None
            if blocks:
                g = min(st.blocks, n)
                group = np.flatnonzero(np.diff((np.arange(n) * g) // n, prepend=-1))  # block starts
            elif n > st.max_groups:
                g = st.max_groups
                group = rng.integers(0, g, size=n)
            else:
                g, group = n, None
            draws = rng.integers(0, g, size=(st.bootstrap, g))
            offsets = (np.arange(st.bootstrap) * g)[:, None]
            counts = np.bincount((draws + offsets).ravel(), minlength=st.bootstrap * g).reshape(st.bootstrap, g)
            plan = self._plans[(n, blocks)] = (group, counts.astype(np.float64))
        return plan

    def replicates(
        self, columns: Iterable[np.ndarray], n: int, ratios: Sequence[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Column sums, and (row, block) bootstrap replicates (B x ratios) of the ``ratios`` of columns.

        ``columns`` (each of ``n`` rows) are consumed one at a time: only their group sums are
        kept. ``ratios`` are (numerator, denominator) column indices.
        """
        plans = [self._plan(n, blocks) for blocks in (False, True)]
        full: list[float] = []
        sums: list[list[np.ndarray]] = [[], []]
        for col in columns:
            bad = bool(np.isnan(col).any())
            if bad:
                col = np.nan_to_num(col, nan=0.0)
            full.append(math.nan if bad else float(col.sum()))
            for i, (group, counts) in enumerate(plans):
                g = counts.shape[1]
                if group is None:
                    s = col
                elif i == 1:
                    s = np.add.reduceat(col, group)
                else:
                    s = np.bincount(group, weights=col, minlength=g)
                sums[i].append(np.full(g, np.nan) if bad else s)
        out = []
        for (_, counts), per_group in zip(plans, sums, strict=True):
            totals = counts @ np.stack(per_group, axis=1)
            num, den = (list(x) for x in zip(*ratios, strict=True))
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(np.asarray(totals[:, num] / totals[:, den]))
        return np.array(full), out[0], out[1]


def interval(samples: np.ndarray) -> Interval:
    finite = samples[np.isfinite(samples)]
    if len(finite) < len(samples) or len(finite) == 0:
        return Interval()
    low, high = np.percentile(finite, [2.5, 97.5])
    return Interval(float(low), float(high))
