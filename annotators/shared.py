"""One loaded network per (weights, device), shared by the annotators that run the same weights.

hed, hed_safe and fake_scribble run the same HED network; depth_midas and normal_midas the same
DPT model. Their loaders go through `shared(key, load)`: while a detector still holds the network
loaded under `key`, the next load returns that very object instead of reading the weights again.
Only weak references are kept here, so once the engine's cache drops the last detector holding a
network, the network is freed (at once, or at the engine's `gc.collect()` where the network has
reference cycles). Loads of one key are serialised (two threads never load the same weights
twice); loads of different keys run in parallel.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import TypeVar

Network = TypeVar("Network")

_lock = threading.Lock()  # guards the two dicts below
_networks: weakref.WeakValueDictionary[Hashable, object] = weakref.WeakValueDictionary()
# One lock per key, held while that key loads; kept (a few per weights file and device).
_key_locks: dict[Hashable, threading.Lock] = {}


def shared(key: Hashable, load: Callable[[], Network]) -> Network:
    """The network loaded under `key` while something still holds it, else `load()`'s.

    `key` names the weights and the device, e.g. `("hed", path, "cuda")`; `load()` must return a
    weak-referenceable object (a torch module, a function). A failed load raises and leaves
    nothing behind, so the next call tries again.
    """
    with _lock:
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _lock:
            network = _networks.get(key)
        if network is None:
            network = load()
            with _lock:
                _networks[key] = network
        return network
