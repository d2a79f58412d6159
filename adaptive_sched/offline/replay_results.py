"""What a replay finds: estimates with their intervals, support, views, and the whole result.

Plain frozen records, filled by :func:`adaptive_sched.offline.replay.evaluate` and read by
the command line, the JSON output and the plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from .estimators import HEADLINE


@dataclass(frozen=True)
class Interval:
    """A bootstrap 95% percentile interval (seconds)."""

    low: float = math.nan
    high: float = math.nan

    def union(self, other: Interval) -> Interval:
        return Interval(min(self.low, other.low), max(self.high, other.high))


@dataclass(frozen=True)
class CandidateEstimate:
    """One estimator's estimate of a candidate's mean latency in one view, and its difference to the logged policy.

    ``value`` is seconds per decision (stage views) or per layer (the pair view); ``diff``
    is ``value`` minus the logged policy's observed mean on the same rows (negative: the
    candidate is faster). ``row`` and ``block`` are the row-level and block bootstrap intervals.
    """

    estimator: str
    value: float
    row: Interval
    block: Interval
    diff: float
    diff_row: Interval
    diff_block: Interval
    #: why there is no estimate ("" when there is one)
    unavailable: str = ""


@dataclass(frozen=True)
class BucketSupport:
    """How much of the candidate's probability, in one stage and shape bucket, falls where the log has little."""

    stage: str
    bucket: str
    rows: int
    #: mean share of the candidate's mass on backends tried fewer than ``min_rows`` times there
    unsupported_share: float


@dataclass(frozen=True)
class Support:
    """How well the log covers a candidate in one view."""

    rows: int
    ess: float
    max_weight: float
    #: share of the candidate's probability on backends tried fewer than ``min_rows`` times (in bucket, after)
    unsupported_share: float
    #: share of it on backends never tried there
    untried_share: float
    supported: bool
    reasons: tuple[str, ...] = ()
    buckets: tuple[BucketSupport, ...] = ()


@dataclass(frozen=True)
class View:
    """A candidate's estimates in one view (``pair``, ``qkv`` or ``attn``)."""

    name: str
    estimates: Mapping[str, CandidateEstimate]
    support: Support


@dataclass(frozen=True)
class CandidateResult:
    """A candidate's views (``pair``, ``qkv``, ``attn``) and its verdict."""

    name: str
    source: str
    views: Mapping[str, View]
    #: the view and estimator the verdict comes from
    headline_view: str
    verdict: str

    @property
    def headline(self) -> CandidateEstimate:
        return self.views[self.headline_view].estimates[HEADLINE]

    @property
    def supported(self) -> bool:
        return self.views[self.headline_view].support.supported


@dataclass(frozen=True)
class Observed:
    """The logged policy's observed mean in one view, with its intervals (seconds)."""

    value: float
    row: Interval
    block: Interval
    rows: int
    #: the logging policy's own estimates (stage views, from its logged probability vectors)
    estimates: Mapping[str, CandidateEstimate] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """What a replay was asked to do (defaults suit logs of a few thousand rows and more)."""

    #: a backend tried fewer times than this in a bucket (after a previous backend) counts as unsupported there
    min_rows: int = 5
    #: largest share of the candidate's mass on backends the log tried fewer than ``min_rows`` times
    max_unsupported: float = 0.05
    #: largest share of the candidate's mass on backends the log never tried (in that bucket, after that backend)
    max_untried: float = 0.01
    #: smallest effective sample size of a supported estimate
    min_ess: float = 30.0
    #: bootstrap replicates
    bootstrap: int = 200
    #: contiguous blocks of the log for the block bootstrap
    blocks: int = 100
    #: above this many rows the row bootstrap resamples this many random groups of rows
    max_groups: int = 5_000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("min_rows", "bootstrap", "blocks", "max_groups"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_unsupported", "max_untried"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.min_ess >= 0:
            raise ValueError(f"min_ess must be >= 0, got {self.min_ess!r}")


@dataclass(frozen=True)
class ReplayResult:
    """Everything a replay found: the logs, the logging policy's observed means, each candidate."""

    sources: tuple[str, ...]
    device: str | None
    rows: int
    pairs: int
    #: rows of a stage that could not be matched with the other stage of their layer
    unpaired: int
    has_probabilities: bool
    logged: Mapping[str, Observed]
    candidates: tuple[CandidateResult, ...]
    notes: tuple[str, ...]
    settings: Settings
