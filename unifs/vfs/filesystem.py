"""The file system over the namespace: lookups, listings, handles and reads.

Every method raises OSError with the errno a caller should see, so the FUSE
adapter only translates. An open handle pins the object's ETag and size:
reads use conditional ranged GETs, and if the object changes while open the
read fails with ESTALE instead of mixing old and new bytes (reopen to see the
new version).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from unifs.config import ReadSettings
from unifs.errors import ObjectChanged, ObjectNotFound, StoreError
from unifs.namespace import Mount, Namespace
from unifs.vfs.attrs import Attr
from unifs.vfs.metacache import NEGATIVE, MetaCache
from unifs.vfs.reader import HandleReader, ReadBudget
from unifs.vfs.singleflight import SingleFlight

log = logging.getLogger("unifs.vfs")

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _err(code: int, path: str, why: str = "") -> OSError:
    return OSError(code, why or os.strerror(code), path)


@dataclass
class Handle:
    path: str
    mount: Mount
    key: str
    attr: Attr
    reader: HandleReader


class FileSystem:
    def __init__(self, namespace: Namespace, read: Optional[ReadSettings] = None):
        self.ns = namespace
        self.read_settings = read or ReadSettings()
        self.meta = MetaCache()
        self._flights = SingleFlight()
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._lock = threading.Lock()
        self._last_etag: dict[str, Optional[str]] = {}
        self.budget = ReadBudget(self.read_settings.budget)
        self.pool = ThreadPoolExecutor(self.read_settings.threads, thread_name_prefix="unifs-ra")

    # -- lookups -------------------------------------------------------------
    def getattr(self, path: str) -> Attr:
        mount, key = self.ns.resolve(path)
        if mount is None:
            if self.ns.is_virtual_dir(path):
                return Attr.directory(read_only=True)
            raise _err(errno.ENOENT, path)
        if not key or self.ns.is_virtual_dir(path):
            return Attr.directory(mount.read_only)
        hit = self.meta.get(path)
        if hit is NEGATIVE:
            raise _err(errno.ENOENT, path)
        if hit is not None:
            return hit
        attr = self._flights.do(("stat", path), lambda: self._lookup(path, mount, key))
        if attr is None:
            raise _err(errno.ENOENT, path)
        return attr

    def _lookup(self, path: str, mount: Mount, key: str) -> Optional[Attr]:
        try:
            info = mount.store.head(key)
            if info is not None:
                attr = Attr.from_object(info, mount.read_only)
            elif mount.store.is_dir(key):
                attr = Attr.directory(mount.read_only)
            else:
                attr = None
        except StoreError as e:
            raise self._store_error(e, path) from None
        self.meta.put(path, attr, mount.ttl)
        return attr

    def readdir(self, path: str) -> list[tuple[str, Attr]]:
        attr = self.getattr(path)
        if not attr.is_dir:
            raise _err(errno.ENOTDIR, path)
        children: dict[str, Attr] = {}
        mount, key = self.ns.resolve(path)
        if mount is not None:
            children.update(self._listing(path, mount, key))
        for name in self.ns.virtual_children(path):
            children[name] = Attr.directory(self._child_read_only(path, name))
        return sorted(children.items())

    def _child_read_only(self, path: str, name: str) -> bool:
        child = path.rstrip("/") + "/" + name
        m, _ = self.ns.resolve(child)
        return True if m is None else m.read_only

    def _listing(self, path: str, mount: Mount, key: str) -> dict[str, Attr]:
        cached = self.meta.get_listing(path)
        if cached is not None:
            return cached

        def _fetch():
            try:
                listing = mount.store.list_dir(key)
            except ObjectNotFound:
                return {}
            except StoreError as e:
                raise self._store_error(e, path) from None
            children = {name: Attr.from_object(info, mount.read_only) for name, info in listing.files.items()}
            for d in listing.dirs:
                # a prefix shadows an object of the same name ("a" and "a/b")
                children[d] = Attr.directory(mount.read_only)
            self.meta.put_listing(path, children, mount.ttl)
            return children
        return self._flights.do(("list", path), _fetch)

    # -- handles -------------------------------------------------------------
    def open(self, path: str, flags: int) -> tuple[int, bool]:
        """(file handle, keep_cache): keep_cache when the object is unchanged since the last open."""
        if flags & _WRITE_FLAGS:
            self._require_writable(path)
        attr = self.getattr(path)
        if attr.is_dir:
            raise _err(errno.EISDIR, path)
        mount, key = self.ns.resolve(path)
        assert mount is not None
        rs = self.read_settings
        fetch = self._fetcher(path, mount, key, attr.etag)
        reader = HandleReader(fetch, attr.size, self.pool, self.budget, rs.first_request,
                              rs.part_size, rs.max_window)
        fh = next(self._fh)
        with self._lock:
            self._handles[fh] = Handle(path, mount, key, attr, reader)
            keep = attr.etag is not None and self._last_etag.get(path) == attr.etag
            self._last_etag[path] = attr.etag
        return fh, keep

    def _fetcher(self, path, mount, key, etag):
        def fetch(start: int, end: int) -> bytes:
            try:
                return mount.store.get_range(key, start, end, etag)
            except ObjectNotFound:
                raise self._store_error(ObjectChanged(f"{path}: deleted from the store while open"),
                                        path) from None
            except StoreError as e:
                raise self._store_error(e, path) from None
        return fetch

    def read(self, fh: int, size: int, offset: int) -> bytes:
        handle = self._handles.get(fh)
        if handle is None:
            raise _err(errno.EBADF, str(fh))
        return handle.reader.read(offset, size)

    def release(self, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is not None:
            handle.reader.close()

    def open_handles(self) -> int:
        return len(self._handles)

    # -- other calls ---------------------------------------------------------
    def access(self, path: str, mode: int) -> None:
        self.getattr(path)
        if mode & os.W_OK:
            self._require_writable(path)

    def statfs(self) -> dict:
        big = 1 << 40
        return {"f_bsize": 1 << 20, "f_frsize": 4096, "f_blocks": big, "f_bfree": big,
                "f_bavail": big, "f_files": 1 << 32, "f_ffree": 1 << 32, "f_favail": 1 << 32,
                "f_namemax": 1024}

    def _require_writable(self, path: str) -> None:
        # Writes arrive with the staged-write layer; until then every mount is read-only.
        raise _err(errno.EROFS, path)

    def refuse_change(self, path: str) -> None:
        """Any namespace change (mkdir, unlink, rename, chmod ...) on this read path."""
        self._require_writable(path)

    def _store_error(self, e: StoreError, path: str) -> OSError:
        if isinstance(e, ObjectChanged):
            self.meta.invalidate(path)
        if e.errno == errno.ENOENT:
            return _err(errno.ENOENT, path)
        log.warning("%s: %s", path, e.strerror)
        return _err(e.errno, path, e.strerror)

    def close(self) -> None:
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
        for h in handles:
            h.reader.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for m in self.ns.mounts:
            m.store.close()
