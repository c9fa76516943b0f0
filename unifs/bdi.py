"""The kernel's read-ahead for one FUSE mount, set through its backing device in sysfs.

The kernel sizes the READ requests it sends a FUSE daemon by its read-ahead window, 128 KiB
by default, even when libfuse 3 allows 1 MiB requests: a sequential read of 1 GiB then costs
8,192 Python callbacks (1,026 with 1 MiB, counted with strace). FUSE's INIT reply can only
lower the window (the kernel keeps the smaller of the two, so a value written before the
reply is lost); root can raise it afterwards in /sys/class/bdi/<major:minor>/read_ahead_kb,
as JuiceFS does. Without root, or with a read-only /sys (containers), the default stays.
"""

from __future__ import annotations

import logging
from typing import Optional

from unifs import mountinfo

log = logging.getLogger("unifs.daemon")

SYSFS_BDI = "/sys/class/bdi"


def set_read_ahead(mountpoint: str, nbytes: int, sysfs: str = SYSFS_BDI) -> Optional[int]:
    """Set the read-ahead of the FUSE mount at `mountpoint` to `nbytes`; return the KiB now in
    effect, or None if it could not be set (logged, never raised: the mount works either way)."""
    if nbytes <= 0:
        return None
    live = mountinfo.find_mount(mountpoint)
    if live is None or not live.fstype.startswith("fuse") or ":" not in live.device:
        log.info("kernel read-ahead left at its default: %s is not a FUSE mount in "
                 "/proc/self/mountinfo", mountpoint)
        return None
    path = f"{sysfs}/{live.device}/read_ahead_kb"
    kib = nbytes // 1024
    try:
        with open(path, "w") as f:
            f.write(f"{kib}\n")
        with open(path) as f:
            now = int(f.read().strip())
    except (OSError, ValueError) as e:
        log.info("kernel read-ahead left at its default (cannot write %s: %s); "
                 "sequential reads arrive in 128 KiB requests", path,
                 getattr(e, "strerror", None) or e)
        return None
    log.info("kernel read-ahead of %s: %d KiB", mountpoint, now)
    return now
