"""BlockCache: fixed-size blocks of object versions from RAM, then disk, then the store.

Modes (the cache's default, or per call, because each mount chooses its own):

    none    every block is a ranged GET; nothing is kept
    ram     RAM tier only; no file is ever written
    disk    disk tier only
    tiered  RAM in front of disk

Concurrent callers missing the same block share one fetch (single flight); if it fails, all
of them get its exception and nothing is cached, so the next call tries again.

Tiered mode writes through: a fetched block goes into RAM, then to disk, and a RAM eviction
just drops the block. We chose that over demoting blocks to disk when RAM evicts them because
  * a restart (or a crash) finds every fetched block on disk, not only the cold ones;
  * an eviction costs nothing, so a reader whose insertion evicts never pays for a write of
    someone else's block, and evicted bytes never sit in memory outside the RAM bound waiting
    for a disk write;
  * blocks are immutable, so each is written once and never rewritten.
The price is one disk write per fetched block, also for blocks read only once, and a disk
holding RAM's blocks too (disk is usually many times larger). In tiered mode two writer
threads do the disk writes behind the reader: the fetching thread returns to fetching, a block
waiting for its write stays findable (so nobody fetches it again), and at most WRITE_BACKLOG
blocks wait, which pushes back on fetches when the disk lags. Measured through a mount
(1 GiB cold, 2 cores): no cache 321-335 MiB/s, RAM only 324, tiered with the write in the
fetching thread 212, written behind 268. `flush()` waits for pending writes; invalidations
call it first, so a late write never brings back a dropped block.

Locks guard bookkeeping only; fetches, file I/O and copies run outside them.
"""

from __future__ import annotations

import errno
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Tuple

from unifs.cache.buffers import frozen
from unifs.cache.disk import DiskTier
from unifs.cache.ids import BlockId, ObjectId
from unifs.cache.ram import RamTier
from unifs.errors import StoreError

MODES = ("none", "ram", "disk", "tiered")
WRITE_BACKLOG = 8  # blocks fetched but not yet on disk (tiered mode), bounding their memory

# fetch(start, end) -> the object's bytes [start, end), e.g. a ranged GET pinned to the version.
Fetch = Callable[[int, int], bytes]


class BlockLengthError(StoreError):
    """The store returned a block of the wrong length; it is not cached."""

    def __init__(self, message: str):
        super().__init__(errno.EIO, message)


class BlockCache:
    def __init__(self, block_size: int, ram_bytes: int = 0, disk_bytes: int = 0,
                 directory=None, mode: str = "tiered"):
        """`directory` opens the disk tier (its files persist across instances); without it
        only the modes none and ram are available."""
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self._has_disk = directory is not None
        self.mode = self._check_mode(mode)
        self.ram = RamTier(ram_bytes)
        self.disk = DiskTier(directory, disk_bytes, block_size) if self._has_disk else None
        self._lock = threading.Lock()
        self._backlog = threading.BoundedSemaphore(WRITE_BACKLOG)
        self._pending: Dict[BlockId, bytes] = {}
        self._written = threading.Condition()
        self._writer = ThreadPoolExecutor(2, thread_name_prefix="unifs-cache-w")
        self._flights: Dict[BlockId, Future] = {}
        self._mounts: Dict[str, Dict[str, int]] = {}

    def _check_mode(self, mode: str) -> str:
        if mode not in MODES:
            raise ValueError(f"cache mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode in ("disk", "tiered") and not self._has_disk:
            raise ValueError(f"cache mode {mode!r} needs a cache directory")
        return mode

    # ------------------------------------------------------------------ reads

    def get_block(self, obj: ObjectId, index: int, size: int, fetch: Fetch,
                  mode: Optional[str] = None, mount: Optional[str] = None) -> bytes:
        """Block `index` of `obj` (an object of `size` bytes): bytes [index * block_size,
        min((index + 1) * block_size, size)). `mount` labels the bytes in `stats()`."""
        mode = self.mode if mode is None else self._check_mode(mode)
        start = index * self.block_size
        if index < 0 or start >= size:
            raise ValueError(f"block {index} is outside {obj.key!r} ({size} bytes)")
        end = min(start + self.block_size, size)
        if mode == "none":
            data = self._fetch(obj, fetch, start, end)
            self._account(mount, len(data), from_store=True)
            return data
        bid = (obj, index)
        if mode != "disk":
            data = self.ram.get(bid)
            if data is not None:
                self._account(mount, len(data), from_store=False)
                return data
        data, fetched = self._load_once(bid, start, end, fetch, mode)
        self._account(mount, len(data), from_store=fetched)
        return data

    def get_range(self, obj: ObjectId, start: int, end: int, size: int, fetch: Fetch,
                  mode: Optional[str] = None, mount: Optional[str] = None) -> bytes:
        """Bytes [start, min(end, size)) of `obj`, assembled from its blocks."""
        if start < 0:
            raise ValueError(f"negative offset {start}")
        end = min(end, size)
        if start >= end:
            return b""
        pieces: List[Tuple[bytes, int, int]] = []
        for index in range(start // self.block_size, (end - 1) // self.block_size + 1):
            block = self.get_block(obj, index, size, fetch, mode, mount)
            base = index * self.block_size
            pieces.append((block, max(start - base, 0), min(end - base, len(block))))
        if len(pieces) == 1 and pieces[0][1] == 0 and pieces[0][2] == len(pieces[0][0]):
            return pieces[0][0]  # one whole block: no copy
        return b"".join(memoryview(block)[lo:hi] for block, lo, hi in pieces)

    def prefetch(self, obj: ObjectId, size: int, fetch: Fetch, mode: Optional[str] = None,
                 mount: Optional[str] = None) -> int:
        """Fetch the blocks of `obj` that no tier holds, for a reader expected soon; returns the
        bytes fetched. A block on disk stays there: read into RAM ahead of the reader it pushed
        out blocks a reader needed first, and then was read from disk twice. Neither tier
        counts a hit or miss for it: the reader's own read does."""
        mode = self.mode if mode is None else self._check_mode(mode)
        if mode == "none":
            return 0
        fetched_bytes = 0
        for index in range((size + self.block_size - 1) // self.block_size):
            bid = (obj, index)
            if self._holds(bid, mode):
                continue
            start = index * self.block_size
            data, fetched = self._load_once(bid, start, min(start + self.block_size, size), fetch, mode,
                                            count=False)
            if fetched:
                self._account(mount, len(data), from_store=True)
                fetched_bytes += len(data)
        return fetched_bytes

    def _holds(self, bid: BlockId, mode: str) -> bool:
        if mode != "disk" and self.ram.holds(bid):
            return True
        if mode == "ram" or self.disk is None:
            return False
        with self._written:
            if bid in self._pending:
                return True
        return self.disk.holds(bid)

    def _load_once(self, bid: BlockId, start: int, end: int, fetch: Fetch,
                   mode: str, count: bool = True) -> Tuple[bytes, bool]:
        """The block from disk or the store, fetched once however many threads ask.
        Returns (data, whether this call fetched it from the store). count: a disk miss
        counts (a reader's; not a prefetch's)."""
        with self._lock:
            flight = self._flights.get(bid)
            leader = flight is None
            if leader:
                flight = self._flights[bid] = Future()
        if not leader:
            return flight.result(), False
        try:
            data = self._cached(bid, mode, count)
            fetched = data is None
            if fetched:
                held = self.ram.reserve(end - start) if mode != "disk" else 0
                try:
                    data = self._fetch(bid[0], fetch, start, end)
                finally:
                    self.ram.release(held)
                if mode != "disk":
                    self.ram.put(bid, data)
        except BaseException as e:
            self._land(bid)  # first, so a call arriving from now on tries again
            flight.set_exception(e)
            raise
        flight.set_result(data)
        if fetched and mode == "tiered":
            # RAM holds the block already: the disk copy is written by the writer threads, so the
            # fetching thread goes back to fetching (a bounded backlog pushes back when disk lags)
            self._land(bid)
            self._write_behind(bid, data)
            return data, fetched
        try:
            if fetched and mode != "ram":
                self.disk.put(bid, data)
        finally:
            self._land(bid)
        return data, fetched

    def _write_behind(self, bid: BlockId, data: bytes) -> None:
        self._backlog.acquire()  # at most WRITE_BACKLOG blocks wait for the disk
        with self._written:
            self._pending[bid] = data  # still findable if RAM evicts it before it is on disk

        def landed():
            with self._written:
                self._pending.pop(bid, None)
                self._written.notify_all()
            self._backlog.release()

        def write():
            try:
                self.disk.put(bid, data)
            finally:
                landed()
        try:
            self._writer.submit(write)
        except RuntimeError:  # closed
            landed()

    def flush(self, store: Optional[str] = None, key: Optional[str] = None,
              key_prefix: Optional[str] = None, keep_version: Optional[str] = None) -> None:
        """Wait until the blocks fetched so far (of `store`, of `key` or under `key_prefix`
        where given; not those of `keep_version`) are on disk, before they are dropped. Only
        those waiting now: a stream reading onto a disk slower than the store refills the
        queue faster than it drains, and a close waiting for it to empty waited for the whole
        stream; nor blocks that stay: an open dropping older versions waited for the disk
        copies of the very version it was about to read (prefetched ahead of it)."""
        def wanted(bid: BlockId) -> bool:
            o = bid[0]
            return ((store is None or o.store == store) and (key is None or o.key == key)
                    and (key_prefix is None or o.key.startswith(key_prefix))
                    and (keep_version is None or o.version != keep_version))

        with self._written:
            waiting = [(bid, data) for bid, data in self._pending.items() if wanted(bid)]
            # the same data object: a block fetched again later is not waited for
            self._written.wait_for(lambda: all(self._pending.get(b) is not d for b, d in waiting))

    def _cached(self, bid: BlockId, mode: str, count: bool = True) -> Optional[bytes]:
        """Second look for the flight's leader: a flight for this block may have ended
        between the caller's RAM miss and its flight starting."""
        if mode != "disk":
            data = self.ram.peek(bid)
            if data is not None:
                return data
        if mode != "ram":
            with self._written:
                data = self._pending.get(bid)
            if data is None and (count or self.disk.holds(bid)):
                data = self.disk.get(bid)
            if data is not None:
                if mode == "tiered":
                    self.ram.put(bid, data)
                return data
        return None

    def _land(self, bid: BlockId) -> None:
        with self._lock:
            del self._flights[bid]

    def _fetch(self, obj: ObjectId, fetch: Fetch, start: int, end: int) -> bytes:
        data = frozen(fetch(start, end))
        if len(data) != end - start:
            raise BlockLengthError(f"store returned {len(data)} bytes for [{start}, {end}) of "
                                   f"{obj.key!r} version {obj.version!r}")
        return data

    def _account(self, mount: Optional[str], nbytes: int, from_store: bool) -> None:
        if mount is None:
            return
        with self._lock:
            counters = self._mounts.setdefault(mount, {"bytes_from_store": 0,
                                                       "bytes_from_cache": 0})
            counters["bytes_from_store" if from_store else "bytes_from_cache"] += nbytes

    # ------------------------------------------------------------------ invalidation

    def forget_object(self, store: str, key: str, keep_version: Optional[str] = None) -> None:
        """Drop the blocks of (store, key) in both tiers, except those of `keep_version`."""
        self.flush(store, key, keep_version=keep_version)
        self.ram.drop_object(store, key, keep_version)
        if self.disk is not None:
            self.disk.drop_object(store, key, keep_version)

    def delete_problem(self) -> tuple:
        """(block files the disk tier could not remove so far, the last one's error)."""
        return self.disk.delete_problem() if self.disk is not None else (0, "")

    def clear(self, store: Optional[str] = None, key_prefix: Optional[str] = None) -> None:
        """Drop blocks in `store` (None: every store) under `key_prefix` (None: every key)."""
        self.flush(store, key_prefix=key_prefix)
        self.ram.clear(store, key_prefix)
        if self.disk is not None:
            self.disk.clear(store, key_prefix)

    # ------------------------------------------------------------------ the rest

    def stats(self) -> dict:
        """{"ram": tier, "disk": tier (only with a directory), "mounts": {label: counters}};
        tier: bytes, blocks, limit, hits, misses, evictions, corrupt (disk: write_errors, delete_errors);
        counters: bytes_from_store, bytes_from_cache (whole blocks, per get_block call;
        a caller that waited for another's fetch counts as served from cache)."""
        result = {"ram": self.ram.stats()}
        if self.disk is not None:
            result["disk"] = self.disk.stats()
        with self._lock:
            result["mounts"] = {label: dict(c) for label, c in self._mounts.items()}
        return result

    def close(self) -> None:
        """Finish pending disk writes, release the disk directory; its blocks stay for the
        next BlockCache."""
        self._writer.shutdown(wait=True)
        if self.disk is not None:
            self.disk.close()

    def __enter__(self) -> "BlockCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
