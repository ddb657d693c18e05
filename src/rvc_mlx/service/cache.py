"""A bounded cache of loaded networks, so that a server or a batch does not reload models for every request.

Entries are the loaded Synthesizer / HuBERT / index objects, keyed by file identity (path, size, mtime), so one
HuBERT is shared by every voice that uses it and a replaced file is loaded afresh. The cache is LRU, bounded by the
number of entries and by their bytes (the model files' sizes, a close measure of their memory).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from .models import ModelPaths

DEFAULT_MAX_ITEMS = 6
DEFAULT_MAX_BYTES = 3 << 30


class LruCache:
    """``get(key, load, nbytes)``: the cached value, or ``load()`` stored under ``key``; least recently used
    entries are evicted while more than ``max_items`` entries or ``max_bytes`` bytes are held (the newest entry
    always stays, even when it alone is larger)."""

    def __init__(self, max_items: int = DEFAULT_MAX_ITEMS, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_items < 1 or max_bytes < 1:
            raise ValueError("cache limits must be positive")
        self.max_items, self.max_bytes = max_items, max_bytes
        self._entries: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def get(self, key, load: Callable[[], Any], nbytes: int) -> Any:
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key][0]
        self.misses += 1
        value = load()
        self._entries[key] = (value, int(nbytes))
        while len(self._entries) > 1 and (len(self._entries) > self.max_items or self.nbytes > self.max_bytes):
            self._entries.popitem(last=False)
            self.evictions += 1
        return value

    def clear(self) -> None:
        self._entries.clear()

    def stats(self) -> dict:
        return {"entries": len(self), "bytes": self.nbytes, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions, "max_items": self.max_items, "max_bytes": self.max_bytes}


def file_key(kind: str, path: str | os.PathLike) -> tuple:
    st = Path(path).stat()
    return (kind, str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


class ConverterCache:
    """Builds ``VoiceConverter``s from cached networks (``converter(paths)``)."""

    def __init__(self, max_items: int = DEFAULT_MAX_ITEMS, max_bytes: int = DEFAULT_MAX_BYTES):
        self.lru = LruCache(max_items, max_bytes)

    def _get(self, kind: str, path: str, load):
        return self.lru.get(file_key(kind, path), lambda: load(path), Path(path).stat().st_size)

    def converter(self, paths: ModelPaths):
        from ..models.hubert import Hubert
        from ..models.synthesizer import Synthesizer
        from ..pipeline import VoiceConverter
        from ..retrieval import FeatureIndex

        synth = self._get("voice", paths.voice, Synthesizer.load)
        hubert = self._get("hubert", paths.hubert, Hubert.load)
        index = self._get("index", paths.index, FeatureIndex.load) if paths.index else None
        return VoiceConverter(synth, hubert, index, paths.f0_models())
