"""The file system over the namespace: lookups, listings, handles and reads.

Every method raises OSError with the errno a caller should see, so the FUSE
adapter only translates. An open handle pins the object's ETag and size:
reads use conditional ranged GETs, and if the object changes while open the
read fails with ESTALE instead of mixing old and new bytes (reopen to see the
new version). Files opened for writing are staged locally (writes.py); any
handle on a path being written reads the staged copy.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import posixpath
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

from unifs.cache import BlockCache, ObjectId
from unifs.config import ReadSettings, WriteSettings
from unifs.errors import ObjectChanged, ObjectNotFound, StoreError
from unifs.namespace import Mount, Namespace
from unifs.paths import under
from unifs.vfs.attrs import Attr
from unifs.vfs.metacache import NEGATIVE, MetaCache
from unifs.vfs.reader import HandleReader, ReadBudget
from unifs.vfs.prefetch import Prefetcher
from unifs.vfs.singleflight import SingleFlight
from unifs.vfs.staging import StagedFile
from unifs.vfs.writes import NAME_MAX, Writes

log = logging.getLogger("unifs.vfs")

# a lookup the store failed (EIO after its retries) answers the same for this long
FAILED_LOOKUP_S = 2.0
PER_PATH_LIMIT = 100_000  # see _forget_closed_paths
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def opens_for_writing(flags: int) -> bool:
    """Whether open() with these flags makes a staged (writable) handle."""
    # O_APPEND alone (with O_RDONLY) cannot write: a plain read, also on a read-only mount
    return bool(flags & (_WRITE_FLAGS & ~os.O_APPEND) or (flags & os.O_APPEND and flags & os.O_ACCMODE))


def _err(code: int, path: str, why: str = "") -> OSError:
    return OSError(code, why or os.strerror(code), path)


def _differs(before: Optional[Attr], now: Optional[Attr]) -> bool:
    """A file whose size or version is not what it was (gone counts, a directory never)."""
    if before is None or before.is_dir:
        return False
    return now is None or now.is_dir or now.size != before.size or now.etag != before.etag


@dataclass
class Handle:
    path: str
    reader: Optional[HandleReader] = None
    staged: Optional[StagedFile] = None
    writable: bool = False
    changed: bool = False  # this handle wrote (or created the file): its close uploads
    owner: Optional[int] = None  # process (tgid) that opened it for writing, if known
    version: Optional[str] = None  # a reader's pinned ETag
    stale: bool = False  # the object changed (or went) since this reader opened it
    direct: bool = False  # opened while stale readers remain: bypasses the kernel's page cache
    prefetch_counted: bool = False  # the prefetcher counts it among its directory's readers
    flushed: bool = False  # a FLUSH came (every close() of a descriptor sends one)
    source: Optional["Source"] = None  # where a reader fetches from; moves with a rename
    delivered: bool = False  # a read through this handle returned bytes
    kept: bool = False  # opened with the kernel's page cache of an earlier open kept
    open_seq: int = 0  # which read-open of its path this is (see _repin)


@dataclass
class Source:
    """The object a reader fetches from. A rename through the mount moves it (copy, delete):
    the reader follows to the new key instead of failing as if someone deleted its file.
    One tuple, replaced whole, so a fetch never pairs a new key with an old ETag."""
    at: tuple  # (path, key, etag)


class FileSystem:
    def __init__(self, namespace: Namespace, read: Optional[ReadSettings] = None,
                 write: Optional[WriteSettings] = None, staging_dir: Optional[str] = None,
                 cache: Optional[BlockCache] = None, cache_mode: str = "none"):
        self.ns = namespace
        # set by the FUSE adapter: make the kernel forget a path's attributes and pages
        self.kernel_invalidate: Optional[Callable[[str], None]] = None
        self.cache = cache
        self.cache_mode = cache_mode if cache is not None else "none"
        self._io: dict[str, dict[str, int]] = {}  # per mount: store GETs and their bytes
        self.read_settings = read or ReadSettings()
        self.meta = MetaCache()
        self._flights = SingleFlight()
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._lock = threading.Lock()
        self._last_etag: dict[str, Optional[str]] = {}
        self._open_seq: dict[str, int] = {}  # read-opens per path, see _repin
        self._forget_queue: Optional[queue.SimpleQueue] = None  # see forget_in_kernel
        self._stale_kernel: dict[str, float] = {}  # see _kernel_may_hold
        self._failed: dict[str, tuple[float, int, str]] = {}  # path -> (until, errno, why): see getattr
        self._said_too_long: set[str] = set()  # see _without_long_names
        self._asked_absent: dict[str, float] = {}  # see asked_store_lately
        self.budget = ReadBudget(self.read_settings.budget)
        self.pool = ThreadPoolExecutor(self.read_settings.threads, thread_name_prefix="unifs-ra")
        # a lookup asks for the object and for keys below its name at once (see _lookup): one
        # worker per FUSE thread that may be looking up (threads are made only when needed)
        self._probes = ThreadPoolExecutor(64, thread_name_prefix="unifs-lookup")
        self.prefetcher = Prefetcher(self._prefetch, self.budget)
        write = write or WriteSettings()
        self.writes = Writes(self, write, staging_dir or os.path.join(write.staging_dir, "default"))
        if any(not m.read_only for m in namespace.mounts):
            self.writes.start()

    # -- lookups -------------------------------------------------------------
    def getattr(self, path: str, for_kernel: bool = False) -> Attr:
        """for_kernel: the answer goes to the kernel (LOOKUP, GETATTR), which then holds the
        new size itself: nothing to flag (see _lookup)."""
        mount, key = self.ns.resolve(path)
        if mount is None:
            if self.ns.is_virtual_dir(path):
                return Attr.directory(read_only=True)
            raise _err(errno.ENOENT, path)
        if not key or self.ns.is_virtual_dir(path):
            return Attr.directory(mount.read_only)
        if len(posixpath.basename(path).encode("utf-8", "surrogateescape")) > NAME_MAX:
            # as statfs says (f_namemax): a local file system answers a lookup so too, and
            # readdir could not return such a name anyway
            raise _err(errno.ENAMETOOLONG, path, f"file names are at most {NAME_MAX} bytes")
        local = self.writes.attr(path)
        if local is not None:
            return local
        if self.writes.is_tombstoned(path):  # unlinked while open: gone, though still in the store
            self.writes.settle_hidden(path)  # unless a rename onto it is under way
            if self.writes.is_tombstoned(path):
                raise _err(errno.ENOENT, path)
            local = self.writes.attr(path)
            if local is not None:
                return local
        hit = self.meta.get(path)
        if hit is NEGATIVE:
            return self._kept_dir_or_enoent(path, mount)
        if hit is not None:
            return hit
        if self._failed:
            failed = self._failed.get(path)
            if failed is not None and failed[0] > time.monotonic():
                raise _err(failed[1], path, failed[2])
        try:
            attr = self._flights.do(("stat", path), lambda: self._lookup(path, mount, key, not for_kernel))
        except OSError as e:
            if e.errno in (errno.EIO, errno.ETIMEDOUT):
                if self.writes.was_hidden(path):
                    # libfuse looks candidates up before it hides an open file under one: with
                    # the store down, `rm` of an open file was EBUSY (no candidate came back free)
                    raise _err(errno.ENOENT, path) from None
                # the kernel follows a failed revalidation of a name it knew with a fresh lookup
                # of it: without this answer that took a second round of timeouts and retries
                now = time.monotonic()
                with self._lock:
                    if len(self._failed) > 1000:
                        self._failed = {p: f for p, f in self._failed.items() if f[0] > now}
                    self._failed[path] = (now + FAILED_LOOKUP_S, e.errno, e.strerror)
            raise
        if attr is None:
            return self._kept_dir_or_enoent(path, mount)
        return attr

    def _kept_dir_or_enoent(self, path: str, mount: Mount) -> Attr:
        attr = self._kept_dir(path, mount)
        if attr is None:
            raise _err(errno.ENOENT, path)
        return attr

    def _kept_dir(self, path: str, mount: Mount) -> Optional[Attr]:
        """A name the store does not have is still a directory while the daemon keeps one below it."""
        return Attr.directory(mount.read_only) if self.writes.keeps_below(path) else None

    def asked_store_lately(self, path: str, within: float = 2.0) -> bool:
        """The store said "no such name" to a lookup of path within the last `within` seconds
        (the kernel's lookup just before a mkdir): no need to ask it again."""
        at = self._asked_absent.pop(path, None)
        return at is not None and time.monotonic() - at <= within

    def fresh_lookup(self, path: str, mount: Mount, key: str) -> Optional[Attr]:
        """What the store has at path now (not what a cached listing says), cached for next time;
        a staged file or a directory only the daemon knows first."""
        local = self.writes.attr(path)
        if local is not None:
            return local
        attr = self._lookup(path, mount, key)
        return attr if attr is not None else self._kept_dir(path, mount)

    def _lookup(self, path: str, mount: Mount, key: str, flag_change: bool = True) -> Optional[Attr]:
        """A name that is both an object and a prefix ("a" and "a/b") is a directory, as in a
        listing: so the keys below it are asked for too, at the same time as the object
        (asked only when there was no object, the answer depended on whether the parent had
        been listed within the TTL, and files under "a/" were ENOTDIR without one)."""
        since = self.meta.changes(posixpath.dirname(path))
        if mount.store.name_problem(key):
            return None  # the client would answer for another object (not listed either)
        probe = None if mount.store.has_dirs else self._probes.submit(mount.store.is_dir, key)
        try:
            try:
                info = mount.store.head(key)
            finally:
                is_dir = probe.result() if probe is not None else None
            if is_dir:
                attr = Attr.directory(mount.read_only)
            elif info is not None:
                attr = Attr.from_object(info, mount.read_only)
            elif is_dir is None and mount.store.is_dir(key):
                attr = Attr.directory(mount.read_only)
            else:
                attr = None
        except StoreError as e:
            raise self.store_error(e, path) from None
        before = self.meta.previous(path) if flag_change else None
        self.meta.put(path, attr, mount.ttl, since)
        if attr is None:
            if len(self._asked_absent) > 10_000:
                self._asked_absent.clear()
            self._asked_absent[path] = time.monotonic()
        if _differs(before, attr):
            # an answer the kernel does not get (an open's, a reader's re-pin after a prefetch
            # found the object replaced) leaves it holding the old size, and the next open,
            # finding the daemon's entry fresh, would fill the page cache cut to it. An answer
            # the kernel gets flags nothing: direct_io would refuse a shared mmap of the file
            self._kernel_may_hold([path], mount.ttl)
        self._note_versions({path: attr})
        return attr

    def _kernel_may_hold(self, paths: list, ttl: float) -> None:
        """The store's version of these files differs from what the daemon told the kernel
        (within its attribute timeout, which each reply starts afresh, also one answered from
        the daemon's cache): the kernel may still size reads by the old size, so an open now
        would read the new version cut or padded to it. Until the kernel has been told to
        forget (forget_in_kernel), opens of these paths bypass its page cache (direct_io),
        where reads are not cut at its size."""
        until = time.monotonic() + ttl
        with self._lock:
            for p in paths:
                self._stale_kernel[p] = until
        self.forget_in_kernel(paths)

    def _kernel_stale(self, path: str) -> bool:
        if not self._stale_kernel:
            return False
        with self._lock:
            until = self._stale_kernel.get(path)
            if until is not None and until <= time.monotonic():
                del self._stale_kernel[path]
                return False
            return until is not None

    def _note_versions(self, seen: dict) -> None:
        """Fresh attributes from the store (path -> Attr or None for gone): readers pinned to
        another version go stale. Reads through them fail with ESTALE from now on, also where
        the old version's blocks are still cached, rather than return a version cut to the new
        size or mixed with it (the kernel sizes reads by the inode's current size)."""
        if not self._handles:  # the common cold lookup: nothing open to compare
            return
        with self._lock:
            for h in self._handles.values():
                if h.reader is None or h.stale or h.version is None or h.path not in seen:
                    continue  # version None: a store without ETags, whose reads are not pinned
                if self.writes.is_hidden(h.path):
                    continue  # unlinked while open: kept under its old key, which the store lists no more
                attr = seen[h.path]
                if attr is None or attr.is_dir or attr.etag != h.version or attr.size != h.reader.size:
                    h.stale = True

    def readdir(self, path: str) -> list[tuple[str, Attr]]:
        attr = self.getattr(path)
        if not attr.is_dir:
            raise _err(errno.ENOTDIR, path)
        children: dict[str, Attr] = {}
        mount, key = self.ns.resolve(path)
        if mount is not None:
            children.update(self._listing(path, mount, key))
            children.update(self.writes.children(path))
        for name in self.ns.virtual_children(path):
            children[name] = Attr.directory(self._child_read_only(path, name))
        if self.writes.has_tombstones():
            prefix = path.rstrip("/") + "/"
            children = {n: a for n, a in children.items() if not self.writes.is_tombstoned(prefix + n)}
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
            since = self.meta.changes(path)
            try:
                listing = mount.store.list_dir(key)
            except ObjectNotFound:
                return {}
            except StoreError as e:
                raise self.store_error(e, path) from None
            children = {name: Attr.from_object(info, mount.read_only) for name, info in listing.files.items()}
            for d in listing.dirs:
                # a prefix shadows an object of the same name ("a" and "a/b")
                children[d] = Attr.directory(mount.read_only)
            self._without_long_names(path, children)
            # a listing reply need not carry attributes the kernel takes (a plain readdir of a
            # big directory does not): files that changed since the daemon last said are flagged
            before = self.meta.previous_children(path, children)
            self.meta.put_listing(path, children, mount.ttl, since)
            # (not a listing put_listing dropped as stale)
            if self.meta.changes(path) == since and self.writes.has_entries(path, children):
                self.writes.exists_in_store(path)
            if before:
                prefix = path.rstrip("/") + "/"
                changed = [prefix + n for n, a in before.items() if _differs(a, children.get(n))]
                if changed:
                    self._kernel_may_hold(changed, mount.ttl)
            if self._handles:
                prefix = path.rstrip("/") + "/"
                with self._lock:
                    mine = {h.path for h in self._handles.values()
                            if h.reader is not None and posixpath.dirname(h.path) == path.rstrip("/")}
                if mine:
                    self._note_versions({p: children.get(p[len(prefix):]) for p in mine})
            return children
        return self._flights.do(("list", path), _fetch)

    def _without_long_names(self, path: str, children: dict) -> None:
        """Keys whose last part is over NAME_MAX bytes: listed, `ls` showed them and every open,
        stat and rm failed (ENAMETOOLONG: the kernel refuses such a name before asking). Left
        out, and said once (rmdir still finds the directory not empty)."""
        # a name of NAME_MAX // 4 characters or fewer fits in any UTF-8 (no encoding per name)
        for name in [n for n in children if len(n) > NAME_MAX // 4
                     and len(n.encode("utf-8", "surrogateescape")) > NAME_MAX]:
            del children[name]
            where = f"{path.rstrip('/')}/{name}"
            if where not in self._said_too_long and len(self._said_too_long) < PER_PATH_LIMIT:
                self._said_too_long.add(where)
                log.warning("not shown: %r (a name over %d bytes, which no program can open)",
                            where[:80] + "...", NAME_MAX)

    # -- handles -------------------------------------------------------------
    def open(self, path: str, flags: int, owner: Optional[int] = None) -> tuple[int, bool]:
        """(file handle, keep_cache): keep_cache when the object is unchanged since the last open.
        owner: the opening process, whose close() uploads (see flush)."""
        try:
            return self._open(path, flags, owner)
        except FileNotFoundError:
            if self.writes.was_hidden(path):
                # the kernel resolved the name to a file replaced or unlinked since, whose last
                # holder closed it before this open arrived: ESTALE makes the kernel look the
                # name up again and retry the open (the new file, or ENOENT), as on NFS
                raise _err(errno.ESTALE, path) from None
            raise

    def _open(self, path: str, flags: int, owner: Optional[int]) -> tuple[int, bool]:
        if opens_for_writing(flags):
            st = self.writes.open(path, bool(flags & os.O_TRUNC))
            fh = self._new_handle(Handle(path, staged=st, writable=True, owner=owner))
            self._readers_follow(path, st)
            return fh, False
        # the kernel opens without asking for attributes while its own are valid: if the daemon's
        # expired and the store's answer now differs from its last, the kernel still has the old
        # size (a GETATTR or LOOKUP of the kernel's own would have refreshed the daemon's first)
        # (compared with the entry found valid too: it can expire, and be refreshed from the
        # store, between this look and getattr's, when a prefetch finds the object changed)
        cached = self.meta.get(path)
        prev = self.meta.previous(path) if cached is None else cached if isinstance(cached, Attr) else None
        attr = self.getattr(path)
        if attr.is_dir:
            raise _err(errno.EISDIR, path)
        st = self.writes.attach(path)
        if st is not None:
            return self._new_handle(Handle(path, staged=st)), False
        mount, key = self.ns.resolve(path)
        assert mount is not None
        if _differs(prev, attr):
            self._kernel_may_hold([path], mount.ttl)
        stale_kernel = self._kernel_stale(path)
        with self._lock:
            unseen = path not in self._last_etag
            last = self._last_etag.get(path)
            keep = attr.etag is not None and last == attr.etag
            self._last_etag[path] = attr.etag
            seq = self._open_seq[path] = self._open_seq.get(path, 0) + 1
            if len(self._open_seq) > PER_PATH_LIMIT or len(self._last_etag) > PER_PATH_LIMIT:
                self._forget_closed_paths(path)
            # readers of an older version share the kernel's page cache of this inode: filling it
            # with the new version would feed them new bytes, so this reader bypasses it, and the
            # next open (None != ETag) drops what is cached
            direct = stale_kernel or attr.etag is not None and any(
                h.path == path and h.reader is not None and h.version is not None and h.version != attr.etag
                for h in self._handles.values())
            if direct:
                self._last_etag[path] = None
        source = Source((path, key, attr.etag))
        # first open in this daemon: the disk tier may hold blocks of a version the store
        # replaced while unmounted, unreachable but counted against its bound
        drop_old = last is not None and not keep or unseen and not direct
        reader = self._new_reader(path, mount, key, attr, source, drop_old=drop_old)
        handle = Handle(path, reader=reader, version=attr.etag, direct=direct, source=source,
                        kept=keep and not direct, open_seq=seq)
        # an unchanged file (keep) is likely in the page cache: prefetching it is wasted work
        if mount.entry.prefetch and self.mount_cache_mode(mount) != "none" and not keep:
            listing = self.meta.get_listing(posixpath.dirname(path))
            if listing:
                self.prefetcher.opened(path, listing, self.cache.block_size, self._prefetch_room(mount))
                handle.prefetch_counted = True
        return self._new_handle(handle), keep and not direct

    def _readers_follow(self, path: str, st: StagedFile) -> None:
        """Readers of the stored version read the staged copy from now on, as readers opened
        after the writer do: one file, one content. A reader left on the stored version
        answered reads past its end with end-of-file, and the kernel then cut the file to
        that size, so the writer's next O_APPEND write (a log `tail -f`-ed while appended
        to) landed over lines already written. Readers of an older version than the one
        staged stay stale (ESTALE)."""
        if st.opened_over is None:
            return
        with self._lock:
            readers = [h for h in self._handles.values() if h.path == path and h.reader is not None
                       and h.staged is None and not h.stale and (h.version,) == st.opened_over]
        for h in readers:
            if not self.writes.attach_reader(path, st):
                return
            with self._lock:
                # a release pops the handle under this lock and then releases what it holds:
                # one that came first holds nothing of this
                held = any(o is h for o in self._handles.values())
                if held:
                    h.staged = st  # its reader stays until release: a read in flight may use it
                    h.version = None
                    counted, h.prefetch_counted = h.prefetch_counted, False
            if not held:
                self.writes.release(st, reader=True)
            elif counted:
                self.prefetcher.closed(path)

    def _forget_closed_paths(self, opening: str) -> None:
        """Per-path records (open counts, the version the kernel may cache) of every name ever
        opened grew for the daemon's life (about 380 bytes per name: new checkpoint and log
        names, regenerated datasets). Paths without open handles lose theirs: their next open
        drops the kernel's pages and reads from the block cache, nothing worse. Called with
        the lock held."""
        busy = {h.path for h in self._handles.values()} | {opening}
        self._open_seq = {p: n for p, n in self._open_seq.items() if p in busy}
        self._last_etag = {p: e for p, e in self._last_etag.items() if p in busy}

    def _new_reader(self, path: str, mount: Mount, key: str, attr: Attr, source: "Source",
                    drop_old: bool) -> HandleReader:
        rs = self.read_settings
        fetch = self._cached_fetcher(path, mount, key, attr, drop_old=drop_old, source=source)
        first, part = rs.first_request, rs.part_size
        if self.mount_cache_mode(mount) != "none":
            # whole blocks per read-ahead part: a part never waits on a block its neighbour fetches,
            # and the parts (one block each) spread over the fetch threads
            first = part = self.cache.block_size
        return HandleReader(fetch, attr.size, self.pool, self.budget, first, part, rs.max_window)

    def _repin(self, h: Handle) -> bool:
        """A reader whose first read finds its object replaced in the store (opened from
        metadata cached before the change, within metadata_ttl) takes the new version instead
        of failing, when nothing of the old one can reach its caller: it returned no bytes yet,
        the kernel's page cache of the file was dropped at its open and no other open of the
        file came since (so no page of the old version is cached), and the size is the same
        (the kernel sizes reads by the size it was told). Otherwise ESTALE stands."""
        if h.delivered or h.kept or h.reader is None or h.source is None or h.writable:
            return False
        mount, key = self.ns.resolve(h.path)
        if mount is None or not key:
            return False
        attr = self._lookup(h.path, mount, key)  # fresh from the store
        if attr is None or attr.is_dir or attr.etag is None or attr.size != h.reader.size:
            return False
        with self._lock:
            if h.delivered or self._open_seq.get(h.path) != h.open_seq \
                    or any(o is not h and o.path == h.path for o in self._handles.values()):
                return False
            old = h.reader
            if h.version != attr.etag:
                # a new Source: fetches of the old reader still in flight keep their old ETag
                h.source = Source((h.path, key, attr.etag))
                h.reader = self._new_reader(h.path, mount, key, attr, h.source, drop_old=True)
                h.version = attr.etag
                self._last_etag[h.path] = attr.etag
            h.stale = False
        if old is not h.reader:
            old.close()
            log.info("%s: replaced in the store since it was listed; reading the new version", h.path)
        return True

    def _prefetch(self, path: str, attr: Attr, done) -> None:
        mount, key = self.ns.resolve(path)

        def run():
            fetched = 0
            try:
                fetched = self.cache.prefetch(self._object_id(mount, key, attr), attr.size,
                                              self.fetcher(path, mount, key, attr.etag, quiet=True),
                                              self.mount_cache_mode(mount), mount.path)
            except Exception as e:  # noqa: BLE001 - a failed prefetch is just a later miss
                log.debug("prefetch of %s failed: %s", path, e)
            finally:
                done(fetched)
        try:
            self.pool.submit(run)
        except RuntimeError:  # shutting down
            done()

    def _prefetch_room(self, mount: Mount) -> int:
        """Bytes of files a directory's prefetch may hold ahead of its reader: half the tier the
        prefetched blocks land in, so they are still there when the reader comes (with 3 MiB files
        and a 16 MiB RAM tier, blocks fetched 64 files ahead were evicted unread, and fetched again)."""
        mode = self.mount_cache_mode(mount)
        ram = self.cache.ram.limit if mode in ("ram", "tiered") else 0
        disk = self.cache.disk.limit if mode in ("disk", "tiered") else 0
        return max(ram, disk) // 2  # tiered: in both (a full disk may have cut its bound to 0)

    def mount_cache_mode(self, mount: Mount) -> str:
        if self.cache is None:
            return "none"
        mode = mount.entry.cache or self.cache_mode
        if self.cache.disk is None and mode in ("disk", "tiered"):
            return "ram"  # no disk tier configured (disk: 0)
        return mode

    @staticmethod
    def _object_id(mount: Mount, key: str, attr: Attr) -> ObjectId:
        # the version pins content: an overwritten object never matches old blocks
        return ObjectId(mount.entry_url_redacted, key, attr.etag or f"size{attr.size}-mtime{attr.mtime}")

    def _cached_fetcher(self, path: str, mount: Mount, key: str, attr: Attr, drop_old: bool,
                        source: Optional[Source] = None, quiet: bool = False):
        fetch = self.fetcher(path, mount, key, attr.etag, source, quiet=quiet)
        mode = self.mount_cache_mode(mount)
        if mode == "none":
            return fetch
        obj = self._object_id(mount, key, attr)
        if drop_old:
            self.cache.forget_object(obj.store, key, keep_version=obj.version)

        def cached(start: int, end: int) -> bytes:
            return self.cache.get_range(obj, start, end, attr.size, fetch, mode, mount.path)
        return cached

    def create(self, path: str, owner: Optional[int] = None, truncate: bool = False,
               exclusive: bool = False) -> int:
        """truncate, exclusive: O_TRUNC, O_EXCL were asked for too (see Writes.create_or_open)."""
        st, created = self.writes.create_or_open(path, truncate, exclusive)
        # a new file counts as changed (an empty one is uploaded too); one found in the store
        # only once written, as after any open for writing
        return self._new_handle(Handle(path, staged=st, writable=True, changed=created, owner=owner))

    def _new_handle(self, handle: Handle) -> int:
        fh = next(self._fh)
        with self._lock:
            self._handles[fh] = handle
        return fh

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise _err(errno.EBADF, str(fh))
        return handle

    def fetcher(self, path, mount, key, etag, source: Optional[Source] = None, quiet: bool = False):
        """quiet: for a prefetch, which nobody waits for: a changed object is only forgotten
        (no warning about a file nobody opened, no kernel invalidation of its directory)."""
        src = source or Source((path, key, etag))

        def fetch(start: int, end: int) -> bytes:
            self._count(mount.path, end - start)
            path, key, etag = src.at
            try:
                return mount.store.get_range(key, start, end, etag)
            except StoreError as e:
                if isinstance(e, ObjectNotFound):
                    e = ObjectChanged(f"{path}: deleted from the store while open")
                if not quiet:
                    raise self.store_error(e, path) from None
                if isinstance(e, ObjectChanged):
                    self.meta.expire(path)  # the next open's lookup sees the change
                raise e from None
        return fetch

    def read(self, fh: int, size: int, offset: int) -> bytes:
        return bytes(self.read_buffer(fh, size, offset))

    def read_buffer(self, fh: int, size: int, offset: int):
        """Like read(), as a read-only buffer that may be a view of a cached block: for a caller
        that copies it out right away (the FUSE reply), one copy fewer."""
        handle = self._handle(fh)
        if handle.staged is not None:
            return handle.staged.pread(size, offset)
        for attempt in (0, 1):
            try:
                if handle.stale:
                    raise _err(errno.ESTALE, handle.path, "the object changed in the store since it was "
                               "opened; reopen it to read the new version")
                reader = handle.reader
                data = reader.read(offset, size)
            except OSError as e:
                if attempt or e.errno != errno.ESTALE or not self._repin(handle):
                    raise
                continue
            if len(data) and not handle.delivered:
                with self._lock:
                    if handle.reader is not reader:  # another read re-pinned it meanwhile
                        raise _err(errno.ESTALE, handle.path, "the object changed in the store "
                                   "since it was opened; reopen it to read the new version")
                    handle.delivered = True
            return data

    def write(self, fh: int, data: bytes, offset: int) -> int:
        handle = self._handle(fh)
        if not handle.writable:
            raise _err(errno.EBADF, handle.path)
        handle.changed = True
        return handle.staged.pwrite(data, offset)

    def flush(self, fh: int, caller: Optional[int] = None) -> None:
        """Every close() of a descriptor that wrote: upload; EIO (data kept) on failure.
        `cmd > file` opens with O_TRUNC and closes a dup of the descriptor before writing:
        that close must not replace the stored object with an empty one.
        caller: the closing process. A child that inherited the descriptor (fork, subprocess,
        DataLoader workers) closes it too, mid-write: that close does not upload a half-written
        file over the object. The opener's close() does, and if a child closes last, the
        upload follows its release in the background."""
        handle = self._handle(fh)
        handle.flushed = True
        if handle.owner is not None and caller is not None and caller != handle.owner:
            return
        if handle.writable and handle.changed:
            self.writes.flush(handle.staged)

    def fsync(self, fh: int) -> None:
        handle = self._handle(fh)
        if handle.writable:
            self.writes.flush(handle.staged)

    def known_attr(self, path: str) -> Optional[Attr]:
        """What getattr would answer from local state and the metadata cache, or None where it
        would have to ask the store (or the path is gone)."""
        mount, key = self.ns.resolve(path)
        if mount is None or not key or self.ns.is_virtual_dir(path):
            try:
                return self.getattr(path)
            except OSError:
                return None
        if self.writes.is_tombstoned(path):
            return None
        local = self.writes.attr(path)
        if local is not None:
            return local
        hit = self.meta.get(path)
        return hit if isinstance(hit, Attr) else None

    def is_open(self, path: str) -> bool:
        with self._lock:
            return any(h.path == path for h in self._handles.values())

    def is_writable(self, fh: int) -> bool:
        return self._handle(fh).writable

    def is_direct(self, fh: int) -> bool:
        """Reads of this handle must bypass the kernel's page cache (see open)."""
        return self._handle(fh).direct

    def handle_attr(self, fh: int) -> Attr:
        """Attributes through an open handle, also of a file unlinked since it was opened."""
        handle = self._handle(fh)
        if handle.staged is not None:
            return Attr(is_dir=False, size=handle.staged.size, mtime=handle.staged.mtime)
        try:
            attr = self.getattr(handle.path)
        except OSError:
            attr = None
        if handle.stale:  # perhaps found out just now
            raise _err(errno.ESTALE, handle.path, "the object changed in the store since it was opened")
        return attr or Attr(is_dir=False, size=handle.reader.size if handle.reader is not None else 0)

    def truncate(self, path: Optional[str], length: int, fh: Optional[int] = None) -> None:
        handle = self._handles.get(fh) if fh is not None else None
        if path is None:  # ftruncate() of a file unlinked while open
            if handle is None:
                raise _err(errno.EBADF, str(fh))
            if handle.staged is not None:
                handle.staged.truncate(length)
            return
        if handle is not None and handle.writable:
            handle.changed = True
        if handle is not None:
            self.writes.truncate(path, length, handle.staged)
        else:
            # truncate(2) by path: readers open on the stored version read the truncated copy,
            # as after a writer's ftruncate (they got ESTALE once it was uploaded)
            self.writes.truncate(path, length, None, opened=lambda st: self._readers_follow(path, st))

    def release(self, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.reader is not None:
            handle.reader.close()
        if handle.prefetch_counted:
            self.prefetcher.closed(handle.path)
        if handle.staged is not None:
            if handle.writable and handle.changed and not handle.flushed:
                # released without a close(): libfuse's mknod(2) of a plain file is create +
                # release, and the file must exist in the store when mknod returns
                try:
                    self.writes.flush(handle.staged)
                except OSError as e:
                    log.warning("%s: %s; the background uploader retries", handle.path, e.strerror)
            self.writes.release(handle.staged, reader=not handle.writable)
        if self.writes.is_hidden(handle.path) and not self.is_open(handle.path):
            # the last close of a file unlinked while open; libfuse's own unlink of the hidden
            # name does not come when its directory was removed meanwhile (rm -r)
            self.writes.unlink(handle.path)

    def open_handles(self) -> int:
        return len(self._handles)

    # -- namespace changes ------------------------------------------------------
    def unlink(self, path: str) -> None:
        self.writes.unlink(path)

    def mkdir(self, path: str) -> None:
        self.writes.mkdir(path)

    def rmdir(self, path: str) -> None:
        self.writes.rmdir(path)

    def rename(self, old: str, new: str) -> None:
        self.writes.rename(old, new)
        prefix = old.rstrip("/") + "/"
        readers = []
        with self._lock:  # open handles follow their file (to be found by is_open later)
            for h in self._handles.values():
                if h.path == old:
                    h.path = new
                elif h.path.startswith(prefix):
                    h.path = new.rstrip("/") + "/" + h.path[len(prefix):]
                else:
                    continue
                if h.source is not None and not h.stale:
                    readers.append(h)
        for h in readers:
            self._follow(h)

    def _follow(self, h: Handle) -> None:
        """Point a reader of a renamed file at its new key. The store's copy may carry a new
        ETag (S3 gives a copied multipart object a plain MD5, GCS a new generation): the reader
        takes it when the size still matches, since the copy is the same bytes."""
        mount, key = self.ns.resolve(h.path)
        if mount is None or not key:
            return
        try:
            info = mount.store.head(key)
        except StoreError as e:
            log.warning("%s: renamed while open, cannot find it under its new name: %s", h.path, e)
            info = None
        if info is None or info.size != h.reader.size:
            return  # reads go on failing as for a deleted object
        with self._lock:
            h.source.at = (h.path, key, info.etag)
            h.version = info.etag

    def set_times(self, path: str, mtime: Optional[float]) -> None:
        """utimens: kept on a file being written; otherwise the store's mtime stands
        (object stores have no settable mtime) and the call succeeds."""
        self.writes.writable(path)
        self.getattr(path)
        st = self.writes.staged(path)
        if st is not None and mtime is not None:
            st.set_mtime(mtime)

    def accept_metadata_change(self, path: str) -> None:
        """chmod/chown: modes are fixed (0644/0755); accepted so frameworks never fail on them."""
        self.writes.writable(path)
        self.getattr(path)

    # -- statistics and cache control ------------------------------------------------
    def _count(self, mount_path: str, nbytes: int) -> None:
        with self._lock:
            c = self._io.setdefault(mount_path, {"gets": 0, "bytes": 0})
            c["gets"] += 1
            c["bytes"] += nbytes

    def stats(self) -> dict:
        with self._lock:
            store = {m: dict(c) for m, c in self._io.items()}
        out = {"store_reads": store,
               "readahead": {"used": self.budget.used, "peak": self.budget.peak, "limit": self.budget.limit},
               "prefetch": {"files": self.prefetcher.files, "bytes": self.prefetcher.bytes},
               "open_handles": self.open_handles(),
               "staged_files": len(self.writes.all_staged()),
               "cache_modes": {m.path: self.mount_cache_mode(m) for m in self.ns.mounts}}
        if self.cache is not None:
            out["cache"] = self.cache.stats()
        return out

    def clear_cache(self, path: str = "/") -> int:
        """Drop cached blocks (RAM and disk), metadata and the kernel's attributes and pages of
        everything at or below path; returns how many mounts' blocks it dropped."""
        path = "/" + "/".join(p for p in path.split("/") if p)
        touched = 0
        with self._lock:
            self._failed.clear()
        undeletable = self.cache.delete_problem()[0] if self.cache is not None else 0
        if self.cache is not None:
            for m in self.ns.mounts:
                if under(m.path, path):
                    self.cache.clear(m.entry_url_redacted)
                    touched += 1
            mount, key = self.ns.resolve(path)
            if mount is not None and key:
                self.cache.forget_object(mount.entry_url_redacted, key)
                self.cache.clear(mount.entry_url_redacted, key.rstrip("/") + "/")
                touched += 1
        # users clear when the data changed: the next lookup asks the store again, and so
        # does the kernel, which would otherwise keep the old size until its attr timeout
        # (a longer new version read back cut to the old length)
        known = self.meta.known_paths(path) | {path}
        with self._lock:
            prefix = path.rstrip("/") + "/"
            known.update(h.path for h in self._handles.values()
                         if h.path == path or h.path.startswith(prefix) or path == "/")
        if path == "/":
            self.meta.clear()
        else:
            self.meta.invalidate(path)
            self.meta.invalidate_tree(path)
        with self._lock:
            self._last_etag.clear()  # the next open also drops the kernel's pages
        if self.kernel_invalidate is not None:
            for p in sorted(known, key=len, reverse=True):
                self.kernel_invalidate(p)
        if self.cache is not None:
            # said once all is dropped (a failure part-way left later mounts and the metadata
            # uncleared); the blocks themselves are forgotten, their files stay on the disk
            count, last = self.cache.delete_problem()
            if count > undeletable:
                raise OSError(errno.EIO, f"{count - undeletable} cached block file(s) could not be removed "
                                         f"({last}); their blocks are dropped all the same")
        return touched

    # -- bookkeeping after changes -------------------------------------------------
    def uploaded(self, path: str, mount: Mount, info, current: bool) -> None:
        if not current:
            return  # written to during the upload: its size may not be what the store got
        attr = Attr.from_object(info, mount.read_only)
        self.meta.put_child(path, attr, mount.ttl)
        if self.cache is not None and info.etag:
            self.cache.forget_object(mount.entry_url_redacted, info.key, keep_version=info.etag)
        with self._lock:
            # the kernel's pages for this file hold what was just uploaded
            self._last_etag[path] = attr.etag
            if len(self._last_etag) > PER_PATH_LIMIT:
                self._forget_closed_paths(path)

    def forget_name(self, path: str) -> None:
        """A name removed while open: its metadata goes, its cached blocks stay for the open
        handles (keyed by ETag, they never serve a later object of the same name)."""
        self.meta.invalidate(path)
        with self._lock:
            self._last_etag.pop(path, None)

    def changed(self, path: str, attr: Optional[Attr], subtree: bool = False) -> None:
        if self._failed:
            with self._lock:
                self._failed.pop(path, None)
        if subtree:
            self.meta.invalidate_tree(path)
        self.meta.invalidate(path)
        mount, key = self.ns.resolve(path)
        if self.cache is not None and mount is not None and key:
            self.cache.forget_object(mount.entry_url_redacted, key)
            if subtree:
                self.cache.clear(mount.entry_url_redacted, key + "/")
        with self._lock:
            self._last_etag.pop(path, None)

    # -- other calls ---------------------------------------------------------
    def access(self, path: str, mode: int) -> None:
        attr = self.getattr(path)
        if mode & os.X_OK and not attr.is_dir:  # files are 0644 / 0444: `[ -x f ]`, `find -executable`
            raise _err(errno.EACCES, path)
        if mode & os.W_OK:
            self.writes.writable(path)

    def statfs(self) -> dict:
        """Plenty, except the room: with a writable mount, its staging directory's. Each file
        is written there whole before its upload, so that is what a writer can put at once:
        `df` and programs that check for room before a big checkpoint learn it up front instead
        of from an ENOSPC half-way."""
        big = 1 << 40
        out = {"f_bsize": 1 << 20, "f_frsize": 4096, "f_blocks": big, "f_bfree": big,
               "f_bavail": big, "f_files": 1 << 32, "f_ffree": 1 << 32, "f_favail": 1 << 32,
               "f_namemax": NAME_MAX}  # what create, mkdir and rename enforce
        if self.writes.started:
            try:
                room = os.statvfs(self.writes.area.directory)
            except OSError:
                return out
            out.update(f_frsize=room.f_frsize, f_blocks=room.f_blocks, f_bfree=room.f_bfree,
                       f_bavail=room.f_bavail)
        return out

    def refuse_change(self, path: str, code: int = errno.EPERM) -> None:
        """Changes no store can hold: EROFS on read-only mounts, else `code` (EPERM for
        links; ENOTSUP for xattrs, which cp -a, cp -p and sed -i treat as "not supported"
        and carry on)."""
        self.writes.writable(path)
        raise _err(code, path)

    def store_error(self, e: StoreError, path: str) -> OSError:
        if isinstance(e, ObjectChanged):
            self._changed_in_store(path)
        if e.errno == errno.ENOENT:
            return _err(errno.ENOENT, path)
        log.warning("%s: %s", path, e.strerror)
        return _err(e.errno, path, e.strerror)

    def _changed_in_store(self, path: str) -> None:
        """An object changed behind the mount's back: probably its siblings too (a data set
        regenerated in place). The daemon asks the store again for the file and its directory
        (keeping what it knew, to compare), and so must the kernel: it keeps each file's size
        until its attribute timeout, and a reopen would read the new version cut to (or padded
        to) the size it was told before."""
        siblings = self.meta.expire_children(posixpath.dirname(path))
        self.meta.expire(path)  # what it was stays known: the next lookup sees the difference
        mount, _ = self.ns.resolve(path)
        self._kernel_may_hold([path], mount.ttl if mount else 60.0)
        # siblings: the kernel forgets them; an open of one before that compares what the store
        # says now with what the daemon said last (open) and bypasses the kernel if it changed
        self.forget_in_kernel([p for p in siblings if p != path])

    def forget_in_kernel(self, paths: list) -> None:
        """Make the kernel drop the attributes and pages it holds for paths, on a thread of its
        own. The kernel's invalidation waits for every page lock of the file, and pages stay
        locked while their READ is in flight, so it must never run on a thread a READ may wait
        for: on the read-ahead pool (with `read.threads: 1`) it waited for a READ that waited
        for a read-ahead part queued behind it, and the mount hung, unmount included."""
        if self.kernel_invalidate is None or not paths:
            return
        with self._lock:
            if self._forget_queue is None:
                self._forget_queue = queue.SimpleQueue()
                threading.Thread(target=self._forget_loop, name="unifs-kernel-inval", daemon=True).start()
        self._forget_queue.put(list(paths))

    def _forget_loop(self) -> None:
        while True:
            paths = self._forget_queue.get()
            if paths is None:
                return
            for p in paths:
                try:
                    self.kernel_invalidate(p)
                except Exception as e:  # noqa: BLE001 - the kernel then learns at its timeout
                    log.debug("kernel invalidation of %s failed: %s", p, e)
                    continue
                with self._lock:
                    self._stale_kernel.pop(p, None)

    def close(self) -> None:
        if self._forget_queue is not None:
            self._forget_queue.put(None)
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
        for h in handles:
            if h.reader is not None:
                h.reader.close()
        self.writes.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._probes.shutdown(wait=False, cancel_futures=True)
        if self.cache is not None:
            self.cache.close()
        for m in self.ns.mounts:
            m.store.close()
