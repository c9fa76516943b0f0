"""Per-handle reads: exact ranged GETs for random access, a growing parallel
read-ahead window for sequential streams.

FUSE delivers at most 128 KiB per read and the kernel's own read-ahead sends
several of those at once, slightly out of order, so "sequential" means the
read lands on or inside what this handle already fetched or at its frontier.
All handles share one byte budget for read-ahead: 64 open shards cannot use
more memory than the budget plus one demand fetch each.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from unifs.errors import ObjectChanged

Fetch = Callable[[int, int], bytes]

# A read that failed is failed again, without a new fetch, if the same handle asks for the
# same bytes this soon after: the kernel follows a failed read-ahead request with a
# synchronous read of the same page, and against a dead store each of the two would wait
# out the whole timeout-and-retries budget.
FAILURE_MEMORY_S = 1.0

# How far behind the frontier a read still counts as a straggler of the kernel's parallel
# requests (up to 1 MiB each, one per FUSE thread, answered in any order under load) rather
# than a seek: served by an exact fetch (a cache hit, with a cache) without dropping the
# read-ahead in flight. Taking it for a seek cancelled the window and started over at 1 MiB:
# a cold 20 MiB md5sum with `cache: none` fetched 36 MiB in 16 GETs instead of 20 in 7.
STRAGGLER_BYTES = 16 << 20


class ReadBudget:
    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()

    def try_acquire(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.used -= n


@dataclass
class _Segment:
    start: int
    end: int
    future: Future
    budgeted: bool


class HandleReader:
    def __init__(self, fetch: Fetch, size: int, pool: ThreadPoolExecutor, budget: ReadBudget,
                 first_request: int, part_size: int, max_window: int):
        self.fetch = fetch
        self.size = size
        self.pool = pool
        self.budget = budget
        self.first_request = first_request
        self.part_size = part_size
        self.max_window = max_window
        self.window = first_request
        self.next_offset = 0
        self.segments: list[_Segment] = []  # sorted, non-overlapping
        self._lock = threading.Lock()
        self.closed = False
        self._failure = None  # (start, end, error, monotonic time) of the last failed read

    # -- public ------------------------------------------------------------
    def read(self, offset: int, length: int):
        """Bytes [offset, offset + length) as a read-only buffer (bytes or a view of a block)."""
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        demands: list[_Segment] = []
        with self._lock:
            self._recent_failure(offset, end)
            sequential = abs(offset - self.next_offset) <= self.first_request or self._covered(offset)
            # only while read-ahead is in flight: a file read footer first (parquet, zip) and
            # then from its start is a seek, whose stream must get read-ahead of its own
            straggler = not sequential and self.next_offset - STRAGGLER_BYTES <= offset < self.next_offset \
                and any(seg.budgeted for seg in self.segments)
            if not sequential and not straggler:
                self._drop_all()
                self.window = self.first_request
            needed = self._plan(offset, end, sequential, demands)
            if sequential:
                self._read_ahead(end)
            if not straggler:
                self.next_offset = max(self.next_offset, end) if sequential else end
        for seg in demands:
            self._run(seg)
        parts = []
        try:
            for seg in needed:
                try:
                    data = seg.future.result()
                except CancelledError:
                    # a random read by another thread on this handle dropped the queued part
                    # this read waited on: fetch the bytes itself rather than fail
                    data = self._fetch_exact(seg.start, seg.end)
                lo, hi = max(offset, seg.start) - seg.start, min(end, seg.end) - seg.start
                # a view, not a slice: FUSE copies it into its reply, a slice would be a copy more
                parts.append(data if lo == 0 and hi == len(data) else memoryview(data)[lo:hi])
        except BaseException as e:
            with self._lock:
                self._forget(needed)
                if isinstance(e, OSError):
                    self._failure = (offset, end, e, time.monotonic())
            raise
        with self._lock:
            self._drop_behind(offset - self.first_request)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._drop_all()

    # -- internals (called with the lock held) -------------------------------
    def _recent_failure(self, offset: int, end: int) -> None:
        if self._failure is None:
            return
        start, stop, err, when = self._failure
        if time.monotonic() - when > FAILURE_MEMORY_S:
            self._failure = None
        elif start < end and offset < stop:
            raise OSError(err.errno, err.strerror, getattr(err, "filename", None))

    def _covered(self, offset: int) -> bool:
        return self._segment_at(offset) is not None

    def _segment_at(self, offset: int):
        return next((s for s in self.segments if s.start <= offset < s.end), None)

    def _plan(self, offset: int, end: int, sequential: bool, demands: list) -> list[_Segment]:
        needed = []
        pos = offset
        for seg in self.segments:
            if seg.end <= pos or seg.start >= end:
                continue
            if seg.start > pos:
                needed.append(self._demand(pos, seg.start, demands))
            needed.append(seg)
            pos = seg.end
            if pos >= end:
                break
        if pos < end:
            stop = end
            if sequential:
                stop = self._on_part_boundary(end - 1, max(end, pos + self.first_request))
                if self.size - stop <= self.first_request:
                    stop = self.size  # small objects and tails come in one GET
            nxt = next((s.start for s in self.segments if s.start > pos), self.size)
            needed.append(self._demand(pos, min(stop, nxt), demands))
        return needed

    def _demand(self, start: int, end: int, demands: list) -> _Segment:
        seg = _Segment(start, end, Future(), budgeted=False)
        self._insert(seg)
        demands.append(seg)
        return seg

    def _read_ahead(self, end: int) -> None:
        frontier = end
        for seg in self.segments:
            if seg.start <= frontier < seg.end or seg.start == frontier:
                frontier = seg.end
        if frontier >= self.size or frontier - end >= self.window // 2:
            return  # enough in flight; ask again once half of it is consumed
        # fill the window ahead of the reader (in parallel parts) and double it: requests grow
        # with what the reader has consumed, so a header read stays cheap; at most one window
        # is ever in flight ahead of the reader
        # rounded up only where parts are no bigger than the window (cached mode: block-sized
        # parts); with `cache: none` a 1 MiB window must not become an 8 MiB part
        target = self._on_part_boundary(frontier, end + self.window, up=self.window >= self.part_size)
        while frontier < target:
            # never over bytes already asked for: a seek's demand segment may lie ahead, and an
            # overlapping part would hand those bytes out twice
            covering = self._segment_at(frontier)
            if covering is not None:
                frontier = covering.end
                continue
            ahead = next((seg.start for seg in self.segments if seg.start > frontier), self.size)
            # a stream that began at an unaligned seek gets back onto part boundaries here
            n = min(self.part_size - frontier % self.part_size, target - frontier, ahead - frontier)
            if not self.budget.try_acquire(n):
                return
            seg = _Segment(frontier, frontier + n, Future(), budgeted=True)
            self._insert(seg)
            self.pool.submit(self._run, seg)
            frontier += n
        self.window = min(self.max_window, self.window * 2)

    def _on_part_boundary(self, least: int, stop: int, up: bool = False) -> int:
        """`stop` moved back to a multiple of the part size where that stays beyond `least`
        (else, with `up`, forward to the next multiple; else left as it is).
        Parts then cover whole cache blocks: a part that ends inside a block had to be assembled
        from two blocks, a copy of every byte that took half the daemon's Python time on a cold
        sequential read. At most `size`."""
        aligned = stop - stop % self.part_size
        if aligned <= least:
            aligned = aligned + self.part_size if up else stop
        return min(self.size, aligned)

    def _insert(self, seg: _Segment) -> None:
        i = 0
        while i < len(self.segments) and self.segments[i].start < seg.start:
            i += 1
        self.segments.insert(i, seg)

    def _fetch_exact(self, start: int, end: int) -> bytes:
        data = self.fetch(start, end)
        if len(data) != end - start:
            raise ObjectChanged(f"object returned {len(data)} bytes for range "
                                f"[{start}, {end}); it changed while open")
        return data

    def _run(self, seg: _Segment) -> None:
        if not seg.future.set_running_or_notify_cancel():
            return
        try:
            seg.future.set_result(self._fetch_exact(seg.start, seg.end))
        except BaseException as e:  # delivered to whichever reader waits on it
            seg.future.set_exception(e)

    def _release(self, seg: _Segment) -> None:
        if seg.budgeted:
            seg.budgeted = False
            self.budget.release(seg.end - seg.start)

    def _forget(self, segs) -> None:
        for seg in segs:
            if seg in self.segments:
                self.segments.remove(seg)
                self._release(seg)

    def _drop_all(self) -> None:
        for seg in self.segments:
            seg.future.cancel()
            self._release(seg)
        self.segments = []

    def _drop_behind(self, offset: int) -> None:
        # keeps a little behind the reader: the kernel's parallel read-ahead requests
        # arrive slightly out of order and must not turn into new GETs
        keep = []
        for seg in self.segments:
            if seg.end <= offset and seg.future.done():
                self._release(seg)
            else:
                keep.append(seg)
        self.segments = keep
