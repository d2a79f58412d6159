"""The pool of device scratch buffers: one per role, grown when needed, reused across runs."""

from __future__ import annotations

from typing import Any

from ...errors import ExecutorError
from .device import Device, short_error

#: buffers are allocated in multiples of this many bytes
GRANULE = 4096


def round_up(a: int, b: int) -> int:
    """``a`` rounded up to a multiple of ``b``."""
    return -(-a // b) * b


class BufferPool:
    """Scratch buffers by role (``"x"``, ``"out"``, ``"attn.partial"``...); not locked: the executor is.

    Parameters
    ----------
    owner
        Names the executor in error messages.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.allocs = 0
        self._pool: dict[str, tuple[Any, int]] = {}

    def get(self, dev: Device, role: str, nbytes: int) -> Any:
        """A device buffer of at least ``nbytes`` for ``role``, reused across runs and shapes."""
        nbytes = max(int(nbytes), 4)
        current = self._pool.get(role)
        if current is not None and current[1] >= nbytes:
            return current[0]
        size = round_up(nbytes, GRANULE)
        if current is not None:
            current[0].release()
            # A decode step's KV cache is one token longer than the last one: growing by half at
            # least reallocates a few times per sequence, not every few tokens (and every
            # reallocation makes a cold run the scheduler does not learn from).
            size = max(size, round_up(current[1] + current[1] // 2, GRANULE))
        try:
            buf = dev.cl.Buffer(dev.context, dev.cl.mem_flags.READ_WRITE, size)
        except Exception as exc:
            self._pool.pop(role, None)  # released above (if it existed): never hand it out again
            raise ExecutorError(f"{self.owner}: cannot allocate {size} bytes for {role!r}: {short_error(exc)}") from exc
        self._pool[role] = (buf, size)
        self.allocs += 1
        return buf

    def __len__(self) -> int:
        return len(self._pool)

    @property
    def nbytes(self) -> int:
        """Bytes held on the device."""
        return sum(n for _, n in self._pool.values())

    def clear(self) -> None:
        """Release every buffer."""
        for buf, _ in self._pool.values():
            buf.release()
        self._pool.clear()
