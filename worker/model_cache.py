"""Warm models between jobs: an LRU bounded by parameter bytes (or by one model per kind)."""
from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

log = logging.getLogger("visionjobs.worker")


def model_bytes(model: Any) -> int:
    """Parameter and buffer bytes of a diffusers pipeline or torch module (0 when unknown)."""
    modules = getattr(model, "components", None)
    modules = modules.values() if isinstance(modules, dict) else [model]
    total = 0
    for module in modules:
        for tensors in (getattr(module, "parameters", None), getattr(module, "buffers", None)):
            if callable(tensors):
                total += sum(t.numel() * t.element_size() for t in tensors())
    return total


def release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


class ModelCache:
    def __init__(self, max_bytes: int = 0):
        self.max_bytes = max_bytes  # 0: keep at most one model per kind
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, key: Hashable, loader: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
            model = loader()
            self.loads += 1
            self._items[key] = (model, model_bytes(model))
            self._evict(keep=key)
            return model

    def _evict(self, keep: Hashable) -> None:
        kind = keep[0] if isinstance(keep, tuple) else keep
        if self.max_bytes:
            victims = []
            total = sum(size for _, size in self._items.values())
            for key, (_, size) in self._items.items():  # oldest first
                if total <= self.max_bytes:
                    break
                if key != keep:
                    victims.append(key)
                    total -= size
        else:
            victims = [k for k in self._items if k != keep and (k[0] if isinstance(k, tuple) else k) == kind]
        for key in victims:
            log.info("evicting model %s from the warm cache", key)
            del self._items[key]
        if victims:
            release_memory()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
        release_memory()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items
