"""Thin adapter from FUSE callbacks to the vfs: translation and errno only."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import threading
import time
from typing import Callable, Optional

import mfusepy as fuse

from unifs.cache.buffers import copy_to
from unifs.vfs import FileSystem
from unifs.vfs.filesystem import opens_for_writing

_UTIME_NOW, _UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2

log = logging.getLogger("unifs.fuse")


def _errno_guard(fn):
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except fuse.FuseOSError:
            raise
        except OSError as e:
            raise fuse.FuseOSError(e.errno if isinstance(e.errno, int) and e.errno > 0 else errno.EIO)
        except Exception:  # noqa: BLE001 - a bug must not kill the mount
            log.exception("unexpected error in %s", fn.__name__)
            raise fuse.FuseOSError(errno.EIO)
    wrapper.__name__ = fn.__name__
    return wrapper



def _caller() -> Optional[int]:
    """The process (thread group) of the current request, or None if it cannot be told: FUSE
    gives the calling thread's id."""
    try:
        pid = fuse.fuse_get_context()[2]
    except ValueError:  # NULL context: not inside a FUSE request
        return None
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def session_exit() -> Optional[Callable[[], None]]:
    """fuse_exit for this mount, bound while in a FUSE callback (see _kernel_invalidator): ends
    the request loop from any thread; libfuse then unmounts and calls destroy, as after its own
    signal handler, but with a clean return."""
    lib = fuse._libfuse
    func = getattr(lib, "fuse_exit", None)
    if func is None:
        return None
    func.argtypes = [ctypes.c_void_p]
    func.restype = None
    handle = ctypes.c_void_p(lib.fuse_get_context().contents.fuse)
    return lambda: func(handle)


def _kernel_invalidator() -> Optional[Callable[[str], None]]:
    """fuse_invalidate_path (libfuse >= 3.1) for this mount, bound while in a FUSE callback,
    where the context names the mount; callable from any thread afterwards. None on libfuse 2."""
    lib = fuse._libfuse
    func = getattr(lib, "fuse_invalidate_path", None)
    if func is None:
        return None
    func.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    func.restype = ctypes.c_int
    handle = ctypes.c_void_p(lib.fuse_get_context().contents.fuse)

    def invalidate(path: str) -> None:
        # -ENOENT: the kernel holds nothing for this path
        func(handle, path.encode("utf-8", "surrogateescape"))
    return invalidate

class FuseOps(fuse.Operations):
    use_ns = True

    def __init__(self, fs: FileSystem, on_ready: Optional[Callable[[], None]] = None,
                 on_init: Optional[Callable[[], None]] = None):
        self.fs = fs
        self._on_init = on_init  # runs in INIT, inside the FUSE context (see session_exit)
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._on_ready = on_ready
        self._dirs: dict[int, Optional[list]] = {}
        self._next_dir = 0
        self._dir_lock = threading.Lock()

    def init(self, path):
        self.fs.kernel_invalidate = _kernel_invalidator()
        if self._on_init is not None:
            self._on_init()
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path):
        self.fs.close()

    @_errno_guard
    def getattr(self, path, fh=None):
        if path is None or fh is not None:  # fstat(); path None: a file unlinked while open
            return self.fs.handle_attr(fh.fh).to_stat(self.uid, self.gid)
        return self.fs.getattr(path, for_kernel=True).to_stat(self.uid, self.gid)

    @_errno_guard
    def readdir(self, path, fh):
        entries = [".", ".."]
        for name, attr in self.fs.readdir(path):
            entries.append((name, {"st_mode": attr.mode}, 0))
        return entries

    # -- readdirplus (libfuse 3): a listing snapshot per open directory -------------------
    @_errno_guard
    def opendir(self, path):
        with self._dir_lock:
            self._next_dir += 1
            self._dirs[self._next_dir] = None
            return self._next_dir

    def releasedir(self, path, fh):
        with self._dir_lock:
            self._dirs.pop(fh, None)
        return 0

    @_errno_guard
    def check_rename(self, old, new):
        self.fs.writes.check_rename(old, new)

    @_errno_guard
    def dir_entries(self, path, fh, offset):
        """([(name, Attr)], fresh): the directory's entries, the same names and order for every
        call of one open directory (the kernel reads a big directory in several calls, each from
        an offset); fresh when read by this call. A later call must not send the snapshot's
        attributes: they may be older than what the kernel has seen since (a file growing
        while a program lists its directory)."""
        with self._dir_lock:
            snap = self._dirs.get(fh)
        if snap is not None and offset != 0:
            return snap, False
        snap = [(".", None), ("..", None)] + self.fs.readdir(path)
        with self._dir_lock:
            if fh in self._dirs:
                self._dirs[fh] = snap
        return snap, True

    def current_attr(self, path, name):
        """An entry's attributes as the daemon knows them now, or None (never asks the store)."""
        return self.fs.known_attr(path.rstrip("/") + "/" + name)

    @_errno_guard
    def open(self, path, fi):
        # the caller (a /proc read) matters only to a writable handle's flush
        fh, keep = self.fs.open(path, fi.flags, _caller() if opens_for_writing(fi.flags) else None)
        fi.fh = fh
        fi.keep_cache = 1 if keep else 0
        if self.fs.is_direct(fh):
            fi.direct_io = 1
        if hasattr(type(fi), "noflush") and not self.fs.is_writable(fh):
            # no FLUSH call at close() for a file opened for reading: it has nothing to upload,
            # and a warm read of a small file costs 4 calls instead of 5 (libfuse >= 3.11)
            fi.noflush = 1
        return 0

    @_errno_guard
    def read(self, path, size, offset, fi):
        return self.fs.read_buffer(fi.fh, size, offset)

    @_errno_guard
    def release(self, path, fi):
        self.fs.release(fi.fh)
        return 0

    @_errno_guard
    def statfs(self, path):
        return self.fs.statfs()

    @_errno_guard
    def access(self, path, amode):
        self.fs.access(path, amode)
        return 0

    # ioctl is left out on purpose: Python's open() asks isatty() of every file, and the
    # kernel turns libfuse's ENOSYS into ENOTTY ("not a terminal") itself, so a Python
    # callback per open bought nothing (warm 100 KiB files, 8 readers, alternating runs:
    # 0.085-0.140 ms of daemon CPU per file without it, 0.140-0.260 with it).
    # getxattr and listxattr are left out on purpose: libfuse answers ENOSYS, the kernel
    # then stops asking and reports EOPNOTSUPP itself. `ls -l` asked twice per file
    # (SELinux label, ACL) on every run, and writes asked for security.capability.

    # -- writes and namespace changes ---------------------------------------------
    @_errno_guard
    def create(self, path, mode, fi):
        fi.fh = self.fs.create(path, _caller(), truncate=bool(fi.flags & os.O_TRUNC),
                               exclusive=bool(fi.flags & os.O_EXCL))
        fi.keep_cache = 0
        return 0

    @_errno_guard
    def mknod(self, path, mode, dev):
        if stat.S_ISREG(mode):  # mknod(2) of a plain file: an empty file, as create + close
            fh = self.fs.create(path)
            try:
                self.fs.flush(fh)
            finally:
                self.fs.release(fh)
            return 0
        self.fs.writes.writable(path)  # EROFS on a read-only mount
        raise fuse.FuseOSError(errno.EPERM)  # no FIFOs, sockets or devices in an object store

    @_errno_guard
    def write(self, path, data, offset, fi):
        return self.fs.write(fi.fh, data, offset)

    @_errno_guard
    def flush(self, path, fi):
        self.fs.flush(fi.fh, _caller())
        return 0

    @_errno_guard
    def fsync(self, path, datasync, fi):
        self.fs.fsync(fi.fh)
        return 0

    @_errno_guard
    def truncate(self, path, length, fh=None):
        self.fs.truncate(path, length, fh.fh if fh is not None else None)
        return 0

    @_errno_guard
    def unlink(self, path):
        self.fs.unlink(path)
        return 0

    @_errno_guard
    def mkdir(self, path, mode):
        self.fs.mkdir(path)
        return 0

    @_errno_guard
    def rmdir(self, path):
        self.fs.rmdir(path)
        return 0

    @_errno_guard
    def rename(self, old, new):
        self.fs.rename(old, new)
        return 0

    @_errno_guard
    def chmod(self, path, mode):
        if path is not None:  # None: an unlinked file, nothing to keep
            self.fs.accept_metadata_change(path)
        return 0

    @_errno_guard
    def chown(self, path, uid, gid):
        if path is not None:
            self.fs.accept_metadata_change(path)
        return 0

    @_errno_guard
    def utimens(self, path, times=None):
        # use_ns: nanoseconds; libfuse 3 passes utimensat's UTIME_NOW (`touch`) and UTIME_OMIT
        # (`touch -a`) through as such, with tv_sec 0: taken literally they set 1970
        mtime = times[1] if times else _UTIME_NOW
        mtime = None if mtime == _UTIME_OMIT else time.time() if mtime == _UTIME_NOW else mtime / 1e9
        if path is not None:
            self.fs.set_times(path, mtime)
        return 0

    @_errno_guard
    def symlink(self, target, source):
        self.fs.refuse_change(target)

    @_errno_guard
    def link(self, target, source):
        self.fs.refuse_change(target)

    @_errno_guard
    def setxattr(self, path, name, value, options, position=0):
        self.fs.refuse_change(path, errno.ENOTSUP)

    @_errno_guard
    def removexattr(self, path, name):
        self.fs.refuse_change(path, errno.ENOTSUP)


FILL_DIR_PLUS = 2  # enum fuse_fill_dir_flags
READDIR_PLUS = 1  # enum fuse_readdir_flags


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


class UnifsFUSE(fuse.FUSE):
    """mfusepy with readdirplus on libfuse 3: each entry carries its attributes, so the kernel
    skips one LOOKUP per entry after a listing (`ls -l`, os.scandir + stat). libfuse 3.14's
    high-level API sends the attributes only for entries filled with a nonzero offset; a
    listing filled at offset 0 goes out with inode 0, which the kernel ignores."""

    def read(self, path, buf, size, offset, fip):
        # mfusepy's own read() memmoves only bytes: blocks arrive as other buffers (obstore's
        # response bodies, views of cached blocks) and are copied into the reply directly
        ret = self.operations.read(None if path is None else path.decode(self.encoding, self.errors),
                                   size, offset, fip.contents if self.raw_fi else fip.contents.fh)
        if not ret:
            return 0
        if len(ret) > size:
            log.error("read returned %d bytes for a request of %d", len(ret), size)
            return -errno.EIO
        return copy_to(buf, ret)

    def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
        if path is None:  # a directory removed while open
            return -errno.ENOENT
        dirpath = path.decode(self.encoding, self.errors)
        entries, fresh = self.operations.dir_entries(dirpath, fip.contents.fh, offset)
        st = fuse.c_stat()
        want_plus = bool(flags & READDIR_PLUS)
        ops = self.operations
        use_ns = getattr(ops, "use_ns", False)
        for i in range(offset, len(entries)):
            name, attr = entries[i]
            if attr is None:  # . and ..: no attributes, or glibc drops them (inode 0)
                st.st_mode, plus = 0o40755, 0
            else:
                if want_plus and not fresh:
                    current = ops.current_attr(dirpath, name)
                    plus = FILL_DIR_PLUS if current is not None else 0  # unknown: name only
                    attr = current or attr
                else:
                    plus = FILL_DIR_PLUS if want_plus else 0
                if plus:
                    fuse.set_st_attrs(st, attr.to_stat(ops.uid, ops.gid), use_ns=use_ns)
                else:
                    st.st_mode = attr.mode
            if filler(buf, name.encode(self.encoding, self.errors), st, i + 1, plus) != 0:
                break
        return 0

    def truncate_fuse_3(self, path, length, fip):
        # ftruncate() arrives here with its file handle (mfusepy drops it): the handle's changes
        # are then uploaded at its close
        fh = fip.contents if fip else None
        return self.operations.truncate(None if path is None else path.decode(self.encoding, self.errors),
                                        length, fh)

    def rename_fuse_3(self, old, new, flags):
        # renameat2() flags (mfusepy ignores them): NOREPLACE must not replace; EXCHANGE
        # (an atomic swap) no object store can do
        if flags:
            try:  # EROFS and EXDEV come first, as from a local file system
                self.operations.check_rename(old.decode(self.encoding, self.errors),
                                             new.decode(self.encoding, self.errors))
            except fuse.FuseOSError as e:
                return -e.errno
        if flags & RENAME_EXCHANGE or flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            return -errno.EINVAL
        if flags & RENAME_NOREPLACE:
            try:
                self.operations.getattr(new.decode(self.encoding, self.errors))
                return -errno.EEXIST
            except fuse.FuseOSError as e:
                if e.errno != errno.ENOENT:
                    return -e.errno
        return self.rename_fuse_2(old, new)
