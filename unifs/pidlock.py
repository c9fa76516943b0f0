"""An exclusive lock file that names its holder: the error for the next comer can say which
process to wait for or stop."""

from __future__ import annotations

import fcntl
import os


class Busy(Exception):
    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder  # the pid written by the process holding the lock, or "?"


def take(path) -> int:
    """An open fd holding an exclusive flock on path (created 0600), with this pid written in
    it; Busy if another open file holds the lock. The lock lasts until the fd is closed."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise Busy(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
