"""Exceptions raised by adaptive_sched.

Every error the library raises on purpose derives from :class:`AdaptiveSchedError`,
so a service can catch the whole family in one ``except`` clause.
"""

from __future__ import annotations


class AdaptiveSchedError(Exception):
    """Base class of every error raised by adaptive_sched."""


class ConfigError(AdaptiveSchedError, ValueError):
    """A configuration file or mapping is invalid: one line per problem found, each naming the
    file and the key (``file: key: message``).

    A validator reports every problem of a document at once: ``errors`` lists them, and
    ``str(exc)`` joins them one per line.

    >>> exc = ConfigError("c.yaml: store.on_full: expected 'drop' or 'block'", "c.yaml: seed: expected an integer")
    >>> len(exc.errors), str(exc).splitlines()[1]
    (2, 'c.yaml: seed: expected an integer')
    """

    def __init__(self, *errors: str) -> None:
        super().__init__(*errors)  # the lines are the args, so a pickled error keeps them all

    @property
    def errors(self) -> list[str]:
        """Every problem found, one line each."""
        return [str(line) for line in self.args]

    def __str__(self) -> str:
        return "\n".join(self.errors)


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
