"""Exceptions raised by adaptive_sched.

Every error the library raises on purpose derives from :class:`AdaptiveSchedError`,
so a service can catch the whole family in one ``except`` clause.
"""

from __future__ import annotations


class AdaptiveSchedError(Exception):
    """Base class of every error raised by adaptive_sched."""


class ConfigError(AdaptiveSchedError, ValueError):
    """A configuration file or mapping is invalid (the message names the key and the file)."""


class UnsupportedShape(AdaptiveSchedError, ValueError):
    """An executor cannot run this stage at this shape or precision."""


class ExecutorUnavailable(AdaptiveSchedError, RuntimeError):
    """An executor's hardware, driver or package is missing on this machine."""


class ExecutorError(AdaptiveSchedError, RuntimeError):
    """An executor failed while preparing or running a stage."""


class StoreError(AdaptiveSchedError, RuntimeError):
    """The SQLite log cannot be opened, read or written."""


class PriorError(AdaptiveSchedError, ValueError):
    """An offline prior is missing, corrupt, or was built for another device."""


class SchedulerClosed(AdaptiveSchedError, RuntimeError):
    """A scheduler was used after :meth:`~adaptive_sched.Scheduler.close`."""


class ObservationRefused(AdaptiveSchedError, ValueError):
    """An observation was refused (counted, never learned): a decision observed twice, a decision
    of another scheduler, or a latency beyond ``policy.max_latency_s``."""
