"""Changes to the namespace: staged files, uploads, mkdir, rmdir, unlink, rename.

Writes go to a local staged file (see staging.py); the upload happens on
flush (every close()) and fsync, so close() returns only once the store holds
exactly the written bytes, or fails with EIO and keeps the data locally for a
background retry. Directories on key-only stores (S3, GCS, Azure) exist through
the keys below them: a new empty directory lives in the daemon until a file is
written into it, as with mountpoint-s3.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FutureTimeout, wait as futures_wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from unifs.config import WriteSettings
from unifs.errors import AccessDenied, StoreError, StoreRejected
from unifs.namespace import Mount
from unifs.paths import under
from unifs.vfs.attrs import Attr
from unifs.vfs.staging import PENDING, STRANDED, Base, StagedFile, StagingArea

if TYPE_CHECKING:
    from unifs.vfs.filesystem import FileSystem

log = logging.getLogger("unifs.writes")

MAX_KEY_BYTES = 1024  # S3, GCS and Azure all cap object names at 1,024 bytes
# a file name (one path component) longer than this is refused with ENAMETOOLONG on every store,
# as local file systems do: GCS and Azure would take it, SeaweedFS refuses it only at upload
NAME_MAX = 255
FRESH_CHECK_S = 2.0  # how long a mkdir asks the store whether its name is free (see _absent_in_store)
# libfuse renames a file that is unlinked (or renamed over) while open to this name and
# unlinks that at the last close
HIDE_GRACE_S = 0.05  # see Writes.settle_hidden
_HIDDEN = re.compile(r"\.fuse_hidden[0-9a-f]{16}")  # libfuse: node id and counter, 8 hex digits each


@dataclass
class _Hidden:
    """A file unlinked (or renamed over) while open, under libfuse's hidden name."""
    old: str
    mount: Mount
    key: str
    staged: Optional[StagedFile]
    attr: Attr
    delete: bool  # the object is deleted from the store at the last close, unless the name was reused
    moved: bool = False  # with its directory: a copy, whose version is not the one unlinked
    seen: Optional[Future] = None  # a HEAD made at the unlink: the version to delete at the last close
    # held while that delete is decided and made: a reuse of the name waits for it, or the delete,
    # already on its way, removed the new object uploaded right after (seen under load)
    lock: threading.Lock = field(default_factory=threading.Lock)
WRITE_BACK_QUIET = 1.0  # seconds without writes before a file still open is written back
# a small new file written without pauses (a log line every step) is written back at least
# every this many write_back intervals all the same: its readers saw nothing until the job ended
WRITE_BACK_STREAM_FACTOR = 6
WRITE_BACK_STREAM_MAX = 64 << 20  # bytes: bigger ones being streamed are checkpoints, not logs


def _err(code: int, path: str, why: str = "") -> OSError:
    return OSError(code, why or os.strerror(code), path)


def _b(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _full_key(mount: Mount, key: str) -> str:
    """The object name in the bucket: the mount URL's prefix plus key."""
    prefix = mount.entry.url.split("://", 1)[1].partition("/")[2].strip("/")
    return f"{prefix}/{key}" if prefix else key


def _dirs_from(top: str, keys) -> list[str]:
    """top and every directory between it and the keys below it, deepest first (to remove)."""
    dirs = {top}
    for k in keys:
        d = posixpath.dirname(k)
        while under(d, top) and d not in dirs:
            dirs.add(d)
            d = posixpath.dirname(d)
    return sorted(dirs, key=len, reverse=True)


class Writes:
    def __init__(self, fs: "FileSystem", settings: WriteSettings, staging_dir: str):
        self.fs = fs
        self.settings = settings
        self.staging_dir = staging_dir
        self._area: Optional[StagingArea] = None
        self._staged: dict[str, StagedFile] = {}
        self._dirs: set[str] = set()
        # files unlinked while open: libfuse's hidden name -> the file; and the names they had,
        # which are gone for the mount while the object stays in the store until the last close
        # (open readers keep reading it; "" marks a directory removed around such a file)
        self._hidden: dict[str, _Hidden] = {}
        self._finishing: dict[str, _Hidden] = {}  # hidden name -> file whose last close is being handled
        self._tombstones: dict[str, str] = {}
        self._lock = threading.RLock()
        # names hidden a moment ago, and by which thread (see settle_hidden)
        self._hid_at: dict[str, tuple[float, int]] = {}
        self._revived = threading.Condition(self._lock)
        self.pool = ThreadPoolExecutor(settings.upload_threads, thread_name_prefix="unifs-up")
        self._fresh = ThreadPoolExecutor(4, thread_name_prefix="unifs-mkdir")  # see _absent_in_store
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock_fd: Optional[int] = None

    def start(self) -> None:
        """Check the staging directory, resume an earlier run's pending uploads and start
        the background uploader."""
        from unifs.errors import UserError

        try:
            probe = os.path.join(self.area.directory, ".probe")
            with open(probe, "wb") as f:
                f.write(b"ok")
            os.unlink(probe)
        except OSError as e:
            raise UserError(f"staging directory {self.staging_dir} (write.staging_dir) is not usable: "
                            f"{e.strerror}") from None
        self._lock_fd = self.area.lock()
        self.resume(self.area.recover())
        self._thread = threading.Thread(target=self._loop, name="unifs-uploader", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.retry_pending()
            except Exception:  # noqa: BLE001 - the uploader must outlive any one bad file
                log.exception("background uploader")

    @property
    def area(self) -> StagingArea:
        if self._area is None:
            self._area = StagingArea(self.staging_dir)
            cache = self.fs.cache
            if cache is not None and getattr(cache, "disk", None) is not None:
                self._area.room_maker = cache.disk.make_room
        return self._area

    # -- what the read side asks ---------------------------------------------------
    def staged(self, path: str) -> Optional[StagedFile]:
        return self._staged.get(path)

    def _drop_if_removed(self, path: str) -> None:
        """A staged copy deleted from the staging directory while the daemon runs (how a
        rejected upload is cleared, design.md): the daemon forgets it too. It went on serving
        the deleted copy and took new writes into it, which were never uploaded."""
        st = self._staged.get(path)
        if st is None or st.held or os.path.exists(st.data_path):
            return
        if not st.upload_lock.acquire(blocking=False):
            return  # an upload (which will fail on the missing file) first; the next call drops it
        try:
            with self._lock:
                if self._staged.get(path) is not st or st.held:
                    return
                del self._staged[path]
                st.deleted = True  # an upload waiting for the lock finds nothing to do
            st.remove()  # its descriptor, and a sidecar left behind
        finally:
            st.upload_lock.release()
        log.warning("%s: its staged copy %s was deleted; the store's version counts again", path, st.data_path)
        self.fs.meta.invalidate(path)
        self.fs.forget_in_kernel([path])

    def attach(self, path: str) -> Optional[StagedFile]:
        """A read-only open of a path being written: it reads the staged copy."""
        self._drop_if_removed(path)
        with self._lock:
            st = self._staged.get(path)
            if st is not None:
                st.readers += 1
            return st

    def attach_reader(self, path: str, st: StagedFile) -> bool:
        """An open reader of the stored version joins the staged copy (FileSystem._readers_follow),
        if that is still the path's."""
        with self._lock:
            if self._staged.get(path) is not st or st.removed:
                return False
            st.readers += 1
            return True

    def attr(self, path: str) -> Optional[Attr]:
        hidden = self._hidden.get(path)
        if hidden is not None:
            st = hidden.staged
            return hidden.attr if st is None else Attr(is_dir=False, size=st.size, mtime=st.mtime)
        if path in self._staged:
            self._drop_if_removed(path)
        st = self._staged.get(path)
        if st is not None:
            return Attr(is_dir=False, size=st.size, mtime=st.mtime)
        if path in self._dirs:
            return Attr.directory()
        return None

    def keeps_below(self, path: str) -> bool:
        """A directory kept in the daemon below path makes path one too: path may have existed
        only through keys that are gone (the last one removed, by us or another client; and
        SeaweedFS lists an emptied folder in its parent's listing, but no key below it). Asked
        only once the store has no such name: a scan of the kept directories."""
        top = path.rstrip("/") + "/"
        with self._lock:
            return any(d.startswith(top) for d in self._dirs)

    def children(self, path: str) -> dict[str, Attr]:
        top = path.rstrip("/") + "/"
        with self._lock:
            paths = {p for p in self._staged if posixpath.split(p)[0] == path}
            # kept directories here, and those holding one kept further down
            paths.update(top + d[len(top):].split("/", 1)[0] for d in self._dirs if d.startswith(top))
        # attr() outside the lock: it may drop a hand-deleted staged copy, which calls into the
        # file system (its own lock)
        out = {posixpath.basename(p): self.attr(p) for p in paths if posixpath.basename(p)}
        return {k: v for k, v in out.items() if v is not None}

    def all_staged(self) -> list[StagedFile]:
        with self._lock:
            return list(self._staged.values())

    # -- checks ------------------------------------------------------------------
    def writable(self, path: str) -> tuple[Mount, str]:
        mount, key = self.fs.ns.resolve(path)
        if mount is None or mount.read_only:
            raise _err(errno.EROFS, path)
        if not mount.store.has_dirs and len(_b(_full_key(mount, key))) > MAX_KEY_BYTES:
            raise _err(errno.ENAMETOOLONG, path, f"the store's keys are at most {MAX_KEY_BYTES} bytes")
        if len(_b(posixpath.basename(path))) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG, path, f"file names are at most {NAME_MAX} bytes")
        if self.fs.ns.is_virtual_dir(path) and key == "" and not self.fs.ns.is_mount_point(path):
            raise _err(errno.EROFS, path)
        problem = mount.store.name_problem(key) if key else None
        if problem:
            raise _err(errno.EINVAL, path, f"a name this store cannot keep: {problem}")
        return mount, key

    def _parent_is_dir(self, path: str) -> None:
        parent = posixpath.dirname(path)
        if not self.fs.getattr(parent).is_dir:
            raise _err(errno.ENOTDIR, parent)

    def _exists(self, path: str) -> Optional[Attr]:
        try:
            return self.fs.getattr(path)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise

    # -- files -----------------------------------------------------------------------
    def is_hidden(self, path: str) -> bool:
        return bool(self._hidden) and path in self._hidden

    def has_tombstones(self) -> bool:
        return bool(self._tombstones)

    def is_tombstoned(self, path: str) -> bool:
        return bool(self._tombstones) and path in self._tombstones

    def was_hidden(self, path: str) -> bool:
        """A name of libfuse's for a file unlinked while open, that file gone since."""
        return bool(_HIDDEN.fullmatch(posixpath.basename(path))) and path not in self._hidden

    def settle_hidden(self, path: str) -> None:
        """A rename over a file that is open reaches the daemon as two calls from one thread:
        libfuse first hides the open target (as for an unlink), then renames the new file onto
        its name. A lookup from another thread in between found no file at all, where rename()
        promises the old one or the new one (a reader polling a checkpoint replaced with
        os.replace got ENOENT). A lookup of a name hidden within HIDE_GRACE_S waits for that
        second call; after an unlink none comes, and the name is gone as before."""
        with self._lock:
            while True:
                hid = self._hid_at.get(path)
                if hid is None or path not in self._tombstones or hid[1] == threading.get_ident():
                    return
                left = hid[0] + HIDE_GRACE_S - time.monotonic()
                if left <= 0:
                    self._hid_at.pop(path, None)
                    return
                self._revived.wait(left)

    def _revive(self, path: str) -> None:
        """A name unlinked while open is used again: the object under it will be replaced, so
        the last close of the old file must not delete it (or, if that delete is under way,
        the new object is made only after it)."""
        with self._lock:
            hidden = self._tombstones.pop(path, None)
            h = (self._hidden.get(hidden) or self._finishing.get(hidden)) if hidden else None
            if self._hid_at.pop(path, None) is not None:
                self._revived.notify_all()
        if h is not None:
            with h.lock:
                h.delete = False

    def create_or_open(self, path: str, truncate: bool, exclusive: bool) -> tuple[StagedFile, bool]:
        """The kernel's CREATE: it found no such name (the daemon's listing, within its TTL,
        said so). An open without O_TRUNC keeps what another client may have put there since
        (`>>`, 'a', touch, O_CREAT alone: it was replaced by the few bytes written), and
        O_EXCL fails on it; so those ask the store once. Returns (file, created)."""
        checked = unreachable = False
        # a name removed through this mount while its file was open: the object still under it
        # is that file's, deleted for the user, and goes when this one is uploaded (`rm f;
        # touch f` kept its old content: the empty new file was taken for one not meant to
        # replace an object another client had put there)
        removed_here = self.is_tombstoned(path)
        if not truncate or exclusive:  # O_EXCL|O_TRUNC too: filelock's SoftFileLock opens so
            mount, key = self.writable(path)
            if key and path not in self._staged and not removed_here:
                try:
                    info = mount.store.head(key)
                    checked = True
                except StoreError as e:
                    if exclusive:  # a lock file must be certain it is the only one
                        raise _err(errno.EIO, path, f"cannot ask the store whether it has this file "
                                   f"(O_EXCL): {e.strerror}") from None
                    # a log opened for appending while the store is down is staged, and uploads
                    # once it is back, unless an object turns up there first (_found_unknown_object)
                    info, unreachable = None, True
                    log.info("%s: cannot ask the store whether it has this file (%s); created as new, "
                             "and not uploaded over an object the store turns out to have", path, e.strerror)
                if info is not None:
                    if exclusive:
                        # a cached "no such file" (a listing) is stale: stat and open must
                        # agree with this EEXIST; the listing stays, with the file in it
                        self.fs.meta.put_child(path, Attr.from_object(info, mount.read_only), mount.ttl)
                        raise _err(errno.EEXIST, path)
                    self.fs.changed(path, None)
                    return self.open(path, truncate=False), False
        st = self.create(path, truncate)
        st.checked_absent = checked or removed_here
        st.unchecked_create = unreachable and not truncate
        return st, True

    def create(self, path: str, truncate: bool = False) -> StagedFile:
        mount, key = self.writable(path)
        if not key:
            raise _err(errno.EISDIR, path)
        self._parent_is_dir(path)
        self._revive(path)
        with self._lock:
            st = self._staged.get(path)
            if st is None:
                st = self.area.create(path, mount.path, key, mount.entry_url_redacted, mount.site)
                st.created_truncating = truncate
                self._staged[path] = st
                st.opens += 1
            else:
                st.opens += 1
                self._truncate_reopened(st, self._record_reopened(st, truncate=True))
            st.touch()  # an empty new file is uploaded too
        self.fs.meta.forget_entry(path)
        return st

    def open(self, path: str, truncate: bool) -> StagedFile:
        mount, key = self.writable(path)
        self._drop_if_removed(path)
        try:
            attr = None if path in self._staged else self.fs.getattr(path)  # a HEAD: not under the lock
        except OSError as e:
            if e.errno != errno.ENOENT or not truncate:
                raise
            # gone from the store (deleted behind the mount, or a staged copy deleted by hand)
            # while the kernel still holds the name: `> file` then reaches the daemon as an open
            # with O_TRUNC, not as a create (the kernel keeps O_CREAT to itself)
            return self.create(path, truncate=True)
        if attr is not None and attr.is_dir:
            raise _err(errno.EISDIR, path)
        with self._lock:
            st = self._staged.get(path)
            if st is None:
                if attr is None:
                    attr = self.fs.getattr(path)  # staged a moment ago, uploaded and discarded since
                base = Base(attr.size, self.fs.fetcher(path, mount, key, attr.etag)) if attr.size else None
                st = self.area.create(path, mount.path, key, mount.entry_url_redacted, mount.site, base)
                st.opened_over = (attr.etag,)  # which readers of the stored version may join it
                st.replaces_object = True  # never written back half-way: only close/fsync replace it
                self._staged[path] = st
            st.opens += 1
            record_late = self._record_reopened(st, truncate)
        if truncate:
            self._truncate_reopened(st, record_late)
        return st

    def _record_reopened(self, st: StagedFile, truncate: bool) -> bool:
        """A writer opens a staged copy again (counted in st.opens; under self._lock, as an
        upload records its result under it). True: record it after the truncate."""
        st.rejected = False  # written again: a new attempt (the store may take it now)
        if not st.dirty:
            return False
        # closed with a pending upload and open again: recorded as open before any write, or
        # a daemon dying mid-rewrite left "pending" and the next one uploaded a half-rewritten file
        try:
            st.save()
            return False
        except OSError as e:
            # a full disk, often full of this very copy: O_TRUNC frees it first
            if truncate and e.errno == errno.ENOSPC:
                return True
            st.opens -= 1  # the open fails; the copy stays pending as recorded before
            raise

    def _truncate_reopened(self, st: StagedFile, record_late: bool) -> None:
        try:
            st.truncate(0)
            if record_late:
                st.save()
        except OSError:
            self.release(st)  # the open fails: no handle holds it
            raise
        # a copy a reader kept after a local write failed (ENOSPC): truncated, nothing torn
        # is left, and the new content uploads (its close failed on the old error)
        st.write_error = 0

    def flush(self, st: StagedFile) -> None:
        """Upload if changed; EIO (data kept) if the store cannot take it."""
        st.flushed_gen = st.gen  # the application's own close() or fsync: this content is meant
        if st.write_error:
            raise _err(st.write_error, st.path, "an earlier write to this file failed locally; "
                       "it is not uploaded (the store keeps its previous content)")
        if st.deleted or not st.dirty:
            return
        if not os.path.exists(st.data_path):
            log.error("%s: its staged copy %s was deleted while the file was open; these writes are "
                      "lost", st.path, st.data_path)
            raise _err(errno.EIO, st.path, f"its staged copy {st.data_path} was deleted while open; "
                       "the writes since the last upload are lost")
        try:
            self._upload(st)
        except StoreError as e:
            raise _err(errno.EIO, st.path, f"upload failed, data kept at {st.data_path}: {e.strerror}") \
                from None

    def release(self, st: StagedFile, reader: bool = False) -> None:
        """reader: a read-only handle's (attach, attach_reader). Readers keep the staged copy
        (its descriptor) but are not writers: a file only they hold counts as closed, so its
        failed upload goes to the background uploader, and truncate(path) uploads at once."""
        with self._lock:
            if reader:
                st.readers -= 1
                if st.readers > 0 or st.opens > 0 or st.dirty and not st.deleted and not st.write_error:
                    return
                self._discard(st)
                return
            st.opens -= 1
            if st.opens > 0:
                return
            pending = st.dirty and not st.deleted and not st.write_error
            if not pending and st.readers == 0:
                self._discard(st)
            elif not pending and not st.write_error:
                st.drop_record(deleted=st.deleted)  # kept for its readers only
        if pending:
            st.save()  # closed with changes the store does not have: the background uploader takes over
        elif st.write_error and not st.deleted and not st.replaces_object and not st.uploaded_gen \
                or st.found_in_store and not st.deleted:
            # a new file whose writes failed locally never reaches the store: the kernel must
            # not go on showing it (stat found it, open said ENOENT); one created over an object
            # the daemon did not know of and left as it was: the kernel was told it was empty
            self.fs.changed(st.path, None)
            self.fs.forget_in_kernel([st.path])

    def _discard(self, st: StagedFile) -> None:
        with self._lock:  # removed before anyone can find it gone from _staged (see rename)
            if self._staged.get(st.path) is st:
                del self._staged[st.path]
            st.remove()

    def _upload(self, st: StagedFile, write_back: bool = False) -> None:
        with st.upload_lock:
            if st.deleted:
                return
            gen = st.gen
            if gen == st.uploaded_gen:
                return
            st.load()
            mount, _ = self.fs.ns.resolve(st.path)
            self._record(st)
            started = time.monotonic()
            try:
                if self._found_unknown_object(st, mount, write_back, gen):
                    return
                info = mount.store.put_file(st.key, st.data_path)
            except StoreError as e:
                st.failures += 1
                st.error = e.strerror
                st.rejected = isinstance(e, StoreRejected)
                st.next_retry = time.monotonic() + min(self.settings.retry_max_interval,
                                                       2.0 ** min(st.failures, 10))
                self._record(st)
                if write_back and st.opens > 0 and st.gen != gen and not isinstance(e, (AccessDenied, StoreRejected)):
                    # a write-back of a file its writer went on changing: the upload read a file
                    # growing under it (gcsfs then finds its upload session gone). Its close
                    # uploads the current data, and reports a failure of that one
                    st.rejected = False
                    log.info("%s: write-back upload superseded by new writes (%s)", st.path, e.strerror)
                elif st.rejected:
                    log.error("%s: the store rejects the upload to %s (%s); not retried, the data is kept "
                              "at %s", st.path, st.key, e.strerror, st.data_path)
                else:
                    log.error("%s: upload to %s failed (%s); the data is kept at %s and retried in the "
                              "background", st.path, st.key, e.strerror, st.data_path)
                raise
            self.exists_in_store(posixpath.dirname(st.path))
            st.uploaded_gen = gen
            st.failures = 0
            st.error = None
            st.last_upload = time.monotonic()
            if not st.dirty:
                # recorded clean, whoever holds it now or opens it next: a restarted daemon drops
                # it. Left "pending" for a handle that came in before release_if_idle, it was
                # uploaded again after a crash, over newer objects
                self._record(st, uploaded=True)
            log.debug("%s: uploaded %d bytes in %.2fs", st.path, info.size, time.monotonic() - started)
            self.fs.uploaded(st.path, mount, info, current=gen == st.gen)

    def _record(self, st: StagedFile, uploaded: bool = False) -> None:
        """The staged file's record, around an upload: a staging disk full (often of this very
        file) must not stop the upload that frees it; the record on disk stays as it was (open
        or pending: a daemon dying now lists or uploads it, nothing is lost). uploaded: the store
        has exactly this copy; a record that cannot say so is removed instead (an unlink needs
        no room), or a restart would upload it again over newer objects."""
        try:
            st.save()
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            if uploaded:
                st.drop_record()
                return
            log.warning("%s: cannot update its record in the staging directory (disk full); "
                        "uploading it all the same", st.path)

    def _found_unknown_object(self, st: StagedFile, mount: Mount, write_back: bool, gen: int) -> bool:
        """A file created where the daemon knew no object (from a listing within its TTL), about
        to be uploaded empty or half-written: another client may have put an object there since.
        `cmd > f` closes a copy of its descriptor before writing, touch closes an empty file, and
        write-back uploads a file still being written: none of these may replace that object (a
        writer that then failed with ENOSPC left a 5 MB object empty). One HEAD finds out; if
        there is one, the file replaces it only at a close with data, like a file opened over a
        known object. Left empty, it empties the object (at a later close, or by the uploader
        after its release, as `: > f` empties a known one) if it was created with O_TRUNC, never
        if not (touch leaves the object as it is), and never after a failed write. True: nothing
        to upload now. A file created without O_TRUNC while the store could not be asked
        (`>>` with the store down) meant to append to or keep such an object: it is refused
        (kept, "failed" in `unifs status`) rather than uploaded over it. Called with the upload
        lock held."""
        if st.uploaded_gen != 0 or st.replaces_object or st.checked_absent or \
                not (write_back or st.size == 0 or st.unchecked_create):
            return False
        info = mount.store.head(st.key)
        if info is None:
            if st.unchecked_create:
                # asked now: an object a retry of this upload finds is most likely its own
                # (a PUT whose reply was lost)
                st.unchecked_create, st.checked_absent = False, True
            return False
        if st.unchecked_create and st.size > 0:
            raise StoreRejected(f"the store has an object at {st.path} ({info.size} bytes), which this file, "
                                "created without O_TRUNC while the store was unreachable, was not meant to "
                                "replace; move the staged copy into place yourself if it should")
        st.replaces_object = True
        st.found_in_store = True
        log.info("%s: an object of this name is in the store (put there since the daemon listed its "
                 "directory); it is replaced only when a writer closes this file with data", st.path)
        if st.size == 0 and st.gen == gen and not st.created_truncating:
            st.uploaded_gen = gen  # nothing to put over it: the store's object stays
            st.save()
        return True

    def retry_pending(self) -> None:
        """Background work: pending uploads (with backoff) and write-back of open files."""
        now = time.monotonic()
        for st in self.all_staged():
            if not st.held and not st.deleted and not os.path.exists(st.data_path):
                self._drop_if_removed(st.path)  # also a rejected one: its descriptor holds the space
                continue
            if st.deleted or not st.dirty or st.write_error or st.rejected or st.upload_lock.locked():
                continue
            if st.opens == 0:
                if now < st.next_retry:
                    continue
            else:
                # write-back shows progress of new files (logs, event files) once their writer
                # pauses; a file replacing an object, or one still being streamed, waits for
                # close/fsync, so a good previous version is never replaced by a partial one
                mount, _ = self.fs.ns.resolve(st.path)
                wb = mount.entry.write_back if mount is not None else 0
                streamed = now - st.last_write < WRITE_BACK_QUIET
                if streamed and st.size <= WRITE_BACK_STREAM_MAX:
                    streamed = now - st.last_upload < wb * WRITE_BACK_STREAM_FACTOR
                if wb <= 0 or st.replaces_object or streamed or now - st.last_upload < wb or now < st.next_retry:
                    continue
            self.pool.submit(self._background_upload, st)

    def _background_upload(self, st: StagedFile) -> None:
        try:
            self._upload(st, write_back=st.opens > 0)
        except StoreError:
            return
        except Exception as e:  # noqa: BLE001 - keep the uploader alive, keep the data
            # not a store error (a local read of the staged data, a bug): back off like one,
            # and say it once with the traceback, not every half second
            st.failures += 1
            st.error = f"{type(e).__name__}: {e}"
            st.next_retry = time.monotonic() + min(self.settings.retry_max_interval, 2.0 ** min(st.failures, 10))
            if st.failures == 1:
                log.exception("%s: background upload failed; the data is kept at %s", st.path, st.data_path)
            try:
                st.save()
            except OSError:
                pass
            return
        self.release_if_idle(st)

    def resume(self, docs) -> int:
        """Adopt pending uploads of an earlier daemon; returns how many."""
        n = 0
        for doc, sid in docs:
            if doc.get("state") not in (PENDING, STRANDED):
                continue
            mount, key = self.fs.ns.resolve(doc["path"])
            if mount is None or mount.read_only or key != doc["key"] or \
                    mount.entry_url_redacted != doc["url"] or doc.get("site") not in (None, mount.site):
                log.warning("%s: a pending upload from an earlier run no longer matches the mount table "
                            "(it was for %s/%s%s); not uploaded, its data stays at %s", doc["path"], doc["url"],
                            doc["key"], f" at {doc['site']}" if doc.get("site") else "", doc.get("data"))
                try:
                    self.area.strand(doc, sid)  # `umount` must not wait for it
                except OSError as e:
                    log.warning("cannot record staged file %s: %s", doc.get("data"), e.strerror)
                continue
            with self._lock:
                if doc["path"] in self._staged:
                    continue
                st = self._staged[doc["path"]] = self.area.adopt(doc, sid)
                # closed before the earlier daemon stopped: uploaded as it is over whatever the
                # store holds now (no _found_unknown_object check: an empty one was meant so),
                # unless it was created while the store could not be asked
                st.replaces_object = not st.unchecked_create
            if doc.get("state") == STRANDED:
                try:
                    st.save()  # pending again: its mount is back
                except OSError as e:
                    log.warning("cannot record staged file %s: %s", st.data_path, e.strerror)
            n += 1
        if n:
            log.info("resuming %d pending upload(s) from an earlier run", n)
        return n

    def truncate(self, path: str, length: int, st: Optional[StagedFile], opened=None) -> None:
        """opened(staged file): called once truncate(path) has opened it, before it changes."""
        if st is not None:  # an open handle's: held open by it
            self.writable(path)
            st.truncate(length)
            return
        # truncate(path): opened for the call, so a close finishing on another thread cannot
        # discard the staged copy under it (ftruncate of a closed descriptor: EBADF, or EIO
        # with "writes lost" logged)
        st = self.open(path, truncate=False)
        try:
            if opened is not None:
                opened(st)
            st.truncate(length)
            if st.opens == 1:
                # a change of its own; while a writer has the file open, its close uploads
                # (never half of a new version over the stored one)
                self.flush(st)
        finally:
            self.release(st)

    def release_if_idle(self, st: StagedFile) -> None:
        with self._lock:
            if st.held or st.dirty:
                return
            self._discard(st)
        if st.found_in_store and not st.deleted:
            # the store's object stayed (another client's, found before the upload): the name
            # is that object now, not the empty file the kernel and the cached listing knew
            self.fs.changed(st.path, None)
            self.fs.forget_in_kernel([st.path])

    def unlink(self, path: str) -> None:
        with self._lock:
            h = self._hidden.pop(path, None)
            if h is not None:
                self._finishing[path] = h
        if h is not None:  # libfuse's unlink at the last close of a file unlinked while open
            try:
                self._finish_hidden(h)
            finally:
                # only now: a lookup while the object was still in the store would have found
                # it, and cached the deleted file as present for the metadata TTL
                with self._lock:
                    self._finishing.pop(path, None)
                    if self._tombstones.get(h.old) == path:
                        del self._tombstones[h.old]
                self.fs.changed(h.old, None)
            return
        mount, key = self.writable(path)
        attr = self.fs.getattr(path)
        if attr.is_dir:
            raise _err(errno.EISDIR, path)
        self._drop_staged(path, lambda: self._store(path, mount.store.delete, key))
        self._keep_parent(mount, path)
        self.fs.changed(path, None)

    def _keep_parent(self, mount: Mount, path: str) -> None:
        """The directory of an entry just removed or renamed away stays a directory, as on
        any file system: on an object store it existed only through its keys, so after its last
        one it would vanish, and `rm -r` (unlink, then rmdir) would fail with ENOENT. Not one
        its listing shows other entries in: it exists through their keys, and kept it would
        outlive them when another client removes them."""
        if mount.store.has_dirs:
            return
        parent, gone = posixpath.split(path)
        pm, pk = self.fs.ns.resolve(parent)
        if pm is not mount or not pk:  # a mount's root always exists
            return
        listing = self.fs.meta.get_listing(parent)
        if listing is not None and self.has_entries(parent, listing, besides=gone):
            return
        with self._lock:
            self._dirs.add(parent)

    def has_entries(self, directory: str, names, besides: Optional[str] = None) -> bool:
        """Whether names listed in directory hold one besides `besides` that is not unlinked
        while open (its object stays in the store until the last close)."""
        prefix = directory.rstrip("/") + "/"
        return any(n != besides and not self.is_tombstoned(prefix + n) for n in names)

    def exists_in_store(self, directory: str) -> None:
        """The store lists entries in `directory` (or holds a file in it): kept in the daemon
        (mkdir, _keep_parent), it exists through their keys from now on, and goes when they
        go, as for any other client. Its parents stay kept: an unlink keeps only the
        directory it empties again."""
        if directory in self._dirs:
            mount, _ = self.fs.ns.resolve(directory)
            if mount is not None:
                # first: a listing of its parent cached while only the daemon knew it lacks it,
                # and would answer "no such directory" once it is not kept
                self.fs.meta.put_child(directory, Attr.directory(mount.read_only), mount.ttl)
            with self._lock:
                self._dirs.discard(directory)

    def _drop_staged(self, path: str, delete_object=None) -> None:
        """Forget the staged file of path (its upload will not happen). delete_object, if given,
        runs first, under the file's upload lock: if it fails, nothing is dropped (an upload still
        pending stays), and no background upload can land after it."""
        with self._lock:
            st = self._staged.get(path)
        if st is None:
            if delete_object is not None:
                delete_object()
            return
        with st.upload_lock:
            if delete_object is not None:
                delete_object()
            with self._lock:
                if self._staged.get(path) is st:
                    del self._staged[path]
            st.deleted = True
        if not st.held:
            st.remove()

    # -- directories -------------------------------------------------------------------
    def mkdir(self, path: str) -> None:
        mount, key = self.writable(path)
        if not key or self._exists(path) is not None:
            raise _err(errno.EEXIST, path)
        # asked afresh, not from a listing of the parent that may be older than another
        # client's mkdir: then it is known to be empty (below)
        absent = self._absent_in_store(mount, path, key)
        with self._lock:
            if self._tombstones.get(path) == "":
                del self._tombstones[path]
        self._parent_is_dir(path)
        if not self._store(path, mount.store.make_dir, key):
            with self._lock:
                self._dirs.add(path)
        self.fs.changed(path, Attr.directory())
        if absent:
            # empty, so each file then created in it is looked up without asking the store (a
            # HEAD and a LIST per new file of a checkpoint directory)
            self.fs.meta.put_listing(path, {}, mount.ttl, self.fs.meta.changes(path))

    def _absent_in_store(self, mount: Mount, path: str, key: str) -> bool:
        """No object and no key below `key`, asked now (EEXIST if there is one). False where
        that is not known: the store cannot be asked (a mkdir still works, kept in the
        daemon), or it has real directories (listed cheaply, not worth a guess)."""
        if mount.store.has_dirs or path in self._staged:
            return False
        with self._lock:
            if any(under(t, path) for t in self._tombstones):
                return False  # removed while open: its object is still there, the name is free
        if self.fs.asked_store_lately(path):
            return True  # the kernel's lookup of the name, a moment ago, went to the store
        # with the store down a mkdir works as before (kept in the daemon), without waiting out
        # the store's timeouts and retries
        check = self._fresh.submit(self.fs.fresh_lookup, path, mount, key)
        try:
            found = check.result(timeout=FRESH_CHECK_S)
        except (OSError, FutureTimeout):
            return False
        if found is not None:
            raise _err(errno.EEXIST, path)
        return True

    def rmdir(self, path: str) -> None:
        if self.is_tombstoned(path):
            raise _err(errno.ENOENT, path)
        mount, key = self.writable(path)
        if not key or self.fs.ns.is_virtual_dir(path):
            raise _err(errno.EBUSY, path)
        attr = self.fs.getattr(path)
        if not attr.is_dir:
            raise _err(errno.ENOTDIR, path)
        self.fs.meta.invalidate(path)
        if self.fs.readdir(path) or self._hidden_keys_below(mount, path, key):
            raise _err(errno.ENOTEMPTY, path)
        with self._lock:
            self._dirs.discard(path)
            if any(under(t, path) for t in self._tombstones):
                self._tombstones[path] = ""  # its open file's object keeps the prefix alive
        self._store(path, mount.store.remove_dir, key)
        self._keep_parent(mount, path)
        self.fs.changed(path, None)

    def _hidden_keys_below(self, mount: Mount, path: str, key: str) -> bool:
        """Objects below an empty-looking directory that the listing does not show (`a//b`, a
        name no client can address): rmdir said done and the directory stayed. A store with
        real directories refuses to remove a non-empty one itself."""
        if mount.store.has_dirs:
            return False
        top = mount.path.rstrip("/")
        left = [k for k in self._store(path, mount.store.list_keys, key)
                if k != key + "/" and not self.is_tombstoned(f"{top}/{k.rstrip('/')}")]
        if left:
            log.info("rmdir %s: the store holds %d object(s) below it that are not shown, e.g. %r",
                     path, len(left), left[0])
        return bool(left)

    # -- rename ------------------------------------------------------------------------
    def check_rename(self, old: str, new: str) -> tuple:
        """(mount, key, mount, key) of a rename the store can make, else the errno Linux gives.
        A mount point (or a directory holding one) cannot move (EBUSY), checked before EXDEV,
        which would make `mv` copy a nested mount's files into its parent's store, and before
        the target's EROFS (a top-level mount renamed into the read-only virtual root)."""
        mo, ko = self.fs.ns.resolve(old)
        if mo is not None and not mo.read_only and (not ko or self.fs.ns.is_virtual_dir(old)):
            raise _err(errno.EBUSY, old)
        m1, k1 = self.writable(old)
        m2, k2 = self.writable(new)
        if not k1 or not k2 or self.fs.ns.is_virtual_dir(old) or self.fs.ns.is_virtual_dir(new):
            raise _err(errno.EBUSY, old)
        if m1 is not m2:
            raise _err(errno.EXDEV, new)
        return m1, k1, m2, k2

    def rename(self, old: str, new: str) -> None:
        if _HIDDEN.fullmatch(posixpath.basename(new)) and posixpath.dirname(new) == posixpath.dirname(old) \
                and (self.fs.is_open(old) or getattr(self._staged.get(old), "opens", 0) > 0):
            self._hide(old, new)
            return
        m1, k1, _, k2 = self.check_rename(old, new)
        src = self.fs.getattr(old)
        if old == new:
            return
        self._parent_is_dir(new)
        dst = self._exists(new)
        if dst is None and src.is_dir and not m1.store.has_dirs:
            # asked afresh: a cached "no such name" (a listing, a mkdir's) may be older than
            # another client's directory there, which the moves would merge into and overwrite
            dst = self.fs.fresh_lookup(new, m1, k2)
        self._revive(new)  # a name unlinked while open, now replaced
        if src.is_dir:
            if under(new, old):
                raise _err(errno.EINVAL, new)
            if dst is not None and not dst.is_dir:
                raise _err(errno.ENOTDIR, new)
            if dst is not None:
                self.fs.meta.invalidate(new)
                if self.fs.readdir(new) or self._hidden_keys_below(m1, new, k2):
                    raise _err(errno.ENOTEMPTY, new)
            try:
                self._rename_dir(m1, old, k1, new, k2, onto=dst is not None)
            except BaseException:
                # half done (store gone mid-way): both trees hold some of the objects now, which
                # the cached listings of either do not show
                self.fs.changed(old, None, subtree=True)
                self.fs.changed(new, None, subtree=True)
                raise
        else:
            if dst is not None and dst.is_dir:
                raise _err(errno.EISDIR, new)
            self._rename_file(m1, old, k1, new, k2, over=dst is not None)
        self._keep_parent(m1, old)
        self.fs.changed(old, None, subtree=src.is_dir)
        self.fs.changed(new, None, subtree=src.is_dir)

    def _hide(self, old: str, new: str) -> None:
        """unlink() of a file that is still open (or a rename over it), as libfuse does it: a
        rename to a hidden name, unlinked at the last close. The name is gone for the mount at
        once (lookups, listings); the object stays in the store until that last close, so open
        readers keep reading it, as NFS does with its .nfs files. A writer's changes are never
        uploaded. A copy to .fuse_hidden* in the store would cost a server-side copy, show a stray
        object to everyone and make `rm -r` fail."""
        mount, key = self.writable(old)
        attr = self.fs.getattr(old)
        if attr.is_dir:
            raise _err(errno.EISDIR, old)
        with self._lock:
            st = self._staged.pop(old, None)
        in_store = True
        if st is not None:
            with st.upload_lock:
                try:
                    self._load_base(st, old)  # the name may be reused and its object replaced
                except OSError:
                    pass  # reads of it fail later, as for any object replaced while open
                st.deleted = True
                in_store = st.uploaded_gen != 0 or st.replaces_object
                st.path = new
                if st.opens == 0:
                    st.drop_record(deleted=True)  # closed, held by readers: its changes must never upload
        hidden = _Hidden(old, mount, key, st, attr, delete=in_store)
        if in_store:
            # in the background: an unlink (`rm` of an open file) must not wait on the store
            hidden.seen = self._fresh.submit(mount.store.head, key)
        with self._lock:
            self._hidden[new] = hidden
            self._tombstones[old] = new
            now = time.monotonic()
            for name in [n for n, (t, _) in self._hid_at.items() if now - t > HIDE_GRACE_S]:
                del self._hid_at[name]  # unlinked, not replaced: nothing left to wait for
            self._hid_at[old] = (now, threading.get_ident())
        self._keep_parent(mount, old)  # its object goes at the last close; the directory stays
        self.fs.forget_name(old)

    def _finish_hidden(self, h: _Hidden) -> None:
        st = h.staged
        if st is not None and not st.held:
            st.remove()
        with h.lock:
            if h.delete and not self._replaced_since(h):
                try:
                    h.mount.store.delete(h.key)
                except StoreError as e:
                    if e.errno != errno.ENOENT:
                        log.warning("%s: unlinked while open; deleting %s at its last close failed: %s",
                                    h.old, h.key, e.strerror)
        gone = []
        with self._lock:
            # directories removed around it are gone for real now
            for d in [d for d, v in self._tombstones.items() if v == "" and under(h.old, d)]:
                # (its own entry goes only after this, in unlink: it does not count)
                if not any(under(t, d) and t not in (d, h.old) for t, v2 in self._tombstones.items() if v2):
                    del self._tombstones[d]
                    gone.append(d)
        for d in sorted(gone, reverse=True):
            # their rmdir found the file's object still there: a store that keeps emptied
            # prefixes (SeaweedFS) would list them again
            mount, key = self.fs.ns.resolve(d)
            if mount is not None and key and not mount.store.has_dirs:
                try:
                    mount.store.remove_dir(key)
                except StoreError as e:
                    log.warning("%s: removed while a file in it was open; removing what is left of it "
                                "in the store failed: %s", d, e.strerror)

    def _replaced_since(self, h: _Hidden) -> bool:
        """Another client put a new object under the unlinked name since: it is not the one
        to delete at the last close. Known from the version a HEAD saw at the unlink; without
        one (the store did not answer), the delete goes ahead as before."""
        if h.moved or h.seen is None or not h.seen.done() or h.seen.exception() is not None:
            return False
        then = h.seen.result()
        try:
            now = h.mount.store.head(h.key)
        except StoreError:
            return False
        if now is None or then is not None and (now.etag, now.mtime, now.version) == (then.etag, then.mtime,
                                                                                      then.version):
            return False
        log.info("%s: unlinked while open; %s holds another version now, which stays", h.old, h.key)
        return True

    def _carry_hidden(self, old: str, new: str, k1: str, k2: str) -> None:
        """Files unlinked while open below a directory being renamed move with it: libfuse
        names them by their new path at the last close, and their objects, still in the
        store, are moved with the rest, to be deleted from there (a close deleted the old key
        and the moved copy came back)."""
        with self._lock:
            for t, hn in [(t, hn) for t, hn in self._tombstones.items() if under(t, old) and t != old]:
                del self._tombstones[t]
                nt = new + t[len(old):]
                if hn:
                    h = self._hidden.pop(hn, None)
                    hn = new + hn[len(old):] if under(hn, old) else hn
                    if h is not None:
                        h.old, h.moved = nt, True
                        if h.key.startswith(k1 + "/"):
                            h.key = k2 + h.key[len(k1):]
                        self._hidden[hn] = h
                self._tombstones[nt] = hn
                if t in self._hid_at:
                    self._hid_at[nt] = self._hid_at.pop(t)
            # hidden files whose name was taken again (a rename over an open file): no
            # tombstone leads to them, and libfuse names them below the new path from now on
            # (fstat of the still-open replaced file said ENOENT)
            for hn in [hn for hn in self._hidden if under(hn, old)]:
                h = self._hidden.pop(hn)
                nh = new + hn[len(old):]
                if under(h.old, old):
                    h.old = new + h.old[len(old):]
                if h.staged is not None and h.staged.path == hn:
                    h.staged.path = nh
                self._hidden[nh] = h

    def _revive_replaced(self, mount: Mount, old: str, new: str, k1: str) -> None:
        """Names unlinked while open below the destination of a directory rename that the
        moved tree fills again: their last close must not delete the objects moved in (`rm -rf
        ckpt && mv ckpt.new ckpt` while ckpt/model.bin was being read lost the new model.bin).
        Before any object moves; names the tree does not fill stay unlinked."""
        with self._lock:
            below = [t for t in self._tombstones if under(t, new) and t != new]
            incoming = {new + p[len(old):] for p in self._staged if under(p, old)}
        if not below:
            return
        incoming.update(new + k[len(k1):].rstrip("/") for k in self._store(old, mount.store.list_keys, k1))
        for t in below:
            if t in incoming:
                self._revive(t)

    def _rename_file(self, mount: Mount, old: str, k1: str, new: str, k2: str, over: bool = False) -> None:
        """over: onto an existing file, whose object a staged file renamed there now stands for."""
        self._drop_staged(new)  # a file renamed over one still open: the open one is unlinked
        st = self._staged.get(old)
        if st is None:
            self._store(old, mount.store.move, k1, k2)
            return
        with st.upload_lock:
            # an object opened for writing is fetched on first use, from its old key: fetch it
            # now, before the key moves away (else reads and writes of the open file fail)
            self._load_base(st, old)
            if st.dirty:
                # not in the store yet (or only an older version): upload under the new name
                self._store(old, mount.store.delete, k1)
            else:
                self._store(old, mount.store.move, k1, k2)
            with self._lock:
                self._staged.pop(old, None)
                st.path, st.key = new, k2
                if st.removed:
                    return  # closed and uploaded meanwhile (the kernel's release comes after close()
                    # returns, so often after the rename began): moved in the store, nothing staged
                self._staged[new] = st
                if over:
                    # the object under the new name is replaced by this file's upload, or deleted
                    # with it if it is removed first (it came back at the last close)
                    st.replaces_object = True
            st.save()

    def _rename_dir(self, mount: Mount, old: str, k1: str, new: str, k2: str, onto: bool = False) -> None:
        """onto: over an existing (empty) directory, which a failed rename leaves in place."""
        if not mount.store.has_dirs and len(_b(k2)) > len(_b(k1)):
            self._keys_below_fit(mount, old, new, k1, k2)
        if self._tombstones or self._hidden:
            self._revive_replaced(mount, old, new, k1)
            self._carry_hidden(old, new, k1, k2)
        # staged files first: their uploads must not land under the old name afterwards
        with self._lock:
            moving = [st for p, st in self._staged.items() if under(p, old)]
            kept = [d for d in self._dirs if under(d, old)]  # directories only the daemon knows
            had_new = new in self._dirs
            for d in kept:
                self._dirs.discard(d)
                self._dirs.add(new + d[len(old):])
        renamed: list[tuple[StagedFile, str, str]] = []  # (staged file, its old path, its old key)
        for st in moving:
            with st.upload_lock:
                self._load_base(st, st.path)  # before its key moves away (see _rename_file)
                with self._lock:
                    self._staged.pop(st.path, None)
                    was = (st, st.path, st.key)
                    st.path = new + st.path[len(old):]
                    st.key = k2 + st.key[len(k1):]
                    if st.removed:
                        continue  # closed and uploaded meanwhile: its object moves with the rest
                    renamed.append(was)
                    st.uploaded_gen = -1  # upload again under the new name
                    self._staged[st.path] = st
                st.save()
        if mount.store.has_dirs:
            self._store(old, mount.store.move, k1, k2)
            return
        keys = self._store(old, mount.store.list_keys, k1)
        moved: list[tuple[str, str]] = []  # (key, new key) of the moves done: see _undo_moves
        tried: list[tuple[str, str]] = []  # and of those begun: a failed one may have landed

        def move(k):
            dst = k2 + k[len(k1):]
            with self._lock:
                tried.append((k, dst))
            if k.endswith("/"):  # another tool's directory marker: made anew, removed below
                mount.store.put_marker(dst.rstrip("/"))
            else:
                mount.store.move(k, dst)
            with self._lock:
                moved.append((k, dst))
        # each object is copied before its original is deleted: a crash leaves both. Every
        # move ends before an error is raised: the failed rename's caller (and the cached
        # listings dropped on the way out) must see the store as it stays, not moves still
        # landing behind them
        failure = self._each_until_failure(move, keys)
        if failure is not None:
            with self._lock:
                for d in kept:
                    self._dirs.discard(new + d[len(old):])
                    self._dirs.add(d)
                if had_new:
                    self._dirs.add(new)
            self._undo_moves(mount, old, new, k2, moved, tried, onto)
            self._unrename_staged(mount, renamed)
            if isinstance(failure, StoreError):
                raise self.fs.store_error(failure, old) from None
            raise failure
        # stores that keep emptied prefixes as directories (SeaweedFS, MinIO) would still list
        # them, and markers would too; so would an emptied directory below, kept by the daemon
        # and moved, which no key names (the old tree stayed listed, and `mv b a` moved b into it)
        emptied = [k1 + d[len(old):] + "/" for d in kept if d != old]
        for d in _dirs_from(k1, list(keys) + emptied):
            self._store(old, mount.store.remove_dir, d)

    def _unrename_staged(self, mount: Mount, renamed: list) -> None:
        """Staged files go back to their old names with the rest of a failed directory rename
        (they stayed under the new one, which then existed: a second `mv` moved the directory
        into it). One uploaded under its new name meanwhile is moved back in the store."""
        for st, path, key in renamed:
            with st.upload_lock:
                # uploaded under the new name while the rename ran (written back, or closed)
                landed = st.key if st.uploaded_gen != -1 and not st.deleted else None
                with self._lock:
                    if self._staged.get(st.path) is st:
                        del self._staged[st.path]
                    st.path, st.key = path, key
                    if not st.removed:
                        st.uploaded_gen = -1  # upload again under the old name
                        self._staged[path] = st
                if not st.removed:
                    st.save()
            if landed is not None:
                try:
                    if st.removed:  # closed: its staged copy is gone, the object is the only one
                        mount.store.move(landed, key)
                    else:
                        mount.store.delete(landed)
                except StoreError as e:
                    log.error("rename of %s failed; putting back %s in the store failed too: %s", path, landed,
                              e.strerror)

    def _keys_below_fit(self, mount: Mount, old: str, new: str, k1: str, k2: str) -> None:
        """A longer name can push keys deep below it past the store's limit: refused whole,
        before anything moves (each copy was refused by the store: EIO after a rename half
        made and undone). One more LIST, for renames to a longer name only."""
        with self._lock:
            keys = [st.key for p, st in self._staged.items() if under(p, old)]
        keys += self._store(old, mount.store.list_keys, k1)
        longest = max((len(_b(_full_key(mount, k))) for k in keys), default=0)
        if longest + len(_b(k2)) - len(_b(k1)) > MAX_KEY_BYTES:
            raise _err(errno.ENAMETOOLONG, new, f"a key below it would be over the store's {MAX_KEY_BYTES} bytes")

    def _each_until_failure(self, fn, items) -> Optional[BaseException]:
        """fn(item) for every item, in parallel on the upload pool; once one fails, those not
        started yet are skipped (a hung store took each of 300 objects' full timeouts and
        retries: 75 minutes with the defaults). Returns, once every call has ended, the first
        failure in item order, or None."""
        broken = threading.Event()

        def run(item):
            if broken.is_set():
                return
            try:
                fn(item)
            except BaseException:
                broken.set()
                raise
        futures = [self.pool.submit(run, item) for item in items]
        futures_wait(futures)
        return next((f.exception() for f in futures if f.exception() is not None), None)

    def _undo_moves(self, mount: Mount, old: str, new: str, k2: str, moved: list, tried: list,
                    onto: bool = False) -> None:
        """A directory rename the store broke off: put back what moved (in parallel, stopping at
        the first failure) and remove the new directory, so the rename fails as a whole. Left
        half-moved, the new name existed: `mv` then moved the rest into it, one level down, and
        exited 0 (a store that hung for 12 s). Staged files go back too (_unrename_staged).
        Best effort: a store still failing leaves both halves, and the log says so.
        A move that failed may still have landed (its copy timed out here and completed in the
        store, or its delete failed): the new name's keys of every move begun are looked at
        again, listed after the rest is back, so late copies are found too."""
        def back(pair):
            key, dst = pair
            if key.endswith("/"):
                if not (onto and dst == k2 + "/"):  # the marker of the directory renamed onto
                    mount.store.delete(dst)  # a marker made anew: the old one is still there
            else:
                mount.store.move(dst, key)

        def settle(pair):
            key, dst = pair
            if key.endswith("/"):
                back(pair)
            elif mount.store.head(key) is not None:
                mount.store.delete(dst)  # the copy landed, the original stayed
            else:
                mount.store.move(dst, key)  # the original went too
        done = set(moved)
        begun = {dst: key for key, dst in tried if (key, dst) not in done}  # failed, maybe landed
        try:
            undone = self._each_until_failure(back, moved) is None
            landed = [(begun[k], k) for k in mount.store.list_keys(k2.rstrip("/")) if k in begun] \
                if undone and begun else []
            undone = undone and self._each_until_failure(settle, landed) is None
        except StoreError:  # the listing
            undone = False
        if not undone:
            log.error("rename of %s to %s failed half-way and could not be undone (the store fails): "
                      "some of its files are under %s now", old, new, new)
            return
        moved = moved + landed
        for d in _dirs_from(k2, [dst.rstrip("/") for _, dst in moved]):
            if onto and d == k2:
                continue  # it was there before
            try:
                mount.store.remove_dir(d)
            except StoreError:
                pass  # an empty prefix: listed at worst as an empty directory
        if moved:
            log.warning("rename of %s to %s failed; the %d object(s) already moved were moved back", old, new,
                        len(moved))

    def _load_base(self, st: StagedFile, path: str) -> None:
        try:
            st.load()
        except StoreError as e:
            raise self.fs.store_error(e, path) from None

    def _store(self, path: str, fn, *args):
        try:
            return fn(*args)
        except StoreError as e:
            raise self.fs.store_error(e, path) from None

    def close(self) -> None:
        self._stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self._fresh.shutdown(wait=False, cancel_futures=True)
        pending, still_open = [], []
        for st in self.all_staged():
            # closed (or fsynced) by its application and unchanged since, its release not in
            # yet: a close whose upload failed as the stop came was left "open", never uploaded
            finished = st.opens > 0 and st.flushed_gen == st.gen
            if st.opens > 0 and st.dirty:
                st.save(closed=finished)
            if st.dirty and not st.deleted:
                (still_open if st.opens > 0 and not finished else pending).append(st)
                st.close_fd()
            else:
                st.remove()  # nothing to recover (kept for readers, or unchanged): no stray data
        with self._lock:
            hidden = [h.staged for h in self._hidden.values() if h.staged is not None]
        for st in hidden:
            if st.opens == 0:  # unlinked, held by readers only: never uploaded, nothing to keep
                st.remove()
            else:
                st.close_fd()

        def names(files):
            return ", ".join(st.path for st in files[:5]) + (", ..." if len(files) > 5 else "")
        # a stop signal or an unmount with files still open or not uploaded: say so (which
        # also keeps the log), or the data would sit in the staging directory unmentioned
        if pending:
            log.warning("stopping with %d closed file(s) not in the store (%s); kept in %s, uploaded when "
                        "this mount point is mounted again", len(pending), names(pending), self.staging_dir)
        if still_open:
            # possibly half-written: an upload could replace a good object with a torn one
            log.warning("stopping with %d file(s) still open for writing (%s); their data is kept in %s "
                        "and not uploaded (copy it back yourself if it is complete)", len(still_open),
                        names(still_open), self.staging_dir)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
