"""Stat and listing cache with a TTL per entry and negative entries.

A fresh listing of a directory is authoritative for its children: a name not
in it is a negative hit, so `ls -l` of a 10,000-object prefix costs one paged
listing and no HEADs.
"""

from __future__ import annotations

import posixpath
import threading
import time
from collections import OrderedDict
from typing import Optional, Union

from unifs.vfs.attrs import Attr


class _Negative:
    def __repr__(self):
        return "NEGATIVE"


NEGATIVE = _Negative()
Lookup = Union[Attr, _Negative, None]


class MetaCache:
    def __init__(self, max_entries: int = 1_000_000, max_listings: int = 10_000):
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Optional[Attr]]] = OrderedDict()
        self._listings: OrderedDict[str, tuple[float, dict[str, Attr]]] = OrderedDict()
        self.max_entries = max_entries
        self.max_listings = max_listings
        # directory -> local changes in it so far: an answer the store gave before a change
        # (a listing or HEAD started before a create) is not cached after it (see `changes`)
        self._changes: dict[str, int] = {}
        self._trees = 0  # whole subtrees changed (directory renames, clears): rare, so counted once

    def changes(self, directory: str) -> tuple[int, int]:
        """Pass to put/put_listing what this said before asking the store."""
        with self._lock:
            return self._stamp(directory)

    def _stamp(self, directory: str) -> tuple[int, int]:  # lock held
        return self._changes.get(directory, 0), self._trees

    def _changed(self, *dirs: str) -> None:  # lock held
        if len(self._changes) > 100_000:
            self._changes.clear()
            self._trees += 1  # so no stamp taken before the clear compares equal after it
        for d in dirs:
            self._changes[d] = self._changes.get(d, 0) + 1

    def get(self, path: str) -> Lookup:
        """An Attr, NEGATIVE for a known-missing path, or None when unknown.
        Expired knowledge is kept (until replaced or evicted) for `previous`."""
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(path)
            if hit is not None:
                expires, attr = hit
                if expires > now:
                    return attr if attr is not None else NEGATIVE
            parent, name = posixpath.split(path)
            listing = self._listings.get(parent)
            if listing is not None and listing[0] > now:
                attr = listing[1].get(name)
                return attr if attr is not None else NEGATIVE
        return None

    def previous(self, path: str) -> Optional[Attr]:
        """The last attributes known for path, expired or not (what the kernel may still hold:
        it keeps each reply for the whole TTL, also one the daemon answered from its cache)."""
        with self._lock:
            return self._last_known(path, self._listings.get(posixpath.dirname(path)))

    def previous_children(self, path: str, names) -> dict[str, Attr]:
        """`previous` of path's files: those in its last listing and those of names given."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            listing = self._listings.get(path)
            known = set(names) | set(listing[1] if listing is not None else ())
            out = {n: self._last_known(prefix + n, listing) for n in known}
        return {n: a for n, a in out.items() if a is not None}

    def _last_known(self, path: str, listing) -> Optional[Attr]:
        """path's own entry (a HEAD) or its parent's listing, whichever is newer; lock held."""
        hit = self._entries.get(path)
        from_listing = listing[1].get(posixpath.basename(path)) if listing is not None else None
        if hit is not None and (listing is None or hit[0] >= listing[0] or from_listing is None):
            return hit[1]
        return from_listing

    def expire(self, path: str) -> None:
        """Ask the store again for path (and its directory), keeping what was known."""
        with self._lock:
            hit = self._entries.get(path)
            if hit is not None:
                self._entries[path] = (0.0, hit[1])
            parent = posixpath.dirname(path)
            listing = self._listings.get(parent)
            if listing is not None:
                self._listings[parent] = (0.0, listing[1])

    def put(self, path: str, attr: Optional[Attr], ttl: float, since: Optional[tuple] = None) -> None:
        if ttl <= 0:
            return
        with self._lock:
            if since is not None and self._stamp(posixpath.dirname(path)) != since:
                return  # asked before a local change in its directory: maybe stale already
            self._entries[path] = (time.monotonic() + ttl, attr)
            self._entries.move_to_end(path)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get_listing(self, path: str) -> Optional[dict[str, Attr]]:
        now = time.monotonic()
        with self._lock:
            hit = self._listings.get(path)
            if hit is None or hit[0] <= now:
                return None
            self._listings.move_to_end(path)
            return hit[1]

    def put_listing(self, path: str, children: dict[str, Attr], ttl: float, since: Optional[tuple] = None) -> None:
        if ttl <= 0:
            return
        with self._lock:
            if since is not None and self._stamp(path) != since:
                return  # listed before a local change in it: the change may be missing
            self._listings[path] = (time.monotonic() + ttl, children)
            self._listings.move_to_end(path)
            # entries cached before the listing may be staler than it
            prefix = path.rstrip("/") + "/"
            for name in children:
                self._entries.pop(prefix + name, None)
            while len(self._listings) > self.max_listings:
                self._listings.popitem(last=False)

    def put_child(self, path: str, attr: Attr, ttl: float) -> None:
        """A local change: the entry and, when cached, its parent's listing."""
        self.put(path, attr, ttl)
        parent, name = posixpath.split(path)
        with self._lock:
            self._changed(parent, path)
            listing = self._listings.get(parent)
            if listing is not None:
                # copy on write: readers may be iterating the old dict
                self._listings[parent] = (listing[0], {**listing[1], name: attr})

    def known_paths(self, path: str) -> set[str]:
        """Paths at or below `path` this cache holds anything about (entries, listings and
        their children), e.g. to tell the kernel to forget them too."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            found = {p for p in self._entries if p == path or p.startswith(prefix)}
            for d, (_, children) in self._listings.items():
                if d == path or d.startswith(prefix) or path == "/":
                    found.add(d)
                    base = d.rstrip("/") + "/"
                    found.update(base + name for name in children)
        return found

    def invalidate_tree(self, path: str) -> None:
        prefix = path.rstrip("/") + "/"
        with self._lock:
            self._changed(path, posixpath.dirname(path))
            self._trees += 1
            for table in (self._entries, self._listings):
                for p in [p for p in table if p.startswith(prefix)]:
                    del table[p]

    def expire_children(self, parent: str) -> list[str]:
        """Expire the listing of parent and the entries of its direct children (keeping what
        was known); returns the children's paths it knew (from either)."""
        prefix = parent.rstrip("/") + "/"
        with self._lock:
            found = [p for p in self._entries if p.startswith(prefix) and "/" not in p[len(prefix):]]
            for p in found:
                self._entries[p] = (0.0, self._entries[p][1])
            listing = self._listings.get(parent)
            if listing is not None:
                self._listings[parent] = (0.0, listing[1])
                found.extend(prefix + n for n, a in listing[1].items() if a is None or not a.is_dir)
        return sorted(set(found))

    def forget_entry(self, path: str) -> None:
        """A name created locally: its entry goes (a cached "no such file"), its parent's
        listing stays (what the store holds, within its TTL; the local file is found before
        it), so the next names created there are looked up without asking the store."""
        with self._lock:
            self._forget_locked(path)

    def invalidate(self, path: str) -> None:
        with self._lock:
            self._forget_locked(path)
            self._listings.pop(posixpath.dirname(path), None)

    def _forget_locked(self, path: str) -> None:
        self._changed(path, posixpath.dirname(path))
        self._entries.pop(path, None)
        self._listings.pop(path, None)

    def clear(self) -> None:
        with self._lock:
            self._trees += 1
            self._entries.clear()
            self._listings.clear()
