"""Dataset prefetch: a directory whose files are opened in listing order (an image
folder read by a DataLoader without shuffling, `cp -r`, `tar`, checksumming) gets its
next files fetched whole, in parallel, into the block cache ahead of the reader.

Per directory the prefetcher remembers the listing position of the last open. An
open at the next position (or a little further: parallel workers open slightly out
of order) doubles the window of files fetched ahead, up to `max_window`; any other
open resets it. Only files up to one block are prefetched (one GET each; big files
have sequential read-ahead instead), and every prefetch holds its bytes in the
read-ahead budget until it lands in the cache, so prefetch and read-ahead together
stay within one memory bound.
"""

from __future__ import annotations

import bisect
import logging
import posixpath
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

log = logging.getLogger("unifs.prefetch")

_SLACK = 8  # an open this far ahead of the last one still counts as in order


@dataclass
class _DirState:
    names: list
    last: int = -1
    window: int = 0
    scheduled: set = field(default_factory=set)
    readers: int = 0  # files of this directory open for reading now


class Prefetcher:
    def __init__(self, submit, budget, first_window: int = 4, max_window: int = 64, max_dirs: int = 1024,
                 max_readers: int = 4):
        self.submit = submit  # submit(path, attr, done) -> schedules a whole-file fetch; done(bytes fetched)
        self.budget = budget
        self.first_window = first_window
        self.max_window = max_window
        self.max_readers = max_readers
        self.max_dirs = max_dirs
        self._dirs: OrderedDict[str, _DirState] = OrderedDict()
        self._lock = threading.Lock()
        self.files = 0
        self.bytes = 0

    def opened(self, path: str, listing: dict, max_size: int, room: Optional[int] = None) -> None:
        """path was opened for reading; listing is its parent's cached listing (name -> Attr).
        room: bytes of files the window may hold ahead of this one (the cache they land in
        must keep them until the reader comes). Each call is matched by one `closed(path)`."""
        parent, name = posixpath.split(path)
        todo = []
        with self._lock:
            st = self._dirs.get(parent)
            if st is None or len(st.names) != len(listing):
                readers = st.readers if st is not None else 0
                st = _DirState(sorted(n for n, a in listing.items() if not a.is_dir), readers=readers)
                self._dirs[parent] = st
                while len(self._dirs) > self.max_dirs:
                    self._dirs.popitem(last=False)
            self._dirs.move_to_end(parent)
            st.readers += 1
            i = bisect.bisect_left(st.names, name)
            if i >= len(st.names) or st.names[i] != name:
                return
            in_order = st.last < i <= st.last + _SLACK
            st.window = min(self.max_window, max(self.first_window, st.window * 2)) if in_order else 0
            st.last = i
            if not st.window:
                st.scheduled.clear()
                return
            if st.readers >= self.max_readers:
                return  # enough readers keep the store busy; the window stays for when they go
            ahead = 0
            for j in range(i + 1, min(len(st.names), i + 1 + st.window)):
                n = st.names[j]
                attr = listing.get(n)
                if attr is None or attr.size == 0 or attr.size > max_size:
                    continue
                ahead += attr.size
                if room is not None and ahead > room:
                    break
                if n in st.scheduled:
                    continue
                if not self.budget.try_acquire(attr.size):
                    break  # the reader catches up first; the next open schedules more
                st.scheduled.add(n)
                todo.append((posixpath.join(parent, n), attr))
        for p, attr in todo:
            self.submit(p, attr, lambda fetched=0, n=attr.size: self._done(n, fetched))

    def closed(self, path: str) -> None:
        with self._lock:
            st = self._dirs.get(posixpath.dirname(path))
            if st is not None and st.readers > 0:
                st.readers -= 1

    def _done(self, held: int, fetched: int) -> None:
        """held: the bytes taken from the budget; fetched: what the store sent (0 when every
        block was cached already, or the fetch failed): only files fetched count."""
        self.budget.release(held)
        if fetched:
            with self._lock:
                self.files += 1
                self.bytes += fetched
