"""A small least-recently-used cache for loaded models, freeing memory when it evicts."""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)
Value = TypeVar("Value")


class ModelCache(Generic[Value]):
    """Keeps at most `capacity` models; the least recently used one is dropped and memory freed.

    Not thread-safe by itself: the engine calls it under its lock.
    """

    def __init__(self, capacity: int, free_memory: Callable[[], None] = gc.collect):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._free_memory = free_memory
        self._items: OrderedDict[str, Value] = OrderedDict()

    def get_or_load(self, key: str, load: Callable[[], Value]) -> Value:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = load()  # load first: a failed load must not evict a working model
        while len(self._items) >= self.capacity:
            evicted = next(iter(self._items))
            del self._items[evicted]  # drop the last reference before freeing memory
            logger.info("Evicted %s from the model cache", evicted)
            self._free_memory()
        self._items[key] = value
        return value

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def keys(self) -> list[str]:
        return list(self._items)

    def values(self) -> list[Value]:
        return list(self._items.values())

    def clear(self) -> None:
        """Drop every model and free their memory."""
        if self._items:
            self._items.clear()
            self._free_memory()
