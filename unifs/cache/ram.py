"""RAM tier: a thread-safe, byte-bounded LRU of immutable blocks."""

from __future__ import annotations

import threading
from typing import List, Optional, Tuple

from unifs.cache.buffers import frozen
from unifs.cache.ids import BlockId
from unifs.cache.lru import LruIndex


class RamTier:
    """Holds at most `limit_bytes` of block data at every moment, counting the blocks being
    fetched into it (`reserve`): their buffers fill while the GETs run, up to one block per
    fetch thread (16 x 4 MiB by default), and that memory is as real as the cached blocks'.

    Values are immutable buffers (bytes, obstore.Bytes), so a block handed to one reader can be
    handed to the next without copying and nobody can change it under the cache.
    """

    def __init__(self, limit_bytes: int):
        if limit_bytes < 0:
            raise ValueError(f"limit_bytes must not be negative, got {limit_bytes}")
        self.limit = limit_bytes
        self._lock = threading.Lock()
        self._index: LruIndex[bytes] = LruIndex()
        self._reserved = 0
        self._hits = self._misses = self._evictions = 0

    def get(self, bid: BlockId) -> Optional[bytes]:
        with self._lock:
            data = self._index.get(bid)
            if data is None:
                self._misses += 1
            else:
                self._hits += 1
            return data

    def holds(self, bid: BlockId) -> bool:
        """Whether the block is here, without counting a hit or making it recently used."""
        with self._lock:
            return bid in self._index

    def peek(self, bid: BlockId) -> Optional[bytes]:
        """Like `get` without counting a hit or miss: for a second look at the same request."""
        with self._lock:
            return self._index.get(bid)

    def put(self, bid: BlockId, data: bytes) -> List[Tuple[BlockId, bytes]]:
        """Keep `data` as the most recently used block; return the blocks evicted for it.

        A block larger than the whole limit is not kept (and evicts nothing).
        """
        data = frozen(data)  # a bytearray or writable memoryview could change later
        size = len(data)
        evicted: List[Tuple[BlockId, bytes]] = []
        with self._lock:
            if size > self.limit:
                return evicted
            if self._index.get(bid) is not None:
                return evicted  # same id, same immutable content: just refreshed
            evicted = self._evict_to(self.limit - self._reserved - size)
            if self._index.bytes + size + self._reserved > self.limit:
                return evicted  # fetches in flight hold the whole tier: not kept
            self._index.add(bid, data, size)
        return evicted

    def reserve(self, n: int) -> int:
        """Make room for a block of `n` bytes about to be fetched; returns what to `release`
        once the fetch is over (then `put` the block)."""
        if n > self.limit:
            return 0
        with self._lock:
            self._reserved += n
            self._evict_to(self.limit - self._reserved)
        return n

    def release(self, n: int) -> None:
        with self._lock:
            self._reserved -= n

    def _evict_to(self, target: int) -> List[Tuple[BlockId, bytes]]:
        evicted = []
        while self._index.bytes > max(target, 0):
            old_bid, old_data, _ = self._index.pop_lru()
            evicted.append((old_bid, old_data))
        self._evictions += len(evicted)
        return evicted

    def drop_object(self, store: str, key: str, keep_version: Optional[str] = None) -> int:
        """Forget every block of (store, key) except those of `keep_version`; return how many."""
        with self._lock:
            doomed = self._index.object_blocks(store, key, keep_version)
            for bid in doomed:
                self._index.remove(bid)
        return len(doomed)

    def clear(self, store: Optional[str] = None, key_prefix: Optional[str] = None) -> int:
        """Forget blocks in `store` (None: all stores) under `key_prefix`; return how many."""
        with self._lock:
            doomed = self._index.matching(store, key_prefix)
            for bid in doomed:
                self._index.remove(bid)
        return len(doomed)

    def stats(self) -> dict:
        with self._lock:
            return {"bytes": self._index.bytes, "blocks": len(self._index), "limit": self.limit,
                    "fetching": self._reserved,
                    "hits": self._hits, "misses": self._misses, "evictions": self._evictions,
                    "corrupt": 0}
