"""A per-process cache of loaded objects: a Dask worker (or a sampling loop) loads a model once.

Keyed by what identifies the content (a model directory and its model.json), so a model
rewritten in place is loaded afresh. It holds one entry by default: a worker serves one model
at a time, and models can be large.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class ProcessCache(Generic[T]):
    """The newest `size` values by key; `get` loads on a miss and evicts the oldest."""

    def __init__(self, size: int = 1) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, T] = OrderedDict()

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = load()
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()
