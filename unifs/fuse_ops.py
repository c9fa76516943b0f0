"""Thin adapter from FUSE callbacks to the vfs: translation and errno only."""

from __future__ import annotations

import errno
import logging
import os
from typing import Callable, Optional

import mfusepy as fuse

from unifs.vfs import FileSystem

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


class FuseOps(fuse.Operations):
    use_ns = True

    def __init__(self, fs: FileSystem, on_ready: Optional[Callable[[], None]] = None):
        self.fs = fs
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._on_ready = on_ready

    def init(self, path):
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path):
        self.fs.close()

    @_errno_guard
    def getattr(self, path, fh=None):
        return self.fs.getattr(path).to_stat(self.uid, self.gid)

    @_errno_guard
    def readdir(self, path, fh):
        entries = [".", ".."]
        for name, attr in self.fs.readdir(path):
            entries.append((name, {"st_mode": attr.mode}, 0))
        return entries

    @_errno_guard
    def open(self, path, fi):
        fh, keep = self.fs.open(path, fi.flags)
        fi.fh = fh
        fi.keep_cache = 1 if keep else 0
        return 0

    @_errno_guard
    def read(self, path, size, offset, fi):
        return self.fs.read(fi.fh, size, offset)

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

    def ioctl(self, path, cmd, arg, fh, flags, data):
        # Python's open() asks isatty(); answer "not a terminal" instead of ENOSYS
        raise fuse.FuseOSError(errno.ENOTTY)

    # getxattr and listxattr are left out on purpose: libfuse answers ENOSYS, the kernel
    # then stops asking and reports EOPNOTSUPP itself. `ls -l` asked twice per file
    # (SELinux label, ACL) on every run, and writes asked for security.capability.

    # -- writes and namespace changes ---------------------------------------------
    @_errno_guard
    def create(self, path, mode, fi):
        fi.fh = self.fs.create(path)
        fi.keep_cache = 0
        return 0

    @_errno_guard
    def write(self, path, data, offset, fi):
        return self.fs.write(fi.fh, data, offset)

    @_errno_guard
    def flush(self, path, fi):
        self.fs.flush(fi.fh)
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
        self.fs.accept_metadata_change(path)
        return 0

    @_errno_guard
    def chown(self, path, uid, gid):
        self.fs.accept_metadata_change(path)
        return 0

    @_errno_guard
    def utimens(self, path, times=None):
        mtime = times[1] / 1e9 if times else None  # use_ns: nanoseconds
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
