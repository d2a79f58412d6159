"""A dict that keeps at most ``limit`` items: caches that no stream of new keys can grow.

Past the limit, each insert forgets the oldest item (insertion order), so the cost of
staying bounded is one deletion per insert, never a pause to clear a large cache. Safe to
share between threads as a cache: each operation is one dict operation under the GIL.

It is an ``OrderedDict`` because forgetting the oldest item of a plain ``dict``
(``del d[next(iter(d))]``) scans the deleted slots left at its front: 2 us an insert at
8192 items, against 0.3 us for ``popitem(last=False)``. Reads cost the same.

>>> c = BoundedDict(2)
>>> c["a"], c["b"], c["c"] = 1, 2, 3
>>> list(c)
['b', 'c']
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(OrderedDict[K, V]):
    """``OrderedDict`` with a size limit; reads are plain dict reads."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        if len(self) >= self.limit and key not in self:
            # another thread may have emptied it meanwhile: it stays bounded all the same
            with contextlib.suppress(KeyError):
                self.popitem(last=False)
        super().__setitem__(key, value)

    def setdefault(self, key: K, default: V) -> V:
        if key not in self:
            self[key] = default
        return self[key]
