"""The bookkeeping both tiers share: a byte-counted LRU map of blocks, findable by object.

Not thread-safe on purpose: each tier holds its own lock around a few calls into this and
does its I/O outside that lock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Generic, List, Optional, Set, Tuple, TypeVar

from unifs.cache.ids import BlockId

V = TypeVar("V")


class LruIndex(Generic[V]):
    def __init__(self):
        self._entries: "OrderedDict[BlockId, Tuple[V, int]]" = OrderedDict()  # LRU first
        # (store, key) -> its blocks, so dropping one object's old versions does not scan
        # every cached block.
        self._by_object: Dict[Tuple[str, str], Set[BlockId]] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, bid: BlockId) -> bool:
        return bid in self._entries

    def get(self, bid: BlockId) -> Optional[V]:
        """The value, now most recently used; None if absent."""
        entry = self._entries.get(bid)
        if entry is None:
            return None
        self._entries.move_to_end(bid)
        return entry[0]

    def peek(self, bid: BlockId) -> Optional[V]:
        """The value without making it more recently used; None if absent."""
        entry = self._entries.get(bid)
        return None if entry is None else entry[0]

    def add(self, bid: BlockId, value: V, size: int) -> None:
        """Insert as most recently used (the caller made room first)."""
        self.remove(bid)
        self._entries[bid] = (value, size)
        self._by_object.setdefault((bid[0].store, bid[0].key), set()).add(bid)
        self.bytes += size

    def remove(self, bid: BlockId) -> Optional[Tuple[V, int]]:
        entry = self._entries.pop(bid, None)
        if entry is not None:
            self.bytes -= entry[1]
            name = (bid[0].store, bid[0].key)
            blocks = self._by_object[name]
            blocks.discard(bid)
            if not blocks:
                del self._by_object[name]
        return entry

    def pop_lru(self) -> Tuple[BlockId, V, int]:
        """Remove and return the least recently used block; KeyError if empty."""
        bid = next(iter(self._entries))
        value, size = self.remove(bid)
        return bid, value, size

    def object_blocks(self, store: str, key: str, keep_version: Optional[str]) -> List[BlockId]:
        """Blocks of (store, key) whose version is not `keep_version`."""
        return [bid for bid in self._by_object.get((store, key), ())
                if bid[0].version != keep_version]

    def matching(self, store: Optional[str], key_prefix: Optional[str]) -> List[BlockId]:
        """Blocks in `store` (None: any) whose key starts with `key_prefix` (None: any)."""
        return [bid for (s, k), blocks in self._by_object.items()
                if (store is None or s == store) and (key_prefix is None or k.startswith(key_prefix))
                for bid in blocks]
