"""Staged writes: the local copy of a file being written, and its sidecar.

A file opened for writing lives in the staging directory (mode 0700) until an
upload of its latest content succeeds. A JSON sidecar next to the data names
the destination, so `unifs status` can list what is not yet in the store and a
restarted daemon can resume. Sidecar states:

- "open": an application has the file open. A daemon that dies now leaves it
  as "orphaned": kept, listed, never uploaded by itself, because the
  application may have been half-way through writing it and an upload would
  replace a good object with a torn one. A daemon that stops (not dies) counts a file its
  application closed or fsynced, and did not change after, as closed (Writes.close).
- "pending": closed (or fsynced) with changes the store does not have yet;
  uploaded in the background with backoff, also after a restart.
- "failed": the store rejected the upload as such (a 4xx such as KeyTooLong): kept and
  listed, never retried.
- "stranded": pending, but the mount table of the daemon that found it no longer maps its
  path to the same store and key: kept and listed, not waited for; a later daemon whose
  table matches again uploads it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

from unifs.privdir import private_directory

LOCK_NAME = ".lock"  # held by the daemon using the directory

log = logging.getLogger("unifs.staging")

OPEN, PENDING, ORPHANED, FAILED, STRANDED = "open", "pending", "orphaned", "failed", "stranded"
NOT_WAITED_FOR = (ORPHANED, FAILED, STRANDED)  # states no daemon will upload by itself now
_CHUNK = 8 * 1024 * 1024


@dataclass
class Base:
    """The store object a staged file starts from, fetched on first use: an
    open() for writing that is followed by truncate(0) never downloads it."""

    size: int
    fetch: Callable[[int, int], bytes]


class StagedFile:
    def __init__(self, area: "StagingArea", sid: str, path: str, mount_path: str, key: str, url: str,
                 base: Optional[Base] = None, gen: int = 0, site: Optional[str] = None):
        self.area = area
        self.sid = sid
        self.path = path
        self.mount_path = mount_path
        self.key = key
        self.url = url
        self.site = site  # Mount.site of its store; None: recorded before unifs kept it
        self.base = base
        self.data_path = os.path.join(area.directory, sid + ".data")
        self.meta_path = os.path.join(area.directory, sid + ".json")
        self.fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o600)
        self.lock = threading.RLock()         # content and counters
        self.upload_lock = threading.Lock()   # one upload (or rename/unlink) at a time
        self.gen = gen                        # bumped on every change
        self.uploaded_gen = 0
        self.flushed_gen = -1  # gen at the application's last close() or fsync (Writes.flush)
        self.opens = 0  # writers, and the truncate(path) and rename calls that hold it
        self.readers = 0  # read-only handles reading it (Writes.attach, attach_reader)
        self.deleted = False
        self.mtime = time.time()
        self.last_write = time.monotonic()
        self.last_upload = time.monotonic()
        self.replaces_object = False  # opened over an existing object (set by Writes.open)
        self.found_in_store = False  # created as new, but the store had an object there (see Writes)
        self.created_truncating = False  # created by an open with O_TRUNC
        self.checked_absent = False  # the store had no object at its creation (Writes.create_or_open)
        # created without O_TRUNC while the store could not say whether it had the name: an
        # object found there before the first upload is not replaced (see Writes)
        self.unchecked_create = False
        # (ETag,) of the stored version it was opened over (Writes.open), None if created
        self.opened_over: Optional[tuple] = None
        self.failures = 0
        self.next_retry = 0.0
        self.error: Optional[str] = None
        self.rejected = False  # the store refused the upload as such: retrying cannot help
        self.write_error = 0  # errno of a failed local write (ENOSPC): never upload a torn file
        self.recorded_clean = False  # the sidecar says the store holds exactly the data file
        self._final_size = 0  # size when its descriptor was closed (see removed)

    # -- content ---------------------------------------------------------------
    @property
    def held(self) -> bool:
        """Some handle still uses its descriptor: it must not be removed yet."""
        return self.opens > 0 or self.readers > 0

    @property
    def dirty(self) -> bool:
        return self.gen != self.uploaded_gen

    @property
    def removed(self) -> bool:
        """Discarded (uploaded and closed, or unlinked): a lookup or rename that found it a
        moment before must not use its descriptor, nor put it back."""
        return self.fd < 0

    @property
    def size(self) -> int:
        with self.lock:
            if self.base is not None:
                return self.base.size
            if self.fd < 0:
                return self._final_size
            return os.fstat(self.fd).st_size

    def load(self) -> None:
        """Fetch the base object into the staged file (once)."""
        with self.lock:
            base = self.base
            if base is None:
                return
            pos = 0
            while pos < base.size:
                data = base.fetch(pos, min(base.size, pos + _CHUNK))
                os.pwrite(self.fd, data, pos)
                pos += len(data)
            self.base = None

    def pread(self, size: int, offset: int) -> bytes:
        self.load()
        return os.pread(self.fd, size, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        self.load()
        with self.lock:
            try:
                n = self.area.with_room(len(data), os.pwrite, self.fd, data, offset)
            except OSError as e:
                self.write_error = e.errno
                raise
            self._changed()
        return n

    def truncate(self, length: int) -> None:
        with self.lock:
            if self.base is not None and length == 0:
                self.base = None  # open(O_TRUNC) of an existing object: nothing to fetch
            else:
                self.load()
            os.ftruncate(self.fd, length)
            self._changed()

    def touch(self) -> None:
        with self.lock:
            self._changed()

    def set_mtime(self, mtime: float) -> None:
        self.mtime = mtime

    def _changed(self) -> None:
        self.gen += 1
        self.mtime = time.time()
        self.last_write = time.monotonic()
        if self.recorded_clean:  # before this request is answered: never "clean" with new bytes
            self.save()
            if self.recorded_clean:  # the sidecar could not be rewritten: do not acknowledge
                raise OSError(errno.EIO, "cannot record a change of the staged file", self.meta_path)

    # -- sidecar -----------------------------------------------------------------
    def save(self, closed: bool = False) -> None:
        """closed: recorded as closed although a handle is open (see Writes.close)."""
        # under the content lock: "clean" and recorded_clean must describe the same moment as
        # the data file, or a write landing between them is acknowledged without a sidecar
        # rewrite and a later recovery drops it
        with self.lock:
            state = OPEN if self.opens > 0 and not closed else FAILED if self.rejected else PENDING
            self.area.write_sidecar(self, state)

    def drop_record(self, deleted: bool = False) -> None:
        """Nothing in it is for a later daemon to recover (uploaded, unchanged, or deleted),
        though readers still hold it: no sidecar, or a restart would upload it again over
        newer objects. The next change writes one again (see _changed). Under the content
        lock, and only while clean: a write landing after the caller looked must keep it."""
        with self.lock:
            if self.dirty and not deleted:
                return
            try:
                os.unlink(self.meta_path)
            except FileNotFoundError:
                pass
            self.recorded_clean = True

    def close_fd(self) -> None:
        # once only: a second close() could hit a descriptor number reused by another thread
        with self.lock:
            if self.fd >= 0:
                try:
                    self._final_size = os.fstat(self.fd).st_size
                except OSError:
                    pass
            fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def remove(self) -> None:
        self.close_fd()
        for p in (self.data_path, self.meta_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


class StagingArea:
    def __init__(self, directory: str):
        self.directory = directory
        # room_maker(directory, nbytes) -> bool: the disk cache frees that much on the directory's
        # file system, if it can (see with_room)
        self.room_maker: Optional[Callable[[str, int], bool]] = None
        private_directory(directory.rstrip("/"), "staging directory")

    def with_room(self, nbytes: int, fn, *args):
        """fn(*args); on ENOSPC, once more after the disk cache on the same file system (if
        any) gave back nbytes."""
        try:
            return fn(*args)
        except OSError as e:
            if e.errno != errno.ENOSPC or self.room_maker is None or not self.room_maker(self.directory, nbytes):
                raise
        return fn(*args)

    def lock(self) -> int:
        """Hold the directory for this daemon (the fd, kept open while it runs). A second daemon
        of the same mount point (the first one unmounted lazily, still serving open files) would
        resume and upload the first one's files while it writes them."""
        from unifs import pidlock
        from unifs.errors import UserError

        try:
            return pidlock.take(os.path.join(self.directory, LOCK_NAME))
        except pidlock.Busy as e:
            raise UserError(f"staging directory {self.directory} is in use by another unifs daemon (pid "
                            f"{e.holder}), e.g. an earlier mount of this mount point unmounted with --lazy that "
                            "still serves open files: close them or stop that daemon first") from None

    def create(self, path: str, mount_path: str, key: str, url: str, site: str = "",
               base: Optional[Base] = None) -> StagedFile:
        try:
            st = self.with_room(0, lambda: StagedFile(self, uuid.uuid4().hex, path, mount_path, key, url, base,
                                                      site=site))
        except FileNotFoundError:
            # not the writer's ENOENT: its directory exists
            log.error("%s: the staging directory %s is gone (deleted while the daemon runs); no file can "
                      "be written until the mount point is mounted again", path, self.directory)
            raise OSError(errno.EIO, f"staging directory {self.directory} is gone") from None
        try:
            self.write_sidecar(st, OPEN)
        except OSError:
            st.remove()  # the open fails (ENOSPC): no empty data file left behind
            raise
        return st

    def write_sidecar(self, st: StagedFile, state: str) -> None:
        doc = {"path": st.path, "mount": st.mount_path, "key": st.key, "url": st.url, "site": st.site, "state": state,
               "size": st.size, "data": st.data_path, "error": st.error, "updated": time.time(),
               # False while the object it was opened over is not fetched yet: the data file then
               # holds only the changes, and must never be uploaded as the whole object
               "complete": st.base is None,
               # the store holds exactly the data file (uploaded, unchanged since): a daemon that
               # stops before the file's release leaves nothing to recover
               "clean": not st.dirty and st.base is None and not st.deleted,
               "unchecked": st.unchecked_create and not st.uploaded_gen}
        text = json.dumps(doc)
        try:
            self.with_room(len(text), _replace_file, st.meta_path, text)
            # only once written: a sidecar still saying "clean" on disk must be rewritten at
            # the next change, or a recovery would drop bytes the store does not have
            st.recorded_clean = doc["clean"]
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            log.warning("cannot record staged file %s: %s", st.data_path, e.strerror)

    def recover(self) -> list[tuple[dict, str]]:
        """Sidecars left by an earlier daemon: (document, sid). Files that were still
        open then become "orphaned" and stay put."""
        found = []
        for doc, sid in read_sidecars(self.directory):
            if doc.get("clean") and doc.get("state") != FAILED:
                log.info("%s was open when the daemon stopped, and already uploaded; dropping its "
                         "staged copy", doc.get("path"))
                for ext in (".data", ".json"):
                    try:
                        os.unlink(os.path.join(self.directory, sid + ext))
                    except FileNotFoundError:
                        pass
                continue
            if doc.get("state") == PENDING and doc.get("complete") is False:
                doc["state"] = OPEN  # kept as orphaned below, never uploaded
            if doc.get("state") == OPEN:
                doc["state"] = ORPHANED
                _replace_file(os.path.join(self.directory, sid + ".json"), json.dumps(doc))
                log.warning("%s was still open for writing when the daemon stopped; its data is kept at "
                            "%s and not uploaded (copy it back yourself if it is complete)",
                            doc.get("path"), doc.get("data"))
            found.append((doc, sid))
        for name in os.listdir(self.directory):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(self.directory, name))
        return found

    def strand(self, doc: dict, sid: str) -> None:
        """Mark a pending file whose destination left the mount table (see STRANDED)."""
        if doc.get("state") == STRANDED:
            return
        _replace_file(os.path.join(self.directory, sid + ".json"), json.dumps({**doc, "state": STRANDED}))

    def adopt(self, doc: dict, sid: str) -> StagedFile:
        """A pending file from an earlier daemon, to be uploaded again."""
        st = StagedFile(self, sid, doc["path"], doc["mount"], doc["key"], doc["url"], gen=1, site=doc.get("site"))
        st.error = doc.get("error")
        st.unchecked_create = bool(doc.get("unchecked"))
        return st


def _replace_file(path: str, text: str) -> None:
    """path holds text, whole or not at all (a sidecar read during a crash or a concurrent
    `unifs status` is the old one or the new one); 0600 like the data it describes."""
    tmp = path + ".tmp"
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)  # a full disk: not left for `unifs status` and the next start to find
        except OSError:
            pass
        raise


def pending_files(directory: str, daemon_dead: bool = False) -> list[dict]:
    """What `unifs status` and `unifs umount` report: files not (yet) in the store
    (still-open files only once an upload of theirs failed). daemon_dead: the daemon of this
    staging directory died, so files it had open count too, as orphaned, which is what the
    next daemon makes of them (nobody uploads them on their own)."""
    out = []
    for doc, _ in read_sidecars(directory):
        if doc.get("clean") and doc.get("state") != FAILED:
            continue  # in the store already, exactly
        if daemon_dead and doc.get("state") == OPEN:  # also one whose write-back had failed
            out.append({**doc, "state": ORPHANED})
        elif doc.get("state") in (PENDING, ORPHANED, FAILED, STRANDED) or doc.get("error"):
            out.append(doc)
    return out


def read_sidecars(directory: str) -> list[tuple[dict, str]]:
    out = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:  # missing, or not a directory: nothing staged there
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        sid = name[:-5]
        try:
            with open(os.path.join(directory, name)) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        try:  # the data file's own size: the sidecar's is as of its last write
            doc["size"] = os.path.getsize(os.path.join(directory, sid + ".data"))
        except OSError:
            continue
        out.append((doc, sid))
    return out
